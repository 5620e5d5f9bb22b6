"""Load one extract into its raw table: COPY it into a staging table, then merge it in by key.

A raw table, once created, is never dropped or replaced: dbt's views on it, their comments and
grants stay as they are. A load runs in one transaction:

1. take the table's advisory lock (`pg_advisory_xact_lock`), so two loads of one table run one
   after the other while loads of different tables stay parallel; after
   `merge.LOAD_LOCK_TIMEOUT_SECONDS` of waiting the load fails, naming the table;
2. COPY the extract into a staging table and check it (types, rows, primary key);
3. the first load of a table makes that staging table the raw table (create, COPY, key: the fast
   path); every later one merges it into the raw table (`apparel.merge`): new keys inserted,
   changed rows updated, missing keys soft-deleted (`_deleted_at`), returning keys restored,
   unchanged rows left unwritten. `_loaded_at` moves only for the rows the load wrote.

Readers see the old rows or the new ones, never a mix; a failure rolls everything back, so nothing
already loaded is lost or half-replaced. Every attempt leaves a row in `raw._load_log`, failures
included, with the merge's counts (`inserted`, `updated`, `deleted`, `restored`, `unchanged`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from apparel import merge
from apparel.dataset_dirs import checked_extract
from apparel.merge import LoadLocked, MergeCounts
from apparel.readers import Extract, SourceError, open_extract
from apparel.sources import LOAD_LOG_TABLE, RAW_SCHEMA, SOURCES, Source
from apparel.store import ensure_mirror

log = logging.getLogger(__name__)

STAGING_PREFIX = "_loading_"

MERGE_COUNTS = ("inserted", "updated", "deleted", "restored", "unchanged")

LOAD_LOG_DDL = f"""
create schema if not exists {RAW_SCHEMA};
create table if not exists {RAW_SCHEMA}.{LOAD_LOG_TABLE} (
    load_id     bigint generated always as identity primary key,
    batch_id    uuid not null,
    source      text not null,
    file        text not null,
    checksum    text,
    rows        bigint,
    bytes       bigint,
    seconds     numeric(10, 3),
    status      text not null check (status in ('loaded', 'skipped', 'failed')),
    error       text,
    warnings    text,
    run_id      text,
    started_at  timestamptz not null,
    finished_at timestamptz not null default now()
);
-- The merge's counts; a log made by an older loader gets them here (null on its old rows).
alter table {RAW_SCHEMA}.{LOAD_LOG_TABLE}
    {", ".join(f"add column if not exists {c} bigint" for c in MERGE_COUNTS)};
"""


@dataclass
class LoadResult:
    source: str
    file: str
    status: str  # loaded | skipped | failed
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    checksum: str = ""
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    # What the load did to the raw table's rows (see `apparel.merge.MergeCounts`); 0 unless loaded.
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    restored: int = 0
    unchanged: int = 0


def file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def ensure_raw_schema(conn: psycopg.Connection) -> None:
    with conn.transaction():
        # Looked up first: the ALTER would lock the log exclusively on every load, behind any reader.
        ready = conn.execute(
            "select count(*) = %s from pg_attribute where attrelid = to_regclass(%s)"
            " and attname = any(%s) and not attisdropped",
            (len(MERGE_COUNTS), f"{RAW_SCHEMA}.{LOAD_LOG_TABLE}", list(MERGE_COUNTS)),
        ).fetchone()[0]
        if not ready:
            # Parallel loads of a new warehouse would otherwise collide creating the same table.
            conn.execute("select pg_advisory_xact_lock(hashtext('apparel raw ddl'))")
            conn.execute(LOAD_LOG_DDL)
        # The shop's mirror too, empty when the stream never ran, so dbt always finds its sources.
        ensure_mirror(conn)


def load_source(
    url: str,
    source: Source,
    dataset_dir: Path,
    *,
    force: bool = False,
    run_id: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> LoadResult:
    """Load `source` from `dataset_dir` into `raw.<table>`. Raises LoadFailed (logged) on failure, and
    UnsafePath for an extract that is not a regular file inside `dataset_dir`."""
    path = checked_extract(dataset_dir, source.file)
    batch_id = uuid.uuid4()
    started = time.monotonic()
    with psycopg.connect(url) as conn:
        ensure_raw_schema(conn)
        started_at = conn.execute("select now()").fetchone()[0]
        conn.commit()
        result = LoadResult(source.name, source.file, "failed")
        try:
            # Whether to load at all; the checksum recorded is the load's own (below).
            result.checksum = file_checksum(path) if path.exists() and not force else ""
            if not force and _unchanged(conn, source, result.checksum):
                result.status = "skipped"
                log.info(
                    "%s: unchanged since its last load (sha256 %s), skipped",
                    source.file,
                    result.checksum[:12],
                )
            else:
                conn.commit()  # the load's transaction is a new one, begun by its lock
                extract = open_extract(source, path)
                result.warnings = check_columns(source, extract)
                result.rows, counts = _copy_and_merge(conn, source, extract, batch_id, on_progress)
                # Of the bytes the COPY read: a file rewritten since the check above is recorded as loaded.
                result.checksum = extract.sha256
                vars(result).update(vars(counts))
                log.info("%s: %s", source.file, counts)
                result.bytes = _table_bytes(conn, source)
                result.status = "loaded"
        except (SourceError, LoadLocked) as e:
            conn.rollback()
            result.error = str(e)
        except psycopg.Error as e:
            conn.rollback()
            result.error = str(e).strip()
        result.seconds = time.monotonic() - started
        _write_log(conn, result, batch_id, run_id, started_at)
        conn.commit()
    if result.status == "failed":
        raise LoadFailed(result)
    return result


class LoadFailed(Exception):
    """A load that failed; its message is the one error a person needs to read."""

    def __init__(self, result: LoadResult):
        self.result = result
        super().__init__(result.error)


def _unchanged(conn: psycopg.Connection, source: Source, checksum: str) -> bool:
    row = conn.execute(
        sql.SQL(
            "select 1 from {log} where source = %s and status = 'loaded' and checksum = %s"
            " and load_id = (select max(load_id) from {log} where source = %s and status = 'loaded')"
            # A table made by an older loader (no `_deleted_at`) is reloaded once, which upgrades it.
            " and exists (select from pg_attribute where attrelid = to_regclass(%s)"
            " and attname = '_deleted_at' and not attisdropped)"
        ).format(log=sql.Identifier(RAW_SCHEMA, LOAD_LOG_TABLE)),
        (source.name, checksum, source.name, source.qualified_table),
    ).fetchone()
    return row is not None


def changed_sources(
    url: str, dataset_dir: Path, sources: tuple[Source, ...] = SOURCES, *, stable_seconds: float = 0
) -> list[str]:
    """Sources whose file differs from its last successful load (new, changed, or never loaded).

    The same test `load_source` uses to skip a file, so a watcher that triggers the ingest on this
    list triggers it exactly when the ingest would load something. Missing files are not changes.
    With `stable_seconds`, only files whose size and modification time did not move between two
    looks that far apart count: a file still being copied into the folder waits for the next round.
    """
    present = [s for s in sources if (dataset_dir / s.file).exists()]
    if stable_seconds > 0:
        first = {s.name: _file_state(dataset_dir / s.file) for s in present}
        time.sleep(stable_seconds)
        moving = [s for s in present if _file_state(dataset_dir / s.file) != first[s.name]]
        for source in moving:
            log.info("%s is still being written (size or mtime moved): left for the next look", source.file)
        present = [s for s in present if s not in moving]
    with psycopg.connect(url) as conn:
        ensure_raw_schema(conn)
        return [
            source.name
            for source in present
            if not _unchanged(conn, source, file_checksum(dataset_dir / source.file))
        ]


def _file_state(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


def check_columns(source: Source, extract: Extract) -> list[str]:
    """Missing registry columns fail the load; unknown extra columns are ignored with a warning.

    Ignoring extras keeps the raw tables' contract stable when an upstream export adds a column;
    the warning (task log and `_load_log.warnings`) tells the team to extend the registry.
    """
    found = extract.file_columns
    duplicated = sorted({c for c in found if found.count(c) > 1})
    if duplicated:
        raise SourceError(
            source.file, f"column(s) appear more than once in the header: {', '.join(duplicated)}"
        )
    missing = [c for c in source.column_names if c not in found]
    extras = [c for c in found if c not in source.column_names]
    if missing:
        hint = f"; unexpected column(s): {', '.join(extras)}" if extras else ""
        raise SourceError(
            source.file, f"missing column(s): {', '.join(missing)} (found: {', '.join(found)}){hint}"
        )
    if extras:
        message = f"ignored unknown column(s) not in the registry: {', '.join(extras)}"
        log.warning("%s: %s", source.file, message)
        return [message]
    return []


def _copy_and_merge(
    conn: psycopg.Connection,
    source: Source,
    extract: Extract,
    batch_id: uuid.UUID,
    on_progress: Callable[[int], None] | None,
) -> tuple[int, MergeCounts]:
    """COPY the extract into a staging table and fold it into the raw table; returns (rows, counts)."""
    table = sql.Identifier(RAW_SCHEMA, source.table)
    # Extra CSV columns must still be read by COPY; they land in throw-away columns dropped after it.
    copy_columns = [c if c in source.column_names else f"_extra_{i}" for i, c in enumerate(extract.columns)]
    extra_columns = [c for c in copy_columns if c not in source.column_names]

    with conn.transaction():
        merge.lock_table(conn, source)
        # Checked under the lock: a load that waited finds the table the one before it created.
        first_load = not _exists(conn, source.qualified_table)
        # The first load COPYs straight into the new raw table; a later one into a temporary table
        # (no WAL, private to this session), dropped once merged.
        staging_name = source.table if first_load else STAGING_PREFIX + source.table
        staging = table if first_load else sql.Identifier("pg_temp", staging_name)
        conn.execute(create_table_sql(source, staging, extra_columns))
        rows = _copy(conn, source, extract, staging, copy_columns, on_progress)
        for column in extra_columns:
            conn.execute(sql.SQL("alter table {} drop column {}").format(staging, sql.Identifier(column)))
        _add_primary_key(conn, source, extract, staging, f"{staging_name}_pkey")
        loaded_at = merge.change_time(conn)
        if first_load:
            merge.finish_first_load(conn, source, batch_id, loaded_at)
            counts = MergeCounts(inserted=rows)
        else:
            merge.upgrade_raw_table(conn, source)
            conn.execute(sql.SQL("analyze {}").format(staging))  # the planner's row estimates for the join
            counts = merge.merge_into_raw(
                conn, source, staging, rows=rows, loaded_at=loaded_at, batch_id=batch_id
            )
            conn.execute(sql.SQL("drop table {}").format(staging))
        merge.set_comment(conn, source)
    if counts.inserted or counts.updated or counts.deleted or counts.restored:
        conn.execute(sql.SQL("analyze {}").format(table))
    return rows, counts


def _copy(
    conn: psycopg.Connection,
    source: Source,
    extract: Extract,
    staging: sql.Identifier,
    copy_columns: list[str],
    on_progress: Callable[[int], None] | None,
) -> int:
    copy_sql = sql.SQL("copy {} ({}) from stdin with (format csv)").format(
        staging, sql.SQL(", ").join(map(sql.Identifier, copy_columns))
    )
    sent = 0
    try:
        with conn.cursor() as cur:
            with cur.copy(copy_sql) as copy:
                for chunk in extract.chunks:
                    copy.write(chunk)
                    sent += len(chunk)
                    if on_progress:
                        on_progress(sent)
            rows = cur.rowcount
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as e:  # a bad value; NULL in the key
        raise copy_error(source, extract, e) from None
    if rows == 0:
        raise SourceError(source.file, "no data rows (the file has a header only)")
    return rows


def create_table_sql(source: Source, staging: sql.Identifier, extra_columns: list[str]) -> sql.Composed:
    columns = [
        sql.SQL("{} {}{}").format(
            sql.Identifier(c.name),
            sql.SQL(c.pg_type),
            sql.SQL(" not null" if c.name == source.primary_key else ""),
        )
        for c in source.columns
    ]
    columns += [sql.SQL("{} text").format(sql.Identifier(c)) for c in extra_columns]
    # COPY inserts in file order, so an identity numbers the rows as they stand in the file
    # (a large cache: one sequence round trip per 100,000 rows instead of per row).
    columns.append(sql.SQL("_source_row bigint not null generated always as identity (cache 100000)"))
    return sql.SQL("create table {} ({})").format(staging, sql.SQL(", ").join(columns))


def _add_primary_key(
    conn: psycopg.Connection, source: Source, extract: Extract, staging: sql.Identifier, name: str
) -> None:
    """Add the key after the COPY (one bulk index build); on a duplicate, name its rows."""
    key = sql.Identifier(source.primary_key)
    try:
        with (
            conn.transaction()
        ):  # a savepoint: the duplicate search below still runs in the load's transaction
            conn.execute(
                sql.SQL("alter table {} add constraint {} primary key ({})").format(
                    staging, sql.Identifier(name), key
                )
            )
    except psycopg.errors.UniqueViolation:
        value, rows = conn.execute(
            sql.SQL(
                "select {key}::text, array_agg(_source_row order by _source_row) from {t}"
                " group by {key} having count(*) > 1 order by min(_source_row) limit 1"
            ).format(key=key, t=staging)
        ).fetchone()
        raise SourceError(
            source.file,
            f"duplicate primary key {source.primary_key}={value}, also at {_label_rows(extract, rows[1:])}",
            row=_label_rows(extract, rows[:1]),
            column=source.primary_key,
        ) from None


def _label_rows(extract: Extract, rows: list[int]) -> str:
    """The reader's own labels (CSV line, sheet row, Parquet row, JSON key) of the first few rows."""
    return ", ".join(extract.row_label(r) for r in rows[:5])


def copy_error(source: Source, extract: Extract, error: psycopg.Error) -> SourceError:
    """Turn PostgreSQL's 'COPY t, line N, column c: "v"' context into the file's own row and column."""
    context = error.diag.context or ""
    message = error.diag.message_primary or str(error)
    row = column = None
    match = re.search(r"COPY \S+, line (\d+)(?:, column (\w+))?", context)
    if match:
        row = extract.row_label(int(match.group(1)))
        column = match.group(2)
    if column is None and error.diag.column_name:
        column = error.diag.column_name
    if column and column.startswith("_extra_"):
        column = extract.columns[int(column.removeprefix("_extra_"))]
    return SourceError(source.file, message, row=row, column=column)


def _exists(conn: psycopg.Connection, qualified: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (qualified,)).fetchone()[0]


def _table_bytes(conn: psycopg.Connection, source: Source) -> int:
    query = "select pg_total_relation_size(%s::regclass)"
    return conn.execute(query, (source.qualified_table,)).fetchone()[0]


def _write_log(
    conn: psycopg.Connection, result: LoadResult, batch_id: uuid.UUID, run_id: str | None, started_at
) -> None:
    # The counts only for a load that merged: a skip or a failure wrote no row.
    counts = [getattr(result, c) if result.status == "loaded" else None for c in MERGE_COUNTS]
    conn.execute(
        sql.SQL(
            "insert into {} (batch_id, source, file, checksum, rows, bytes, seconds, status, error, warnings,"
            " run_id, started_at, {}) values ({})"
        ).format(
            sql.Identifier(RAW_SCHEMA, LOAD_LOG_TABLE),
            sql.SQL(", ").join(map(sql.Identifier, MERGE_COUNTS)),
            sql.SQL(", ").join([sql.Placeholder()] * (12 + len(MERGE_COUNTS))),
        ),
        (
            batch_id,
            result.source,
            result.file,
            result.checksum or None,
            result.rows,
            result.bytes,
            round(result.seconds, 3),
            result.status,
            result.error,
            "; ".join(result.warnings) or None,
            run_id,
            started_at,
            *counts,
        ),
    )


@dataclass
class Orphans:
    source: str
    column: str
    parent: str
    count: int
    examples: list[str]

    def __str__(self) -> str:
        return (
            f"{self.count} row(s) of raw.{self.source} have a {self.column} not in raw.{self.parent}"
            f" (e.g. {', '.join(self.examples)})"
        )


def check_foreign_keys(url: str, sources: tuple[Source, ...] = SOURCES) -> list[Orphans]:
    """Report rows whose foreign key has no parent; they are kept, not dropped, and noted in the load log."""
    found: list[Orphans] = []
    with psycopg.connect(url) as conn:
        for source in sources:
            for fk in source.foreign_keys:
                parent = next(s for s in SOURCES if s.name == fk.ref_table)
                if not (_exists(conn, source.qualified_table) and _exists(conn, parent.qualified_table)):
                    continue
                # Live rows only, as downstream models read them: a soft-deleted parent is missing.
                count, examples = conn.execute(
                    sql.SQL(
                        "select count(*), (array_agg(distinct c.{col}::text))[1:5] from {child} c"
                        " where c.{col} is not null and {child_live} and not exists"
                        " (select 1 from {parent} p where p.{ref} = c.{col} and {parent_live})"
                    ).format(
                        child_live=merge.live(conn, source, "c"),
                        parent_live=merge.live(conn, parent, "p"),
                        col=sql.Identifier(fk.column),
                        child=sql.Identifier(RAW_SCHEMA, source.table),
                        parent=sql.Identifier(RAW_SCHEMA, parent.table),
                        ref=sql.Identifier(fk.ref_column),
                    )
                ).fetchone()
                if count:
                    found.append(Orphans(source.name, fk.column, parent.name, count, examples))
        for orphans in found:
            conn.execute(
                sql.SQL(
                    "update {log} set warnings = concat_ws('; ', warnings, %s::text) where load_id ="
                    " (select max(load_id) from {log} where source = %s and status = 'loaded')"
                ).format(log=sql.Identifier(RAW_SCHEMA, LOAD_LOG_TABLE)),
                (f"orphans: {orphans}", orphans.source),
            )
    return found
