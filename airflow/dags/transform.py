"""Build the dbt Kimball model (staging, core, marts) through Cosmos when raw data changes.

Scheduled on the raw layer's asset, which `ingest_dataset` updates once its
loads are done and at least one raw table changed. Each dbt model is a task
group (run, then its tests); the marts are published as assets for dashboards
and downstream DAGs.

The incremental models (the base models under staging, the fact) build only
what changed. Trigger with `{"full_refresh": true}` to rebuild them from
scratch; `transform_full_refresh` does so every week, so that a mistake in an
incremental run cannot outlive the week.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag, task
from cosmos import DbtTaskGroup

from apparel.ingest import RAW_LAYER
from apparel.transform import MARTS_ASSETS, cosmos_configs


@dag(
    dag_id="transform",
    description="dbt: staging ▸ core (dims, fact) ▸ marts, via Cosmos",
    # The raw layer, updated by ingest_dataset once all its loads are done and a table changed
    # (a new orders.csv alone is enough); see apparel.ingest.RAW_LAYER.
    schedule=[RAW_LAYER],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
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
    configs = cosmos_configs()
    # Cosmos renders the template per task: dbt run/build/seed get --full-refresh when the param is set.
    configs["operator_args"] = {**configs["operator_args"], "full_refresh": "{{ params.full_refresh }}"}
    dbt = DbtTaskGroup(group_id="dbt", **configs)

    @task(outlets=MARTS_ASSETS)
    def publish_marts() -> None:
        """Marks the marts as updated (asset events) once every model and test has passed."""

    dbt >> publish_marts()


transform()
