"""Every mart recomputed with pandas (tests/dbt/recompute.py), independently of the database and
dbt: from the extract files, then from a shop that took orders through the CDC stream."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from apparel.config import with_database
from apparel.simulate import run_simulator
from apparel.store import ensure_store
from apparel.stream import drop_slot, run_stream
from tests.conftest import DATASET_DIR
from tests.dbt.conftest import Dbt, scalar
from tests.dbt.recompute import assert_marts_equal, read_mart, sales_from_files, sales_from_store

pytestmark = pytest.mark.slow


def test_marts_equal_an_independent_recomputation_from_the_files(dbt: Dbt) -> None:
    dbt("build")
    assert read_mart(dbt.url, "dm_revenue_by_months")["revenue_mom_growth_pct"].isna().sum() == 1, (
        "null only for the first month"
    )
    assert_marts_equal(dbt.url, sales_from_files(DATASET_DIR))


@pytest.fixture
def simulated_store(pg_admin_url: str, dbt: Dbt):
    """A shop seeded from the extracts that then took orders for two seconds (new customers,
    status changes, cancellations, deleted lines), mirrored into the test warehouse by the stream."""
    name = f"t_store_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    store_url = with_database(pg_admin_url, name)
    slot = f"t_marts_{uuid.uuid4().hex[:8]}"
    try:
        ensure_store(store_url, DATASET_DIR)
        run_simulator(store_url, rate=40, duration=2, seed=11, dataset_dir=DATASET_DIR)
        run_stream(store_url, dbt.url, slot=slot, publication=slot, until_caught_up=True)
        yield store_url
    finally:
        drop_slot(pg_admin_url, slot)
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def test_marts_equal_an_independent_recomputation_from_the_shop(dbt: Dbt, simulated_store: str) -> None:
    with psycopg.connect(simulated_store) as conn:
        new_customers, cancelled = conn.execute(
            "select (select count(*) from shop_customer where created_at > now() - interval '1 hour'),"
            " (select count(*) from shop_order"
            "  where status = 'cancelled' and updated_at > now() - interval '1 hour')"
        ).fetchone()
    assert new_customers > 0 and cancelled > 0, "the simulated minute has new customers and cancellations"
    dbt("build")
    assert scalar(dbt.url, "select count(*) from marts.dm_customer_segments where rfm_segment = 'New'") > 0
    assert_marts_equal(dbt.url, sales_from_store(DATASET_DIR, simulated_store))
