"""Every DAG file imports without errors and has no cycles; each file's parse time is printed.

The parse time is a figure to watch, not a pass/fail: a wall-clock limit fails on a busy machine
for reasons that are not the DAG's (run with `-s` to see the figures).
"""

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


def test_each_dag_file_parses_on_its_own() -> None:
    paths = sorted(DAGS_FOLDER.glob("*.py"))
    assert {p.stem for p in paths} == {
        "ingest_dataset",
        "watch_dataset",
        "transform",
        "transform_full_refresh",
        "business_marts",
        "fresh_marts",
    }
    for path in paths:
        started = time.perf_counter()
        bag = DagBag(dag_folder=str(path))
        elapsed = time.perf_counter() - started
        assert bag.import_errors == {}, path.name
        assert list(bag.dags) == [path.stem], path.name
        print(f"dag parse: {path.name} {elapsed:.2f} s")
