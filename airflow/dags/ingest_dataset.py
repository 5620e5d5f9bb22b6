"""Ingest the seven extracts into the warehouse's raw schema: one task per registry source.

Thin on purpose: everything real lives in `apparel.ingest`. Each load task
publishes its raw table as an asset, so `transform` runs when data changed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import dag

from apparel.ingest import build_ingest_tasks, ingest_params


@dag(
    dag_id="ingest_dataset",
    description="Load the seven extracts (Excel, Parquet, JSON, CSV) into raw.* with COPY",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    params=ingest_params(),
    tags=["ingest", "raw"],
    doc_md=__doc__,
)
def ingest_dataset() -> None:
    build_ingest_tasks()


ingest_dataset()
