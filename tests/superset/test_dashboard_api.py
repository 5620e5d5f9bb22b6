"""The Sales dashboard through Superset's REST API: every chart answers, and its figures are the marts'."""

from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from apparel.superset_setup import ASSETS_DIR, export_assets, import_assets
from tests.superset.conftest import RunningSuperset

pytestmark = pytest.mark.slow


def _uuids(kind: str) -> dict[str, str]:
    """Asset file stem -> uuid, from the committed YAML."""
    return {p.stem: str(yaml.safe_load(p.read_text())["uuid"]) for p in (ASSETS_DIR / kind).rglob("*.yaml")}


CHART_UUIDS = _uuids("charts")


def query(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def scalar(url: str, sql: str) -> Any:
    return query(url, sql)[0][0]


@pytest.fixture(scope="module")
def chart_data(superset: RunningSuperset) -> dict[str, list[dict[str, Any]]]:
    """Each chart of the dashboard (by asset file stem): its queries' results from the data endpoint."""
    client = superset.client
    charts = client.get("/api/v1/chart/", params={"q": "(columns:!(id,uuid,slice_name),page_size:100)"})
    by_uuid = {c["uuid"]: c["id"] for c in charts["result"]}
    on_dashboard = {c["id"] for c in client.dashboard_charts("sales")}
    assert on_dashboard == {by_uuid[u] for u in CHART_UUIDS.values()}, (
        "the dashboard holds exactly our charts"
    )
    return {stem: client.chart_data(by_uuid[uuid]) for stem, uuid in CHART_UUIDS.items()}


def rows(
    chart_data: dict[str, list[dict[str, Any]]], stem: str, query_index: int = 0
) -> list[dict[str, Any]]:
    return chart_data[stem][query_index]["data"]


def test_every_chart_returns_rows(chart_data: dict[str, list[dict[str, Any]]]) -> None:
    assert len(chart_data) == 11
    for stem, results in chart_data.items():
        for result in results:
            assert result.get("error") is None, f"{stem}: {result.get('error')}"
            assert result["rowcount"] > 0, f"{stem} returned no rows"


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
    with psycopg.connect(superset.reader_url()) as conn, pytest.raises(psycopg.Error) as error:
        conn.execute("insert into marts.dm_revenue_by_months (month_start) values ('2030-01-01')")
    assert isinstance(
        error.value, psycopg.errors.InsufficientPrivilege | psycopg.errors.ReadOnlySqlTransaction
    )
    with psycopg.connect(superset.reader_url()) as conn, pytest.raises(psycopg.Error):
        conn.execute("set transaction read write; delete from core.fct_transactions")
    with psycopg.connect(superset.reader_url()) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select count(*) from raw.orders")


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
    assert uri.startswith("postgresql+psycopg2://superset_reader@"), uri
    assert superset.settings.reader_password not in uri
    with psycopg.connect(superset.settings.metadata_url) as conn:
        stored = conn.execute("select password from dbs where database_name = 'Django Apparel warehouse'")
        assert stored.fetchone() == (None,)
    for path in ASSETS_DIR.rglob("*.yaml"):
        assert superset.settings.reader_password not in path.read_text()


def test_import_again_changes_nothing(superset: RunningSuperset, tmp_path: Path) -> None:
    client = superset.client

    def counts() -> dict[str, int]:
        return {
            r: client.get(f"/api/v1/{r}/")["count"] for r in ("dashboard", "chart", "dataset", "database")
        }

    before = counts()
    assert before == {"dashboard": 1, "chart": 11, "dataset": 3, "database": 1}
    import_assets(client, superset.settings)
    assert counts() == before
    # Exporting what was imported reproduces the committed YAML: `make superset-export` is a no-op.
    copy = tmp_path / "assets"
    shutil.copytree(ASSETS_DIR, copy)
    assert export_assets(client, superset.settings, copy) == []
