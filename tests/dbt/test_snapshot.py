"""dim_products keeps price history (SCD2) and each fact line points at the version valid on its order date.

A version's validity starts when the snapshot first saw it (load time), except a product's first
version, which is valid from 1900-01-01. So the later extract's new orders are dated after the
second build (two days ahead): those must get the new version, the 2022 orders keep the old one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from tests.dbt.conftest import Dbt, query, reload, scalar

CHANGED = (1, 2)  # product ids whose price changes
UNCHANGED = 3


def write_later_extract(dataset: Path, order_date: datetime) -> tuple[dict[int, int], list[int]]:
    """New prices for CHANGED products, and new orders at the new prices. Returns new prices, new line ids."""
    products = pd.read_json(dataset / "products.json")
    for product_id in CHANGED:
        products.loc[products["product_id"] == product_id, "price"] += 15_000
    products.to_json(dataset / "products.json")  # pandas' default "columns" orient, as the extracts
    prices = products.set_index("product_id")["price"]

    orders = pd.read_csv(dataset / "orders.csv", dtype={"order_date": str})
    details = pd.read_csv(dataset / "order_details.csv")
    order_id = int(orders["order_id"].max()) + 1
    new_order = orders.iloc[[0]].assign(order_id=order_id, order_date=f"{order_date:%Y-%m-%d %H:%M:%S}.000")
    first_line = int(details["order_detail_id"].max()) + 1
    new_lines = pd.DataFrame(
        [
            (first_line + i, order_id, product_id, 2, int(prices[product_id]), 2 * int(prices[product_id]))
            for i, product_id in enumerate((*CHANGED, UNCHANGED))
        ],
        columns=details.columns,
    )
    pd.concat([orders, new_order]).to_csv(dataset / "orders.csv", index=False)
    pd.concat([details, new_lines]).to_csv(dataset / "order_details.csv", index=False)
    return {p: int(prices[p]) for p in CHANGED}, new_lines["order_detail_id"].tolist()


@pytest.mark.slow
def test_price_change_adds_a_version_and_facts_use_the_version_of_their_date(
    dbt: Dbt, dataset_copy: Path
) -> None:
    dbt("build")
    old_prices = dict(
        query(
            dbt.url, "select product_id, price from raw.products where product_id = any(%s)", (list(CHANGED),)
        )
    )
    old_keys = dict(
        query(
            dbt.url,
            "select product_id, product_key from core.dim_products where product_id = any(%s)",
            (list(CHANGED),),
        )
    )

    # After the change is loaded and snapshotted; the server clock is UTC like the snapshot's.
    order_date = datetime.now(UTC).replace(
        tzinfo=None, hour=0, minute=0, second=0, microsecond=0
    ) + timedelta(days=2)
    new_prices, new_lines = write_later_extract(dataset_copy, order_date)
    reload(dbt.url, dataset_copy, "products", "orders", "order_details")
    dbt("build")

    versions = query(
        dbt.url,
        "select product_id, version_number, price, valid_from, valid_to, is_current, product_key"
        " from core.dim_products where product_id = any(%s) order by product_id, version_number",
        ([*CHANGED, UNCHANGED],),
    )
    by_product: dict[int, list[tuple]] = {}
    for row in versions:
        by_product.setdefault(row[0], []).append(row)
    assert len(by_product[UNCHANGED]) == 1
    for product_id in CHANGED:
        first, second = by_product[product_id]
        assert (first[2], second[2]) == (old_prices[product_id], new_prices[product_id])
        assert first[3] == datetime(1900, 1, 1) and first[4] == second[3] < order_date
        assert second[4] == datetime(9999, 12, 31) and second[5] and not first[5]
        assert first[6] == old_keys[product_id], "the first version keeps its key"

    # New lines reference the new versions, the 2022 lines of the same products the old ones.
    new_refs = dict(
        query(
            dbt.url,
            "select d.product_id, d.version_number from core.fct_transactions f"
            " join core.dim_products d using (product_key) where f.transaction_id = any(%s)",
            (new_lines,),
        )
    )
    assert new_refs == {CHANGED[0]: 2, CHANGED[1]: 2, UNCHANGED: 1}
    assert (
        scalar(
            dbt.url,
            "select count(*) from core.fct_transactions f join core.dim_products d using (product_key)"
            " where d.product_id = any(%s) and f.order_date < '2023-01-01' and d.version_number <> 1",
            (list(CHANGED),),
        )
        == 0
    )
    # Every line's charged price is its version's list price (the extracts' item_price = price).
    assert (
        scalar(
            dbt.url,
            "select count(*) from core.fct_transactions f join core.dim_products d using (product_key)"
            " where f.unit_price <> d.price",
        )
        == 0
    )
    # Only the new lines were written: older lines kept their (still valid) version.
    assert dbt.rows_affected("fct_transactions") == len(new_lines)
