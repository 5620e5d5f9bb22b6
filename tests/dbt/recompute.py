"""The marts recomputed with pandas, independently of the database and dbt.

The inputs are read where they come from: the extract files (xlsx, parquet, json, csv) and, for
the shop's orders, the shop's own database. They are joined and aggregated in Python with the
rules the marts' docs state; the marts dbt built must match row by row: counts and revenue
exactly (to the rupiah), percentages, averages and lift to their last decimal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psycopg

PCT_TOLERANCE = 0.01 + 1e-9  # rounding to 2 decimals may differ by one unit (half-even vs half-up)
LIFT_TOLERANCE = 0.0001 + 1e-9  # lift has 4 decimals


@dataclass(frozen=True)
class Sales:
    """The sold order lines (cancelled orders left out), each with its order header, and the
    reference tables: what every mart is computed from."""

    # order_detail_id, order_id, product_id, qty, unit_sales, order_date, customer_id, city_id
    lines: pd.DataFrame
    customers: pd.DataFrame  # customer_id, first_name, last_name, gender
    cities: pd.DataFrame  # city_id, city_name, city_type, province_id, province_name
    products: pd.DataFrame  # product_id, product_name, product_type, size, product_category_name


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


# Each dimension's unknown member: a line whose customer, city or product is missing points here.
UNKNOWN_CUSTOMER = {"customer_id": -1, "first_name": "Unknown", "last_name": "Unknown",
                    "full_name": "Unknown", "gender": "Unknown"}  # fmt: skip
UNKNOWN_CITY = {"city_id": -1, "city_name": "UNKNOWN", "city_type": "UNKNOWN", "province_id": -1,
                "province_name": "UNKNOWN"}  # fmt: skip
UNKNOWN_PRODUCT = {"product_id": -1, "product_name": "Unknown", "product_type": "Unknown", "size": "Unknown",
                   "product_category_name": "Unknown"}  # fmt: skip


def _with(frame: pd.DataFrame, row: dict) -> pd.DataFrame:
    return pd.concat([frame, pd.DataFrame([row])], ignore_index=True)


def _sales(
    x: dict[str, pd.DataFrame], orders: pd.DataFrame, lines: pd.DataFrame, customers: pd.DataFrame
) -> Sales:
    """Sold lines from order headers (with a status), lines and customers, by the staging and fact
    rules: lines of cancelled orders are not sales; a line whose order header, customer, city or
    product is missing keeps its amount and points at the unknown member (a line without its
    header has no date, so no product version either)."""
    cities = x["cities"].merge(x["provinces"], on="province_id", validate="many_to_one")
    cities = cities.rename(columns={"city_names": "city_name", "province_names": "province_name"})
    cities["city_type"] = cities["city_name"].str.split(" ", n=1).str[0]
    products = x["products"].merge(x["categories"], on="product_category_id", validate="many_to_one")
    products["product_type"] = products["product_name"].str.rsplit(" ", n=1).str[0]
    customers = customers.assign(
        first_name=customers["first_name"].str.strip(),
        last_name=customers["last_name"].str.strip(),
        gender=customers["gender"].str.strip().str.capitalize(),
    )
    sold = lines.merge(orders, on="order_id", how="left", validate="many_to_one")
    sold = sold[sold["status"] != "cancelled"].copy()
    sold["customer_id"] = sold["customer_id"].where(sold["customer_id"].isin(customers["customer_id"]), -1)
    sold["city_id"] = sold["city_id"].where(sold["city_id"].isin(cities["city_id"]), -1)
    dated = sold["order_date"].notna()
    sold["product_id"] = sold["product_id"].where(sold["product_id"].isin(products["product_id"]) & dated, -1)
    sold = sold.astype({"customer_id": int, "city_id": int, "product_id": int})
    return Sales(
        sold,
        _with(customers, UNKNOWN_CUSTOMER),
        _with(cities, UNKNOWN_CITY),
        _with(products, UNKNOWN_PRODUCT),
    )


def sales_from_files(dataset: Path) -> Sales:
    """Sales as the extracts alone hold them (every extract order was delivered)."""
    x = read_extracts(dataset)
    return _sales(x, x["orders"].assign(status="delivered"), x["details"], x["customers"])


ORDERS_SQL = (
    "select id as order_id, (created_at at time zone 'Asia/Jakarta') as order_date, customer_id, city_id,"
    " status{extra} from {schema}shop_order"
)
LINES_SQL = (
    "select id as order_detail_id, order_id, product_id, quantity as qty, amount as unit_sales{extra}"
    " from {schema}shop_orderline"
)
CUSTOMERS_SQL = "select id as customer_id, first_name, last_name, gender{extra} from {schema}shop_customer"


def _shop_tables(url: str, schema: str = "", extra: str = "") -> list[pd.DataFrame]:
    with psycopg.connect(url) as conn:
        frames = [
            _frame(conn, q.format(schema=schema, extra=extra)) for q in (ORDERS_SQL, LINES_SQL, CUSTOMERS_SQL)
        ]
    frames[0]["order_date"] = pd.to_datetime(frames[0]["order_date"])
    return frames


def sales_from_store(dataset: Path, store_url: str) -> Sales:
    """Sales as the shop's database holds them, with the reference extracts (cities, products).

    The shop was seeded from the extracts, so its tables hold every order: the seeded history and
    what the shop did since (new orders and customers, cancellations, deleted lines). Its times are
    turned into the shop's local time (WIB), as the extracts' order dates are."""
    return _sales(read_extracts(dataset), *_shop_tables(store_url))


def sales_from_files_and_mirror(dataset: Path, warehouse_url: str) -> Sales:
    """Sales from the extract files and the shop's rows as mirrored in `raw_store`, by the rule the
    staging docs state: for one id the most recent change wins, a deletion on either side included.

    An extract row's change time is when a load last inserted, changed or restored it (its raw row's
    `_loaded_at`); an id the files no longer hold was deleted at its raw row's `_loaded_at`. A shop
    row's change time is its commit time (`_store_committed_at`, else its `updated_at`); a tombstone
    is a deletion. On a tie the shop's row wins."""
    x = read_extracts(dataset)
    shop = _shop_tables(
        warehouse_url,
        schema="raw_store.",
        extra=", _deleted_at is not null as deleted, coalesce(_store_committed_at, updated_at) as changed_at",
    )
    extract = [x["orders"].assign(status="delivered"), x["details"], x["customers"]]
    raw_tables = ["orders", "order_details", "customers"]
    keys = ["order_id", "order_detail_id", "customer_id"]
    combined = []
    with psycopg.connect(warehouse_url) as conn:
        for ours, theirs, table, key in zip(extract, shop, raw_tables, keys, strict=True):
            times = _frame(conn, f"select {key}, _loaded_at as changed_at from raw.{table}")
            ours = ours.merge(times, on=key, how="left", validate="one_to_one").assign(deleted=False)
            gone = times[~times[key].isin(ours[key])].assign(deleted=True)
            versions = pd.concat([ours.assign(shop=False), gone.assign(shop=False), theirs.assign(shop=True)])
            versions["changed_at"] = pd.to_datetime(versions["changed_at"], utc=True)
            latest = versions.sort_values([key, "changed_at", "shop"]).drop_duplicates(key, keep="last")
            alive = latest[~latest["deleted"].astype(bool)]
            combined.append(alive.drop(columns=["deleted", "changed_at", "shop"]))
    return _sales(x, *combined)


def _frame(conn: psycopg.Connection, sql: str) -> pd.DataFrame:
    cursor = conn.execute(sql)
    return pd.DataFrame(cursor.fetchall(), columns=[c.name for c in cursor.description])


def read_mart(url: str, table: str) -> pd.DataFrame:
    with psycopg.connect(url) as conn:
        return _frame(conn, f"select * from marts.{table}")


def _month_start(dates: pd.Series) -> pd.Series:
    return dates.dt.to_period("M").dt.to_timestamp().dt.date


def _ceil_score(k: pd.Series, n: int) -> pd.Series:
    """ceil(5 * k / n) in integers."""
    return (-(-5 * k.astype(int) // n)).astype(int)


# --- the brief's marts ---------------------------------------------------------------------------


def expected_revenue_by_months(s: Sales) -> pd.DataFrame:
    lines = s.lines.assign(month_start=_month_start(s.lines["order_date"]))
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


def expected_performance(s: Sales) -> pd.DataFrame:
    sales = (
        s.lines.groupby(["city_id", "product_id"])
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
    sales = sales.merge(s.cities, on="city_id", validate="many_to_one")
    return sales.merge(s.products, on="product_id", validate="many_to_one")


# --- the business marts --------------------------------------------------------------------------


def expected_customer_segments(s: Sales) -> pd.DataFrame:
    latest_day = s.lines["order_date"].max().normalize()
    c = (
        s.lines.groupby("customer_id")
        .agg(
            first_order=("order_date", "min"),
            last_order=("order_date", "max"),
            total_orders=("order_id", "nunique"),
            total_quantity=("qty", "sum"),
            revenue=("unit_sales", "sum"),
        )
        .reset_index()
    )
    c["first_order_date"] = c["first_order"].dt.date
    c["last_order_date"] = c["last_order"].dt.date
    c["recency_days"] = (latest_day - c["last_order"].dt.normalize()).dt.days
    c["avg_order_value"] = c["revenue"] / c["total_orders"]
    n = len(c)
    # k = customers whose measure is as good as this one's or worse, ties included
    # no order date at all (lines without their order header) counts as the least recent
    worst_first = c["recency_days"].fillna(float("inf"))
    c["recency_score"] = _ceil_score(worst_first.rank(method="max", ascending=False), n)
    c["frequency_score"] = _ceil_score(c["total_orders"].rank(method="max"), n)
    c["monetary_score"] = _ceil_score(c["revenue"].rank(method="max"), n)
    is_new = c["first_order"].dt.normalize() > latest_day - pd.Timedelta(days=90)
    r, f, m = c["recency_score"], c["frequency_score"], c["monetary_score"]
    c["rfm_segment"] = "Hibernating"
    for segment, rule in reversed(
        [
            ("New", is_new),
            ("Champions", (r >= 4) & (f >= 4) & (m >= 4)),
            ("Loyal", (r >= 3) & (f >= 3)),
            ("Promising", r >= 3),
            ("At risk", f >= 3),
        ]
    ):  # the first rule that matches wins: apply them last to first
        c.loc[rule, "rfm_segment"] = segment
    # the unknown member is named 'Unknown' (UNKNOWN_CUSTOMER), everyone else first and last name
    people = s.customers.assign(
        full_name=s.customers["full_name"].fillna(s.customers["first_name"] + " " + s.customers["last_name"])
        if "full_name" in s.customers
        else s.customers["first_name"] + " " + s.customers["last_name"]
    )
    return c.merge(people[["customer_id", "full_name", "gender"]], on="customer_id", validate="one_to_one")


def expected_cohort_retention(s: Sales) -> pd.DataFrame:
    dated = s.lines[s.lines["order_date"].notna()]  # a line without its order header is in no month
    lines = dated.assign(month=dated["order_date"].dt.to_period("M"))
    cohort = lines.groupby("customer_id")["month"].min().rename("cohort")
    lines = lines.join(cohort, on="customer_id")
    lines["offset"] = (lines["month"] - lines["cohort"]).apply(lambda d: d.n)
    sizes = cohort.value_counts()
    last = lines["month"].max()
    active = lines.groupby(["cohort", "offset"]).agg(
        active_customers=("customer_id", "nunique"), revenue=("unit_sales", "sum")
    )
    rows = []
    for month, size in sizes.items():
        for offset in range((last - month).n + 1):
            act, rev = active.loc[(month, offset)] if (month, offset) in active.index else (0, 0)
            rows.append(
                {
                    "cohort_month": month.to_timestamp().date(),
                    "months_since_first_order": offset,
                    "cohort_customers": int(size),
                    "active_customers": int(act),
                    "retention_pct": act / size * 100,
                    "revenue": int(rev),
                }
            )
    return pd.DataFrame(rows)


def expected_product_affinity(s: Sales) -> pd.DataFrame:
    baskets = s.lines[["order_id", "product_id"]].drop_duplicates()
    total_orders = baskets["order_id"].nunique()
    with_product = baskets.groupby("product_id").size().rename("orders")
    pairs = baskets.merge(baskets, on="order_id", suffixes=("_a", "_b"))
    pairs = pairs[pairs["product_id_a"] < pairs["product_id_b"]]
    p = pairs.groupby(["product_id_a", "product_id_b"]).size().rename("orders_together").reset_index()
    p["orders_with_a"] = p["product_id_a"].map(with_product)
    p["orders_with_b"] = p["product_id_b"].map(with_product)
    p["support_pct"] = p["orders_together"] / total_orders * 100
    p["confidence_a_to_b_pct"] = p["orders_together"] / p["orders_with_a"] * 100
    p["confidence_b_to_a_pct"] = p["orders_together"] / p["orders_with_b"] * 100
    p["lift"] = p["orders_together"] * total_orders / (p["orders_with_a"] * p["orders_with_b"])
    names = s.products[["product_id", "product_name", "product_type", "size"]]
    for side in ("a", "b"):
        p = p.merge(names.rename(columns={c: f"{c}_{side}" for c in names.columns}), on=f"product_id_{side}")
    return p


def expected_market_reach(s: Sales) -> pd.DataFrame:
    latest_day = s.lines["order_date"].max().normalize()
    day = s.lines["order_date"].dt.normalize()
    last_window = day > latest_day - pd.Timedelta(days=90)
    previous_window = ~last_window & (day > latest_day - pd.Timedelta(days=180))
    lines = s.lines.assign(
        last_90=s.lines["unit_sales"].where(last_window, 0),
        previous_90=s.lines["unit_sales"].where(previous_window, 0),
    )
    per_city = (
        lines.groupby("city_id")
        .agg(
            customers=("customer_id", "nunique"),
            orders=("order_id", "nunique"),
            revenue=("unit_sales", "sum"),
            first_order=("order_date", "min"),
            last_order=("order_date", "max"),
            revenue_last_90_days=("last_90", "sum"),
            revenue_previous_90_days=("previous_90", "sum"),
        )
        .reset_index()
    )
    # every city of the extract, those without a sale with zeros
    m = s.cities.merge(per_city, on="city_id", how="left", validate="one_to_one")
    for column in ("customers", "orders", "revenue", "revenue_last_90_days", "revenue_previous_90_days"):
        m[column] = m[column].fillna(0).astype(int)
    m["first_order_date"] = m["first_order"].dt.date.where(m["first_order"].notna(), None)
    m["last_order_date"] = m["last_order"].dt.date.where(m["last_order"].notna(), None)
    m["revenue_per_customer"] = (m["revenue"] / m["customers"].where(m["customers"] > 0)).fillna(0)
    previous = m["revenue_previous_90_days"].where(m["revenue_previous_90_days"] > 0)
    m["revenue_growth_pct"] = (m["revenue_last_90_days"] - previous) / previous * 100
    m["revenue_rank_in_province"] = (
        m.groupby("province_id")["revenue"].rank(method="min", ascending=False).astype(int)
    )
    return m


# --- comparison ----------------------------------------------------------------------------------


def assert_same_rows(
    expected: pd.DataFrame,
    actual: pd.DataFrame,
    keys: list[str],
    exact: list[str],
    approx: list[str] = (),
    tolerance: float = PCT_TOLERANCE,
) -> None:
    assert len(actual) == len(expected), f"{len(actual)} mart rows, {len(expected)} expected"
    merged = expected.merge(actual, on=keys, how="outer", suffixes=("_expected", "_mart"), indicator=True)
    unmatched = merged[merged["_merge"] != "both"]
    assert unmatched.empty, f"rows on one side only:\n{unmatched[[*keys, '_merge']]}"
    for column in exact:
        e, a = merged[f"{column}_expected"], merged[f"{column}_mart"]
        same = (e.astype(object) == a.astype(object)) | (e.isna() & a.isna())
        bad = merged[~same]
        assert bad.empty, f"{column} differs:\n{bad[[*keys, f'{column}_expected', f'{column}_mart']]}"
    for column in approx:
        e = merged[f"{column}_expected"].astype(float)
        a = merged[f"{column}_mart"].astype(float)
        both_null = e.isna() & a.isna()
        bad = merged[~both_null & ~((e - a).abs() <= tolerance)]
        shown = bad[[*keys, f"{column}_expected", f"{column}_mart"]]
        assert bad.empty, f"{column} differs by more than {tolerance:.4f}:\n{shown}"


def assert_marts_equal(url: str, s: Sales) -> None:
    """Every row and figure of the six marts in the warehouse at `url` equals the recomputation."""
    assert_same_rows(
        expected_revenue_by_months(s),
        read_mart(url, "dm_revenue_by_months"),
        keys=["month_start"],
        exact=["year", "month", "month_name", "total_orders", "total_customers", "total_quantity", "revenue"],
        approx=["avg_order_value", "revenue_mom_growth_pct"],
    )
    performance = read_mart(url, "dm_perfomance_product_by_cities")
    assert_same_rows(
        expected_performance(s),
        performance,
        keys=["city_id", "product_id"],
        exact=[
            "province_id", "province_name", "city_name", "product_name", "product_type", "size",
            "product_category_name", "total_orders", "total_quantity", "revenue", "revenue_rank_in_city",
        ],
        approx=["revenue_share_in_city_pct"],
    )  # fmt: skip
    shares = performance.groupby("city_id")["revenue_share_in_city_pct"].sum().astype(float)
    assert ((shares - 100).abs() <= 0.005 * performance.groupby("city_id").size()).all()

    assert_same_rows(
        expected_customer_segments(s),
        read_mart(url, "dm_customer_segments"),
        keys=["customer_id"],
        exact=[
            "full_name", "gender", "first_order_date", "last_order_date", "total_orders", "total_quantity",
            "revenue", "recency_days", "recency_score", "frequency_score", "monetary_score", "rfm_segment",
        ],
        approx=["avg_order_value"],
    )  # fmt: skip
    assert_same_rows(
        expected_cohort_retention(s),
        read_mart(url, "dm_cohort_retention"),
        keys=["cohort_month", "months_since_first_order"],
        exact=["cohort_customers", "active_customers", "revenue"],
        approx=["retention_pct"],
    )
    affinity_exact = [
        "product_name_a", "product_type_a", "size_a", "product_name_b", "product_type_b", "size_b",
        "orders_together", "orders_with_a", "orders_with_b",
    ]  # fmt: skip
    expected, actual = expected_product_affinity(s), read_mart(url, "dm_product_affinity")
    keys = ["product_id_a", "product_id_b"]
    assert_same_rows(
        expected,
        actual,
        keys=keys,
        exact=affinity_exact,
        approx=["support_pct", "confidence_a_to_b_pct", "confidence_b_to_a_pct"],
    )
    assert_same_rows(expected, actual, keys=keys, exact=[], approx=["lift"], tolerance=LIFT_TOLERANCE)

    reach = read_mart(url, "dm_market_reach")
    assert reach.loc[reach["city_id"] != -1, "province_iso_code"].notna().all(), "a province without its code"
    assert_same_rows(
        expected_market_reach(s),
        reach,
        keys=["city_id"],
        exact=[
            "province_id", "province_name", "city_name", "city_type", "customers", "orders", "revenue",
            "first_order_date",
            "last_order_date", "revenue_last_90_days", "revenue_previous_90_days", "revenue_rank_in_province",
        ],
        approx=["revenue_per_customer", "revenue_growth_pct"],
    )  # fmt: skip
