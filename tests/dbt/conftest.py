"""Helpers for the dbt tests: run dbt against a test database, read its results, query tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apparel.dbt_runner import run_dbt
from apparel.loader import load_source
from apparel.sources import get_source
from apparel.store import MIRROR_SCHEMA, STORE_TABLES_BY_NAME
from tests.conftest import DATASET_DIR, query, scalar  # noqa: F401 (re-exported for the dbt tests)
from tests.dbt.recompute import assert_marts_equal, sales_from_files_and_mirror


class Dbt:
    """dbt bound to one test database and one target folder (parallel runs don't share files)."""

    def __init__(self, url: str, target_path: Path):
        self.url = url
        self.target_path = target_path

    def __call__(self, *args: str) -> None:
        result = run_dbt(list(args), url=self.url, target_path=self.target_path, check=False)
        assert result.returncode == 0, f"dbt {' '.join(args)} failed (exit {result.returncode}); see output"

    def run_results(self) -> dict[str, dict[str, Any]]:
        """The last command's results by node name."""
        results = json.loads((self.target_path / "run_results.json").read_text())["results"]
        return {r["unique_id"].split(".")[-1]: r for r in results}

    def rows_affected(self, model: str) -> int:
        return self.run_results()[model]["adapter_response"]["rows_affected"]


@pytest.fixture
def dbt(loaded_db: str, tmp_path: Path) -> Dbt:
    """dbt on a fresh database holding the committed dataset in raw.*."""
    return Dbt(loaded_db, tmp_path / "dbt-target")


# The incremental models and what identifies a row of each. loaded_at (when a dbt run wrote the
# row) differs between any two builds and is left out of comparisons.
INCREMENTAL_TABLES = {
    "staging.base_customers": "customer_id",
    "staging.base_orders": "order_id",
    "staging.base_order_details": "order_detail_id",
    "core.dim_customers": "customer_id",
    "core.fct_transactions": "transaction_id",
    "marts.dm_revenue_by_months": "month_start",
    "marts.dm_perfomance_product_by_cities": "city_id, product_id",
}
# With the staging views on the base models: rebuilding a table drops the views on it (cascade).
REBUILT_FROM_SCRATCH = (*(name.split(".")[1] for name in INCREMENTAL_TABLES), "stg_customers", "stg_orders",
                        "stg_order_details")  # fmt: skip


def table_rows(url: str, table: str, order_by: str) -> list[tuple]:
    schema, name = table.split(".")
    columns = [
        row[0]
        for row in query(
            url,
            "select column_name from information_schema.columns where table_schema = %s"
            " and table_name = %s and column_name <> 'loaded_at' order by ordinal_position",
            (schema, name),
        )
    ]
    return query(url, f"select {', '.join(columns)} from {table} order by {order_by}")


def assert_equals_full_refresh(dbt: Dbt, dataset_dir: Path = DATASET_DIR) -> None:
    """Every mart as the incremental runs left it equals an independent pandas recomputation from the
    extract files in `dataset_dir` (the last ones loaded) and the shop's rows in raw_store; and the
    incremental models (the base models and the fact) equal a rebuild from scratch."""
    assert_marts_equal(dbt.url, sales_from_files_and_mirror(dataset_dir, dbt.url))
    incremental = {table: table_rows(dbt.url, table, key) for table, key in INCREMENTAL_TABLES.items()}
    dbt("run", "--full-refresh", "--select", *REBUILT_FROM_SCRATCH)
    for table, key in INCREMENTAL_TABLES.items():
        rebuilt = table_rows(dbt.url, table, key)
        assert len(incremental[table]) == len(rebuilt), f"{table}: row count differs from a full refresh"
        differing = [(a, b) for a, b in zip(incremental[table], rebuilt, strict=True) if a != b]
        assert not differing, f"{table} differs from a full refresh, e.g. {differing[:2]}"


def reload(url: str, dataset_dir: Path, *sources: str) -> None:
    """Load a later extract of `sources`, replacing the raw tables as the ingest DAG does."""
    for name in sources:
        load_source(url, get_source(name), dataset_dir, force=True)


def mirror(url: str, table: str, rows: list[dict], *, deleted: bool = False) -> None:
    """Write row versions into raw_store as the stream does: upsert by id, bookkeeping columns set
    (a tombstone when `deleted`); created_at and updated_at default to now."""
    columns = STORE_TABLES_BY_NAME[table].column_names
    names = ", ".join([*columns, "_lsn", "_store_committed_at", "_synced_at", "_deleted_at", "_batch_id"])
    values = ", ".join(f"%({c})s" for c in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in names.split(", ") if c != "id")
    deleted_at = "now()" if deleted else "null"
    with psycopg.connect(url) as conn:
        now = conn.execute("select now()").fetchone()[0]
        for row in rows:
            row = {"created_at": now, "updated_at": now, **row}
            conn.execute(
                f"insert into {MIRROR_SCHEMA}.{table} ({names})"
                f" values ({values}, '0/1', now(), now(), {deleted_at}, 1)"
                f" on conflict (id) do update set {updates}",
                row,
            )
