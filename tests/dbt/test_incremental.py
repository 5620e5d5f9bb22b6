"""fct_transactions is incremental: a later extract with new, changed and removed order lines is
processed by touching only those lines, a late-arriving customer re-keys only its lines, and the
result equals a full refresh."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.dbt.conftest import Dbt, query, reload, scalar

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
