"""Build the dbt Kimball model (staging, core, the brief's marts) through Cosmos when raw data changes.

Scheduled on the raw layer's asset, which `ingest_dataset` updates once its
loads are done and at least one raw table changed, and daily at 01:00 UTC in any
case (after the nightly ingest; the shop's streamed data moves without new extracts, and the
snapshot of the products is taken here). One `dbt build` (Cosmos'
watcher mode, see apparel.transform) does the work; each dbt model is a task
group (run, then its tests) that reports its own result. The fact and the
marts are published as assets for dashboards and downstream DAGs
(`business_marts` follows the fact).

The incremental models (the base models under staging, `dim_customers`, the
fact, the brief's two marts) build only what changed; the business marts, which
recompute the whole history, are left to `business_marts` (tag
`whole_history`). Trigger with `{"full_refresh": true}` to rebuild the
incremental models from scratch; `transform_full_refresh` does so every week,
so that a mistake in an incremental run cannot outlive the week.
"""

from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
from cosmos import DbtTaskGroup

from apparel.ingest import RAW_LAYER
from apparel.transform import FACT_ASSET, FRESH_MARTS_ASSETS, cosmos_configs, report_after_the_build


@dag(
    dag_id="transform",
    description="dbt: staging ▸ core (dims, fact) ▸ the brief's marts, incremental, via Cosmos",
    # The raw layer, updated by ingest_dataset once all its loads are done and a table changed
    # (a new orders.csv alone is enough); see apparel.ingest.RAW_LAYER.
    schedule=AssetOrTimeSchedule(
        assets=[RAW_LAYER], timetable=CronTriggerTimetable("0 1 * * *", timezone="UTC")
    ),
    # No start date: the first timed run waits for the next 01:00 (CronTriggerTimetable's
    # run_immediately=False). With one, a new stack ran the 01:00 just past at once, before its first
    # ingest had created the raw tables, and it failed; the ingest's asset event runs it instead.
    catchup=False,
    max_active_runs=1,
    tags=["dbt", "transform"],
    doc_md=__doc__,
    params={
        "full_refresh": Param(
            False, type="boolean", description="Rebuild the incremental models from scratch (--full-refresh)."
        )
    },
)
def transform() -> None:
    configs = cosmos_configs("transform")
    # Cosmos renders the template per task: the build, and a retried model's own dbt run, get
    # --full-refresh when the param is set.
    configs["operator_args"] = {**configs["operator_args"], "full_refresh": "{{ params.full_refresh }}"}
    dbt = DbtTaskGroup(group_id="dbt", **configs)
    report_after_the_build(dbt)

    @task(outlets=[FACT_ASSET, *FRESH_MARTS_ASSETS])
    def publish_marts() -> None:
        """Marks the fact and the marts as updated (asset events) once every model and test has passed."""

    dbt >> publish_marts()


transform()
