"""The ingest DAG run by Airflow itself (`airflow dags test`) against a real warehouse database.

What a run published is read from the run's Airflow metadata database (the `airflow_env` fixture's
SQLite): each load that loaded publishes its table's asset, and `check_foreign_keys` publishes the
raw layer (`raw`, which schedules `transform`) only when at least one table changed and no load failed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import psycopg
import pytest

from apparel.ingest import RAW_LAYER, raw_asset
from apparel.sources import SOURCES
from tests.conftest import DATASET_DIR, airflow_dags_test
from tests.integration.support import append_an_order, asset_events, finished_run, task_states

pytestmark = pytest.mark.slow

LOADS = {f"load_{s.name}" for s in SOURCES}
# Each table's asset, by the load task that publishes it.
TABLE_EVENTS = {raw_asset(s).name: f"load_{s.name}" for s in SOURCES}


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


def test_ingest_dag_publishes_the_raw_layer_only_when_a_table_changed(
    airflow_env, fresh_db: str, tmp_path: Path
) -> None:
    # First run: every table loads, each publishes its asset, then the raw layer is published.
    run = airflow_dags_test(
        airflow_env, "ingest_dataset", WAREHOUSE_URL=fresh_db, DATASET_DIR=str(DATASET_DIR)
    )
    assert run.returncode == 0, run.stdout[-3000:]
    first_id, state = finished_run(run)
    assert state == "success"
    first = counts(fresh_db)
    assert first["orders"] == 7100 and first["order_details"] == 18258 and first["cities"] == 222
    assert asset_events(airflow_env, "ingest_dataset", first_id) == {
        **TABLE_EVENTS,
        RAW_LAYER.name: "check_foreign_keys",
    }

    # Unchanged files: every load is skipped, the run succeeds, and nothing is published, not the raw
    # layer either (so `transform` is not scheduled for nothing).
    again = airflow_dags_test(
        airflow_env, "ingest_dataset", WAREHOUSE_URL=fresh_db, DATASET_DIR=str(DATASET_DIR)
    )
    assert again.returncode == 0, again.stdout[-3000:]
    again_id, state = finished_run(again)
    assert state == "success"
    assert counts(fresh_db) == first
    with psycopg.connect(fresh_db) as conn:
        by_status = dict(
            conn.execute("select status, count(*) from raw._load_log group by status").fetchall()
        )
        run_ids = conn.execute("select count(distinct run_id) from raw._load_log").fetchone()[0]
    assert by_status == {"loaded": 7, "skipped": 7}
    assert run_ids == 2
    assert asset_events(airflow_env, "ingest_dataset", again_id) == {}
    assert task_states(airflow_env, "ingest_dataset", again_id) == dict.fromkeys(
        [*LOADS, "check_foreign_keys"], "skipped"
    )

    # One changed table, read from the folder given as the run's `dataset_dir` parameter, while
    # DATASET_DIR still names the committed extracts (where orders.csv did not change): only orders
    # loads, from that folder, and the raw layer is published again.
    folder = tmp_path / "later-extracts"
    shutil.copytree(DATASET_DIR, folder)
    append_an_order(folder)
    changed = airflow_dags_test(
        airflow_env,
        "ingest_dataset",
        json.dumps({"dataset_dir": str(folder)}),
        WAREHOUSE_URL=fresh_db,
        DATASET_DIR=str(DATASET_DIR),
        DATASET_ALLOWED_DIRS=str(tmp_path),  # a run's dataset_dir must lie under an allowed folder
    )
    assert changed.returncode == 0, changed.stdout[-3000:]
    changed_id, state = finished_run(changed)
    assert state == "success"
    assert counts(fresh_db) == {**first, "orders": 7101}
    with psycopg.connect(fresh_db) as conn:
        loads = conn.execute(
            "select source, status, checksum from raw._load_log where run_id = %s", (changed_id,)
        ).fetchall()
    assert {(source, status) for source, status, _ in loads} == {
        (s.name, "loaded" if s.name == "orders" else "skipped") for s in SOURCES
    }
    checksum = hashlib.sha256((folder / "orders.csv").read_bytes()).hexdigest()
    assert [c for source, _, c in loads if source == "orders"] == [checksum]
    states = task_states(airflow_env, "ingest_dataset", changed_id)
    assert states == {
        **dict.fromkeys(LOADS, "skipped"),
        "load_orders": "success",
        "check_foreign_keys": "success",
    }
    assert asset_events(airflow_env, "ingest_dataset", changed_id) == {
        "raw.orders": "load_orders",
        RAW_LAYER.name: "check_foreign_keys",
    }


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
    # The tables that loaded are published; the raw layer is not (`transform` waits for a good ingest).
    run_id, state = finished_run(run)
    assert state == "failed"
    assert task_states(airflow_env, "ingest_dataset", run_id)["check_foreign_keys"] == "failed"
    published = dict(TABLE_EVENTS)
    del published["raw.order_details"]
    assert asset_events(airflow_env, "ingest_dataset", run_id) == published


def test_ingest_dag_refuses_a_dataset_dir_outside_the_dataset_folders(airflow_env, fresh_db: str) -> None:
    """Anyone who may trigger a DAG sets `dataset_dir`: /etc is refused, with the setting that allows
    a folder, before anything is read or loaded."""
    run = airflow_dags_test(
        airflow_env,
        "ingest_dataset",
        json.dumps({"dataset_dir": "/etc"}),
        WAREHOUSE_URL=fresh_db,
        DATASET_DIR=str(DATASET_DIR),
    )
    assert run.returncode != 0
    assert "dataset_dir '/etc' is outside the folders extracts may be read from" in run.stdout
    assert "DATASET_ALLOWED_DIRS" in run.stdout
    run_id, state = finished_run(run)
    assert state == "failed"
    assert set(task_states(airflow_env, "ingest_dataset", run_id).values()) == {"failed"}
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("select to_regclass('raw._load_log')").fetchone()[0] is None
