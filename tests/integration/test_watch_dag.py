"""`watch_dataset` run by Airflow itself (`airflow dags test`): it triggers `ingest_dataset` when a file
in DATASET_DIR is new or changed since its last load, and does nothing when none is.

The triggered run is read from the Airflow metadata database (the `airflow_env` fixture's SQLite):
`airflow dags test` runs no scheduler, so the ingest it triggers stays queued there.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

import pytest

from apparel.loader import load_source
from apparel.sources import SOURCES, get_source
from tests.conftest import airflow_dags_test
from tests.integration.support import (
    append_an_order,
    dag_run,
    finished_run,
    run_ids,
    task_states,
    xcom,
)

pytestmark = pytest.mark.slow


def watch(airflow_env: dict[str, str], url: str, folder: Path, **settings: str) -> str:
    """One run of watch_dataset on `folder`; returns its run id."""
    run = airflow_dags_test(
        airflow_env, "watch_dataset", WAREHOUSE_URL=url, DATASET_DIR=str(folder), **settings
    )
    assert run.returncode == 0, run.stdout[-3000:]
    run_id, state = finished_run(run)
    assert state == "success", run.stdout[-3000:]
    return run_id


def assert_triggered(airflow_env: dict[str, str], run_id: str, changed: list[str]) -> None:
    assert xcom(airflow_env, "watch_dataset", run_id, "changed_extracts") == changed
    assert task_states(airflow_env, "watch_dataset", run_id) == {
        "changed_extracts": "success",
        "trigger_ingest_dataset": "success",
    }
    triggered = xcom(airflow_env, "watch_dataset", run_id, "trigger_ingest_dataset", "trigger_run_id")
    assert dag_run(airflow_env, "ingest_dataset", triggered) == {
        "state": "queued",
        "run_type": "operator_triggered",
        "triggered_by": "OPERATOR",
        "conf": {"force": False},
    }


def test_watch_dataset_triggers_the_ingest_for_a_new_or_changed_file_only(
    airflow_env, fresh_db: str, dataset_copy: Path, tmp_path: Path
) -> None:
    # Every extract but products.json loaded; products.json is not in the folder yet.
    products = tmp_path / "products.json"
    shutil.move(dataset_copy / "products.json", products)
    for source in SOURCES:
        if source.name != "products":
            assert load_source(fresh_db, source, dataset_copy).status == "loaded"

    # Nothing new or changed (a missing file is not a change): the check skips, nothing is triggered.
    ingests_before = run_ids(airflow_env, "ingest_dataset")
    quiet = watch(airflow_env, fresh_db, dataset_copy)
    assert task_states(airflow_env, "watch_dataset", quiet) == {
        "changed_extracts": "skipped",
        "trigger_ingest_dataset": "skipped",
    }
    assert xcom(airflow_env, "watch_dataset", quiet, "trigger_ingest_dataset", "trigger_run_id") is None
    assert run_ids(airflow_env, "ingest_dataset") == ingests_before

    # A new file, never loaded: the ingest is triggered.
    shutil.move(products, dataset_copy / "products.json")
    assert_triggered(airflow_env, watch(airflow_env, fresh_db, dataset_copy), ["products"])

    # Once it is loaded, a changed file: triggered again, for that file only.
    load_source(fresh_db, get_source("products"), dataset_copy)
    append_an_order(dataset_copy)
    assert_triggered(airflow_env, watch(airflow_env, fresh_db, dataset_copy), ["orders"])
    assert len(run_ids(airflow_env, "ingest_dataset") - ingests_before) == 2


def test_a_file_copied_slowly_is_loaded_once_complete(
    airflow_env, fresh_db: str, dataset_copy: Path, tmp_path: Path
) -> None:
    """orders.csv is being copied into the folder (a slow share: 200 bytes every half second) while
    watch_dataset runs: it must not trigger the ingest for it then; once the copy is done it does,
    once, and the load takes the whole file, with the checksum of what it read."""
    for source in SOURCES:
        load_source(fresh_db, source, dataset_copy)
    # The next orders.csv: one more order.
    shutil.copy(dataset_copy / "orders.csv", tmp_path / "orders.csv")
    append_an_order(tmp_path)
    data = (tmp_path / "orders.csv").read_bytes()
    target = dataset_copy / "orders.csv"
    copied = threading.Event()

    def copy_slowly() -> None:
        with target.open("wb") as out:
            pos = len(data) // 2
            out.write(data[:pos])
            out.flush()
            while not copied.is_set() and pos < len(data) - 200:
                out.write(data[pos : pos + 200])
                out.flush()
                pos += 200
                time.sleep(0.5)
            out.write(data[pos:])

    writer = threading.Thread(target=copy_slowly, daemon=True)
    writer.start()
    ingests_before = run_ids(airflow_env, "ingest_dataset")
    try:
        during = watch(airflow_env, fresh_db, dataset_copy, DATASET_STABLE_SECONDS="2")
        assert writer.is_alive(), "the copy ended before the watch looked: nothing was checked"
    finally:
        copied.set()
        writer.join(30)
    assert task_states(airflow_env, "watch_dataset", during) == {
        "changed_extracts": "skipped",
        "trigger_ingest_dataset": "skipped",
    }
    assert run_ids(airflow_env, "ingest_dataset") == ingests_before

    assert_triggered(
        airflow_env, watch(airflow_env, fresh_db, dataset_copy, DATASET_STABLE_SECONDS="2"), ["orders"]
    )
    assert len(run_ids(airflow_env, "ingest_dataset") - ingests_before) == 1
    loaded = load_source(fresh_db, get_source("orders"), dataset_copy)
    assert (loaded.status, loaded.rows, loaded.inserted) == ("loaded", data.count(b"\n") - 1, 1)
    assert loaded.checksum == hashlib.sha256(data).hexdigest()
