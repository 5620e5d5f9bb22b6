"""The ingest DAG run by Airflow itself (`airflow dags test`) against a real warehouse database."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from tests.conftest import DATASET_DIR, airflow_dags_test

pytestmark = pytest.mark.slow


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        tables = [
            "provinces",
            "cities",
            "customers",
            "product_categories",
            "products",
            "orders",
            "order_details",
        ]
        return {t: conn.execute(f"select count(*) from raw.{t}").fetchone()[0] for t in tables}


def test_ingest_dag_loads_everything_then_skips_unchanged_files(airflow_env, fresh_db: str) -> None:
    run = airflow_dags_test(
        airflow_env, "ingest_dataset", WAREHOUSE_URL=fresh_db, DATASET_DIR=str(DATASET_DIR)
    )
    assert run.returncode == 0, run.stdout[-3000:]
    first = counts(fresh_db)
    assert first["orders"] == 7100 and first["order_details"] == 18258 and first["cities"] == 222

    again = airflow_dags_test(
        airflow_env, "ingest_dataset", WAREHOUSE_URL=fresh_db, DATASET_DIR=str(DATASET_DIR)
    )
    assert again.returncode == 0, again.stdout[-3000:]
    assert counts(fresh_db) == first
    with psycopg.connect(fresh_db) as conn:
        by_status = dict(
            conn.execute("select status, count(*) from raw._load_log group by status").fetchall()
        )
        run_ids = conn.execute("select count(distinct run_id) from raw._load_log").fetchone()[0]
    assert by_status == {"loaded": 7, "skipped": 7}
    assert run_ids == 2


def test_ingest_dag_fails_on_a_bad_file_and_loads_the_rest(
    airflow_env, fresh_db: str, tmp_path: Path
) -> None:
    folder = tmp_path / "extracts"
    shutil.copytree(DATASET_DIR, folder)
    lines = (folder / "order_details.csv").read_text().split("\n")
    fields = lines[4].split(",")
    fields[3] = "abc"
    lines[4] = ",".join(fields)
    (folder / "order_details.csv").write_text("\n".join(lines))

    run = airflow_dags_test(airflow_env, "ingest_dataset", WAREHOUSE_URL=fresh_db, DATASET_DIR=str(folder))
    assert run.returncode != 0
    assert 'order_details.csv, line 5, column qty: invalid input syntax for type integer: "abc"' in run.stdout
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("select to_regclass('raw.order_details')").fetchone()[0] is None
        assert conn.execute("select count(*) from raw.orders").fetchone()[0] == 7100
