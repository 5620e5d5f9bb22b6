"""The transformation benchmark's changes to the extracts, on the committed dataset (scale 1).

The benchmark itself (`make bench-transform`) prints figures and is not run here: each scale waits
out the dbt project's source lookback twice. What it relies on is checked: step (a) appends whole
orders with fresh ids well above the shop's, and the reload comparison changes exactly the lines
it says, with a consistent amount.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from apparel.bench_transform import ID_GAP, add_new_orders, change_quantities, node_phase
from tests.conftest import DATASET_DIR


def read(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{name}.csv", dtype={"order_date": str})


def test_new_orders_are_appended_whole_with_fresh_ids(tmp_path: Path) -> None:
    orders, details = read(DATASET_DIR, "orders"), read(DATASET_DIR, "order_details")

    added_orders, added_lines = add_new_orders(DATASET_DIR, tmp_path, count=25)

    new_orders, new_details = read(tmp_path, "orders"), read(tmp_path, "order_details")
    assert added_orders == 25 and len(new_orders) == len(orders) + 25
    assert len(new_details) == len(details) + added_lines
    # The original rows are untouched, the new ones follow them, with the extract's date format.
    pd.testing.assert_frame_equal(new_orders.head(len(orders)), orders)
    pd.testing.assert_frame_equal(new_details.head(len(details)), details)
    appended, appended_lines = new_orders.tail(25), new_details.tail(added_lines)
    # Copies of the 25 newest orders: new orders dated like the latest ones.
    newest = orders.sort_values(["order_date", "order_id"]).tail(25).sort_index()
    assert appended["order_date"].tolist() == newest["order_date"].tolist()
    assert appended["order_date"].min() >= orders["order_date"].max()[:7]
    # Ids start ID_GAP above the highest (the shop's sequences hand out the ones in between).
    assert appended["order_id"].min() == orders["order_id"].max() + ID_GAP
    assert appended_lines["order_detail_id"].min() == details["order_detail_id"].max() + ID_GAP
    assert new_details["order_detail_id"].is_unique and new_orders["order_id"].is_unique
    # Every new line belongs to a new order, and each new order has its template's lines.
    assert set(appended_lines["order_id"]) == set(appended["order_id"])
    templates = details[details["order_id"].isin(newest["order_id"])]
    assert added_lines == len(templates)
    assert appended_lines["unit_sales"].sum() == templates["unit_sales"].sum()


def test_changed_quantities_touch_one_percent_of_the_lines(tmp_path: Path) -> None:
    details = read(DATASET_DIR, "order_details")

    rows, changed = change_quantities(DATASET_DIR, tmp_path)

    after = read(tmp_path, "order_details")
    assert rows == len(details) == len(after)
    differs = after["qty"] != details["qty"]
    assert differs.sum() == changed == (len(details) + 99) // 100
    assert after["qty"].between(1, 9).all()
    assert (after["unit_sales"] == after["qty"] * after["item_price"]).all()
    unchanged = after.columns.drop(["qty", "unit_sales"])
    pd.testing.assert_frame_equal(after[unchanged], details[unchanged])


def test_node_phases() -> None:
    manifest = {
        "test.apparel.unique_fct.abc": {"attached_node": "model.apparel.fct_transactions"},
        "test.apparel.not_null_base.abc": {"attached_node": "model.apparel.base_orders"},
        "test.apparel.snap.abc": {"attached_node": "snapshot.apparel.snap_products"},
        "test.apparel.assert_x": {},
    }
    assert node_phase("model.apparel.base_order_details", manifest) == "staging base tables"
    assert node_phase("model.apparel.dm_market_reach", manifest) == "business marts"
    assert node_phase("model.apparel.dm_revenue_by_months", manifest) == "marts"
    assert node_phase("seed.apparel.province_iso_codes", manifest) == "seeds"
    assert node_phase("test.apparel.unique_fct.abc", manifest) == "tests: fct_transactions"
    assert node_phase("test.apparel.not_null_base.abc", manifest) == "tests: staging"
    assert node_phase("test.apparel.snap.abc", manifest) == "tests: dimensions and snapshot"
    assert node_phase("test.apparel.assert_x", manifest) == "tests: reconciliations"
