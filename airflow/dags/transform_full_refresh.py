"""Weekly safety net for the incremental models: `transform` with `{"full_refresh": true}`.

The base models and the fact build only what changed since their last run. If an incremental run
ever misses a change (a load that committed long after it started, a dimension member deleted from
an extract), this rebuild from scratch repairs it within a week. Run it by hand the same way
(trigger `transform` with that conf) after changing a model's logic.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag


@dag(
    dag_id="transform_full_refresh",
    description="weekly: transform with full_refresh, the safety net of the incremental models",
    schedule="0 2 * * 0",  # Sundays at 02:00 UTC (09:00 in Jakarta), a quiet hour for the shop's team
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dbt", "transform"],
    doc_md=__doc__,
)
def transform_full_refresh() -> None:
    TriggerDagRunOperator(
        task_id="trigger_transform",
        trigger_dag_id="transform",
        conf={"full_refresh": True},
        wait_for_completion=True,
        poke_interval=30,
    )


transform_full_refresh()
