"""Incremental dbt on a change-aware raw layer: each change reaches the fact and the marts, the
incremental models write only what changed, and the result equals a full refresh.

The raw layer records when each row changed (`_loaded_at` of the extracts' merge, the stream's
`_synced_at`), the base models resolve extract against shop by time (the most recent change wins),
and `fct_transactions` rebuilds the lines whose inputs changed since its last run. After every
step below, every mart equals an independent pandas recomputation from the files and the shop's
rows, and the base models and the fact equal a rebuild from scratch (`assert_equals_full_refresh`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from apparel.config import with_database
from apparel.generate import _write_json, _write_xlsx
from apparel.store import ensure_store
from apparel.stream import drop_slot, run_stream
from apparel.transform import FRESH_MARTS, MARTS
from tests.conftest import DATASET_DIR
from tests.dbt.conftest import Dbt, assert_equals_full_refresh, query, reload, scalar

pytestmark = pytest.mark.slow

INCREMENTAL_MODELS = ("base_customers", "base_orders", "base_order_details", "fct_transactions")
NEW_CUSTOMER = 900_001  # arrives with its first order
LATE_CUSTOMER, LATE_CITY, LATE_PRODUCT = 900_002, 9_001, 9_001  # arrive after orders that need them


def fact_count(url: str) -> int:
    return scalar(url, "select count(*) from core.fct_transactions")


def fact_keys(url: str, order_id: int) -> set[tuple[str, str, str]]:
    rows = query(
        url, "select customer_key, location_key, product_key from core.fct_transactions where order_id = %s",
        (order_id,),
    )  # fmt: skip
    return set(rows)


def marts_last_written(url: str) -> list:
    return [scalar(url, f"select max(loaded_at) from marts.{mart}") for mart in FRESH_MARTS]


def rows_of_last_run(url: str, mart: str, key: str) -> int:
    """How many distinct `key`s of `mart` the last run that wrote it wrote."""
    last_run = f"(select max(loaded_at) from marts.{mart})"
    return scalar(url, f"select count(distinct {key}) from marts.{mart} where loaded_at = {last_run}")


def written(dbt: Dbt) -> dict[str, int]:
    """Rows each incremental model wrote in the last dbt command."""
    results = dbt.run_results()
    return {m: results[m]["adapter_response"]["rows_affected"] for m in INCREMENTAL_MODELS if m in results}


def read_csv(dataset: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(dataset / f"{name}.csv", dtype={"order_date": str})


def add_orders(dataset: Path, orders: list[dict], lines: list[tuple[int, int, int]]) -> list[int]:
    """Append order headers (missing fields copied from the first order) and lines (order_id,
    product_id, qty) at the product's list price. Returns the new line ids."""
    headers, details = read_csv(dataset, "orders"), read_csv(dataset, "order_details")
    prices = pd.read_json(dataset / "products.json").set_index("product_id")["price"]
    template = headers.iloc[0].to_dict()
    first = int(details["order_detail_id"].max()) + 1
    new_lines = [
        (first + i, order_id, product_id, qty, int(prices.get(product_id, 100_000)),
         qty * int(prices.get(product_id, 100_000)))
        for i, (order_id, product_id, qty) in enumerate(lines)
    ]  # fmt: skip
    pd.concat([headers, pd.DataFrame([template | o for o in orders])]).to_csv(
        dataset / "orders.csv", index=False
    )
    pd.concat([details, pd.DataFrame(new_lines, columns=details.columns)]).to_csv(
        dataset / "order_details.csv", index=False
    )
    return [line[0] for line in new_lines]


def edit_lines(dataset: Path, edit) -> None:
    details = edit(read_csv(dataset, "order_details"))
    details["unit_sales"] = details["qty"] * details["item_price"]
    details.to_csv(dataset / "order_details.csv", index=False)


def add_customer(dataset: Path, customer_id: int, first_name: str) -> None:
    customers = pd.read_parquet(dataset / "customers.parquet")
    row = pd.DataFrame([{"customer_id": customer_id, "first_name": first_name, "last_name": "Baru",
                         "gender": "Female"}]).astype(customers.dtypes.to_dict())  # fmt: skip
    pd.concat([customers, row], ignore_index=True).to_parquet(dataset / "customers.parquet", index=False)


def test_extract_changes_are_built_incrementally(dbt: Dbt, dataset_copy: Path) -> None:
    dbt("build")
    url = dbt.url

    # Nothing new: the incremental models write nothing, the marts included.
    marts_written = marts_last_written(url)
    dbt("build", "--select", *INCREMENTAL_MODELS, *FRESH_MARTS)
    assert written(dbt) == dict.fromkeys(INCREMENTAL_MODELS, 0)
    assert marts_last_written(url) == marts_written

    # Appended orders: only they are written.
    max_order = scalar(url, "select max(order_id) from raw.orders")
    new_lines = add_orders(dataset_copy, [{"order_id": max_order + 1}, {"order_id": max_order + 2}],
                           [(max_order + 1, 1, 2), (max_order + 1, 2, 1), (max_order + 2, 3, 4)])  # fmt: skip
    reload(url, dataset_copy, "orders", "order_details")
    before = fact_count(url)
    dbt("build")
    assert written(dbt) == {
        "base_customers": 0,
        "base_orders": 2,
        "base_order_details": 3,
        "fct_transactions": 3,
    }
    assert fact_count(url) == before + len(new_lines)
    # The marts rewrote what the new lines touch: their month (and the next, whose growth compares
    # with it) and their city (both orders copy the first order's date and city).
    assert 1 <= rows_of_last_run(url, "dm_revenue_by_months", "month_start") <= 2
    assert rows_of_last_run(url, "dm_perfomance_product_by_cities", "city_id") == 1
    assert_equals_full_refresh(dbt, dataset_copy)

    # Changed lines: the two lines rewritten with their new quantity.
    changed = [int(i) for i in read_csv(dataset_copy, "order_details")["order_detail_id"].iloc[[10, 11]]]
    edit_lines(dataset_copy, lambda d: d.assign(qty=d["qty"].where(~d["order_detail_id"].isin(changed), 9)))
    reload(url, dataset_copy, "order_details")
    dbt("build")
    assert written(dbt)["fct_transactions"] == 2
    assert query(url, "select distinct quantity from core.fct_transactions where transaction_id = any(%s)",
                 (changed,)) == [(9,)]  # fmt: skip
    assert_equals_full_refresh(dbt, dataset_copy)

    # An order line missing from a new extract: soft-deleted in raw, gone from the fact.
    removed = [int(read_csv(dataset_copy, "order_details")["order_detail_id"].iloc[20])]
    kept_rows = read_csv(dataset_copy, "order_details")
    edit_lines(dataset_copy, lambda d: d[~d["order_detail_id"].isin(removed)])
    reload(url, dataset_copy, "order_details")
    before = fact_count(url)
    dbt("build")
    assert fact_count(url) == before - 1
    assert scalar(url, "select _deleted_at is not null from raw.order_details where order_detail_id = %s",
                  (removed[0],)) is True  # fmt: skip
    assert_equals_full_refresh(dbt, dataset_copy)

    # The key comes back (restored): in the fact again.
    kept_rows.to_csv(dataset_copy / "order_details.csv", index=False)
    reload(url, dataset_copy, "order_details")
    dbt("build")
    assert written(dbt)["fct_transactions"] == 1
    assert fact_count(url) == before
    assert_equals_full_refresh(dbt, dataset_copy)

    # A new customer with a first order; and an order whose customer, city and product are not in
    # the extracts yet: its lines wait under the unknown members.
    add_customer(dataset_copy, NEW_CUSTOMER, "Nova")
    new_order, late_order = max_order + 3, max_order + 4
    add_orders(dataset_copy,
               [{"order_id": new_order, "customer_id": NEW_CUSTOMER},
                {"order_id": late_order, "customer_id": LATE_CUSTOMER, "city_id": LATE_CITY}],
               [(new_order, 5, 1), (late_order, LATE_PRODUCT, 2), (late_order, 6, 1)])  # fmt: skip
    reload(url, dataset_copy, "customers", "orders", "order_details")
    dbt("build")
    new_customer_key = scalar(url, "select customer_key from core.dim_customers where customer_id = %s",
                              (NEW_CUSTOMER,))  # fmt: skip
    assert {k[0] for k in fact_keys(url, new_order)} == {new_customer_key}
    late_keys = fact_keys(url, late_order)
    assert {k[0] for k in late_keys} == {"-1"} and {k[1] for k in late_keys} == {"-1"}
    assert "-1" in {k[2] for k in late_keys}
    assert_equals_full_refresh(dbt, dataset_copy)

    # The late customer, city and product arrive: exactly the waiting order's lines are re-keyed.
    add_customer(dataset_copy, LATE_CUSTOMER, "Lambat")
    cities = pd.read_excel(dataset_copy / "cities.xlsx", engine="calamine")
    late_city = {"city_id": LATE_CITY, "city_names": "KOTA BARU", "province_id": 1}
    _write_xlsx(dataset_copy / "cities.xlsx", pd.concat([cities, pd.DataFrame([late_city])]), "Worksheet")
    products = pd.read_json(dataset_copy / "products.json")
    late_product = products.iloc[[0]].assign(product_id=LATE_PRODUCT)
    _write_json(dataset_copy / "products.json", pd.concat([products, late_product], ignore_index=True))
    reload(url, dataset_copy, "customers", "cities", "products")
    dbt("build")
    assert written(dbt)["fct_transactions"] == 2
    assert "-1" not in {key for keys in fact_keys(url, late_order) for key in keys}
    assert_equals_full_refresh(dbt, dataset_copy)

    # A price change: a second version of the product (SCD2). The history keeps the version it was
    # sold at; an order placed after the change sells at the new one.
    products = pd.read_json(dataset_copy / "products.json")
    products.loc[products["product_id"] == 1, "price"] += 10_000
    _write_json(dataset_copy / "products.json", products)
    reload(url, dataset_copy, "products")
    dbt("build")
    assert written(dbt)["fct_transactions"] == 0
    future_order = max_order + 5
    add_orders(dataset_copy, [{"order_id": future_order, "order_date": "2030-01-01 00:00:00.000"}],
               [(future_order, 1, 1)])  # fmt: skip
    reload(url, dataset_copy, "orders", "order_details")
    dbt("build")
    current = scalar(url, "select product_key from core.dim_products where product_id = 1 and is_current")
    assert {k[2] for k in fact_keys(url, future_order)} == {current}
    assert scalar(url, "select count(distinct product_key) from core.fct_transactions where product_key in"
                  " (select product_key from core.dim_products where product_id = 1)") == 2  # fmt: skip
    assert_equals_full_refresh(dbt, dataset_copy)

    # As the Airflow DAGs run them (Cosmos): every model in a dbt invocation of its own.
    add_orders(dataset_copy, [{"order_id": max_order + 6}], [(max_order + 6, 7, 3)])
    reload(url, dataset_copy, "orders", "order_details")
    for model in (*INCREMENTAL_MODELS[:3], "dim_customers", "dim_dates", "fct_transactions"):
        dbt("run", "--select", model)
    assert written(dbt) == {"fct_transactions": 1}
    for model in MARTS:
        dbt("run", "--select", model)
    dbt("run", "--select", "fct_transactions")
    assert written(dbt) == {"fct_transactions": 0}
    assert_equals_full_refresh(dbt, dataset_copy)


# ------------------------------------------------------------------ the shop against the extracts


@dataclass
class Shop:
    """The shop's database, seeded from the extracts, mirrored into the test warehouse by the stream."""

    url: str
    warehouse_url: str
    slot: str

    def catch_up(self) -> None:
        run_stream(self.url, self.warehouse_url, slot=self.slot, publication=self.slot, until_caught_up=True)

    def execute(self, sql: str, params: tuple = ()) -> None:
        with psycopg.connect(self.url) as conn:
            conn.execute(sql, params)


@pytest.fixture
def shop(pg_admin_url: str, dbt: Dbt) -> Iterator[Shop]:
    """As `make run` leaves it: the store seeded from the extracts, then mirrored (the raw extracts
    are loaded by the `dbt` fixture)."""
    name = f"t_store_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    shop = Shop(with_database(pg_admin_url, name), dbt.url, f"t_inc_{uuid.uuid4().hex[:8]}")
    try:
        ensure_store(shop.url, DATASET_DIR)
        shop.catch_up()
        yield shop
    finally:
        drop_slot(pg_admin_url, shop.slot)
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def test_the_most_recent_change_wins_between_extract_and_shop(
    dbt: Dbt, shop: Shop, dataset_copy: Path
) -> None:
    url = dbt.url
    dbt("build")
    # The seeded shop holds the same orders as the extracts: the same sales.
    assert fact_count(url) == scalar(url, "select count(*) from raw.order_details")
    assert_equals_full_refresh(dbt, dataset_copy)

    # A corrected export after the seed: lines removed, quantities fixed, orders withdrawn, orders
    # added. The extract's rows are newer than the shop's seeded ones, so the corrections win.
    details = read_csv(dataset_copy, "order_details")
    removed = [int(i) for i in details["order_detail_id"].iloc[[30, 31, 32, 33]]]
    fixed = [int(i) for i in details["order_detail_id"].iloc[[40, 41, 42]]]
    withdrawn = [int(i) for i in read_csv(dataset_copy, "orders")["order_id"].iloc[[50, 51]]]
    withdrawn_lines = int(details["order_id"].isin(withdrawn).sum())
    edit_lines(dataset_copy, lambda d: d[~d["order_detail_id"].isin(removed) & ~d["order_id"].isin(withdrawn)]
               .assign(qty=lambda x: x["qty"].where(~x["order_detail_id"].isin(fixed), 8)))  # fmt: skip
    headers = read_csv(dataset_copy, "orders")
    headers[~headers["order_id"].isin(withdrawn)].to_csv(dataset_copy / "orders.csv", index=False)
    max_order = scalar(url, "select max(order_id) from raw.orders")
    added = add_orders(dataset_copy, [{"order_id": max_order + i} for i in (1, 2, 3)],
                       [(max_order + i, i, 1) for i in (1, 2, 3)])  # fmt: skip
    reload(url, dataset_copy, "orders", "order_details")
    before = fact_count(url)
    dbt("build")
    assert fact_count(url) == before - len(removed) - withdrawn_lines + len(added)
    assert query(url, "select distinct quantity from core.fct_transactions where transaction_id = any(%s)",
                 (fixed,)) == [(8,)]  # fmt: skip
    assert (
        scalar(url, "select count(*) from core.fct_transactions where order_id = any(%s)", (withdrawn,)) == 0
    )
    assert_equals_full_refresh(dbt, dataset_copy)

    # Later, the shop changes things the extract holds: a quantity the extract fixed, a cancelled
    # order, a deleted line, and a new customer's first order. The shop's changes are newer: they win.
    shop_fixed, cancelled_order = fixed[0], int(headers["order_id"].iloc[60])
    deleted_line = int(
        details.loc[details["order_id"] == int(headers["order_id"].iloc[70]), "order_detail_id"].iloc[0]
    )
    shop.execute(
        "update shop_orderline set quantity = 3, amount = 3 * unit_price, updated_at = now() where id = %s",
        (shop_fixed,),
    )
    shop.execute(
        "update shop_order set status = 'cancelled', updated_at = now() where id = %s", (cancelled_order,)
    )
    shop.execute("delete from shop_orderline where id = %s", (deleted_line,))
    shop_order = max_order + 10
    shop.execute("insert into shop_customer (id, first_name, last_name, gender)"
                 " values (%s, 'Sari', 'Dewi', 'Female')", (NEW_CUSTOMER,))  # fmt: skip
    shop.execute("insert into shop_order (id, customer_id, province_id, city_id, status)"
                 " select %s, %s, province_id, city_id, 'paid' from shop_order where id = 1",
                 (shop_order, NEW_CUSTOMER))  # fmt: skip
    shop.execute("insert into shop_orderline (id, order_id, product_id, quantity, unit_price, amount)"
                 " values (%s, %s, 4, 2, 100000, 200000)", (max(added) + 100, shop_order))  # fmt: skip
    shop.catch_up()
    dbt("build")
    assert (
        scalar(url, "select quantity from core.fct_transactions where transaction_id = %s", (shop_fixed,))
        == 3
    )
    assert (
        scalar(url, "select count(*) from core.fct_transactions where order_id = %s", (cancelled_order,)) == 0
    )
    assert (
        scalar(url, "select count(*) from core.fct_transactions where transaction_id = %s", (deleted_line,))
        == 0
    )
    assert scalar(url, "select c.customer_id from core.fct_transactions f join core.dim_customers c"
                  " using (customer_key) where f.order_id = %s", (shop_order,)) == NEW_CUSTOMER  # fmt: skip
    assert_equals_full_refresh(dbt, dataset_copy)

    # The same extract loaded again changes nothing: its rows did not change, the shop's stay newer.
    reload(url, dataset_copy, "orders", "order_details")
    facts = query(url, "select * from core.fct_transactions order by transaction_id")
    dbt("build")
    assert written(dbt) == dict.fromkeys(INCREMENTAL_MODELS, 0)
    assert query(url, "select * from core.fct_transactions order by transaction_id") == facts
