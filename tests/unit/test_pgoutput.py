"""The pgoutput decoder on messages a real PostgreSQL wrote (recorded by tests/unit/record_pgoutput.py,
whose STEPS are the statements each list answers), and on bytes it must refuse."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from apparel import pgoutput
from apparel.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    DecodeError,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
)

RECORDED = json.loads((Path(__file__).parent / "data" / "pgoutput_messages.json").read_text())
ITEM_COLUMNS = ("id", "name", "price", "note", "changed_at")


def decoded(step: str) -> list[pgoutput.Message]:
    return [pgoutput.decode(bytes.fromhex(message)) for message in RECORDED[step]]


def changes(step: str) -> list[pgoutput.Message]:
    """The step's messages between its Begin and Commit, Relations left out."""
    messages = decoded(step)
    assert isinstance(messages[0], Begin) and isinstance(messages[-1], Commit), step
    return [m for m in messages[1:-1] if not isinstance(m, Relation)]


def test_every_step_is_one_transaction_with_its_commit_time_and_lsns() -> None:
    previous_end = 0
    for step in RECORDED:
        messages = decoded(step)
        begin, commit = messages[0], messages[-1]
        assert isinstance(begin, Begin) and isinstance(commit, Commit)
        assert begin.final_lsn == commit.commit_lsn
        assert commit.end_lsn > commit.commit_lsn > previous_end
        assert begin.commit_time == commit.commit_time
        # Recorded on 2026-12-08: a wrong epoch or unit would land decades away.
        assert datetime(2026, 1, 1, tzinfo=UTC) < commit.commit_time < datetime(2028, 1, 1, tzinfo=UTC)
        assert pgoutput.parse_lsn(pgoutput.format_lsn(commit.end_lsn)) == commit.end_lsn
        previous_end = commit.end_lsn


def test_relation_describes_the_table_its_key_and_types() -> None:
    item = next(m for m in decoded("insert") if isinstance(m, Relation))
    assert (item.namespace, item.name, item.replica_identity) == ("shop", "item", "d")
    assert item.columns == ITEM_COLUMNS
    assert item.key_columns == ("id",)
    # int4, text, numeric, text, timestamptz
    assert item.type_oids == (23, 25, 1700, 25, 1184)
    ledger = next(m for m in decoded("full_identity") if isinstance(m, Relation))
    assert (ledger.name, ledger.replica_identity) == ("ledger", "f")


def test_insert_values_are_postgres_text_and_null_is_none() -> None:
    (insert,) = changes("insert")
    assert isinstance(insert, Insert)
    assert insert.new == (b"1", b"Kemeja", b"149000.50", None, b"2026-12-08 01:02:03.456789+00")


def test_an_unchanged_toasted_value_is_not_sent() -> None:
    insert, update = changes("update_toast_unchanged")
    assert insert.new[3] == b"x" * 2500
    assert isinstance(update, Update)
    assert update.new == (b"2", b"Batik", b"12.00", UNCHANGED, None)
    assert update.old is None


def test_an_update_of_the_key_carries_the_old_key() -> None:
    (update,) = changes("update_key")
    assert isinstance(update, Update)
    assert update.new[0] == b"3"
    assert update.old == (b"1", None, None, None, None)


def test_a_delete_carries_the_key_or_with_full_identity_the_row() -> None:
    (delete,) = changes("delete")
    assert delete == Delete(delete.relid, (b"3", None, None, None, None))
    insert, update, delete = changes("full_identity")
    assert insert.new == (b"7", b"100")
    assert (update.new, update.old) == ((b"7", b"90"), (b"7", b"100"))
    assert delete.old == (b"7", b"90")


def test_truncate_names_every_table() -> None:
    relations = {m.relid: m.name for m in decoded("truncate") if isinstance(m, Relation)}
    (truncate,) = changes("truncate")
    assert isinstance(truncate, Truncate)
    assert [relations[r] for r in truncate.relids] == ["item", "ledger"]
    assert (truncate.cascade, truncate.restart_identity) == (False, False)


def test_messages_a_mirror_does_not_need_are_skipped() -> None:
    # 'O' origin: commit lsn, then the origin's name.
    assert pgoutput.decode(b"O" + (42).to_bytes(8, "big") + b"shop\0") is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"Z", "unknown pgoutput message kind 'Z'"),
        # An insert whose tuple is not marked 'N' (new).
        (b"I" + (1).to_bytes(4, "big") + b"K", "insert without a new tuple"),
        # A text value of an unknown kind 'x'.
        (b"I" + (1).to_bytes(4, "big") + b"N" + (1).to_bytes(2, "big") + b"x", "unknown tuple value kind"),
        # Binary values: only sent when asked for, which the stream never does.
        (b"I" + (1).to_bytes(4, "big") + b"N" + (1).to_bytes(2, "big") + b"b", "binary tuple values"),
    ],
)
def test_bytes_it_does_not_know_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        pgoutput.decode(data)
