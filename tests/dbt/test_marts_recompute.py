"""Both marts recomputed from the extract files with pandas, independently of the database and dbt.

The files are read directly (xlsx, parquet, json, csv), joined and aggregated in Python; the
marts built by dbt must match row by row: counts and revenue exactly (to the rupiah),
percentages and averages to 0.01.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import psycopg
import pytest

from tests.conftest import DATASET_DIR
from tests.dbt.conftest import Dbt

PCT_TOLERANCE = 0.01 + 1e-9  # rounding to 2 decimals may differ by one unit (half-even vs half-up)


def read_extracts(dataset: Path) -> dict[str, pd.DataFrame]:
    return {
        "provinces": pd.read_excel(dataset / "provinces.xlsx", engine="calamine"),
        "cities": pd.read_excel(dataset / "cities.xlsx", engine="calamine"),
        "customers": pd.read_parquet(dataset / "customers.parquet"),
        "categories": pd.read_json(dataset / "product_categories.json"),
        "products": pd.read_json(dataset / "products.json"),
        "orders": pd.read_csv(dataset / "orders.csv", parse_dates=["order_date"]),
        "details": pd.read_csv(dataset / "order_details.csv"),
    }


def order_lines(x: dict[str, pd.DataFrame]) -> pd.DataFrame:
    lines = x["details"].merge(x["orders"], on="order_id", how="inner", validate="many_to_one")
    assert len(lines) == len(x["details"]), "the committed extracts have no orphan lines"
    return lines


def expected_revenue_by_months(x: dict[str, pd.DataFrame]) -> pd.DataFrame:
    lines = order_lines(x)
    lines["month_start"] = lines["order_date"].dt.to_period("M").dt.to_timestamp().dt.date
    monthly = (
        lines.groupby("month_start")
        .agg(
            total_orders=("order_id", "nunique"),
            total_customers=("customer_id", "nunique"),
            total_quantity=("qty", "sum"),
            revenue=("unit_sales", "sum"),
        )
        .reset_index()
        .sort_values("month_start")
    )
    starts = pd.to_datetime(monthly["month_start"])
    monthly["year"] = starts.dt.year
    monthly["month"] = starts.dt.month
    monthly["month_name"] = starts.dt.strftime("%B")
    monthly["avg_order_value"] = monthly["revenue"] / monthly["total_orders"]
    previous = monthly["revenue"].shift(1)
    consecutive = starts.shift(1) + pd.DateOffset(months=1) == starts
    monthly["revenue_mom_growth_pct"] = ((monthly["revenue"] - previous) / previous * 100).where(consecutive)
    return monthly


def expected_performance(x: dict[str, pd.DataFrame]) -> pd.DataFrame:
    lines = order_lines(x)
    sales = (
        lines.groupby(["city_id", "product_id"])
        .agg(
            total_orders=("order_id", "nunique"),
            total_quantity=("qty", "sum"),
            revenue=("unit_sales", "sum"),
        )
        .reset_index()
    )
    city_revenue = sales.groupby("city_id")["revenue"].transform("sum")
    sales["revenue_share_in_city_pct"] = sales["revenue"] / city_revenue * 100
    # rank(): ties share the best rank, the next one is skipped
    sales["revenue_rank_in_city"] = (
        sales.groupby("city_id")["revenue"].rank(method="min", ascending=False).astype(int)
    )
    cities = x["cities"].merge(x["provinces"], on="province_id")
    products = x["products"].merge(x["categories"], on="product_category_id")
    products["product_type"] = products["product_name"].str.rsplit(" ", n=1).str[0]
    sales = sales.merge(cities, on="city_id", validate="many_to_one")
    sales = sales.merge(products, on="product_id", validate="many_to_one")
    return sales.rename(columns={"city_names": "city_name", "province_names": "province_name"})


def read_mart(url: str, table: str) -> pd.DataFrame:
    with psycopg.connect(url) as conn:
        cursor = conn.execute(f"select * from marts.{table}")
        columns = [c.name for c in cursor.description]
        return pd.DataFrame(cursor.fetchall(), columns=columns)


def assert_same_rows(
    expected: pd.DataFrame, actual: pd.DataFrame, keys: list[str], exact: list[str], approx: list[str]
) -> None:
    assert len(actual) == len(expected), f"{len(actual)} mart rows, {len(expected)} expected"
    merged = expected.merge(actual, on=keys, how="outer", suffixes=("_expected", "_mart"), indicator=True)
    unmatched = merged[merged["_merge"] != "both"]
    assert unmatched.empty, f"rows on one side only:\n{unmatched[[*keys, '_merge']]}"
    for column in exact:
        e, a = merged[f"{column}_expected"], merged[f"{column}_mart"]
        bad = merged[e.astype(object) != a.astype(object)]
        assert bad.empty, f"{column} differs:\n{bad[[*keys, f'{column}_expected', f'{column}_mart']]}"
    for column in approx:
        e = merged[f"{column}_expected"].astype(float)
        a = merged[f"{column}_mart"].astype(float)
        both_null = e.isna() & a.isna()
        bad = merged[~both_null & ~((e - a).abs() <= PCT_TOLERANCE)]
        assert bad.empty, (
            f"{column} differs by more than 0.01:\n{bad[[*keys, f'{column}_expected', f'{column}_mart']]}"
        )


@pytest.mark.slow
def test_marts_equal_an_independent_recomputation_from_the_files(dbt: Dbt) -> None:
    dbt("build")
    extracts = read_extracts(DATASET_DIR)

    expected = expected_revenue_by_months(extracts)
    actual = read_mart(dbt.url, "dm_revenue_by_months")
    assert actual["revenue_mom_growth_pct"].isna().sum() == 1, "null only for the first month"
    assert_same_rows(
        expected,
        actual,
        keys=["month_start"],
        exact=["year", "month", "month_name", "total_orders", "total_customers", "total_quantity", "revenue"],
        approx=["avg_order_value", "revenue_mom_growth_pct"],
    )

    expected = expected_performance(extracts)
    actual = read_mart(dbt.url, "dm_perfomance_product_by_cities")
    assert_same_rows(
        expected,
        actual,
        keys=["city_id", "product_id"],
        exact=[
            "province_id", "province_name", "city_name", "product_name", "product_type", "size",
            "product_category_name", "total_orders", "total_quantity", "revenue", "revenue_rank_in_city",
        ],
        approx=["revenue_share_in_city_pct"],
    )  # fmt: skip
    shares = actual.groupby("city_id")["revenue_share_in_city_pct"].sum().astype(float)
    assert ((shares - 100).abs() <= 0.005 * actual.groupby("city_id").size()).all()
