"""fct_transactions is incremental: a later extract with new, changed and removed order lines is
processed by touching only those lines, a late-arriving customer re-keys only its lines, and the
result equals a full refresh.

When the load log proves the already loaded lines, their order headers and the dimensions
unchanged, a run only appends the new lines ("append"); anything else makes it compare every line
("compare"). The marts add appended lines of new orders to their totals, and recompute otherwise.
Whatever the path, the fact and both marts equal a rebuild from scratch, and every mart equals an
independent pandas recomputation from the files and the shop's rows (tests/dbt/recompute.py)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from apparel.transform import MARTS
from tests.conftest import DATASET_DIR
from tests.dbt.conftest import Dbt, assert_equals_full_refresh, last_fact_load, mirror, query, reload, scalar
from tests.dbt.recompute import assert_marts_equal, sales_from_files_and_mirror

NEW_ORDERS = 25
LATE_CUSTOMER = 900_001  # ordered in the later extract, delivered by the customers extract after that
FACT = "select * from core.fct_transactions order by transaction_id"


def write_later_extract(dataset: Path) -> dict[str, list[int]]:
    """Append orders with lines (the first by a customer not in the customers extract yet), change one
    line's quantity, drop one line. Returns the ids touched."""
    orders = pd.read_csv(dataset / "orders.csv", dtype={"order_date": str})
    details = pd.read_csv(dataset / "order_details.csv")
    products = pd.read_json(dataset / "products.json").set_index("product_id")["price"]

    first_order = int(orders["order_id"].max()) + 1
    new_orders = pd.DataFrame(
        {
            "order_id": range(first_order, first_order + NEW_ORDERS),
            "order_date": "2022-12-01 00:00:00.000",
            "customer_id": orders["customer_id"].iloc[:NEW_ORDERS].to_numpy(),
            "province_id": orders["province_id"].iloc[:NEW_ORDERS].to_numpy(),
            "city_id": orders["city_id"].iloc[:NEW_ORDERS].to_numpy(),
        }
    )
    new_orders.loc[0, "customer_id"] = LATE_CUSTOMER
    rows = []
    next_line = int(details["order_detail_id"].max()) + 1
    for i, order_id in enumerate(new_orders["order_id"]):
        for j in range(1 + i % 3):  # 1 to 3 lines per order
            product_id = 1 + (i * 7 + j * 5) % len(products)
            qty = 1 + (i + j) % 9
            price = int(products[product_id])
            rows.append((next_line, order_id, product_id, qty, price, qty * price))
            next_line += 1
    new_lines = pd.DataFrame(rows, columns=details.columns)

    changed_id = int(details["order_detail_id"].iloc[10])
    details.loc[details["order_detail_id"] == changed_id, "qty"] += 1
    details["unit_sales"] = details["qty"] * details["item_price"]
    removed_id = int(details["order_detail_id"].iloc[20])
    details = details[details["order_detail_id"] != removed_id]

    pd.concat([orders, new_orders]).to_csv(dataset / "orders.csv", index=False)
    pd.concat([details, new_lines]).to_csv(dataset / "order_details.csv", index=False)
    return {
        "new": new_lines["order_detail_id"].tolist(),
        "changed": [changed_id],
        "removed": [removed_id],
        "late_customer": new_lines.loc[new_lines["order_id"] == first_order, "order_detail_id"].tolist(),
    }


def add_late_customer(dataset: Path) -> None:
    customers = pd.read_parquet(dataset / "customers.parquet")
    late = pd.DataFrame(
        {
            "customer_id": [LATE_CUSTOMER],
            "first_name": ["Late"],
            "last_name": ["Arrival"],
            "gender": ["Female"],
        }
    ).astype(customers.dtypes.to_dict())
    pd.concat([customers, late], ignore_index=True).to_parquet(dataset / "customers.parquet", index=False)


def customer_keys(url: str, transaction_ids: list[int]) -> set[str]:
    rows = query(
        url,
        "select customer_key from core.fct_transactions where transaction_id = any(%s)",
        (transaction_ids,),
    )
    return {r[0] for r in rows}


@pytest.mark.slow
def test_incremental_run_processes_only_new_and_changed_lines(dbt: Dbt, dataset_copy: Path) -> None:
    dbt("build")
    lines_before = scalar(dbt.url, "select count(*) from core.fct_transactions")

    # A run without new data writes nothing.
    dbt("build", "--select", "fct_transactions")
    assert dbt.rows_affected("fct_transactions") == 0

    touched = write_later_extract(dataset_copy)
    reload(dbt.url, dataset_copy, "orders", "order_details")
    dbt("build")

    # The merge wrote exactly the new lines and the changed one; the removed line is gone.
    assert dbt.rows_affected("fct_transactions") == len(touched["new"]) + len(touched["changed"])
    assert scalar(dbt.url, "select count(*) from core.fct_transactions") == (
        lines_before + len(touched["new"]) - len(touched["removed"])
    )
    assert (
        scalar(
            dbt.url,
            "select count(*) from core.fct_transactions where transaction_id = any(%s)",
            (touched["removed"],),
        )
        == 0
    )
    changed = query(
        dbt.url,
        "select f.quantity, f.amount, r.qty, r.unit_sales from core.fct_transactions f"
        " join raw.order_details r on r.order_detail_id = f.transaction_id where f.transaction_id = %s",
        (touched["changed"][0],),
    )
    assert changed and changed[0][:2] == changed[0][2:]
    # The order of a customer not delivered yet points at the unknown member.
    assert customer_keys(dbt.url, touched["late_customer"]) == {"-1"}

    # The customer arrives: only that order's lines are re-keyed.
    add_late_customer(dataset_copy)
    reload(dbt.url, dataset_copy, "customers")
    dbt("build")
    assert dbt.rows_affected("fct_transactions") == len(touched["late_customer"])
    assert customer_keys(dbt.url, touched["late_customer"]) == {
        scalar(
            dbt.url, "select customer_key from core.dim_customers where customer_id = %s", (LATE_CUSTOMER,)
        )
    }

    incremental = query(dbt.url, FACT)
    dbt("run", "--full-refresh", "--select", "fct_transactions")
    assert dbt.rows_affected("fct_transactions") == len(incremental)
    assert query(dbt.url, FACT) == incremental
    # The marts followed every one of those changes too.
    assert_equals_full_refresh(dbt, dataset_copy)


def append_orders(dataset: Path, lines: list[tuple[int, int]], orders: list[int] | None = None) -> list[int]:
    """Append order lines (order_id, product_id) to the extract, and order headers copied from the first
    order under the ids `orders`. Returns the new line ids."""
    headers = pd.read_csv(dataset / "orders.csv", dtype={"order_date": str})
    details = pd.read_csv(dataset / "order_details.csv")
    prices = pd.read_json(dataset / "products.json").set_index("product_id")["price"]
    first_line = int(details["order_detail_id"].max()) + 1
    new_lines = pd.DataFrame(
        [
            (first_line + i, order_id, product_id, 2, int(prices[product_id]), 2 * int(prices[product_id]))
            for i, (order_id, product_id) in enumerate(lines)
        ],
        columns=details.columns,
    )
    new_headers = [headers.iloc[[0]].assign(order_id=order_id) for order_id in orders or []]
    pd.concat([headers, *new_headers]).to_csv(dataset / "orders.csv", index=False)
    pd.concat([details, new_lines]).to_csv(dataset / "order_details.csv", index=False)
    return new_lines["order_detail_id"].tolist()


@pytest.mark.slow
def test_append_loads_only_insert_and_still_equal_a_full_refresh(dbt: Dbt, dataset_copy: Path) -> None:
    dbt("build")
    assert last_fact_load(dbt.url) == "full refresh"
    max_order = scalar(dbt.url, "select max(order_id) from raw.orders")

    # New orders with their lines: appended, nothing else read or written.
    new_ids = append_orders(dataset_copy, [(max_order + 1, 1), (max_order + 1, 2), (max_order + 2, 3)],
                            orders=[max_order + 1, max_order + 2])  # fmt: skip
    reload(dbt.url, dataset_copy, "orders", "order_details")
    dbt("build")
    assert last_fact_load(dbt.url) == "append"
    assert dbt.rows_affected("fct_transactions") == len(new_ids)
    assert_equals_full_refresh(dbt, dataset_copy)

    # As the Airflow DAG runs them (Cosmos): every model in a dbt invocation of its own.
    new_ids = append_orders(dataset_copy, [(max_order + 3, 6)], orders=[max_order + 3])
    reload(dbt.url, dataset_copy, "orders", "order_details")
    for model in ("fct_transactions_loads", "fct_transactions", *MARTS):
        dbt("run", "--select", model)
    assert last_fact_load(dbt.url) == "append"
    dbt("run", "--select", "fct_transactions")
    assert dbt.rows_affected("fct_transactions") == 0
    assert_equals_full_refresh(dbt, dataset_copy)

    # New orders from customers new to their month: one by a customer who did not buy in the first
    # order's month, one in a month without sales so far (after a month without any): the marts count
    # each customer once more, add the month, and its growth stays null.
    headers = pd.read_csv(dataset_copy / "orders.csv", dtype={"order_date": str})
    dates = pd.to_datetime(headers["order_date"])
    first_month_buyers = set(
        headers.loc[dates.dt.to_period("M") == dates.iloc[0].to_period("M"), "customer_id"]
    )
    newcomer = next(c for c in headers["customer_id"] if c not in first_month_buyers)
    later = (dates.max() + pd.offsets.MonthBegin(2)).strftime("%Y-%m-%d %H:%M:%S.000")
    template = headers.iloc[0].to_dict()
    extra = pd.DataFrame([template | {"order_id": max_order + 4, "customer_id": newcomer},
                          template | {"order_id": max_order + 5, "order_date": later}])  # fmt: skip
    pd.concat([headers, extra]).to_csv(dataset_copy / "orders.csv", index=False)
    append_orders(dataset_copy, [(max_order + 4, 2), (max_order + 5, 3)])
    reload(dbt.url, dataset_copy, "orders", "order_details")
    dbt("build")
    assert last_fact_load(dbt.url) == "append"
    assert scalar(dbt.url, "select revenue_mom_growth_pct is null from marts.dm_revenue_by_months"
                  " where month_start = date_trunc('month', %s::timestamp)", (later,)) is True  # fmt: skip
    assert_equals_full_refresh(dbt, dataset_copy)

    # A new line for an order that already has lines: still an append for the fact; the marts cannot
    # add it to their distinct order counts, and recompute.
    append_orders(dataset_copy, [(max_order + 1, 4)])
    reload(dbt.url, dataset_copy, "order_details")
    dbt("build")
    assert last_fact_load(dbt.url) == "append"
    assert dbt.rows_affected("fct_transactions") == 1
    assert_equals_full_refresh(dbt, dataset_copy)

    # A line whose order header has not arrived yet (an id above every order): appended with unknown
    # keys; when its header arrives, the run compares, and the line gets its keys.
    late = append_orders(dataset_copy, [(max_order + 10, 5)])
    reload(dbt.url, dataset_copy, "order_details")
    # (a line without its order header belongs to no month: the monthly and cohort reconciliations
    # report it, by design)
    dbt("build", "--exclude", "assert_revenue_by_months_equals_fct", "assert_cohort_revenue_equals_fct")
    assert last_fact_load(dbt.url) == "append"
    assert customer_keys(dbt.url, late) == {"-1"}
    append_orders(dataset_copy, [], orders=[max_order + 10])
    reload(dbt.url, dataset_copy, "orders")
    dbt("build")
    assert last_fact_load(dbt.url) == "compare"
    assert customer_keys(dbt.url, late) != {"-1"}
    assert_equals_full_refresh(dbt, dataset_copy)

    # An old order delivered elsewhere (its header changed): compare, and only its lines rewritten.
    headers = pd.read_csv(dataset_copy / "orders.csv", dtype={"order_date": str})
    moved = int(headers["order_id"].iloc[5])
    other_city = int(headers.loc[headers["city_id"] != headers["city_id"].iloc[5], "city_id"].iloc[0])
    headers.loc[headers["order_id"] == moved, "city_id"] = other_city
    headers.to_csv(dataset_copy / "orders.csv", index=False)
    reload(dbt.url, dataset_copy, "orders")
    dbt("build")
    assert last_fact_load(dbt.url) == "compare"
    assert dbt.rows_affected("fct_transactions") == scalar(
        dbt.url, "select count(*) from raw.order_details where order_id = %s", (moved,)
    )
    assert_equals_full_refresh(dbt, dataset_copy)

    # Nothing new: an append of nothing.
    dbt("build")
    assert last_fact_load(dbt.url) == "append"
    assert dbt.rows_affected("fct_transactions") == 0
    assert_equals_full_refresh(dbt, dataset_copy)


@pytest.mark.slow
def test_load_log_keeps_a_week_and_what_the_next_runs_need(dbt: Dbt, dataset_copy: Path) -> None:
    dbt("build")  # full refresh
    headers = pd.read_csv(dataset_copy / "orders.csv", dtype={"order_date": str})
    # An old order delivered elsewhere: a compare load, which re-checks every fact row.
    headers.loc[0, "city_id"] = int(
        headers.loc[headers["city_id"] != headers["city_id"].iloc[0], "city_id"].iloc[0]
    )
    headers.to_csv(dataset_copy / "orders.csv", index=False)
    reload(dbt.url, dataset_copy, "orders")
    dbt("build")
    assert last_fact_load(dbt.url) == "compare"
    dbt("build")
    assert last_fact_load(dbt.url) == "append"

    # Eight days later (the log and the marts' record of the last load they read, moved back).
    week_ago = "- interval '8 days'"
    with psycopg.connect(dbt.url, autocommit=True) as conn:
        conn.execute(f"update core.fct_transactions_loads set loaded_at = loaded_at {week_ago},"
                     f" consumed_at = consumed_at {week_ago}")  # fmt: skip
        for mart in ("dm_revenue_by_months", "dm_perfomance_product_by_cities"):
            conn.execute(f"update marts.{mart} set fact_loaded_at = fact_loaded_at {week_ago}")
    paths_before = [row[0] for row in query(dbt.url, "select load_path from core.fct_transactions_loads"
                                                     " order by loaded_at")]  # fmt: skip
    assert paths_before == ["full refresh", "compare", "append"]

    # New orders: the full refresh's row goes (older than a week, before the last whole check); the
    # compare (the last whole check) and what followed stay; the marts still add the new lines.
    max_order = scalar(dbt.url, "select max(order_id) from raw.orders")
    append_orders(dataset_copy, [(max_order + 1, 1)], orders=[max_order + 1])
    reload(dbt.url, dataset_copy, "orders", "order_details")
    dbt("build")
    paths_after = [row[0] for row in query(dbt.url, "select load_path from core.fct_transactions_loads"
                                                    " order by loaded_at")]  # fmt: skip
    assert paths_after == ["compare", "append", "append"]
    assert_equals_full_refresh(dbt, dataset_copy)


# ------------------------------------------------------------------------------ the shop's mirror

SHOP_CUSTOMER = 900_002
SHOP_CREATED_AT = "2023-01-02 08:30:00+07"  # a new year: dim_dates must grow to hold it


def mirror_at(url: str, table: str, rows: list[dict], *, deleted: bool = False) -> None:
    """Shop rows created (and last updated) at SHOP_CREATED_AT unless they say otherwise."""
    rows = [{"created_at": SHOP_CREATED_AT, "updated_at": SHOP_CREATED_AT, **row} for row in rows]
    mirror(url, table, rows, deleted=deleted)


def extract_order(url: str, order_id: int) -> dict:
    """An extract order as the shop's seed has it (created_at = the naive date at Jakarta time)."""
    (row,) = query(
        url,
        "select order_id, (order_date::text || '+07')::timestamptz, customer_id, province_id, city_id"
        " from raw.orders where order_id = %s",
        (order_id,),
    )
    keys = ("id", "created_at", "customer_id", "province_id", "city_id")
    return {**dict(zip(keys, row, strict=True)), "status": "delivered", "updated_at": row[1]}


def extract_lines(url: str, order_id: int) -> list[dict]:
    rows = query(
        url,
        "select order_detail_id, order_id, product_id, qty, item_price, unit_sales"
        " from raw.order_details where order_id = %s order by order_detail_id",
        (order_id,),
    )
    keys = ("id", "order_id", "product_id", "quantity", "unit_price", "amount")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def fact_ids(url: str, ids: list[int]) -> set[int]:
    rows = query(
        url, "select transaction_id from core.fct_transactions where transaction_id = any(%s)", (ids,)
    )
    return {r[0] for r in rows}


@pytest.mark.slow
def test_incremental_run_follows_the_shops_inserts_updates_deletes_and_cancels(dbt: Dbt) -> None:
    # The loader created the mirror empty: the extracts alone build the model.
    assert scalar(dbt.url, "select count(*) from raw_store.shop_orderline") == 0
    dbt("build")
    lines_before = scalar(dbt.url, "select count(*) from core.fct_transactions")
    revenue_before = scalar(dbt.url, "select sum(revenue) from marts.dm_revenue_by_months")

    # Extract orders the shop then changes: one line's quantity, one line deleted, one order cancelled.
    updated_order, deleted_order, cancelled_order = 1, 2, 3
    (updated_line,) = extract_lines(dbt.url, updated_order)[:1]
    (deleted_line,) = extract_lines(dbt.url, deleted_order)[:1]
    cancelled_lines = extract_lines(dbt.url, cancelled_order)
    mirror_at(
        dbt.url,
        "shop_customer",
        [{"id": SHOP_CUSTOMER, "first_name": " Sari ", "last_name": "Dewi", "gender": "female"}],
    )
    new_order = scalar(dbt.url, "select max(order_id) + 1 from raw.orders")
    first_line = scalar(dbt.url, "select max(order_detail_id) + 1 from raw.order_details")
    shop_order = {"id": new_order, "customer_id": SHOP_CUSTOMER, "province_id": 5, "city_id": 91}
    mirror_at(
        dbt.url,
        "shop_order",
        [
            {**shop_order, "status": "paid"},
            extract_order(dbt.url, updated_order),
            {**extract_order(dbt.url, cancelled_order), "status": "cancelled"},
        ],
    )
    new_lines = [
        {
            "id": first_line,
            "order_id": new_order,
            "product_id": 1,
            "quantity": 2,
            "unit_price": 280_000,
            "amount": 560_000,
        },
        {
            "id": first_line + 1,
            "order_id": new_order,
            "product_id": 42,
            "quantity": 1,
            "unit_price": 110_000,
            "amount": 110_000,
        },
    ]
    updated = {**updated_line, "quantity": updated_line["quantity"] + 1}
    updated["amount"] = updated["quantity"] * updated["unit_price"]
    mirror_at(dbt.url, "shop_orderline", [*new_lines, updated])
    mirror_at(dbt.url, "shop_orderline", [deleted_line], deleted=True)

    dbt("build")
    # The merge wrote the two new lines and the changed one; the deleted and cancelled lines are gone.
    assert dbt.rows_affected("fct_transactions") == len(new_lines) + 1
    gone = [deleted_line["id"], *(line["id"] for line in cancelled_lines)]
    assert fact_ids(dbt.url, gone) == set()
    assert scalar(dbt.url, "select count(*) from core.fct_transactions") == lines_before + len(
        new_lines
    ) - len(gone)
    (shop_row,) = query(
        dbt.url,
        "select f.order_date, f.date_key, c.customer_id, c.full_name, c.gender from core.fct_transactions f"
        " join core.dim_customers c using (customer_key) where f.transaction_id = %s",
        (first_line,),
    )
    assert shop_row == (datetime(2023, 1, 2, 8, 30), 20230102, SHOP_CUSTOMER, "Sari Dewi", "Female")
    assert (
        scalar(
            dbt.url, "select quantity from core.fct_transactions where transaction_id = %s", (updated["id"],)
        )
        == updated["quantity"]
    )
    expected = (
        revenue_before
        + sum(line["amount"] for line in new_lines)
        + updated["unit_price"]
        - deleted_line["amount"]
        - sum(line["amount"] for line in cancelled_lines)
    )
    assert scalar(dbt.url, "select sum(revenue) from marts.dm_revenue_by_months") == expected
    assert (
        scalar(
            dbt.url, "select total_orders from marts.dm_revenue_by_months where month_start = '2023-01-01'"
        )
        == 1
    )
    assert_marts_equal(dbt.url, sales_from_files_and_mirror(DATASET_DIR, dbt.url))

    # Later: the shop cancels its new order and the customer changes the updated line back.
    mirror_at(
        dbt.url,
        "shop_order",
        [{**shop_order, "status": "cancelled"}],
    )
    mirror_at(dbt.url, "shop_orderline", [updated_line])
    dbt("build", "--select", "stg_orders+", "stg_order_details+")
    assert dbt.rows_affected("fct_transactions") == 1
    assert fact_ids(dbt.url, [line["id"] for line in new_lines]) == set()
    assert_marts_equal(dbt.url, sales_from_files_and_mirror(DATASET_DIR, dbt.url))

    incremental = query(dbt.url, FACT)
    dbt("run", "--full-refresh", "--select", "fct_transactions")
    assert query(dbt.url, FACT) == incremental
    assert scalar(dbt.url, "select count(*) from core.fct_transactions") == lines_before - len(gone)
