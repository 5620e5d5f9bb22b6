"""The `transform` DAG (Cosmos renders dbt) run end to end by Airflow on a freshly ingested database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from airflow.dag_processing.dagbag import DagBag

from apparel.config import PROJECT_ROOT, load_settings
from apparel.dbt_runner import DBT_PROJECT_DIR, DBT_SELECTIONS, dbt_env, target_dir
from apparel.transform import BUSINESS_MARTS, DBT_POOL, DBT_POOL_SLOTS, FRESH_MARTS
from tests.conftest import DATASET_DIR, airflow_dags_test
from tests.integration.support import finished_run, task_states

pytestmark = pytest.mark.slow

MONTHLY = "dm_revenue_by_months"
PRODUCER = "dbt.dbt_producer_watcher"


def dbt_tests(dag_id: str) -> set[str]:
    """The tests (not unit tests) the build of `dag_id` runs, as dbt itself lists its selection."""
    dbt = Path(sys.executable).parent / "dbt"
    args = ["ls", "--resource-type", "test", *DBT_SELECTIONS[dag_id].args(), "--output", "json"]
    env = {**os.environ, **dbt_env(load_settings()), "DBT_TARGET_PATH": str(target_dir())}
    listed = subprocess.run(
        [str(dbt), *args, "--output-keys", "unique_id", "--quiet"],
        cwd=DBT_PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stdout[-2000:]
    return {json.loads(line)["unique_id"] for line in listed.stdout.splitlines()}


def assert_renders_what_the_build_runs(dag, dag_id: str) -> None:
    """One `dbt build` of the DAG's selection in every slot of the dbt pool; a task per model and one
    per model's tests that only report it (outside the pool), and exactly the tests the build runs, so
    no test task waits for a result that never comes."""
    producer = dag.get_task(PRODUCER)
    assert type(producer).__name__ == "DbtProducerWatcherOperator"
    assert (producer.pool, producer.pool_slots) == (DBT_POOL, DBT_POOL_SLOTS)
    selection = DBT_SELECTIONS[dag_id]
    assert producer.select == (" ".join(selection.select) or None)
    assert producer.exclude.split() == [*selection.exclude, "resource_type:exposure"]
    # (and Cosmos' gate after the build, an EmptyOperator that keeps a skipped build from skipping
    # what follows the group)
    gates = (PRODUCER, f"{PRODUCER}_done")
    consumers = [t for t in dag.tasks if t.task_id.startswith("dbt.") and t.task_id not in gates]
    assert {t.pool for t in consumers} == {"default_pool"}
    test_tasks = {t.model_unique_id for t in consumers if type(t).__name__ == "DbtTestWatcherOperator"}
    assert test_tasks == set(producer.tests_per_model)
    rendered = {test for tests in producer.tests_per_model.values() for test in tests}
    assert rendered == dbt_tests(dag_id)
    # They start once the build is done, whatever its outcome, and each reports its own node.
    first = {t for t in consumers if not t.upstream_task_ids & {c.task_id for c in consumers}}
    assert first and all(t.upstream_task_ids == {PRODUCER} for t in first)
    assert {t.trigger_rule for t in first} == {"all_done"}


def test_transform_dag_renders_a_task_group_per_model_with_tests() -> None:
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "airflow" / "dags" / "transform.py")).dags["transform"]
    task_ids = {t.task_id for t in dag.tasks}
    assert_renders_what_the_build_runs(dag, "transform")
    for model in ["stg_orders", "dim_products", "fct_transactions", *FRESH_MARTS]:
        assert type(dag.get_task(f"dbt.{model}.run")).__name__ == "DbtRunWatcherOperator"
        assert type(dag.get_task(f"dbt.{model}.test")).__name__ == "DbtTestWatcherOperator"
        # Each model's tests are reported right after it, before anything downstream of it.
        assert dag.get_task(f"dbt.{model}.test").upstream_task_ids == {f"dbt.{model}.run"}
    # A test that reads two models (the monthly mart's reconciliation with the fact) is reported with
    # the tests of each: dbt runs it once both are built.
    tests_of = {
        uid.split(".")[-1]: {t.split(".")[2] for t in ts}
        for uid, ts in dag.get_task(PRODUCER).tests_per_model.items()
    }
    assert "assert_revenue_by_months_equals_fct" in tests_of[MONTHLY] & tests_of["fct_transactions"]
    # The business marts (whole history) are not here, nor their tests that read the fact (dbt's
    # eager selection leaves out a test of an excluded model): their own DAG follows the fact.
    assert not [t for t in task_ids if any(m in t for m in BUSINESS_MARTS)]
    assert not [t for ts in tests_of.values() for t in ts if "segments" in t or "cohort" in t or "reach" in t]
    published = {o.name for o in dag.get_task("publish_marts").outlets}
    assert published == {"core.fct_transactions", *(f"marts.{m}" for m in FRESH_MARTS)}
    business = DagBag(dag_folder=str(PROJECT_ROOT / "airflow" / "dags" / "business_marts.py")).dags[
        "business_marts"
    ]
    assert_renders_what_the_build_runs(business, "business_marts")
    business_ids = {t.task_id for t in business.tasks}
    for model in BUSINESS_MARTS:
        assert business.get_task(f"dbt.{model}.test").upstream_task_ids == {f"dbt.{model}.run"}
    assert not [t for t in business_ids if "fct_transactions" in t]
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
    # The safety net: a full_refresh param, which the weekly DAG sets; the build (and a retried
    # model's own dbt run) gets --full-refresh from it.
    assert dag.params["full_refresh"] is False
    assert dag.get_task(PRODUCER).full_refresh == "{{ params.full_refresh }}"
    assert dag.get_task("dbt.fct_transactions.run").full_refresh == "{{ params.full_refresh }}"
    weekly = DagBag(dag_folder=str(PROJECT_ROOT / "airflow" / "dags" / "transform_full_refresh.py"))
    trigger = weekly.dags["transform_full_refresh"].get_task("trigger_transform")
    assert (trigger.trigger_dag_id, trigger.conf) == ("transform", {"full_refresh": True})
    assert weekly.dags["transform_full_refresh"].timetable.expression == "0 2 * * 0"


def test_a_failing_model_test_fails_its_own_task(airflow_env, loaded_db: str) -> None:
    """A product size outside the accepted values: the build builds stg_products and fails its test.
    That test's task fails, the model's own task succeeds, what dbt skipped after it fails (so clearing
    it runs dbt for it), models apart from it succeed, and the marts are not published."""
    with psycopg.connect(loaded_db) as conn:
        conn.execute("update raw.products set size = 'XXL' where product_id = 7")
    run = airflow_dags_test(airflow_env, "transform", WAREHOUSE_URL=loaded_db)
    run_id, state = finished_run(run)
    assert state == "failed", run.stdout[-3000:]
    states = task_states(airflow_env, "transform", run_id)
    assert states["dbt.stg_products.test"] == "failed"
    assert states["dbt.stg_products.run"] == "success"
    assert states["dbt.dim_products.run"] == "upstream_failed"
    assert states[PRODUCER] == "failed"
    assert states["publish_marts"] == "upstream_failed"
    for model in ("stg_provinces", "stg_cities", "stg_customers", "stg_product_categories"):
        assert states[f"dbt.{model}.run"] == states[f"dbt.{model}.test"] == "success", model
    # A test that reads several models is reported with each of them (Cosmos' watcher mode does not
    # give it a task of its own): the fact was not built, so dbt skipped its relationship tests, and
    # the test tasks of the dimensions they read report the skip as a failure.
    assert states["dbt.dim_customers.run"] == "success"
    assert states["dbt.dim_customers.test"] == "failed"
    assert "accepted_values_stg_products_size" in run.stdout


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
