"""What is in the warehouse: the raw tables with their last load."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from apparel.loader import ensure_raw_schema
from apparel.sources import LOAD_LOG_TABLE, RAW_SCHEMA, SOURCES

# Per source: the last successful load's time and duration, and the status of the latest attempt.
LAST_LOADS_SQL = sql.SQL("""
select source,
       max(finished_at) filter (where status = 'loaded') as loaded_at,
       (array_agg(seconds order by load_id desc) filter (where status = 'loaded'))[1] as seconds,
       (array_agg(status order by load_id desc))[1] as last_status
from {log}
group by source
""").format(log=sql.Identifier(RAW_SCHEMA, LOAD_LOG_TABLE))

STATUS_WORDS = {"skipped": "unchanged", None: "never loaded"}


@dataclass
class RawTable:
    table: str
    rows: int
    bytes: int
    loaded_at: str
    seconds: float
    status: str


def raw_tables(url: str) -> list[RawTable]:
    """One row per registry source: current rows and size, and its loads from the load log."""
    out = []
    with psycopg.connect(url) as conn:
        ensure_raw_schema(conn)
        last_loads = {r[0]: r[1:] for r in conn.execute(LAST_LOADS_SQL).fetchall()}
        for source in SOURCES:
            rows = size = 0
            if conn.execute("select to_regclass(%s)", (source.qualified_table,)).fetchone()[0]:
                table = sql.Identifier(RAW_SCHEMA, source.table)
                rows = conn.execute(sql.SQL("select count(*) from {}").format(table)).fetchone()[0]
                size = conn.execute(
                    "select pg_total_relation_size(%s::regclass)", (source.qualified_table,)
                ).fetchone()[0]
            loaded_at, seconds, status = last_loads.get(source.name, (None, None, None))
            out.append(
                RawTable(
                    table=source.qualified_table,
                    rows=rows,
                    bytes=size,
                    loaded_at=loaded_at.strftime("%Y-%m-%d %H:%M:%S") if loaded_at else "-",
                    seconds=float(seconds or 0),
                    status=STATUS_WORDS.get(status, status),
                )
            )
    return out


def failed_loads(url: str, run_id: str) -> list[str]:
    """The errors of the loads of one Airflow run that failed."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            sql.SQL("select error from {} where run_id = %s and status = 'failed' order by load_id").format(
                sql.Identifier(RAW_SCHEMA, LOAD_LOG_TABLE)
            ),
            (run_id,),
        ).fetchall()
    return [r[0] for r in rows]


def loads_in_run(url: str, run_id: str) -> int:
    """How many tables one Airflow run loaded (skipped and failed loads do not count)."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            sql.SQL("select count(*) from {} where run_id = %s and status = 'loaded'").format(
                sql.Identifier(RAW_SCHEMA, LOAD_LOG_TABLE)
            ),
            (run_id,),
        ).fetchone()[0]
