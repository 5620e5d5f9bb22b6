"""Watch DATASET_DIR: when an extract is new or changed since its last load, trigger `ingest_dataset`.

Every two minutes it compares each file's checksum with its last successful load (the same test
the loader uses to skip unchanged files), so a file dropped into the folder is loaded within
minutes, and an unchanged folder costs a checksum pass and a skipped task. Only files whose size
and modification time stay the same across two looks DATASET_STABLE_SECONDS apart (10 s) count: a
file still being copied into the folder is left for the next run, never loaded half-written.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task

from apparel.ingest import find_changed_extracts


@dag(
    dag_id="watch_dataset",
    description="Trigger ingest_dataset when a file in DATASET_DIR is new or changed",
    schedule="*/2 * * * *",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["ingest", "sensor"],
    doc_md=__doc__,
)
def watch_dataset() -> None:
    @task
    def changed_extracts() -> list[str]:
        return find_changed_extracts()

    trigger = TriggerDagRunOperator(
        task_id="trigger_ingest_dataset",
        trigger_dag_id="ingest_dataset",
        conf={"force": False},
    )
    changed_extracts() >> trigger


watch_dataset()
