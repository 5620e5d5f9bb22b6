"""The `transform` DAG (Cosmos renders dbt) run end to end by Airflow on a freshly ingested database."""

from __future__ import annotations

import psycopg
import pytest
from airflow.dag_processing.dagbag import DagBag

from apparel.config import PROJECT_ROOT
from apparel.transform import BUSINESS_MARTS, FRESH_MARTS
from tests.conftest import DATASET_DIR, airflow_dags_test

pytestmark = pytest.mark.slow

MONTHLY = "dm_revenue_by_months"


def test_transform_dag_renders_a_task_group_per_model_with_tests() -> None:
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "airflow" / "dags" / "transform.py")).dags["transform"]
    task_ids = {t.task_id for t in dag.tasks}
    for model in [
        "stg_orders",
        "dim_products",
        "fct_transactions",
        *(m for m in FRESH_MARTS if m != MONTHLY),
    ]:
        assert f"dbt.{model}.run" in task_ids
        assert f"dbt.{model}.test" in task_ids
        # Each model's tests run right after it, before anything downstream of it.
        assert dag.get_task(f"dbt.{model}.test").upstream_task_ids == {f"dbt.{model}.run"}
    # The monthly mart has no test of its own (its enforced key needs none): a lone run task, which
    # its reconciliation with the fact follows.
    assert f"dbt.{MONTHLY}.test" not in task_ids
    reconciliation = dag.get_task("dbt.assert_revenue_by_months_equals_fct_test")
    assert f"dbt.{MONTHLY}_run" in reconciliation.upstream_task_ids
    published = {o.name for o in dag.get_task("publish_marts").outlets}
    assert published == {"core.fct_transactions", *(f"marts.{m}" for m in FRESH_MARTS)}
    # The business marts (whole history) are not here: their own DAG follows the fact.
    assert not [t for t in task_ids if any(m in t for m in BUSINESS_MARTS)]
    business = DagBag(dag_folder=str(PROJECT_ROOT / "airflow" / "dags" / "business_marts.py")).dags[
        "business_marts"
    ]
    business_ids = {t.task_id for t in business.tasks}
    for model in BUSINESS_MARTS:
        assert business.get_task(f"dbt.{model}.test").upstream_task_ids == {f"dbt.{model}.run"}
    assert not [t for t in business_ids if "fct_transactions" in t and not t.startswith("dbt.assert")]
    assert [a.name for a in business.timetable.asset_condition.objects] == ["core.fct_transactions"]
    assert {o.name for o in business.get_task("publish_marts").outlets} == {
        f"marts.{m}" for m in BUSINESS_MARTS
    }
    # The seed the market map joins on loads before the mart; exposures are docs, not tasks.
    assert dag.get_task("dbt.province_iso_codes.seed").downstream_task_ids == {"dbt.province_iso_codes.test"}
    assert not [t for t in task_ids | business_ids if "dashboard" in t]
    # One run per ingest, after all of its loads: scheduled on the raw layer, not on each table; and daily
    # (after the nightly ingest) in any case.
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["raw"]
    assert dag.timetable.timetable.expression == "0 1 * * *"
    # The safety net: a full_refresh param, which the weekly DAG sets.
    assert dag.params["full_refresh"] is False
    assert dag.get_task("dbt.fct_transactions.run").full_refresh == "{{ params.full_refresh }}"
    weekly = DagBag(dag_folder=str(PROJECT_ROOT / "airflow" / "dags" / "transform_full_refresh.py"))
    trigger = weekly.dags["transform_full_refresh"].get_task("trigger_transform")
    assert (trigger.trigger_dag_id, trigger.conf) == ("transform", {"full_refresh": True})
    assert weekly.dags["transform_full_refresh"].timetable.expression == "0 2 * * 0"


def test_ingest_then_transform_builds_the_marts(airflow_env, fresh_db: str) -> None:
    """ingest_dataset, transform and business_marts, as `make run` runs them."""
    ingest = airflow_dags_test(
        airflow_env, "ingest_dataset", WAREHOUSE_URL=fresh_db, DATASET_DIR=str(DATASET_DIR)
    )
    assert ingest.returncode == 0, ingest.stdout[-3000:]
    run = airflow_dags_test(airflow_env, "transform", WAREHOUSE_URL=fresh_db)
    assert run.returncode == 0, run.stdout[-5000:]
    with psycopg.connect(fresh_db) as conn:
        months = conn.execute("select count(*), sum(revenue) from marts.dm_revenue_by_months").fetchone()
        raw_total = conn.execute("select sum(unit_sales) from raw.order_details").fetchone()[0]
        fact_lines = conn.execute("select count(*) from core.fct_transactions").fetchone()[0]
    assert months == (12, raw_total)
    assert fact_lines == 18258
    run = airflow_dags_test(airflow_env, "business_marts", WAREHOUSE_URL=fresh_db)
    assert run.returncode == 0, run.stdout[-5000:]
    with psycopg.connect(fresh_db) as conn:
        for mart in BUSINESS_MARTS:
            assert conn.execute(f"select count(*) from marts.{mart}").fetchone()[0] > 0, mart

    # The weekly safety net's run: every incremental model rebuilt from scratch, to the same rows.
    written_before = "select count(*), max(loaded_at), md5(string_agg(transaction_id || ':' || amount, ','"
    written_before += " order by transaction_id)) from core.fct_transactions"
    with psycopg.connect(fresh_db) as conn:
        count, last_written, digest = conn.execute(written_before).fetchone()
    run = airflow_dags_test(airflow_env, "transform", conf='{"full_refresh": true}', WAREHOUSE_URL=fresh_db)
    assert run.returncode == 0, run.stdout[-5000:]
    with psycopg.connect(fresh_db) as conn:
        rebuilt = conn.execute(
            "select count(*) filter (where loaded_at > %s), md5(string_agg(transaction_id || ':' || amount,"
            " ',' order by transaction_id)) from core.fct_transactions",
            (last_written,),
        ).fetchone()
        base_rebuilt = conn.execute(
            "select bool_and(loaded_at > %s) from staging.base_order_details", (last_written,)
        ).fetchone()[0]
    assert rebuilt == (count, digest)
    assert base_rebuilt
