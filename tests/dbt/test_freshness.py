"""`dbt source freshness` warns, then fails, as the raw layer and the shop's mirror go stale:
the extracts after 12 h / 24 h without a load (the load log: a load that found the file unchanged
counts, since it writes no row), raw_store after 10 minutes / an hour without a change."""

from __future__ import annotations

import json

import psycopg
import pytest

from apparel.dbt_runner import run_dbt
from tests.dbt.conftest import Dbt, mirror

pytestmark = pytest.mark.slow


def freshness(dbt: Dbt) -> tuple[int, dict[str, str]]:
    """Exit code of `dbt source freshness` and each source table's status (pass, warn, error)."""
    result = run_dbt(["source", "freshness"], url=dbt.url, target_path=dbt.target_path, check=False)
    results = json.loads((dbt.target_path / "sources.json").read_text())["results"]
    return result.returncode, {r["unique_id"].split(".", 2)[2]: r["status"] for r in results}


def age(dbt: Dbt, table: str, column: str, interval: str, where: str = "true") -> None:
    with psycopg.connect(dbt.url, autocommit=True) as conn:
        conn.execute(f"update {table} set {column} = now() - interval '{interval}' where {where}")


def test_freshness_warns_then_fails_on_stale_extracts_and_mirror(dbt: Dbt) -> None:
    mirror(dbt.url, "shop_customer", [{"id": 1, "first_name": "A", "last_name": "B", "gender": "Male"}])
    mirror(
        dbt.url, "shop_order", [{"id": 1, "customer_id": 1, "province_id": 1, "city_id": 1, "status": "paid"}]
    )
    mirror(dbt.url, "shop_orderline", [{"id": 1, "order_id": 1, "product_id": 1, "quantity": 1,
                                        "unit_price": 1, "amount": 1}])  # fmt: skip
    code, status = freshness(dbt)
    assert code == 0 and set(status.values()) == {"pass"}, status

    # An unchanged file's load writes no row, so the rows' own times say nothing about the load.
    age(dbt, "raw.orders", "_loaded_at", "30 days")
    code, status = freshness(dbt)
    assert status["raw.orders"] == "pass", "freshness is the last load, not the last change"
    age(dbt, "raw._load_log", "finished_at", "13 hours", "source = 'orders'")
    age(dbt, "raw_store.shop_order", "_synced_at", "11 minutes")
    code, status = freshness(dbt)
    assert code == 0, "a warning does not fail the run"
    assert (status["raw.orders"], status["raw_store.shop_order"]) == ("warn", "warn")
    assert status["raw.customers"] == status["raw_store.shop_orderline"] == "pass"

    age(dbt, "raw._load_log", "finished_at", "25 hours", "source = 'orders'")
    age(dbt, "raw_store.shop_order", "_synced_at", "2 hours")
    code, status = freshness(dbt)
    assert code != 0, "stale data fails the run"
    assert (status["raw.orders"], status["raw_store.shop_order"]) == ("error", "error")
