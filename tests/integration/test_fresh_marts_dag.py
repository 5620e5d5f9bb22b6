"""The `fresh_marts` DAG (on the shop mirror's asset events, Cosmos) carries an order written into
raw_store to the marts, and tests what it builds."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import psycopg
import pytest
from airflow.dag_processing.dagbag import DagBag

from apparel.airflow_notify import SHOP_MIRROR_URI
from apparel.config import PROJECT_ROOT
from apparel.dbt_runner import run_dbt
from apparel.transform import FRESH_MARTS
from tests.conftest import airflow_dags_test, query, scalar
from tests.dbt.conftest import mirror
from tests.integration.test_transform_dag import assert_renders_what_the_build_runs

pytestmark = pytest.mark.slow

# The models downstream of raw_store: the base models that resolve the shop against the extracts and
# the staging views on them, the dimensions that read them, the fact, the brief's two marts (with
# their tests). No exposures, and not the business marts, which recompute from the whole history
# (left to `business_marts`).
FRESH_MODELS = {
    "base_customers",
    "base_orders",
    "base_order_details",
    "stg_customers",
    "stg_orders",
    "stg_order_details",
    "dim_customers",
    "dim_dates",
    "fct_transactions",
    *FRESH_MARTS,
}
TASK_DONE = re.compile(r"\[DAG TEST\] end task task_id=(\S+).*?")
# When the shop's order is placed: pinned, so the test expects the same month and day whenever it runs,
# and just after midnight in Jakarta on the first of a month (still January in UTC), so it also checks
# that the order is dated in Jakarta time (a shop order's order_date is its created_at in Jakarta).
PLACED_AT = datetime(2024, 1, 31, 17, 30, tzinfo=UTC)  # 2024-02-01 00:30 in Asia/Jakarta (UTC+7)
PLACED_ON = date(2024, 2, 1)


def test_fresh_marts_renders_only_the_streamed_tables_in_the_shared_pool() -> None:
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "airflow" / "dags"))
    dag = bag.dags["fresh_marts"]
    # One dbt build of the models downstream of raw_store and their tests, in every slot of the pool
    # it shares with transform's build: never beside it.
    assert_renders_what_the_build_runs(dag, "fresh_marts")
    runs = [t for t in dag.tasks if type(t).__name__ == "DbtRunWatcherOperator"]
    assert {t.model_unique_id.split(".")[-1] for t in runs} == FRESH_MODELS
    # On the shop mirror's asset (the stream posts its events), or every 15 minutes in case one was lost.
    assert [a.uri for a in dag.timetable.asset_condition.objects] == [SHOP_MIRROR_URI]
    assert dag.timetable.timetable.expression == "*/15 * * * *"
    assert dag.max_active_runs == 1 and not dag.catchup
    assert dag.get_task("dbt.dbt_producer_watcher").upstream_task_ids == {"transform_has_run"}
    assert dag.get_task("dbt.base_customers_run").upstream_task_ids == {"dbt.dbt_producer_watcher"}
    # dim_customers reads stg_customers, and base_customers for the customers deleted since its last run
    assert dag.get_task("dbt.dim_customers.run").upstream_task_ids == {
        "dbt.stg_customers.test",
        "dbt.base_customers_run",
    }
    # the monthly mart also reads the base models: the dates of the lines removed since its last run
    assert dag.get_task("dbt.dm_revenue_by_months.run").upstream_task_ids == {
        "dbt.fct_transactions.test",
        "dbt.dim_dates.test",
        "dbt.base_orders.test",
        "dbt.base_order_details.test",
    }
    assert {o.name for o in dag.get_task("publish_marts").outlets} == {f"marts.{m}" for m in FRESH_MARTS}


def test_a_shop_order_reaches_the_monthly_mart(airflow_env, loaded_db: str, tmp_path) -> None:
    # The model as the daily transform leaves it (without its tests, which it runs itself).
    built = run_dbt(
        [
            "build",
            "--resource-type",
            "seed",
            "--resource-type",
            "snapshot",
            "--resource-type",
            "model",
            "--quiet",
        ],
        url=loaded_db,
        target_path=tmp_path / "dbt-target",
        check=False,
    )
    assert built.returncode == 0
    city_revenue = (
        "select revenue from marts.dm_perfomance_product_by_cities where city_id = 91 and product_id = 42"
    )
    city_before = (query(loaded_db, city_revenue) or [(0,)])[0][0]
    customer = scalar(loaded_db, "select max(customer_id) + 1 from raw.customers")
    order = scalar(loaded_db, "select max(order_id) + 1 from raw.orders")
    line = scalar(loaded_db, "select max(order_detail_id) + 1 from raw.order_details")
    mirror(
        loaded_db,
        "shop_customer",
        [
            {
                "id": customer,
                "first_name": "Budi",
                "last_name": "Santoso",
                "gender": "Male",
                "created_at": PLACED_AT,
                "updated_at": PLACED_AT,
            }
        ],
    )
    mirror(
        loaded_db,
        "shop_order",
        [
            {
                "id": order,
                "customer_id": customer,
                "province_id": 5,
                "city_id": 91,
                "status": "paid",
                "created_at": PLACED_AT,
                "updated_at": PLACED_AT,
            }
        ],
    )
    mirror(
        loaded_db,
        "shop_orderline",
        [
            {
                "id": line,
                "order_id": order,
                "product_id": 42,
                "quantity": 3,
                "unit_price": 110_000,
                "amount": 330_000,
                "created_at": PLACED_AT,
                "updated_at": PLACED_AT,
            }
        ],
    )

    run = airflow_dags_test(airflow_env, "fresh_marts", WAREHOUSE_URL=loaded_db)
    assert run.returncode == 0, run.stdout[-5000:]
    finished = re.search(r"DagRun Finished: .*?run_duration=([\d.]+), state=(\w+)", run.stdout)
    assert finished and finished.group(2) == "success", run.stdout[-3000:]
    # A figure, not a pass/fail (a busy machine is not a bug): the goal, an order in the marts within
    # 2 minutes, is measured by tests/stack/test_stack.py.
    print(f"fresh_marts: run_duration={float(finished.group(1)):.1f} s")

    with psycopg.connect(loaded_db) as conn:
        month = conn.execute(
            "select total_orders, revenue from marts.dm_revenue_by_months where month_start = %s",
            (PLACED_ON,),
        ).fetchone()
        city = conn.execute(city_revenue).fetchone()
        fact = conn.execute(
            "select f.amount, c.full_name from core.fct_transactions f"
            " join core.dim_customers c using (customer_key) where f.transaction_id = %s",
            (line,),
        ).fetchone()
    assert month == (1, 330_000)
    assert fact == (330_000, "Budi Santoso")
    assert city == (city_before + 330_000,)
