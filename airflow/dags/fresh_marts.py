"""Keep the fact and the marts fresh with the shop's streamed orders: on the stream's word, through Cosmos.

The CDC stream (`apparel stream`) mirrors the shop's tables into raw_store within a second, then
posts an asset event on raw_store to Airflow's REST API (debounced: apparel.airflow_notify). This DAG
runs on that event and rebuilds only the tables downstream of the mirror (the dimensions that read
it, and incrementally `fct_transactions` and the brief's two marts; the business marts, which
recompute from the whole history, are left to `business_marts`). One `dbt build` (Cosmos' watcher
mode) builds and tests them, so nothing it builds goes untested. One run at a time: events that
arrive during a run are queued by Airflow into one next run. A slow clock (every 15 minutes) catches
what a lost event would miss (Airflow down while the stream posted). This DAG also checks the
stream's freshness. It and `transform` share a pool so they never build the same models at once
(see apparel.transform).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task
from cosmos import DbtTaskGroup

from apparel.transform import (
    FRESH_MARTS_ASSETS,
    SHOP_MIRROR,
    cosmos_configs,
    model_built,
    report_after_the_build,
    store_freshness,
)


@dag(
    dag_id="fresh_marts",
    description="dbt: the fact and marts downstream of raw_store (the shop's stream), on its changes",
    schedule=AssetOrTimeSchedule(
        assets=[SHOP_MIRROR], timetable=CronTriggerTimetable("*/15 * * * *", timezone="UTC")
    ),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    # A run stuck behind the daily transform is ended: the next one rebuilds what it would have.
    dagrun_timeout=timedelta(minutes=15),
    tags=["dbt", "transform", "realtime"],
    doc_md=__doc__,
)
def fresh_marts() -> None:
    @task.short_circuit
    def transform_has_run() -> bool:
        """Skips the run until the daily transform has built the model once."""
        return model_built()

    dbt = DbtTaskGroup(group_id="dbt", **cosmos_configs("fresh_marts"))
    report_after_the_build(dbt)

    @task(outlets=FRESH_MARTS_ASSETS)
    def publish_marts() -> None:
        """Marks the marts as updated (asset events) once they are rebuilt."""

    has_run = transform_has_run()
    has_run >> dbt >> publish_marts()
    # Beside the models, not before them: a stale stream is reported, the marts are still rebuilt.
    has_run >> store_freshness()


fresh_marts()
