"""Every DAG file imports without errors, has no cycles, and parses fast enough for the scheduler."""

from __future__ import annotations

import time

import pytest
from airflow.dag_processing.dagbag import DagBag

from apparel.config import PROJECT_ROOT
from apparel.sources import SOURCES

DAGS_FOLDER = PROJECT_ROOT / "airflow" / "dags"


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS_FOLDER))


def test_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert "ingest_dataset" in dagbag.dags


def test_ingest_dag_has_one_task_per_source_and_publishes_assets(dagbag: DagBag) -> None:
    dag = dagbag.dags["ingest_dataset"]
    loads = {t.task_id for t in dag.tasks if t.task_id.startswith("load_")}
    assert loads == {f"load_{s.name}" for s in SOURCES}
    for source in SOURCES:
        outlets = dag.get_task(f"load_{source.name}").outlets
        assert [o.uri for o in outlets] == [source.asset_uri]
    check = dag.get_task("check_foreign_keys")
    assert check.upstream_task_ids == loads
    assert [o.name for o in check.outlets] == ["raw"]


def test_watch_dataset_triggers_the_ingest(dagbag: DagBag) -> None:
    dag = dagbag.dags["watch_dataset"]
    trigger = dag.get_task("trigger_ingest_dataset")
    assert trigger.trigger_dag_id == "ingest_dataset"
    assert trigger.upstream_task_ids == {"changed_extracts"}


def test_dag_files_parse_quickly() -> None:
    for path in DAGS_FOLDER.glob("*.py"):
        started = time.perf_counter()
        bag = DagBag(dag_folder=str(path))
        elapsed = time.perf_counter() - started
        assert bag.import_errors == {}
        assert elapsed < 2.0, f"{path.name} took {elapsed:.2f}s to parse"
