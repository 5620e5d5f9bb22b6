"""How the stream folds a batch of shop transactions into one net change per row before it applies
them (`apparel.stream._collapse`): the last state wins, a delete keeps the row it deletes as a
tombstone, an unchanged TOASTed value is taken from the row's previous state, and a truncate splits
the batch so that what came before and after it apply in order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apparel.pgoutput import UNCHANGED, format_lsn
from apparel.stream import DELETE, INSERT, TRUNCATE, UPDATE, _Change, _collapse, _Txn

COLUMNS = ("id", "status", "note")
T0 = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)


def txn(n: int, *changes: _Change) -> _Txn:
    """The n-th transaction of the batch: end LSN 0/n00, committed n seconds after T0."""
    return _Txn(end_lsn=n * 0x100, commit_time=T0 + timedelta(seconds=n), changes=list(changes))


def upsert(op: str, key: bytes, status: bytes | None, note=b"n", table: str = "shop_order") -> _Change:
    return _Change(table, op, key, COLUMNS, (key, status, note))


def delete(key: bytes, table: str = "shop_order") -> _Change:
    # The default replica identity sends the key only.
    return _Change(table, DELETE, key, COLUMNS, None)


def test_the_last_state_of_a_row_wins_with_its_own_commit() -> None:
    (segment,) = _collapse(
        [
            txn(1, upsert(INSERT, b"1", b"new"), upsert(INSERT, b"2", b"new")),
            txn(2, upsert(UPDATE, b"1", b"paid")),
            txn(3, upsert(UPDATE, b"1", b"shipped")),
        ]
    )
    assert set(segment) == {("shop_order", b"1"), ("shop_order", b"2")}
    one = segment[("shop_order", b"1")]
    assert (one.op, one.values, one.deleted) == (UPDATE, (b"1", b"shipped", b"n"), False)
    assert (one.lsn, one.commit_time) == (format_lsn(0x300), T0 + timedelta(seconds=3))
    two = segment[("shop_order", b"2")]
    assert (two.op, two.lsn) == (INSERT, format_lsn(0x100))


def test_an_unchanged_toasted_value_is_taken_from_the_rows_previous_state() -> None:
    (segment,) = _collapse(
        [
            txn(1, upsert(INSERT, b"1", b"new", note=b"long note")),
            txn(2, upsert(UPDATE, b"1", b"paid", note=UNCHANGED)),
            # Not seen in this batch: the value stays unsent, for the apply step to keep the stored one.
            txn(3, upsert(UPDATE, b"9", b"paid", note=UNCHANGED)),
        ]
    )
    assert segment[("shop_order", b"1")].values == (b"1", b"paid", b"long note")
    assert segment[("shop_order", b"9")].values == (b"9", b"paid", UNCHANGED)


def test_a_delete_keeps_the_deleted_row_as_a_tombstone_and_a_later_insert_restores_it() -> None:
    (segment,) = _collapse([txn(1, upsert(INSERT, b"1", b"new")), txn(2, delete(b"1"), delete(b"5"))])
    tombstone = segment[("shop_order", b"1")]
    assert (tombstone.op, tombstone.deleted, tombstone.values) == (DELETE, True, (b"1", b"new", b"n"))
    assert tombstone.commit_time == T0 + timedelta(seconds=2)
    # A row deleted without its state in the batch: only the key is known.
    unknown = segment[("shop_order", b"5")]
    assert (unknown.op, unknown.deleted, unknown.values) == (DELETE, True, None)

    (segment,) = _collapse([txn(1, delete(b"1")), txn(2, upsert(INSERT, b"1", b"again"))])
    restored = segment[("shop_order", b"1")]
    assert (restored.op, restored.deleted, restored.values) == (INSERT, False, (b"1", b"again", b"n"))


def test_the_same_key_in_two_tables_is_two_rows() -> None:
    (segment,) = _collapse(
        [txn(1, upsert(INSERT, b"1", b"new"), upsert(INSERT, b"1", b"new", table="shop_orderline"))]
    )
    assert set(segment) == {("shop_order", b"1"), ("shop_orderline", b"1")}


def test_a_truncate_splits_the_batch_so_that_it_applies_in_order() -> None:
    truncate = _Change("", TRUNCATE, None, ("shop_order", "shop_orderline"), None)
    before, marker, after = _collapse(
        [
            txn(1, upsert(INSERT, b"1", b"new")),
            txn(2, truncate),
            txn(3, upsert(INSERT, b"1", b"after"), upsert(INSERT, b"2", b"after")),
        ]
    )
    assert before[("shop_order", b"1")].values[1] == b"new"
    tables = ("shop_order", "shop_orderline")
    assert marker == (TRUNCATE, tables, T0 + timedelta(seconds=2), format_lsn(0x200))
    assert {k: e.values[1] for k, e in after.items()} == {
        ("shop_order", b"1"): b"after",
        ("shop_order", b"2"): b"after",
    }
    # A batch that starts with a truncate has no empty segment before it.
    assert _collapse([txn(1, truncate)])[0][0] == TRUNCATE
