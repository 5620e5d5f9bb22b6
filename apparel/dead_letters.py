"""`apparel stream replay`: apply the stream's dead letters again, once their cause is fixed.

A dead letter (`raw_store._dead_letters`) is a store change whose data the warehouse refused (a
value out of range, a constraint only the warehouse has). After the fix (the constraint relaxed,
the column widened), replay writes each letter into its mirror row, oldest first, one transaction
per letter, and deletes the letter:

* a letter whose row has since taken a later change (`_lsn` at or after the letter's) is
  superseded: the later change is the row's truth, and the letter is deleted without writing;
* a letter still refused stays, with the new reason; any other error (not about the data) stops
  the replay, as it would stop the stream.

It may run while the stream runs: the write only lands when the mirror row is older than the
letter (`_lsn`), whichever of the two commits first. The row keeps the batch that met the letter
as its `_batch_id`, and `_synced_at` is the replay's time (the incremental models' watermark).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from apparel.mirror_schema import mirror_column_types
from apparel.store import MIRROR_SCHEMA, STORE_TABLES_BY_NAME, ensure_mirror
from apparel.stream import error_reason, is_data_error

log = logging.getLogger(__name__)

# How the stream writes a TOASTed value an update left unchanged into a letter: not a value to write.
_UNCHANGED_TOAST = "(unchanged toast)"


@dataclass
class ReplayResult:
    applied: int = 0
    superseded: int = 0  # a later change of the row was applied meanwhile: nothing to write
    failed: list[str] = field(default_factory=list)  # letters still refused, with the reason

    def __str__(self) -> str:
        return (
            f"{self.applied:,} applied, {self.superseded:,} superseded by a later change of their row,"
            f" {len(self.failed):,} still refused"
        )


def replay(warehouse_url: str, slot: str) -> ReplayResult:
    """Apply the slot's dead letters again (see the module's docstring)."""
    result = ReplayResult()
    with psycopg.connect(warehouse_url) as conn:
        ensure_mirror(conn)
        mirror = mirror_column_types(conn)
        letters = conn.execute(
            f"select id, lsn::text, table_name, operation, row_key, row_data, received_at"
            f" from {MIRROR_SCHEMA}._dead_letters where slot_name = %s order by id",
            (slot,),
        ).fetchall()
        conn.commit()
        for id_, lsn, table, op, key, row, received_at in letters:
            try:
                with conn.transaction():
                    written = _replay_one(conn, slot, mirror[table], lsn, table, op, key, row, received_at)
                    conn.execute(f"delete from {MIRROR_SCHEMA}._dead_letters where id = %s", (id_,))
            except psycopg.Error as e:
                if not is_data_error(e):
                    raise
                reason = error_reason(e)
                conn.execute(
                    f"update {MIRROR_SCHEMA}._dead_letters set reason = %s where id = %s", (reason, id_)
                )
                conn.commit()
                result.failed.append(f"{op} {table} id={key} at {lsn}: {reason}")
                continue
            if written:
                result.applied += 1
            else:
                result.superseded += 1
    log.info("dead letters of slot %s: %s", slot, result)
    return result


def _replay_one(
    conn: psycopg.Connection,
    slot: str,
    mirror_columns: dict[str, str],
    lsn: str,
    table: str,
    op: str,
    key: str,
    row: dict | None,
    received_at,
) -> bool:
    """Write one letter into its mirror row when the row is older than it; True when written."""
    key_column = STORE_TABLES_BY_NAME[table].primary_key
    target = sql.Identifier(MIRROR_SCHEMA, table)
    # The batch that met the letter: the first of the slot that reached its position.
    batch_id = conn.execute(
        f"select min(batch_id) from {MIRROR_SCHEMA}._stream_batches where slot_name = %s and lsn >= %s",
        (slot, lsn),
    ).fetchone()[0]
    params = {"lsn": lsn, "batch_id": batch_id, "key": key, "at": received_at}
    # Locked: the stream's upsert of this row waits for this transaction, so neither overwrites a
    # later version with an earlier one. (The insert's own guard below comes too late for a letter
    # still refused: its row is checked before the conflict is.)
    newer = conn.execute(
        sql.SQL("select _lsn >= %(lsn)s from {t} where {k} = %(key)s::{type} for update").format(
            t=target, k=sql.Identifier(key_column), type=sql.SQL(mirror_columns[key_column])
        ),
        params,
    ).fetchone()
    if newer and newer[0]:
        return False
    if op == "delete" or row is None:
        return (
            conn.execute(
                sql.SQL(
                    "update {t} set _deleted_at = %(at)s, _store_committed_at = %(at)s, _lsn = %(lsn)s,"
                    " _synced_at = now(), _batch_id = %(batch_id)s where {k} = %(key)s::{type}"
                    " and (_lsn is null or _lsn < %(lsn)s)"
                ).format(t=target, k=sql.Identifier(key_column), type=sql.SQL(mirror_columns[key_column])),
                params,
            ).rowcount
            > 0
        )
    columns = [c for c, v in row.items() if c in mirror_columns and v != _UNCHANGED_TOAST]
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    updates = [c for c in columns if c != key_column]
    statement = sql.SQL(
        "insert into {t} ({cols}, _lsn, _store_committed_at, _synced_at, _deleted_at, _batch_id)"
        " select {cols}, %(lsn)s, null, now(), null, %(batch_id)s"
        " from jsonb_populate_record(null::{t}, %(row)s)"
        " on conflict ({k}) do update set {sets}, _lsn = excluded._lsn, _store_committed_at = null,"
        " _synced_at = excluded._synced_at, _deleted_at = null, _batch_id = excluded._batch_id"
        " where {t}._lsn is null or {t}._lsn < excluded._lsn"
    ).format(
        t=target,
        cols=cols,
        k=sql.Identifier(key_column),
        sets=sql.SQL(", ").join(sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(c)) for c in updates),
    )
    return conn.execute(statement, {**params, "row": Jsonb(row)}).rowcount > 0
