"""The mirror's columns against the store's: what the stream does when the shop's schema changes.

As Debezium does, an added column is additive and followed by itself: the stream adds it to the
mirror (`raw_store.<table>`, nullable, the store's type) and goes on. A dropped, renamed or
retyped column is not: the mirror keeps the old column (the models may read it), so the stream
stops applying with a message that says what to do (`SchemaChanged`), and retries until done.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from apparel.store import MIRROR_SCHEMA, STORE_TABLES

log = logging.getLogger(__name__)


class SchemaChanged(RuntimeError):
    """A store table changed in a way the mirror cannot follow by itself; the message says what to do."""


def mirror_column_types(warehouse: psycopg.Connection) -> dict[str, dict[str, str]]:
    """Per mirror table, its store columns (the bookkeeping `_` columns left out) -> type, in order."""
    rows = warehouse.execute(
        "select c.relname, a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a"
        " join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = %s and a.attnum > 0 and not a.attisdropped and a.attname not like '\\_%%'"
        " order by c.relname, a.attnum",
        (MIRROR_SCHEMA,),
    ).fetchall()
    warehouse.commit()
    columns: dict[str, dict[str, str]] = {t.name: {} for t in STORE_TABLES}
    for table, column, type_ in rows:
        if table in columns:
            columns[table][column] = type_
    return columns


def store_column_types(store: psycopg.Connection, table: str) -> dict[str, str]:
    """The store table's columns -> type as its catalog has them now (`public.<table>`)."""
    rows = store.execute(
        "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a"
        " where a.attrelid = to_regclass(%s) and a.attnum > 0 and not a.attisdropped order by a.attnum",
        (f"public.{table}",),
    ).fetchall()
    return dict(rows)


def check_relation(table: str, store_types: dict[str, str], mirror: dict[str, str]) -> dict[str, str]:
    """The store columns the mirror lacks (name -> type), to add; SchemaChanged when a column the
    mirror has is gone from the store (dropped or renamed) or has another type there."""
    mirror_table = f"{MIRROR_SCHEMA}.{table}"
    gone = [c for c in mirror if c not in store_types]
    if gone:
        column = gone[0]
        raise SchemaChanged(
            f"column {column} of store table {table} was dropped or renamed; {mirror_table} keeps it."
            f" If nothing reads it any more, drop it from the mirror (alter table {mirror_table} drop"
            f" column {column}); if it was renamed, rename it there the same way (alter table"
            f" {mirror_table} rename column {column} to <new name>). The stream retries and goes on"
            " from where it stopped."
        )
    for column, type_ in store_types.items():
        if column in mirror and mirror[column] != type_:
            raise SchemaChanged(
                f"column {column} of store table {table} changed type from {mirror[column]} to {type_};"
                f" the mirror cannot follow a type change by itself. Change it there too (alter table"
                f" {mirror_table} alter column {column} type {type_} using {column}::{type_});"
                " the stream retries and goes on from where it stopped."
            )
    return {c: t for c, t in store_types.items() if c not in mirror}


def add_columns(
    conn: psycopg.Connection, table: str, columns: dict[str, str], staging: sql.Identifier | None = None
) -> None:
    """Add the store's new columns to the mirror table (and to the stream's staging copy of it), in
    the caller's transaction. Nullable, no default: PostgreSQL only changes the catalog."""
    if not columns:
        return
    targets = [sql.Identifier(MIRROR_SCHEMA, table), *([staging] if staging else [])]
    for target in targets:
        conn.execute(
            sql.SQL("alter table {} {}").format(
                target,
                sql.SQL(", ").join(
                    # The type comes from the store's own catalog (format_type), not from a person.
                    sql.SQL("add column if not exists {} {}").format(sql.Identifier(c), sql.SQL(t))
                    for c, t in columns.items()
                ),
            )
        )
    log.warning(
        "store table %s has new column(s) %s: added to %s.%s",
        table,
        ", ".join(f"{c} {t}" for c, t in columns.items()),
        MIRROR_SCHEMA,
        table,
    )
