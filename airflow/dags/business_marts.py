"""Rebuild the business marts (customers and markets) through Cosmos after `transform`.

Segments, cohorts, product affinity and market reach rank, pair and group every customer, order
and city of the whole history, so each build recomputes them from the whole fact (tens of seconds
at scale 100). They follow the fact's asset, which `transform` updates after each ingest, in a DAG
of their own: the incremental `transform` (and the brief's marts) does not wait for them, and
`fresh_marts`, on the shop's changes, leaves them out. One `dbt build` (Cosmos' watcher mode) does
the work; each model is a task group (run, then its tests) that reports its own result.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import dag, task
from cosmos import DbtTaskGroup

from apparel.transform import BUSINESS_MARTS_ASSETS, FACT_ASSET, cosmos_configs, report_after_the_build


@dag(
    dag_id="business_marts",
    description="dbt: the business marts (whole history) after each transform, via Cosmos",
    schedule=[FACT_ASSET],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["dbt", "transform"],
    doc_md=__doc__,
)
def business_marts() -> None:
    dbt = DbtTaskGroup(group_id="dbt", **cosmos_configs("business_marts"))
    report_after_the_build(dbt)

    @task(outlets=BUSINESS_MARTS_ASSETS)
    def publish_marts() -> None:
        """Marks the business marts as updated (asset events) once every model and test has passed."""

    dbt >> publish_marts()


business_marts()
