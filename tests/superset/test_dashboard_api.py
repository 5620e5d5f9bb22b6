"""Both dashboards through Superset's REST API: every chart answers, and its figures are the
warehouse's: the marts' for Sales, raw_store's (the shop's real-time mirror) for Live orders."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from apparel.superset_setup import ASSETS_DIR, export_assets, import_assets
from tests.superset.conftest import WINDOW, LiveStore, RunningSuperset

pytestmark = pytest.mark.slow


def _uuids(kind: str) -> dict[str, str]:
    """Asset file stem -> uuid, from the committed YAML."""
    return {p.stem: str(yaml.safe_load(p.read_text())["uuid"]) for p in (ASSETS_DIR / kind).rglob("*.yaml")}


def _dashboard_charts(slug: str) -> dict[str, str]:
    """Chart file stem -> uuid of the charts a dashboard's committed YAML places."""
    for path in (ASSETS_DIR / "dashboards").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        if doc["slug"] == slug:
            placed = {
                i["meta"]["uuid"]
                for i in doc["position"].values()
                if isinstance(i, dict) and i.get("type") == "CHART"
            }
            return {stem: uuid for stem, uuid in _uuids("charts").items() if uuid in placed}
    raise LookupError(f"no dashboard with slug {slug}")


SALES_CHARTS = _dashboard_charts("sales")
LIVE_CHARTS = _dashboard_charts("live-orders")
CM_CHARTS = _dashboard_charts("customers-markets")


def query(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def scalar(url: str, sql: str) -> Any:
    return query(url, sql)[0][0]


def fetch_chart_data(superset: RunningSuperset, slug: str, charts: dict[str, str]) -> dict[str, list[dict]]:
    """Each chart of a dashboard (by asset file stem): its queries' results from the data endpoint."""
    client = superset.client
    listed = client.get("/api/v1/chart/", params={"q": "(columns:!(id,uuid,slice_name),page_size:100)"})
    by_uuid = {c["uuid"]: c["id"] for c in listed["result"]}
    on_dashboard = {c["id"] for c in client.dashboard_charts(slug)}
    assert on_dashboard == {by_uuid[u] for u in charts.values()}, f"{slug} holds exactly our charts"
    return {stem: client.chart_data(by_uuid[uuid]) for stem, uuid in charts.items()}


@pytest.fixture(scope="module")
def chart_data(superset: RunningSuperset) -> dict[str, list[dict[str, Any]]]:
    return fetch_chart_data(superset, "sales", SALES_CHARTS)


def rows(
    chart_data: dict[str, list[dict[str, Any]]], stem: str, query_index: int = 0
) -> list[dict[str, Any]]:
    return chart_data[stem][query_index]["data"]


def assert_every_chart_returns_rows(chart_data: dict[str, list[dict[str, Any]]]) -> None:
    for stem, results in chart_data.items():
        for result in results:
            assert result.get("error") is None, f"{stem}: {result.get('error')}"
            assert result["rowcount"] > 0, f"{stem} returned no rows"


def test_every_chart_returns_rows(chart_data: dict[str, list[dict[str, Any]]]) -> None:
    assert len(chart_data) == 12
    assert_every_chart_returns_rows(chart_data)


# When dbt last wrote the two marts, WIB, in ms as Superset's big number formats it as a timestamp.
MARTS_BUILT_MS = (
    "select extract(epoch from max(loaded_at) at time zone 'Asia/Jakarta') * 1000 from ("
    " select loaded_at from marts.dm_revenue_by_months"
    " union all select loaded_at from marts.dm_perfomance_product_by_cities) as marts"
)


def test_data_as_of_is_when_dbt_last_wrote_the_marts(superset: RunningSuperset, chart_data: dict) -> None:
    built_ms = scalar(superset.warehouse_url, MARTS_BUILT_MS)
    assert rows(chart_data, "data_as_of") == [{"data_as_of": pytest.approx(float(built_ms))}]


def test_kpis_equal_the_marts(superset: RunningSuperset, chart_data: dict) -> None:
    wh = superset.warehouse_url
    revenue, orders = query(wh, "select sum(revenue), sum(total_orders) from marts.dm_revenue_by_months")[0]
    assert rows(chart_data, "kpi_revenue") == [{"revenue": revenue}]
    assert rows(chart_data, "kpi_orders") == [{"orders": orders}]
    customers = scalar(wh, "select count(distinct customer_key) from core.fct_transactions")
    assert rows(chart_data, "kpi_customers") == [{"customers": customers}]
    assert rows(chart_data, "kpi_aov")[0]["avg_order_value"] == pytest.approx(float(revenue) / float(orders))
    assert revenue == 22_746_740_000 and orders == 7_100, "the committed dataset's totals"


def test_revenue_by_month_equals_the_mart(superset: RunningSuperset, chart_data: dict) -> None:
    mart = query(
        superset.warehouse_url,
        "select revenue, revenue_mom_growth_pct from marts.dm_revenue_by_months order by month_start",
    )
    revenue = [r["revenue"] for r in rows(chart_data, "revenue_by_month", 0)]
    growth = [r["mom_growth"] for r in rows(chart_data, "revenue_by_month", 1)]
    assert revenue == [float(r[0]) for r in mart]
    assert growth[0] is None and mart[0][1] is None, "no growth for the first month"
    assert growth[1:] == pytest.approx([float(r[1] / Decimal(100)) for r in mart[1:]])


def test_breakdowns_add_up_to_the_marts(superset: RunningSuperset, chart_data: dict) -> None:
    wh = superset.warehouse_url
    by_province = dict(
        query(
            wh,
            "select province_name, sum(revenue) from marts.dm_perfomance_product_by_cities group by 1",
        )
    )
    assert {r["province_name"]: r["revenue"] for r in rows(chart_data, "revenue_by_province")} == by_province
    total = sum(by_province.values())
    for stem in ("revenue_by_category", "revenue_by_gender"):
        assert sum(r["revenue"] for r in rows(chart_data, stem)) == total, stem
    mart = "marts.dm_perfomance_product_by_cities"
    by_category = dict(query(wh, f"select product_category_name, sum(revenue) from {mart} group by 1"))
    assert {r["product_category_name"]: r["revenue"] for r in rows(chart_data, "revenue_by_category")} == (
        by_category
    )


def test_top_products_and_cities_equal_the_mart(superset: RunningSuperset, chart_data: dict) -> None:
    wh = superset.warehouse_url
    mart = "marts.dm_perfomance_product_by_cities"
    top_products = query(
        wh, f"select product_name, sum(revenue) from {mart} group by 1 order by 2 desc limit 10"
    )
    assert [(r["product_name"], r["revenue"]) for r in rows(chart_data, "top_products")] == top_products
    top_cities = query(wh, f"select city_name, sum(revenue) from {mart} group by 1 order by 2 desc limit 10")
    assert [(r["city_name"], r["revenue"]) for r in rows(chart_data, "top_cities")] == top_cities


def test_city_table_lists_the_top_five_of_each_city(superset: RunningSuperset, chart_data: dict) -> None:
    mart = "marts.dm_perfomance_product_by_cities"
    expected = scalar(superset.warehouse_url, f"select count(*) from {mart} where revenue_rank_in_city <= 5")
    table = rows(chart_data, "city_products_table")
    assert len(table) == expected
    assert {r["revenue_rank_in_city"] for r in table} == {1, 2, 3, 4, 5}
    first = table[0]
    assert first["revenue_share_in_city_pct"] > 0 and first["revenue"] > 0


def test_reader_role_reads_but_cannot_write(superset: RunningSuperset) -> None:
    with psycopg.connect(superset.reader_url()) as conn:
        assert conn.execute("select count(*) from marts.dm_revenue_by_months").fetchone()[0] == 12
        assert conn.execute("select count(*) from core.fct_transactions").fetchone()[0] > 0
    # Two locks: its sessions are read-only, and it has no write privilege once a session asks to write.
    with psycopg.connect(superset.reader_url()) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("insert into marts.dm_revenue_by_months (month_start) values ('2030-01-01')")
    for statement in (
        "insert into marts.dm_revenue_by_months (month_start) values ('2030-01-01')",
        "delete from core.fct_transactions",
    ):
        with psycopg.connect(superset.reader_url()) as conn:
            conn.execute("set transaction read write")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    # Nor can it read below the model: the raw extracts, staging, the snapshots.
    for table in ("raw.orders", "staging.stg_orders", "snapshots.snap_products"):
        with (
            psycopg.connect(superset.reader_url()) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(f"select count(*) from {table}")


def test_tables_dbt_creates_later_stay_readable(superset: RunningSuperset) -> None:
    """Default privileges: a table the warehouse's owner creates in marts after the grant is readable."""
    with psycopg.connect(superset.warehouse_url, autocommit=True) as conn:
        conn.execute("create table marts.t_later as select 1 as x")
    try:
        with psycopg.connect(superset.reader_url()) as conn:
            assert conn.execute("select x from marts.t_later").fetchone() == (1,)
    finally:
        with psycopg.connect(superset.warehouse_url, autocommit=True) as conn:
            conn.execute("drop table marts.t_later")


def test_no_password_in_superset_or_yaml(superset: RunningSuperset) -> None:
    client = superset.client
    database = client.find("database", "database_name", "Django Apparel warehouse")
    uri = client.get(f"/api/v1/database/{database['id']}/connection")["result"]["sqlalchemy_uri"]
    assert uri.startswith(f"postgresql+psycopg2://{superset.settings.reader_user}@"), uri
    assert superset.settings.reader_password not in uri
    with psycopg.connect(superset.settings.metadata_url) as conn:
        stored = conn.execute("select password from dbs where database_name = 'Django Apparel warehouse'")
        assert stored.fetchone() == (None,)
    for path in ASSETS_DIR.rglob("*.yaml"):
        assert superset.settings.reader_password not in path.read_text()


def test_import_again_overwrites_ui_changes_and_duplicates_nothing(
    superset: RunningSuperset, tmp_path: Path
) -> None:
    client = superset.client

    def counts() -> dict[str, int]:
        return {
            r: client.get(f"/api/v1/{r}/")["count"] for r in ("dashboard", "chart", "dataset", "database")
        }

    before = counts()
    files = {kind: sum(1 for _ in (ASSETS_DIR / f"{kind}s").rglob("*.yaml")) for kind in before}
    assert before == files == {"dashboard": 3, "chart": 27, "dataset": 12, "database": 1}
    # A chart changed in the UI (here through the same REST API the UI uses) ...
    name = yaml.safe_load((ASSETS_DIR / "charts" / "top_cities.yaml").read_text())["slice_name"]
    chart = client.find("chart", "slice_name", name)
    client.request("PUT", f"/api/v1/chart/{chart['id']}", json={"slice_name": "Changed in the UI"})
    assert client.get(f"/api/v1/chart/{chart['id']}")["result"]["slice_name"] == "Changed in the UI"
    import_assets(client, superset.settings)
    assert counts() == before
    # ... is what the committed YAML says again after a re-import (it overwrites, never duplicates).
    assert client.get(f"/api/v1/chart/{chart['id']}")["result"]["slice_name"] == name
    # Exporting what was imported reproduces the committed YAML: `make superset-export` is a no-op.
    copy = tmp_path / "assets"
    shutil.copytree(ASSETS_DIR, copy)
    assert export_assets(client, superset.settings, copy) == []


# ----------------------------------------------------------------------------- Customers & markets


@pytest.fixture(scope="module")
def cm_data(superset: RunningSuperset) -> dict[str, list[dict[str, Any]]]:
    return fetch_chart_data(superset, "customers-markets", CM_CHARTS)


def test_cm_every_chart_returns_rows(cm_data: dict[str, list[dict[str, Any]]]) -> None:
    assert len(cm_data) == 6
    assert_every_chart_returns_rows(cm_data)


def test_segments_equal_the_mart(superset: RunningSuperset, cm_data: dict) -> None:
    mart = query(
        superset.warehouse_url,
        "select rfm_segment, count(*), sum(revenue) from marts.dm_customer_segments group by 1",
    )
    customers = {r["rfm_segment"]: r["customers"] for r in rows(cm_data, "segment_customers")}
    revenue = [(r["rfm_segment"], r["revenue"]) for r in rows(cm_data, "segment_revenue")]
    assert customers == {segment: n for segment, n, _ in mart}
    assert revenue == sorted(((s, r) for s, _, r in mart), key=lambda x: -x[1]), "largest first"
    assert sum(customers.values()) == scalar(
        superset.warehouse_url, "select count(distinct customer_key) from core.fct_transactions"
    )


def test_cohort_heatmap_cells_equal_the_mart(superset: RunningSuperset, cm_data: dict) -> None:
    mart = query(
        superset.warehouse_url,
        "select cohort_month, months_since_first_order, retention_pct from marts.dm_cohort_retention",
    )
    cells = {
        (epoch_ms(r["cohort_month"]).date(), r["months_since_first_order"]): r["retention"]
        for r in rows(cm_data, "cohort_retention")
    }
    assert len(cells) == len(mart), "one cell per row of the mart"
    # The chart's ratio is unrounded; the mart's percentage has two decimals.
    assert cells == {(c, m): pytest.approx(float(p) / 100, abs=5.1e-5) for c, m, p in mart}


def test_top_pairs_need_the_minimum_and_go_by_lift(superset: RunningSuperset, cm_data: dict) -> None:
    params = yaml.safe_load((ASSETS_DIR / "charts" / "product_pairs.yaml").read_text())["params"]
    [rule] = [f for f in params["adhoc_filters"] if f["subject"] == "orders_together"]
    assert rule["operator"] == ">="
    minimum = int(rule["comparator"])
    pairs = rows(cm_data, "product_pairs")
    assert len(pairs) == 10 and all(p["orders_together"] >= minimum for p in pairs)
    lifts = [p["lift"] for p in pairs]
    assert lifts == sorted(lifts, reverse=True)
    expected = query(
        superset.warehouse_url,
        "select product_name_a, size_a, product_name_b, size_b, orders_together, lift"
        f" from marts.dm_product_affinity where orders_together >= {minimum}"
        " order by lift desc, orders_together desc limit 10",
    )
    keys = ("product_name_a", "size_a", "product_name_b", "size_b", "orders_together")
    assert [(*(p[k] for k in keys), p["lift"]) for p in pairs] == [(*r[:5], float(r[5])) for r in expected]


def test_province_map_equals_the_mart(superset: RunningSuperset, cm_data: dict) -> None:
    mart = dict(
        query(
            superset.warehouse_url,
            "select province_iso_code, sum(revenue) from marts.dm_market_reach group by 1",
        )
    )
    charted = {r["province_iso_code"]: r["revenue"] for r in rows(cm_data, "province_revenue_map")}
    assert charted == mart
    assert {"ID-JB", "ID-PB", "ID-SA"} <= set(charted), "ISO 3166-2 codes, as the map's GeoJSON has them"


def test_top_cities_equal_the_mart(superset: RunningSuperset, cm_data: dict) -> None:
    columns = (
        "city_name",
        "revenue",
        "revenue_last_90_days",
        "revenue_previous_90_days",
        "revenue_growth_pct",
    )
    mart = query(
        superset.warehouse_url,
        f"select {', '.join(columns)} from marts.dm_market_reach order by revenue desc, city_name limit 10",
    )
    table = [tuple(r[c] for c in columns) for r in rows(cm_data, "city_growth")]
    assert table == [(*r[:4], None if r[4] is None else float(r[4])) for r in mart]


# ------------------------------------------------------------------------------------- Live orders


@pytest.fixture(scope="module")
def live_data(superset: RunningSuperset, live_store: LiveStore) -> dict[str, list[dict[str, Any]]]:
    return fetch_chart_data(superset, "live-orders", LIVE_CHARTS)


def test_live_every_chart_returns_rows(live_data: dict[str, list[dict[str, Any]]]) -> None:
    assert len(live_data) == 9
    assert_every_chart_returns_rows(live_data)


def test_shop_to_marts_is_the_age_of_the_oldest_line_the_marts_lack(
    superset: RunningSuperset, live_store: LiveStore, live_data: dict
) -> None:
    # The marts were built before the stream copied the shop in: they lack its lines, the oldest first.
    oldest_age = scalar(
        superset.warehouse_url,
        "select extract(epoch from now() - min(_store_committed_at)) from raw_store.shop_orderline"
        " where _synced_at > (select max(loaded_at) from marts.dm_revenue_by_months)",
    )
    lag = rows(live_data, "live_kpi_marts_lag")[0]["marts_lag"]
    assert 0 < lag == pytest.approx(float(oldest_age), abs=30)


def test_live_orders_and_revenue_equal_raw_store(
    superset: RunningSuperset, live_store: LiveStore, live_data: dict
) -> None:
    """Cancelled orders, deleted orders and deleted lines are left out; orders older than the hour too."""
    wh = superset.warehouse_url
    tombstones, cancelled = query(
        wh,
        "select count(*) filter (where _deleted_at is not null),"
        " count(*) filter (where _deleted_at is null and status = 'cancelled')"
        f" from raw_store.shop_order where created_at >= {WINDOW}",
    )[0]
    assert tombstones >= 1 and cancelled == live_store.cancelled >= 1, (
        "the hour holds both kinds to leave out"
    )
    orders = scalar(
        wh,
        "select count(*) from raw_store.shop_order"
        f" where _deleted_at is null and status <> 'cancelled' and created_at >= {WINDOW}",
    )
    revenue = scalar(
        wh,
        "select sum(l.amount) from raw_store.shop_orderline as l"
        " join raw_store.shop_order as o on o.id = l.order_id"
        " where l._deleted_at is null and o._deleted_at is null and o.status <> 'cancelled'"
        f" and o.created_at >= {WINDOW}",
    )
    assert (orders, revenue) == (live_store.orders, live_store.revenue), "the mirror equals the shop"
    assert rows(live_data, "live_kpi_orders") == [{"orders": orders}]
    assert rows(live_data, "live_kpi_revenue") == [{"revenue": revenue}]

    by_minute = rows(live_data, "live_orders_by_minute", 0)
    revenue_by_minute = rows(live_data, "live_orders_by_minute", 1)
    assert len(by_minute) == len(revenue_by_minute) == 60, "every minute of the hour, also without orders"
    assert sum(r["orders"] for r in by_minute) == orders
    assert sum(r["revenue"] for r in revenue_by_minute) == revenue
    # Minutes in the shop's time (WIB); Superset sends naive timestamps as epoch milliseconds.
    expected = dict(
        query(
            wh,
            "select date_trunc('minute', created_at at time zone 'Asia/Jakarta'), count(*)"
            " from raw_store.shop_order"
            f" where _deleted_at is null and status <> 'cancelled' and created_at >= {WINDOW} group by 1",
        )
    )
    charted = {epoch_ms(r["order_minute"]): r["orders"] for r in by_minute if r["orders"]}
    assert charted == expected


def epoch_ms(value: float) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC).replace(tzinfo=None)


def test_latest_orders_are_the_last_twenty(superset: RunningSuperset, live_data: dict) -> None:
    latest = query(
        superset.warehouse_url,
        "select o.id, o.status, coalesce(sum(l.amount) filter (where l._deleted_at is null), 0)"
        " from raw_store.shop_order as o left join raw_store.shop_orderline as l on l.order_id = o.id"
        " where o._deleted_at is null group by o.id order by o.created_at desc, o.id desc limit 20",
    )
    table = rows(live_data, "live_latest_orders")
    assert [(r["order_id"], r["status"], r["amount"]) for r in table] == latest
    assert all(r["city_name"] and r["customer_name"] for r in table), "names of city and customer"


def test_stream_lag_equals_the_batches(superset: RunningSuperset, live_data: dict) -> None:
    wh = superset.warehouse_url
    p95, longest = query(
        wh,
        "select percentile_cont(0.95) within group (order by x), max(x)"
        " from raw_store._stream_batches as b, unnest(b.lag_ms) as x"
        " where b.committed_at >= now() - interval '5 minutes'",
    )[0]
    assert longest is not None, "the stream applied transactions in the last 5 minutes"
    assert rows(live_data, "live_kpi_lag_p95") == [{"p95_lag_ms": pytest.approx(p95)}]
    assert rows(live_data, "live_kpi_lag_max") == [{"max_lag_ms": pytest.approx(longest)}]
    age = scalar(wh, "select extract(epoch from now() - max(committed_at)) from raw_store._stream_batches")
    assert rows(live_data, "live_kpi_batch_age")[0]["last_batch_age_s"] == pytest.approx(float(age), abs=30)

    per_minute = dict(
        query(
            wh,
            "select date_trunc('minute', b.committed_at at time zone 'Asia/Jakarta'), max(x)"
            " from raw_store._stream_batches as b, unnest(b.lag_ms) as x"
            f" where b.committed_at >= {WINDOW} group by 1",
        )
    )
    charted = {epoch_ms(r["committed_at"]): r["max_lag_ms"] for r in rows(live_data, "live_stream_lag")}
    assert charted == pytest.approx(per_minute)


def test_reader_role_reads_raw_store_but_cannot_write(
    superset: RunningSuperset, live_store: LiveStore
) -> None:
    with psycopg.connect(superset.reader_url()) as conn:
        assert conn.execute("select count(*) from raw_store._stream_batches").fetchone()[0] > 0
    with psycopg.connect(superset.reader_url()) as conn:
        conn.execute("set transaction read write")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from raw_store.shop_order")
