"""The raw table's side of a load: its lock, its creation, and the merge of a new extract into it.

A raw table is never dropped or replaced once it exists. The loader COPYs an extract into a
staging table; in the same transaction this module

* serialises loads of one table (`lock_table`: `pg_advisory_xact_lock` on a key derived from the
  table's name, waiting at most `LOAD_LOCK_TIMEOUT_SECONDS`); loads of different tables stay parallel;
* turns the first load's staging table into the raw table (`finish_first_load`): metadata columns,
  `_deleted_at`, the `_loaded_at` index;
* merges every later load into the raw table by primary key with one MERGE (one join):
  - a key new to the raw table is inserted;
  - a key whose registry columns differ (`IS DISTINCT FROM`, so nulls compare as values) is updated;
  - a live key missing from the extract is soft-deleted: `_deleted_at` set, the row kept with the
    values it had (like the shop mirror's tombstones);
  - a soft-deleted key that comes back is restored: `_deleted_at` back to null, values updated.

Only those rows are written; an unchanged row is not touched (at scale 1000, rewriting millions of
identical rows would cost more than the COPY). `_loaded_at` moves for each written row, so downstream
models can select `where _loaded_at > watermark` (an index keeps that cheap). `_source_file`,
`_batch_id` and `_source_row` name the line of the file of the load that last inserted, changed or
restored the row; a soft delete leaves them as they were.

The MERGE needs PostgreSQL 18: `WHEN NOT MATCHED BY SOURCE` (17) and `RETURNING old.*` (18) let one
pass both write and count inserts, updates, deletes and restores.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from apparel.sources import RAW_SCHEMA, Source

# How long a load waits for another load of the same table to finish before it gives up.
LOAD_LOCK_TIMEOUT_SECONDS = 300.0

MIN_SERVER_VERSION = 180000


@dataclass
class MergeCounts:
    """What one load did to its raw table's rows (inserted + updated + restored + unchanged = file rows)."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    restored: int = 0
    unchanged: int = 0

    def __str__(self) -> str:
        return (
            f"{self.inserted:,} inserted, {self.updated:,} updated, {self.deleted:,} deleted,"
            f" {self.restored:,} restored, {self.unchanged:,} unchanged"
        )


class LoadLocked(Exception):
    """Another load of the same table held its lock for longer than `LOAD_LOCK_TIMEOUT_SECONDS`."""


def load_lock_key(source: Source) -> int:
    """The `pg_advisory_xact_lock` key of loads of `source`'s table (a stable 64-bit hash of its name)."""
    digest = hashlib.blake2b(f"apparel.loader {source.qualified_table}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_table(conn: psycopg.Connection, source: Source) -> None:
    """Wait (at most `LOAD_LOCK_TIMEOUT_SECONDS`) for loads of the same table. Call it first in the
    load's transaction."""
    timeout_ms = max(1, round(LOAD_LOCK_TIMEOUT_SECONDS * 1000))
    conn.execute(sql.SQL("set local lock_timeout = {}").format(sql.Literal(f"{timeout_ms}ms")))
    try:
        conn.execute("select pg_advisory_xact_lock(%s)", (load_lock_key(source),))
    except psycopg.errors.LockNotAvailable:
        raise LoadLocked(
            f"{source.qualified_table}: another load of this table is running; gave up waiting for it"
            f" after {LOAD_LOCK_TIMEOUT_SECONDS:g} s (LOAD_LOCK_TIMEOUT_SECONDS); try again when it is done"
        ) from None


def change_time(conn: psycopg.Connection) -> datetime:
    """The `_loaded_at` of the rows a load writes: the clock when the COPY is done and the merge starts.

    Not the transaction's `now()`, taken before the lock and the COPY: rows carrying a time long
    before their commit can fall behind a watermark that a reader (dbt's base models) took while the
    load ran; the base models read `source_lookback` (1 minute) back, which covers a merge, not a
    whole COPY of a large extract. Taken under the lock, it is also later than anything the load
    before it wrote.
    """
    return conn.execute("select clock_timestamp()").fetchone()[0]


def finish_first_load(
    conn: psycopg.Connection, source: Source, batch_id: uuid.UUID, loaded_at: datetime
) -> None:
    """Make the first load's COPY target (already keyed) a raw table: metadata columns and index.

    The metadata is the same for every row, so it is added after the COPY as constant defaults:
    PostgreSQL stores a non-volatile default once in the catalogue instead of in every row, so these
    columns cost no COPY time and no table bytes.
    """
    table = sql.Identifier(RAW_SCHEMA, source.table)
    # The identity numbered the rows in file order during the COPY; merges set the column themselves.
    conn.execute(sql.SQL("alter table {} alter column _source_row drop identity").format(table))
    for column, definition in [
        ("_loaded_at", sql.SQL("timestamptz not null default {}").format(sql.Literal(loaded_at))),
        ("_source_file", sql.SQL("text not null default {}").format(sql.Literal(source.file))),
        ("_batch_id", sql.SQL("uuid not null default {}").format(sql.Literal(str(batch_id)))),
    ]:
        conn.execute(
            sql.SQL("alter table {} add column {} {}").format(table, sql.Identifier(column), definition)
        )
        conn.execute(
            sql.SQL("alter table {} alter column {} drop default").format(table, sql.Identifier(column))
        )
    conn.execute(sql.SQL("alter table {} add column _deleted_at timestamptz").format(table))  # null: live
    _create_loaded_at_index(conn, source)


def _create_loaded_at_index(conn: psycopg.Connection, source: Source) -> None:
    """Downstream models select `where _loaded_at > watermark`: an index keeps that cheap at scale."""
    conn.execute(
        sql.SQL("create index if not exists {} on {} (_loaded_at)").format(
            sql.Identifier(f"{source.table}_loaded_at_idx"), sql.Identifier(RAW_SCHEMA, source.table)
        )
    )


def has_deleted_at(conn: psycopg.Connection, source: Source) -> bool:
    """False for a raw table an older loader made (it replaced tables and had no soft deletes)."""
    return conn.execute(
        "select exists (select from pg_attribute where attrelid = to_regclass(%s)"
        " and attname = '_deleted_at' and not attisdropped)",
        (source.qualified_table,),
    ).fetchone()[0]


def live(conn: psycopg.Connection, source: Source, alias: str) -> sql.Composable:
    """A filter for the live rows of `source` read as `alias` (all rows of an older loader's table)."""
    if has_deleted_at(conn, source):
        return sql.SQL("{}._deleted_at is null").format(sql.Identifier(alias))
    return sql.SQL("true")


def upgrade_raw_table(conn: psycopg.Connection, source: Source) -> None:
    """Give a raw table made by an older loader `_deleted_at` and the `_loaded_at` index.

    Looked up first: ALTER and CREATE INDEX lock the table (exclusively, and against writes) even
    when there is nothing to do, and a reader holding the table would then stall every load.
    """
    if not has_deleted_at(conn, source):
        conn.execute(
            sql.SQL("alter table {} add column if not exists _deleted_at timestamptz").format(
                sql.Identifier(RAW_SCHEMA, source.table)
            )
        )
    if conn.execute(
        "select to_regclass(%s) is null", (f"{RAW_SCHEMA}.{source.table}_loaded_at_idx",)
    ).fetchone()[0]:
        _create_loaded_at_index(conn, source)


def set_comment(conn: psycopg.Connection, source: Source) -> None:
    """The table's comment, written only when it differs (COMMENT locks the table against DDL)."""
    text = f"{source.description} Loaded from {source.file}."
    query = "select obj_description(%s::regclass, 'pg_class') is distinct from %s"
    if conn.execute(query, (source.qualified_table, text)).fetchone()[0]:
        conn.execute(
            sql.SQL("comment on table {} is {}").format(
                sql.Identifier(RAW_SCHEMA, source.table), sql.Literal(text)
            )
        )


def merge_into_raw(
    conn: psycopg.Connection,
    source: Source,
    staging: sql.Identifier,
    *,
    rows: int,
    loaded_at: datetime,
    batch_id: uuid.UUID,
) -> MergeCounts:
    """Merge `staging` (the extract's `rows` rows, keyed and checked) into the existing raw table."""
    if conn.info.server_version < MIN_SERVER_VERSION:
        raise psycopg.NotSupportedError(
            "the raw-layer merge needs PostgreSQL 18 or later;"
            f" this server is {conn.info.parameter_status('server_version')}"
        )
    columns = [sql.Identifier(c) for c in source.column_names]
    # Compared without the key: the join already made it equal.
    compared = [sql.Identifier(c) for c in source.column_names if c != source.primary_key]

    def listed(alias: str, names: list[sql.Identifier]) -> sql.Composable:
        return sql.SQL(", ").join(sql.SQL(alias + ".{}").format(n) for n in names)

    changed = (
        sql.SQL("row({}) is distinct from row({})").format(listed("r", compared), listed("s", compared))
        if compared
        else sql.SQL("false")
    )
    statement = sql.SQL(
        """
        with merged as (
            merge into {raw} r
            using {staging} s on s.{key} = r.{key}
            when matched and (r._deleted_at is not null or {changed}) then update set
                ({columns}) = row({s_columns}), _source_row = s._source_row,
                _loaded_at = %(loaded_at)s, _source_file = %(file)s, _batch_id = %(batch_id)s,
                _deleted_at = null
            when not matched by target then insert
                ({columns}, _source_row, _loaded_at, _source_file, _batch_id)
                values ({s_columns}, s._source_row, %(loaded_at)s, %(file)s, %(batch_id)s)
            when not matched by source and r._deleted_at is null then update set
                _deleted_at = %(loaded_at)s, _loaded_at = %(loaded_at)s
            returning merge_action() as action, old._deleted_at is not null as was_deleted,
                new._deleted_at is not null as is_deleted
        )
        select count(*) filter (where action = 'INSERT'),
               count(*) filter (where action = 'UPDATE' and not was_deleted and not is_deleted),
               count(*) filter (where is_deleted),
               count(*) filter (where action = 'UPDATE' and was_deleted)
        from merged
        """
    ).format(
        raw=sql.Identifier(RAW_SCHEMA, source.table),
        staging=staging,
        key=sql.Identifier(source.primary_key),
        changed=changed,
        columns=sql.SQL(", ").join(columns),
        s_columns=listed("s", columns),
    )
    inserted, updated, deleted, restored = conn.execute(
        statement, {"loaded_at": loaded_at, "file": source.file, "batch_id": batch_id}
    ).fetchone()
    return MergeCounts(inserted, updated, deleted, restored, rows - inserted - updated - restored)
