"""Change data capture: the shop's tables mirrored into the warehouse's `raw_store`, in real time.

The store's changes are read through PostgreSQL logical replication with the built-in `pgoutput`
plugin (a publication on the three shop tables and a logical replication slot, both created when
missing; no triggers, no polling). How it stays exactly-once:

* First start: the slot is created with an exported snapshot; the three tables are copied at that
  snapshot into `raw_store` in ONE warehouse transaction together with the `_stream_state` row
  (lsn = the slot's consistent point), then the stream starts from exactly that point. A crash
  during the copy leaves a slot without a state row: the next start drops the slot and copies again.
  A copy into a mirror that has rows (the slot was dropped or lost) merges: new ids inserted, changed
  or tombstoned ones updated, equal ones left untouched (their `_synced_at` too), and live rows the
  snapshot lacks tombstoned at the copy's time; the mirror never forgets a delete.
* Changes come in whole store transactions and are applied in batches (STREAM_BATCH_MS after the
  first change, or STREAM_BATCH_CHANGES changes, whichever comes first), each batch in ONE warehouse
  transaction that also moves `_stream_state.lsn` to the end of the batch's last store transaction
  and records the batch in `_stream_batches`. The server is told (flush feedback) only after that
  commit, and on restart the stream resumes from `_stream_state`, skipping any transaction that
  ends at or before it: killed at any instant, nothing is lost and nothing is applied twice.
* Inserts and updates become upserts, deletes tombstones (`_deleted_at`, the row is kept). A change
  whose data the warehouse refuses (SQLSTATE classes 22 and 23: a bad value, a constraint) goes to
  `raw_store._dead_letters` with the reason, and the rest goes on; `apparel stream replay` applies
  the dead letters again after a fix. Any other error (a privilege, a missing table, a schema change
  the mirror cannot follow) is not about a row: the stream stops applying, keeps its position,
  records the error in `raw_store._stream_errors` (the health check turns red) and retries from
  that position with backoff until the cause is fixed. A column added to a shop table is added to
  the mirror (`apparel.mirror_schema`).
* A dropped store or warehouse connection is retried with backoff, resuming from `_stream_state`.
* A slot the server invalidated (`wal_status = 'lost'`, beyond `max_slot_wal_keep_size`) is
  dropped and made again, and the tables copied again, merging (see above): no delete is lost.
"""

from __future__ import annotations

import logging
import re
import select
import signal
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
import psycopg2
import psycopg2.extras
from psycopg import sql
from psycopg.types.json import Jsonb

from apparel import pgoutput
from apparel.airflow_notify import AssetNotifier
from apparel.mirror_schema import (
    SchemaChanged,
    add_columns,
    check_relation,
    mirror_column_types,
    store_column_types,
)
from apparel.pgoutput import UNCHANGED, format_lsn, parse_lsn
from apparel.store import MIRROR_SCHEMA, STORE_TABLES, STORE_TABLES_BY_NAME, StoreTable, ensure_mirror

log = logging.getLogger(__name__)

DEFAULT_SLOT = "apparel_cdc"
DEFAULT_PUBLICATION = "apparel_cdc"
DEFAULT_BATCH_MS = 200
DEFAULT_BATCH_CHANGES = 5000
DEFAULT_WAL_WARN_MB = 1024
PROGRESS_INTERVAL_S = 10.0
MAX_BACKOFF_S = 5.0
GIVE_UP_AFTER_S = 60.0
# A stream stopped by an error that is not about a row's data retries this often at most (from 5 s):
# someone has to fix something first, and each attempt decodes the failing batch again.
MAX_HALT_BACKOFF_S = 60.0
# `apparel stream status` (and the stack's health) turn red when no stream has read the slot this long.
DEFAULT_INACTIVE_WARN_S = 300
# PostgreSQL's SQLSTATE classes of errors about the data itself: 22 data exception (a bad value),
# 23 integrity constraint violation. Only those make a change a dead letter.
DATA_ERROR_CLASSES = ("22", "23")

# Both sessions speak ISO dates and UTC, so pgoutput's text values read back the same in the warehouse.
_SESSION_OPTIONS = "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")

# Errors after which the stream reconnects and resumes from `_stream_state` instead of stopping.
_TRANSIENT = (psycopg.OperationalError, psycopg2.OperationalError, psycopg2.InterfaceError)


def is_data_error(error: BaseException) -> bool:
    """An error about one row's data (SQLSTATE class 22 or 23), as opposed to about the warehouse."""
    state = getattr(error, "sqlstate", None) or ""
    return isinstance(error, psycopg.Error) and state[:2] in DATA_ERROR_CLASSES


def _is_transient(error: BaseException) -> bool:
    # psycopg2 reports a connection lost mid-stream as a bare DatabaseError without SQLSTATE; a slot
    # still held by a predecessor's walsender at START_REPLICATION is 55006 (object in use).
    code = getattr(error, "pgcode", None)
    return (
        isinstance(error, _TRANSIENT)
        or (type(error) is psycopg2.DatabaseError and code is None)
        or (isinstance(error, psycopg2.Error) and code == "55006")
    )


@dataclass
class StreamStats:
    """What one `run_stream` call did."""

    batches: int = 0
    transactions: int = 0
    changes: int = 0
    dead_letters: int = 0
    reconnects: int = 0
    initial_rows: int = 0  # rows of the shop's tables copied at a new slot's snapshot
    initial_inserted: int = 0  # ... of which the mirror lacked
    initial_updated: int = 0  # ... of which it had other values of (or a tombstone)
    initial_unchanged: int = 0  # ... of which it had as they were (left untouched)
    initial_deleted: int = 0  # live mirror rows the snapshot lacked, tombstoned
    caught_up: bool = False
    seconds: float = 0.0
    lsn: str = ""


# ---------------------------------------------------------------------------------------------------
# The store side: publication, slot, initial copy.


def _check_identifier(kind: str, name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{kind} name {name!r} must be a lower-case SQL identifier")
    return name


def ensure_publication(store: psycopg.Connection, publication: str) -> None:
    """Create the publication for the shop's tables, or add the tables it lacks."""
    names = [t.name for t in STORE_TABLES]
    present = {
        r[0]
        for r in store.execute(
            "select tablename from pg_tables where schemaname = 'public' and tablename = any(%s)", (names,)
        )
    }
    missing = [n for n in names if n not in present]
    if missing:
        raise RuntimeError(
            f"the store database has no table {', '.join(missing)}; create it with `apparel store init`"
        )
    published = store.execute("select 1 from pg_publication where pubname = %s", (publication,)).fetchone()
    tables = sql.SQL(", ").join(sql.Identifier("public", n) for n in names)
    if not published:
        store.execute(
            sql.SQL("create publication {} for table {}").format(sql.Identifier(publication), tables)
        )
        log.info("created publication %s for %s", publication, ", ".join(names))
        return
    in_pub = {
        r[0]
        for r in store.execute(
            "select tablename from pg_publication_tables where pubname = %s and schemaname = 'public'",
            (publication,),
        )
    }
    if lacking := [n for n in names if n not in in_pub]:
        store.execute(
            sql.SQL("alter publication {} add table {}").format(
                sql.Identifier(publication),
                sql.SQL(", ").join(sql.Identifier("public", n) for n in lacking),
            )
        )
        log.info("added %s to publication %s", ", ".join(lacking), publication)


def _check_wal_level(store: psycopg.Connection) -> None:
    level = store.execute("show wal_level").fetchone()[0]
    if level != "logical":
        raise RuntimeError(
            f"the store server runs with wal_level={level}; logical replication needs wal_level=logical "
            "(set it in postgresql.conf and restart the server)"
        )


def _slot(store: psycopg.Connection, slot: str) -> tuple | None:
    return store.execute(
        "select plugin, database, active, active_pid, confirmed_flush_lsn::text, wal_status"
        " from pg_replication_slots where slot_name = %s",
        (slot,),
    ).fetchone()


def _replication_connection(store_url: str):
    return psycopg2.connect(
        store_url,
        connection_factory=psycopg2.extras.LogicalReplicationConnection,
        options=_SESSION_OPTIONS,
        application_name="apparel stream",
    )


# ---------------------------------------------------------------------------------------------------
# The warehouse side.


def _stream_state(warehouse: psycopg.Connection, slot: str) -> int | None:
    row = warehouse.execute(
        f"select lsn::text from {MIRROR_SCHEMA}._stream_state where slot_name = %s", (slot,)
    ).fetchone()
    warehouse.commit()
    return parse_lsn(row[0]) if row else None


@dataclass
class CopyCounts:
    """What an initial copy did to the mirror: the snapshot's rows, of which `inserted` (ids the
    mirror lacked), `updated` (other values, or a tombstone brought back) and `unchanged` (left
    untouched); `deleted`: live mirror rows the snapshot lacks, tombstoned."""

    rows: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0

    def add(self, other: CopyCounts) -> None:
        self.rows += other.rows
        self.inserted += other.inserted
        self.updated += other.updated
        self.deleted += other.deleted
        self.unchanged += other.unchanged

    def __str__(self) -> str:
        return (
            f"{self.inserted:,} inserted, {self.updated:,} updated, {self.deleted:,} deleted,"
            f" {self.unchanged:,} unchanged"
        )


_BOOKKEEPING = ["_lsn", "_store_committed_at", "_synced_at", "_deleted_at", "_batch_id"]


def _pipe(store: psycopg.Connection, warehouse: psycopg.Connection, source: sql.Composed, target) -> int:
    """COPY from the store straight into the warehouse, block by block; returns the rows copied."""
    wcur = warehouse.cursor()
    with store.cursor().copy(source) as copy_out, wcur.copy(target) as copy_in:
        for block in copy_out:
            copy_in.write(block)
    return wcur.rowcount


def _copy_into_empty(
    store: psycopg.Connection,
    warehouse: psycopg.Connection,
    table: StoreTable,
    columns: list[str],
    params: dict,
) -> CopyCounts:
    """First start: the snapshot straight into the (empty) mirror table, bookkeeping columns computed
    by the store's SELECT (one pass, no update after)."""
    source = sql.SQL(
        "copy (select {cols}, {lsn}::pg_lsn, null::timestamptz, {synced}::timestamptz,"
        " null::timestamptz, {batch}::bigint from {table}) to stdout"
    ).format(
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        lsn=sql.Literal(params["lsn"]),
        synced=sql.Literal(params["synced_at"]),
        batch=sql.Literal(params["batch_id"]),
        table=sql.Identifier("public", table.name),
    )
    target = sql.SQL("copy {} ({}) from stdin").format(
        sql.Identifier(MIRROR_SCHEMA, table.name),
        sql.SQL(", ").join(map(sql.Identifier, [*columns, *_BOOKKEEPING])),
    )
    rows = _pipe(store, warehouse, source, target)
    return CopyCounts(rows=rows, inserted=rows)


def _merge_copy(
    store: psycopg.Connection,
    warehouse: psycopg.Connection,
    table: StoreTable,
    columns: list[str],
    params: dict,
) -> CopyCounts:
    """A copy into a mirror that has rows (the slot was dropped or lost): the snapshot is COPYed into
    a temporary table and merged, so the mirror keeps its tombstones and rows whose values are equal
    keep their bookkeeping (`_synced_at` is the incremental models' watermark)."""
    mirror = sql.Identifier(MIRROR_SCHEMA, table.name)
    snap = sql.Identifier(f"_recopy_{table.name}")
    key = sql.Identifier(table.primary_key)
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    values = [c for c in columns if c != table.primary_key]
    warehouse.execute(
        sql.SQL("create temp table {} on commit drop as select {} from {} with no data").format(
            snap, cols, mirror
        )
    )
    rows = _pipe(
        store,
        warehouse,
        sql.SQL("copy (select {} from {}) to stdout").format(cols, sql.Identifier("public", table.name)),
        sql.SQL("copy {} ({}) from stdin").format(snap, cols),
    )
    warehouse.execute(sql.SQL("analyze {}").format(snap))
    fmt = {
        "mirror": mirror,
        "snap": snap,
        "key": key,
        "cols": cols,
        "snap_cols": sql.SQL(", ").join(sql.Identifier("s", c) for c in columns),
    }
    # Rows of the snapshot whose values differ, or that the mirror holds as a tombstone (restored).
    updated = warehouse.execute(
        sql.SQL(
            "update {mirror} m set {sets}, _lsn = %(lsn)s::pg_lsn, _store_committed_at = null,"
            " _synced_at = %(synced_at)s, _deleted_at = null, _batch_id = %(batch_id)s"
            " from {snap} s where m.{key} = s.{key}"
            " and (m._deleted_at is not null or row({mirror_vals}) is distinct from row({snap_vals}))"
        ).format(
            sets=sql.SQL(", ").join(sql.SQL("{c} = s.{c}").format(c=sql.Identifier(c)) for c in values),
            mirror_vals=sql.SQL(", ").join(sql.Identifier("m", c) for c in values),
            snap_vals=sql.SQL(", ").join(sql.Identifier("s", c) for c in values),
            **fmt,
        ),
        params,
    ).rowcount
    # Ids the mirror lacks. _store_committed_at stays null: downstream reads the shop's updated_at.
    inserted = warehouse.execute(
        sql.SQL(
            "insert into {mirror} ({cols}, _lsn, _store_committed_at, _synced_at, _deleted_at, _batch_id)"
            " select {snap_cols}, %(lsn)s::pg_lsn, null, %(synced_at)s, null, %(batch_id)s from {snap} s"
            " where not exists (select from {mirror} m where m.{key} = s.{key})"
        ).format(**fmt),
        params,
    ).rowcount
    # Live rows the snapshot lacks: deleted in the shop at or before the snapshot, whose time is the
    # best known delete time.
    deleted = warehouse.execute(
        sql.SQL(
            "update {mirror} m set _deleted_at = %(copy_time)s, _store_committed_at = %(copy_time)s,"
            " _synced_at = %(synced_at)s, _lsn = %(lsn)s::pg_lsn, _batch_id = %(batch_id)s"
            " where m._deleted_at is null and not exists (select from {snap} s where s.{key} = m.{key})"
        ).format(**fmt),
        params,
    ).rowcount
    return CopyCounts(rows, inserted, updated, deleted, rows - inserted - updated)


def _copy_initial(
    store_url: str,
    warehouse: psycopg.Connection,
    snapshot: str,
    consistent_point: int,
    slot: str,
    mirror_columns: dict[str, dict[str, str]],
) -> CopyCounts:
    """Copy the three tables at the slot's snapshot into raw_store, with the state row, in one
    transaction: straight into an empty mirror table, merged into one that has rows."""
    started = time.perf_counter()
    counts = CopyCounts()
    lsn = format_lsn(consistent_point)
    with psycopg.connect(store_url, autocommit=True, options=_SESSION_OPTIONS) as store:
        store.execute("begin isolation level repeatable read")
        store.execute(sql.SQL("set transaction snapshot {}").format(sql.Literal(snapshot)))
        # The store's clock when this transaction began, after the slot (and its snapshot) was made.
        copy_time = store.execute("select now()").fetchone()[0]
        with warehouse.transaction():
            batch_id, synced_at = warehouse.execute(
                "select nextval(pg_get_serial_sequence(%s, 'batch_id')), now()",
                (f"{MIRROR_SCHEMA}._stream_batches",),
            ).fetchone()
            params = {"lsn": lsn, "synced_at": synced_at, "batch_id": batch_id, "copy_time": copy_time}
            for table in STORE_TABLES:
                # The mirror's columns the store still has (one the store lost stays null in the mirror).
                in_store = store_column_types(store, table.name)
                columns = [c for c in mirror_columns[table.name] if c in in_store]
                has_rows = warehouse.execute(
                    sql.SQL("select exists (select from {})").format(
                        sql.Identifier(MIRROR_SCHEMA, table.name)
                    )
                ).fetchone()[0]
                copy = _merge_copy if has_rows else _copy_into_empty
                table_counts = copy(store, warehouse, table, columns, params)
                log.debug("initial copy of %s: %s", table.name, table_counts)
                counts.add(table_counts)
            _write_state(warehouse, slot, lsn)
            warehouse.execute(
                f"insert into {MIRROR_SCHEMA}._stream_batches (batch_id, slot_name, lsn, transactions,"
                " changes, committed_at, apply_ms, lag_ms) overriding system value"
                " values (%s, %s, %s, 0, %s, clock_timestamp(), %s, '{}')",
                (
                    batch_id,
                    slot,
                    lsn,
                    counts.inserted + counts.updated + counts.deleted,
                    (time.perf_counter() - started) * 1000,
                ),
            )
        store.execute("commit")
    return counts


def _write_state(warehouse: psycopg.Connection, slot: str, lsn: str) -> None:
    warehouse.execute(
        f"insert into {MIRROR_SCHEMA}._stream_state (slot_name, lsn, updated_at) values (%s, %s, now())"
        " on conflict (slot_name) do update set lsn = excluded.lsn, updated_at = excluded.updated_at",
        (slot, lsn),
    )


# ---------------------------------------------------------------------------------------------------
# Decoded changes, batches and their apply.

INSERT, UPDATE, DELETE, TRUNCATE = "insert", "update", "delete", "truncate"


@dataclass(slots=True)
class _Rel:
    """A store relation as the last Relation message described it, mapped onto its mirror."""

    table: str | None  # mirror table name; None when the relation is not one of the shop's tables
    columns: tuple[str, ...]  # the relation's columns (all of them in the mirror: see _map_relation)
    full_identity: bool
    raw_key_index: int  # index of the key in the relation's own columns


@dataclass(slots=True)
class _Change:
    table: str
    op: str
    key: bytes | None
    columns: tuple[str, ...]
    values: tuple | None  # None: a delete that carries only the key


@dataclass(slots=True)
class _Txn:
    end_lsn: int
    commit_time: datetime
    changes: list = field(default_factory=list)


@dataclass(slots=True)
class _Entry:
    """The net effect of a batch's changes on one row."""

    table: str
    op: str
    columns: tuple[str, ...]
    values: tuple | None
    key: bytes
    lsn: str
    commit_time: datetime
    deleted: bool


@dataclass(slots=True)
class _DeadLetter:
    """A change the warehouse cannot take, with why, and the end LSN of its store transaction."""

    change: _Change | _Entry
    lsn: str
    reason: str


def _text(value) -> str | None:
    if value is None:
        return None
    if value is UNCHANGED:
        return "(unchanged toast)"
    return value.decode(errors="replace")


def _collapse(txns: list[_Txn]) -> list[dict | tuple]:
    """Per (table, key) the last state, in segments separated by truncates (which apply in order)."""
    segments: list[dict | tuple] = []
    entries: dict[tuple[str, bytes], _Entry] = {}
    for txn in txns:
        lsn = format_lsn(txn.end_lsn)
        for change in txn.changes:
            if change.op == TRUNCATE:
                if entries:
                    segments.append(entries)
                    entries = {}
                segments.append((TRUNCATE, change.columns, txn.commit_time, lsn))
                continue
            k = (change.table, change.key)
            prev = entries.get(k)
            if change.op == DELETE:
                if prev is not None and prev.values is not None:
                    prev.op, prev.lsn, prev.commit_time, prev.deleted = DELETE, lsn, txn.commit_time, True
                else:
                    entries[k] = _Entry(
                        change.table,
                        DELETE,
                        change.columns,
                        change.values,
                        change.key,
                        lsn,
                        txn.commit_time,
                        True,
                    )
                continue
            values = change.values
            if (
                prev is not None
                and prev.values is not None
                and prev.columns == change.columns
                and UNCHANGED in values
            ):
                values = tuple(p if v is UNCHANGED else v for v, p in zip(values, prev.values, strict=True))
            entries[k] = _Entry(
                change.table, change.op, change.columns, values, change.key, lsn, txn.commit_time, False
            )
    if entries:
        segments.append(entries)
    return segments


def _copy_escape(value: bytes) -> bytes:
    return value.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")


def _ts(value: datetime) -> bytes:
    return value.isoformat().encode()


def _copy_data(entries: list[_Entry], present: tuple[int, ...] | None) -> bytes:
    """COPY text rows: the entries' own column values (already PostgreSQL text), then bookkeeping."""
    lines = []
    nulls = 0
    ncols = 0
    suffixes: dict[tuple[str, bool], bytes] = {}
    for e in entries:
        if e.values is None:
            values = (e.key,)
        elif present is None:
            values = e.values
        else:
            values = tuple(e.values[i] for i in present)
        suffix = suffixes.get((e.lsn, e.deleted))
        if suffix is None:
            committed = _ts(e.commit_time)
            suffix = b"\t".join((e.lsn.encode(), committed, committed if e.deleted else b"\\N"))
            suffixes[(e.lsn, e.deleted)] = suffix
        nulls += values.count(None) + (not e.deleted)
        ncols = len(values) + 3
        lines.append(b"\t".join([b"\\N" if v is None else v for v in values]) + b"\t" + suffix)
    data = b"\n".join(lines) + b"\n"
    # The store's text values almost never hold a tab, newline or backslash: check the whole buffer
    # once (each \N brings one backslash) and escape value by value only when one does.
    if (
        data.count(b"\\") == nulls
        and data.count(b"\t") == len(lines) * (ncols - 1)
        and data.count(b"\n") == len(lines)
        and b"\r" not in data
    ):
        return data
    lines = []
    for e in entries:
        values = (e.key,) if e.values is None else e.values
        if present is not None and e.values is not None:
            values = tuple(values[i] for i in present)
        committed = _ts(e.commit_time)
        cells = [b"\\N" if v is None else _copy_escape(v) for v in values]
        cells += [e.lsn.encode(), committed, committed if e.deleted else b"\\N"]
        lines.append(b"\t".join(cells))
    return b"\n".join(lines) + b"\n"


class _Applier:
    """Applies batches to the warehouse over one psycopg connection."""

    def __init__(self, conn: psycopg.Connection, slot: str):
        self.conn = conn
        self.slot = slot
        # The error that stopped an earlier attempt (`_stream_errors`) is cleared by the first batch
        # this session commits: the fault is fixed once the batch it stopped at goes through.
        self._clear_error = True
        self._sql_cache: dict[tuple[str, tuple[str, ...]], tuple[sql.Composed, sql.Composed]] = {}
        # The session's staging tables, created once and committed (a table created inside a batch's
        # savepoint would vanish with it). LIKE copies the columns and types, not the warehouse-side
        # constraints: those are checked by the upsert into the mirror, where a violation becomes a
        # dead letter.
        with conn.transaction():
            for table in STORE_TABLES:
                conn.execute(
                    sql.SQL("create temp table if not exists {} (like {}) on commit delete rows").format(
                        self._stage(table.name), sql.Identifier(MIRROR_SCHEMA, table.name)
                    )
                )

    @staticmethod
    def _stage(table: str) -> sql.Identifier:
        return sql.Identifier(f"_stage_{table}")

    def _statements(self, table: str, columns: tuple[str, ...]) -> tuple[sql.Composed, sql.Composed]:
        cached = self._sql_cache.get((table, columns))
        if cached:
            return cached
        stage = self._stage(table)
        key = STORE_TABLES_BY_NAME[table].primary_key
        staged_cols = [*columns, "_lsn", "_store_committed_at", "_deleted_at"]
        copy = sql.SQL("copy {} ({}) from stdin").format(
            stage, sql.SQL(", ").join(map(sql.Identifier, staged_cols))
        )
        target_cols = [*columns, "_lsn", "_store_committed_at", "_synced_at", "_deleted_at", "_batch_id"]
        updates = [c for c in target_cols if c != key]
        upsert = sql.SQL(
            "insert into {target} ({target_cols}) select {staged}, %(synced_at)s, _deleted_at, %(batch_id)s"
            " from {stage} on conflict ({key}) do update set {sets}"
        ).format(
            target=sql.Identifier(MIRROR_SCHEMA, table),
            target_cols=sql.SQL(", ").join(map(sql.Identifier, target_cols)),
            staged=sql.SQL(", ").join(map(sql.Identifier, [*columns, "_lsn", "_store_committed_at"])),
            stage=stage,
            key=sql.Identifier(key),
            sets=sql.SQL(", ").join(
                sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(c)) for c in updates
            ),
        )
        self._sql_cache[(table, columns)] = (copy, upsert)
        return copy, upsert

    def _apply_group(self, table: str, columns: tuple[str, ...], present, entries, params) -> None:
        copy, upsert = self._statements(table, columns)
        stage = self._stage(table)
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("truncate {}").format(stage))
            with cur.copy(copy) as cp:
                cp.write(_copy_data(entries, present))
            cur.execute(upsert, params)

    def _groups(self, entries: Iterable[_Entry]):
        """Entries grouped by table and by the columns they carry (unchanged TOAST values are left out)."""
        groups: dict[tuple, list[_Entry]] = {}
        for e in entries:
            if e.values is None:
                gkey = (e.table, (STORE_TABLES_BY_NAME[e.table].primary_key,), None)
            elif UNCHANGED in e.values:
                present = tuple(i for i, v in enumerate(e.values) if v is not UNCHANGED)
                gkey = (e.table, tuple(e.columns[i] for i in present), present)
            else:
                gkey = (e.table, e.columns, None)
            groups.setdefault(gkey, []).append(e)
        return groups

    def _apply_segment(self, entries: dict, params: dict, dead: list[_DeadLetter]) -> None:
        # Only an error about a row's data makes dead letters; any other (a privilege, a missing table,
        # a lost connection) is raised: the batch rolls back and the position stays where it was.
        for (table, columns, present), group in self._groups(entries.values()).items():
            try:
                with self.conn.transaction():
                    self._apply_group(table, columns, present, group, params)
                continue
            except psycopg.Error as e:
                if not is_data_error(e):
                    raise
                log.warning(
                    "set-based apply of %d %s rows failed (%s); retrying row by row",
                    len(group),
                    table,
                    error_reason(e),
                )
            for entry in group:
                try:
                    with self.conn.transaction():
                        self._apply_group(table, columns, present, [entry], params)
                except psycopg.Error as e:
                    if not is_data_error(e):
                        raise
                    dead.append(_DeadLetter(entry, entry.lsn, error_reason(e)))

    def add_columns(self, table: str, columns: dict[str, str]) -> None:
        """A store table's new columns into its mirror and this session's staging table (one commit)."""
        with self.conn.transaction():
            add_columns(self.conn, table, columns, self._stage(table))
        self._sql_cache.clear()

    def _truncate(self, tables: tuple[str, ...], commit_time: datetime, lsn: str, params: dict) -> None:
        for table in tables:
            self.conn.execute(
                sql.SQL(
                    "update {} set _deleted_at = %(t)s, _lsn = %(lsn)s, _store_committed_at = %(t)s,"
                    " _synced_at = %(synced_at)s, _batch_id = %(batch_id)s where _deleted_at is null"
                ).format(sql.Identifier(MIRROR_SCHEMA, table)),
                {**params, "t": commit_time, "lsn": lsn},
            )

    def apply(self, txns: list[_Txn]) -> tuple[int, list[float], int]:
        """Apply a batch in one transaction: (batch id, lag of each store transaction in ms, dead letters)."""
        started = time.perf_counter()
        segments = _collapse(txns)
        dead: list[_DeadLetter] = []
        conn = self.conn
        with conn.transaction():
            batch_id, synced_at = conn.execute(
                "select nextval(pg_get_serial_sequence(%s, 'batch_id')), now()",
                (f"{MIRROR_SCHEMA}._stream_batches",),
            ).fetchone()
            params = {"batch_id": batch_id, "synced_at": synced_at}
            for segment in segments:
                if isinstance(segment, tuple):
                    _, tables, commit_time, lsn = segment
                    self._truncate(tables, commit_time, lsn, params)
                else:
                    self._apply_segment(segment, params, dead)
            if dead:
                self._dead_letters(dead)
            if self._clear_error:
                conn.execute(f"delete from {MIRROR_SCHEMA}._stream_errors where slot_name = %s", (self.slot,))
            last = format_lsn(txns[-1].end_lsn)
            _write_state(conn, self.slot, last)
            commits = [t.commit_time for t in txns]
            now = datetime.now(UTC)
            lags = [(now - c).total_seconds() * 1000 for c in commits]
            conn.execute(
                f"insert into {MIRROR_SCHEMA}._stream_batches (batch_id, slot_name, lsn, transactions,"
                " changes, first_store_commit, last_store_commit, committed_at, apply_ms, lag_ms)"
                " overriding system value values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    batch_id,
                    self.slot,
                    last,
                    len(txns),
                    sum(len(t.changes) for t in txns),
                    min(commits),
                    max(commits),
                    now,
                    (time.perf_counter() - started) * 1000,
                    [round(x, 1) for x in lags],
                ),
            )
        self._clear_error = False
        return batch_id, lags, len(dead)

    def _dead_letters(self, dead: list[_DeadLetter]) -> None:
        for d in dead:
            c = d.change
            log.warning("dead letter: %s %s id=%s at %s: %s", c.op, c.table, _text(c.key), d.lsn, d.reason)
        with self.conn.cursor() as cur:
            cur.executemany(
                f"insert into {MIRROR_SCHEMA}._dead_letters"
                " (slot_name, lsn, table_name, operation, row_key, row_data, reason)"
                " values (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        self.slot,
                        d.lsn,
                        d.change.table,
                        d.change.op,
                        _text(d.change.key),
                        Jsonb(_row_json(d.change)),
                        d.reason,
                    )
                    for d in dead
                ],
            )


def _row_json(change: _Change | _Entry) -> dict | None:
    if change.values is None:
        return None
    return {c: _text(v) for c, v in zip(change.columns, change.values, strict=False)}


def error_reason(error: psycopg.Error) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    state = getattr(error, "sqlstate", None)
    return f"{first} (SQLSTATE {state})" if state else first


# ---------------------------------------------------------------------------------------------------
# The stream: replication connection, batching, feedback, reconnects.


class StreamError(RuntimeError):
    """The stream cannot go on; the message says why."""


class _SlotBusy(RuntimeError):
    """The slot is still held by another walsender (e.g. of a killed predecessor): retried."""


def _map_relation(rel: pgoutput.Relation, mirror_columns: dict[str, dict[str, str]]) -> _Rel:
    """The relation onto its mirror table, whose columns `_Stream._relation` has made the same."""
    table = rel.name if rel.namespace == "public" and rel.name in STORE_TABLES_BY_NAME else None
    if table is None:
        return _Rel(None, (), False, -1)
    key = STORE_TABLES_BY_NAME[table].primary_key
    if key not in rel.columns:
        raise SchemaChanged(f"store table {table} has no column {key} any more; the mirror needs one")
    missing = [c for c in rel.columns if c not in mirror_columns[table]]
    if missing:  # _relation adds them first; a column that could not be added is not silently lost
        raise SchemaChanged(f"{MIRROR_SCHEMA}.{table} has no column(s) {', '.join(missing)}")
    return _Rel(
        table=table,
        columns=tuple(rel.columns),
        full_identity=rel.replica_identity == "f",
        raw_key_index=rel.columns.index(key),
    )


class _Stream:
    def __init__(
        self,
        store_url: str,
        warehouse_url: str,
        *,
        slot: str,
        publication: str,
        until_caught_up: bool,
        stop_event: threading.Event,
        batch_ms: int,
        batch_changes: int,
        progress_interval: float,
        notifier: AssetNotifier | None,
    ):
        self.store_url = store_url
        self.warehouse_url = warehouse_url
        self.slot = _check_identifier("slot", slot)
        self.publication = _check_identifier("publication", publication)
        self.until_caught_up = until_caught_up
        self.stop_event = stop_event
        self.batch_s = batch_ms / 1000
        self.batch_changes = batch_changes
        self.progress_interval = progress_interval
        self.notifier = notifier
        self.stats = StreamStats()
        self.state_lsn = 0
        self.target_lsn: int | None = None
        self.backoff = 0.5
        self.halt_backoff = 5.0
        # A long-running stream retries for ever; a catch-up run (make run) gives up and says why.
        self.give_up_after: float | None = GIVE_UP_AFTER_S if until_caught_up else None
        self._failing_since = 0.0
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: tuple | None = None  # (future, batch) of the batch being applied
        self._window_start = time.monotonic()
        self._window_changes = 0
        self._window_lags: list[float] = []

    def run(self) -> StreamStats:
        started = time.monotonic()
        while not self.stop_event.is_set():
            try:
                if self.until_caught_up and self.target_lsn is None:
                    with psycopg.connect(self.store_url, autocommit=True) as store:
                        self.target_lsn = parse_lsn(
                            store.execute("select pg_current_wal_lsn()::text").fetchone()[0]
                        )
                    log.info("catching up to the store's WAL position %s", format_lsn(self.target_lsn))
                self._session()
                break
            except Exception as e:
                if not (_is_transient(e) or isinstance(e, _SlotBusy)):
                    if self._halt(e):
                        break
                    continue
                self._failing_since = self._failing_since or time.monotonic()
                failing = time.monotonic() - self._failing_since
                if self.give_up_after is not None and failing > self.give_up_after:
                    raise StreamError(
                        f"gave up after {self.give_up_after:.0f} s of failed attempts: {_first_line(e)}"
                    ) from e
                self.stats.reconnects += 1
                log.warning(
                    "%s; reconnecting in %.1f s, resuming from %s._stream_state",
                    _first_line(e),
                    self.backoff,
                    MIRROR_SCHEMA,
                )
                if self.stop_event.wait(self.backoff):
                    break
                self.backoff = min(self.backoff * 2, MAX_BACKOFF_S)
        self.stats.seconds = time.monotonic() - started
        self.stats.lsn = format_lsn(self.state_lsn)
        return self.stats

    def _halt(self, error: Exception) -> bool:
        """An error that is not about a row's data and that reconnecting does not cure: recorded in
        `_stream_errors` (the health turns red), the position left where it was. A catch-up run
        raises it; the long-running stream retries from its position with backoff (the fault may be
        fixed meanwhile: a privilege granted, a column dropped from the mirror) and returns True
        when stopped while waiting."""
        reason = error_reason(error) if isinstance(error, psycopg.Error) else _first_line(error)
        if isinstance(error, SchemaChanged):
            reason = str(error)
        message = f"stopped applying at {format_lsn(self.state_lsn)}: {reason}"
        self._record_error(message)
        if self.until_caught_up:
            raise StreamError(message) from error
        log.error("%s; retrying in %.0f s", message, self.halt_backoff)
        self.stats.reconnects += 1
        stopped = self.stop_event.wait(self.halt_backoff)
        self.halt_backoff = min(self.halt_backoff * 2, MAX_HALT_BACKOFF_S)
        return stopped

    def _record_error(self, message: str) -> None:
        try:
            with psycopg.connect(self.warehouse_url, autocommit=True, connect_timeout=5) as conn:
                ensure_mirror(conn)
                conn.execute(
                    f"insert into {MIRROR_SCHEMA}._stream_errors (slot_name, lsn, failed_at, error)"
                    " values (%s, %s, now(), %s) on conflict (slot_name) do update"
                    " set lsn = excluded.lsn, failed_at = excluded.failed_at, error = excluded.error",
                    (self.slot, format_lsn(self.state_lsn), message),
                )
        except psycopg.Error:  # the log line says it all the same
            log.exception("could not record the error in %s._stream_errors", MIRROR_SCHEMA)

    def _session(self) -> None:
        warehouse = psycopg.connect(
            self.warehouse_url, options=_SESSION_OPTIONS, application_name="apparel stream"
        )
        repl = store = None
        try:
            ensure_mirror(warehouse)
            # One stream per slot and warehouse: a second one waits (retries) while the first runs.
            locked = warehouse.execute(
                "select pg_try_advisory_lock(hashtext(%s))", (f"apparel stream {self.slot}",)
            ).fetchone()[0]
            warehouse.commit()
            if not locked:
                raise _SlotBusy(f"another stream on slot {self.slot} is running on this warehouse")
            mirror_columns = mirror_column_types(warehouse)
            state = _stream_state(warehouse, self.slot)
            self.state_lsn = state or 0
            # Kept open for the session: the store's column types when a Relation message arrives.
            store = psycopg.connect(self.store_url, autocommit=True)
            _check_wal_level(store)
            ensure_publication(store, self.publication)
            # Columns the shop added since: into the mirror before anything is copied or applied.
            with warehouse.transaction():
                for table in STORE_TABLES:
                    in_store = store_column_types(store, table.name)
                    new = {c: t for c, t in in_store.items() if c not in mirror_columns[table.name]}
                    add_columns(warehouse, table.name, new)
                    mirror_columns[table.name].update(new)
            slot = _slot(store, self.slot)
            if slot and slot[0] != "pgoutput":
                raise RuntimeError(f"replication slot {self.slot} uses plugin {slot[0]}, not pgoutput")
            if slot and slot[5] == "lost" and not slot[2]:
                # Invalidated by the server (beyond max_slot_wal_keep_size): its changes are gone.
                # A new slot and a merging copy bring the mirror back, deletes included.
                log.warning(
                    "slot %s was invalidated by the store's server (wal_status lost: it held back more"
                    " than max_slot_wal_keep_size); dropping it and copying the shop tables again",
                    self.slot,
                )
                store.execute("select pg_drop_replication_slot(%s)", (self.slot,))
                slot = None
            if slot and state is None:
                # The warehouse never committed the initial copy: start over with a new snapshot.
                if slot[2]:
                    raise _SlotBusy(f"replication slot {self.slot} is in use by process {slot[3]}")
                log.warning("slot %s exists but the warehouse has no copy from it: dropping it", self.slot)
                store.execute("select pg_drop_replication_slot(%s)", (self.slot,))
                slot = None
            if slot and slot[2]:
                raise _SlotBusy(f"replication slot {self.slot} is in use by process {slot[3]}")
            repl = _replication_connection(self.store_url)
            cur = repl.cursor()
            if slot is None:
                if state is not None:
                    log.warning(
                        "slot %s is gone (the warehouse was at %s): copying the shop tables again",
                        self.slot,
                        format_lsn(state),
                    )
                    # The old position means nothing to the new slot. Forgotten first (committed), so
                    # that a copy killed from here on leaves what an interrupted first copy leaves
                    # (a slot, no position: dropped and copied again at the next start), not a new
                    # slot with an old position that means nothing to it.
                    with warehouse.transaction():
                        warehouse.execute(
                            f"delete from {MIRROR_SCHEMA}._stream_state where slot_name = %s", (self.slot,)
                        )
                cur.execute(f"CREATE_REPLICATION_SLOT {self.slot} LOGICAL pgoutput EXPORT_SNAPSHOT")
                _, consistent_point, snapshot, _ = cur.fetchone()
                start = parse_lsn(consistent_point)
                t0 = time.perf_counter()
                counts = _copy_initial(self.store_url, warehouse, snapshot, start, self.slot, mirror_columns)
                self.stats.initial_rows += counts.rows
                self.stats.initial_inserted += counts.inserted
                self.stats.initial_updated += counts.updated
                self.stats.initial_unchanged += counts.unchanged
                self.stats.initial_deleted += counts.deleted
                if self.notifier and counts.inserted + counts.updated + counts.deleted:
                    self.notifier.changed()
                log.info(
                    "initial copy: %s rows at %s in %.2f s (slot %s created): %s",
                    f"{counts.rows:,}",
                    consistent_point,
                    time.perf_counter() - t0,
                    self.slot,
                    counts,
                )
            else:
                start = state
            self.state_lsn = start
            cur.start_replication(
                slot_name=self.slot,
                slot_type=psycopg2.extras.REPLICATION_LOGICAL,
                start_lsn=start,
                decode=False,
                options={"proto_version": "1", "publication_names": self.publication},
                status_interval=10,
            )
            cur.send_feedback(flush_lsn=start, force=True)
            log.info("streaming from slot %s at %s", self.slot, format_lsn(start))
            self.backoff, self._failing_since = 0.5, 0.0
            self._consume(repl, cur, _Applier(warehouse, self.slot), store, mirror_columns)
        finally:
            for conn in (repl, store, warehouse):
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # closing a broken connection may raise; it is closed either way
                        log.debug("closing a connection failed", exc_info=True)

    def _consume(
        self, repl, cur, applier: _Applier, store, mirror_columns: dict[str, dict[str, str]]
    ) -> None:
        # Batches are applied by one worker thread (the warehouse's work overlaps the decoding of the
        # next batch); at most one is in flight, so they commit in order, and the server is told from
        # this thread once its commit is known.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="apparel-apply") as pool:
            self._pool, self._inflight = pool, None
            self._consume_loop(repl, cur, applier, store, mirror_columns)

    def _relation(self, cur, applier: _Applier, store, m, mirror_columns: dict[str, dict[str, str]]) -> _Rel:
        """A Relation message (the first change of a table in a session, or one after its DDL):
        columns the store added go into the mirror first; a dropped or retyped one stops applying."""
        if m.namespace == "public" and m.name in STORE_TABLES_BY_NAME:
            in_store = store_column_types(store, m.name)
            # The relation as the message describes it (a column since dropped in the store has no
            # type left in its catalog: the message's type OID names it).
            types = {c: in_store.get(c) for c in m.columns}
            for column, oid in zip(m.columns, m.type_oids, strict=True):
                if types[column] is None:
                    types[column] = store.execute("select format_type(%s, null)", (oid,)).fetchone()[0]
            new = check_relation(m.name, types, mirror_columns[m.name])
            if new:
                # After the batch in flight (the apply thread's connection is this DDL's).
                self._collect(cur, wait=True)
                self._pool.submit(applier.add_columns, m.name, new).result()
                mirror_columns[m.name].update(new)
        return _map_relation(m, mirror_columns)

    def _consume_loop(
        self, repl, cur, applier: _Applier, store, mirror_columns: dict[str, dict[str, str]]
    ) -> None:
        rels: dict[int, _Rel] = {}
        txn: _Txn | None = None
        txn_started = 0.0
        batch: list[_Txn] = []
        pending = 0
        first_at = 0.0
        last_ping = 0.0
        decode = pgoutput.decode
        while True:
            if self.stop_event.is_set():
                # Committed store transactions are applied; a half-received one is left to the next start.
                if batch:
                    self._flush(cur, applier, batch)
                self._collect(cur, wait=True)
                log.info("stopped at %s", format_lsn(self.state_lsn))
                return
            msg = cur.read_message()
            now = time.monotonic()
            if msg is None:
                if batch and now - first_at >= self.batch_s:
                    self._flush(cur, applier, batch)
                    batch, pending = [], 0
                idle = self._collect(cur, wait=False)
                if self.target_lsn is not None and txn is None and not batch and idle:
                    if max(self.state_lsn, cur.wal_end) >= self.target_lsn:
                        self.stats.caught_up = True
                        log.info("caught up: everything before %s is applied", format_lsn(self.target_lsn))
                        return
                    if now - last_ping >= 1.0:
                        # Ask for a keepalive: its WAL end tells how far the server has looked.
                        cur.send_feedback(reply=True)
                        last_ping = now
                self._progress(now)
                wait = 0.5 if not batch else max(0.0, min(0.5, first_at + self.batch_s - now))
                if not idle:
                    wait = min(wait, 0.01)  # the batch in flight may commit any moment: confirm it soon
                select.select([repl], [], [], wait)
                continue
            payload = msg.payload
            kind = payload[0]
            if kind in (0x49, 0x55, 0x44):  # Insert, Update, Delete
                m = decode(payload)
                rel = rels[m.relid]
                if rel.table is not None:
                    self._change(txn, rel, kind, m)
            elif kind == 0x42:  # Begin
                m = decode(payload)
                txn = _Txn(0, m.commit_time)
                txn_started = now
            elif kind == 0x43:  # Commit
                m = decode(payload)
                txn.end_lsn = m.end_lsn
                txn.commit_time = m.commit_time
                if m.end_lsn > self.state_lsn:
                    if not batch:
                        first_at = txn_started
                    batch.append(txn)
                    pending += len(txn.changes)
                else:
                    log.debug("skipping transaction ending at %s: already applied", format_lsn(m.end_lsn))
                txn = None
                if batch and (pending >= self.batch_changes or now - first_at >= self.batch_s):
                    self._flush(cur, applier, batch)
                    batch, pending = [], 0
                    self._progress(now)
            elif kind == 0x52:  # Relation
                m = decode(payload)
                rels[m.relid] = self._relation(cur, applier, store, m, mirror_columns)
            elif kind == 0x54:  # Truncate
                m = decode(payload)
                tables = tuple(rels[r].table for r in m.relids if rels[r].table is not None)
                if tables:
                    txn.changes.append(_Change("", TRUNCATE, None, tables, None))

    @staticmethod
    def _change(txn: _Txn, rel: _Rel, kind: int, m) -> None:
        if kind == 0x44:
            old = m.old
            values = old if rel.full_identity else None
            txn.changes.append(_Change(rel.table, DELETE, old[rel.raw_key_index], rel.columns, values))
            return
        raw = m.new
        key = raw[rel.raw_key_index]
        if kind == 0x55 and m.old is not None and m.old[rel.raw_key_index] != key:
            # The key itself changed: the old row is gone (tombstone), the new one is upserted.
            txn.changes.append(_Change(rel.table, DELETE, m.old[rel.raw_key_index], rel.columns, None))
        txn.changes.append(_Change(rel.table, INSERT if kind == 0x49 else UPDATE, key, rel.columns, raw))

    def _flush(self, cur, applier: _Applier, batch: list[_Txn]) -> None:
        """Hand the batch to the apply thread, once the one before it has committed."""
        self._collect(cur, wait=True)
        self._inflight = (self._pool.submit(applier.apply, batch), batch)

    def _collect(self, cur, *, wait: bool) -> bool:
        """Confirm the batch in flight to the server once it has committed (re-raising its error).
        Returns True when no batch is in flight any more."""
        if self._inflight is None:
            return True
        future, batch = self._inflight
        if not wait and not future.done():
            return False
        self._inflight = None
        _, lags, dead = future.result()
        end = batch[-1].end_lsn
        self.state_lsn = end
        # Only now that the warehouse has committed may the server forget these changes.
        cur.send_feedback(flush_lsn=end, force=True)
        changes = sum(len(t.changes) for t in batch)
        self.stats.batches += 1
        self.stats.transactions += len(batch)
        self.stats.changes += changes
        self.stats.dead_letters += dead
        if self.notifier and changes:
            # Only a flag: the post runs on the notifier's thread, never in the apply path.
            self.notifier.changed()
        self._window_changes += changes
        self._window_lags.extend(lags)
        return True

    def _progress(self, now: float) -> None:
        elapsed = now - self._window_start
        if elapsed < self.progress_interval:
            return
        lags = sorted(self._window_lags)
        p95 = f"{lags[min(len(lags) - 1, int(len(lags) * 0.95))]:.0f} ms" if lags else "-"
        log.info(
            "stream: %.0f changes/s, lag p95 %s, lsn %s, %d changes in %d batches so far",
            self._window_changes / elapsed,
            p95,
            format_lsn(self.state_lsn),
            self.stats.changes,
            self.stats.batches,
        )
        self._window_start, self._window_changes, self._window_lags = now, 0, []


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def run_stream(
    store_url: str,
    warehouse_url: str,
    *,
    slot: str = DEFAULT_SLOT,
    publication: str = DEFAULT_PUBLICATION,
    until_caught_up: bool = False,
    stop_event: threading.Event | None = None,
    batch_ms: int = DEFAULT_BATCH_MS,
    batch_changes: int = DEFAULT_BATCH_CHANGES,
    progress_interval: float = PROGRESS_INTERVAL_S,
    notifier: AssetNotifier | None = None,
) -> StreamStats:
    """Mirror the store into `raw_store` until stopped (stop_event, SIGTERM, SIGINT) or, with
    `until_caught_up`, until everything the store held when it started is applied. A `notifier`
    (started) is told after each batch that changed the mirror (apparel.airflow_notify)."""
    own_signals = stop_event is None and threading.current_thread() is threading.main_thread()
    stop_event = stop_event or threading.Event()
    previous = {}
    if own_signals:

        def on_signal(signum, _frame):
            log.info("%s: finishing the current batch", signal.Signals(signum).name)
            stop_event.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        return _Stream(
            store_url,
            warehouse_url,
            slot=slot,
            publication=publication,
            until_caught_up=until_caught_up,
            stop_event=stop_event,
            batch_ms=batch_ms,
            batch_changes=batch_changes,
            progress_interval=progress_interval,
            notifier=notifier,
        ).run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------------------------------------
# `apparel stream status`


@dataclass
class StreamStatus:
    """How the stream is doing, from the slot (store) and the bookkeeping tables (warehouse)."""

    slot: str
    slot_exists: bool = False
    slot_active: bool = False
    confirmed_flush_lsn: str | None = None
    restart_lsn: str | None = None
    wal_status: str | None = None
    # WAL written since the slot's confirmed position (what the stream has yet to confirm) ...
    wal_behind_bytes: int | None = None
    # ... and since its restart position (what the server keeps on disk for it).
    wal_retained_bytes: int | None = None
    state_lsn: str | None = None
    last_batch_at: datetime | None = None
    last_batch_age_s: float | None = None
    last_batch_lag_ms: float | None = None
    changes_per_s: float = 0.0  # over the last minute
    lag_p95_ms: float | None = None  # over the last minute
    dead_letters: int = 0
    wal_warn_mb: float = DEFAULT_WAL_WARN_MB
    # Seconds since a stream last read the slot (PostgreSQL's inactive_since), None while one does.
    inactive_s: float | None = None
    inactive_warn_s: float = DEFAULT_INACTIVE_WARN_S
    # The store server's cap on the WAL a slot may hold (max_slot_wal_keep_size), MB; -1: none.
    wal_keep_mb: int | None = None
    # The error that stopped the stream from applying (`_stream_errors`), and when.
    error: str | None = None
    error_at: datetime | None = None

    @property
    def warnings(self) -> list[str]:
        """What makes the stream unhealthy, most urgent first (the stack's health shows the first)."""
        found = []
        if self.error:
            found.append(f"{self.error} (since {self.error_at:%Y-%m-%d %H:%M:%S} UTC)")
        if not self.slot_exists:
            return found + [
                f"replication slot {self.slot} does not exist: the stream has not run (or it was dropped)"
            ]
        if self.wal_status == "lost":
            found.append(
                f"slot {self.slot} is lost: the store's server removed WAL it still needed (it held back more"
                " than max_slot_wal_keep_size); the next `apparel stream` copies the shop's tables again,"
                " merging, and goes on"
            )
        elif self.wal_status == "unreserved":
            found.append(
                f"slot {self.slot} holds back more WAL than max_slot_wal_keep_size: the server will"
                " invalidate it at its next checkpoint unless a stream catches up"
            )
        behind = max(self.wal_behind_bytes or 0, self.wal_retained_bytes or 0)
        if behind > self.wal_warn_mb * 1024 * 1024:
            found.append(
                f"slot {self.slot} holds back {behind / 1024 / 1024:,.0f} MB of WAL (more than "
                f"STREAM_WAL_WARN_MB={self.wal_warn_mb:g}): "
                + ("the stream is behind" if self.slot_active else "no stream is reading it")
                + "; start `apparel stream`, or if the slot is abandoned drop it:"
                f" select pg_drop_replication_slot('{self.slot}')"
            )
        if self.inactive_s is not None and self.inactive_s > self.inactive_warn_s:
            found.append(
                f"no stream has read slot {self.slot} for {self.inactive_s:,.0f} s (more than"
                f" STREAM_INACTIVE_WARN_S={self.inactive_warn_s:g}); start `apparel stream` (`make up`"
                " runs it), or if the slot is abandoned drop it:"
                f" select pg_drop_replication_slot('{self.slot}')"
            )
        return found


def drop_slot(admin_url: str, slot: str) -> None:
    """Drop the replication slot `slot` if it exists (an abandoned slot pins its database and keeps
    its WAL): end the walsender still holding it, and retry while the walsender lets go of it."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            "select pg_terminate_backend(active_pid) from pg_replication_slots"
            " where slot_name = %s and active_pid is not null",
            (slot,),
        )
        for attempt in range(50):
            try:
                conn.execute(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots"
                    " where slot_name = %s",
                    (slot,),
                )
                return
            except psycopg.errors.ObjectInUse:
                if attempt == 49:
                    raise
                time.sleep(0.1)


def configured_status(settings, slot: str | None = None) -> StreamStatus:
    """`stream_status` of the configured store and warehouse: slot STREAM_SLOT (unless given) and
    the threshold STREAM_WAL_WARN_MB (what `apparel stream status` and the stack's health check ask)."""
    return stream_status(
        settings.stream_store_url,
        settings.stream_warehouse_url,
        slot or settings.get("STREAM_SLOT", DEFAULT_SLOT),
        wal_warn_mb=float(settings.get("STREAM_WAL_WARN_MB", str(DEFAULT_WAL_WARN_MB))),
        inactive_warn_s=float(settings.get("STREAM_INACTIVE_WARN_S", str(DEFAULT_INACTIVE_WARN_S))),
    )


def stream_status(
    store_url: str,
    warehouse_url: str,
    slot: str = DEFAULT_SLOT,
    *,
    wal_warn_mb: float = DEFAULT_WAL_WARN_MB,
    inactive_warn_s: float = DEFAULT_INACTIVE_WARN_S,
) -> StreamStatus:
    status = StreamStatus(slot=slot, wal_warn_mb=wal_warn_mb, inactive_warn_s=inactive_warn_s)
    with psycopg.connect(store_url, autocommit=True) as store:
        row = store.execute(
            "select active, confirmed_flush_lsn::text, restart_lsn::text, wal_status,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,"
            # inactive_since is PostgreSQL 17's: read so that an older store server gives null.
            " extract(epoch from now() - (to_jsonb(s) ->> 'inactive_since')::timestamptz)::float8"
            " from pg_replication_slots s where slot_name = %s",
            (slot,),
        ).fetchone()
        status.wal_keep_mb = store.execute(
            "select setting::int from pg_settings where name = 'max_slot_wal_keep_size'"
        ).fetchone()[0]
    if row:
        status.slot_exists = True
        (
            status.slot_active,
            status.confirmed_flush_lsn,
            status.restart_lsn,
            status.wal_status,
            status.wal_behind_bytes,
            status.wal_retained_bytes,
            status.inactive_s,
        ) = row
    with psycopg.connect(warehouse_url, autocommit=True) as warehouse:
        exists = warehouse.execute(
            "select to_regclass(%s)", (f"{MIRROR_SCHEMA}._stream_batches",)
        ).fetchone()[0]
        if not exists:
            return status
        state = warehouse.execute(
            f"select lsn::text from {MIRROR_SCHEMA}._stream_state where slot_name = %s", (slot,)
        ).fetchone()
        status.state_lsn = state[0] if state else None
        last = warehouse.execute(
            f"select committed_at, extract(epoch from clock_timestamp() - committed_at),"
            f" (select max(x) from unnest(lag_ms) x) from {MIRROR_SCHEMA}._stream_batches"
            " where slot_name = %s and transactions > 0 order by batch_id desc limit 1",
            (slot,),
        ).fetchone()
        if last:
            status.last_batch_at, age, status.last_batch_lag_ms = last
            status.last_batch_age_s = float(age)
        changes, p95 = warehouse.execute(
            f"select coalesce(sum(changes), 0),"
            " (select percentile_cont(0.95) within group (order by x)"
            f" from {MIRROR_SCHEMA}._stream_batches b2, unnest(b2.lag_ms) x where b2.slot_name = %(slot)s"
            " and b2.committed_at > clock_timestamp() - interval '1 minute')"
            f" from {MIRROR_SCHEMA}._stream_batches where slot_name = %(slot)s and transactions > 0"
            " and committed_at > clock_timestamp() - interval '1 minute'",
            {"slot": slot},
        ).fetchone()
        status.changes_per_s = float(changes) / 60
        status.lag_p95_ms = p95
        status.dead_letters = warehouse.execute(
            f"select count(*) from {MIRROR_SCHEMA}._dead_letters where slot_name = %s", (slot,)
        ).fetchone()[0]
        if warehouse.execute("select to_regclass(%s)", (f"{MIRROR_SCHEMA}._stream_errors",)).fetchone()[0]:
            error = warehouse.execute(
                f"select error, failed_at from {MIRROR_SCHEMA}._stream_errors where slot_name = %s", (slot,)
            ).fetchone()
            if error:
                status.error, status.error_at = error
    return status


def wal_budget(status: StreamStatus) -> str:
    """How much WAL the slot may hold on the store's server, in words."""
    if status.wal_keep_mb is None or status.wal_keep_mb < 0:
        return "without limit (the store's max_slot_wal_keep_size is -1): it can fill the store's disk"
    return (
        f"up to {status.wal_keep_mb:,} MB (the store's max_slot_wal_keep_size); beyond, the server"
        " invalidates the slot and the next start copies the shop's tables again, merging"
    )


def format_status(status: StreamStatus) -> list[str]:
    """`apparel stream status` as lines of text: warnings first."""
    lines = [f"WARNING: {w}" for w in status.warnings]
    if status.slot_exists:
        lines.append(
            f"slot {status.slot}: {'active' if status.slot_active else 'INACTIVE (no stream reading it)'},"
            f" confirmed {status.confirmed_flush_lsn}, restart {status.restart_lsn}, wal {status.wal_status}"
        )
        lines.append(
            f"WAL held back: {(status.wal_behind_bytes or 0) / 1024 / 1024:,.1f} MB since confirmed,"
            f" {(status.wal_retained_bytes or 0) / 1024 / 1024:,.1f} MB since restart"
            f" (warning above {status.wal_warn_mb:g} MB; the slot may hold {wal_budget(status)})"
        )
    lines.append(f"warehouse position: {status.state_lsn or 'none (no initial copy yet)'}")
    if status.last_batch_at is None:
        lines.append("last batch: none yet")
    else:
        lines.append(
            f"last batch: {status.last_batch_age_s:,.1f} s ago, lag {status.last_batch_lag_ms or 0:,.0f} ms"
        )
    p95 = f"{status.lag_p95_ms:,.0f} ms" if status.lag_p95_ms is not None else "-"
    lines.append(f"last minute: {status.changes_per_s:,.1f} changes/s, lag p95 {p95}")
    lines.append(f"dead letters: {status.dead_letters:,}")
    return lines
