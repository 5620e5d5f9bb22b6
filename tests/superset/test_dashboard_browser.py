"""Both dashboards in a real headless Chromium: log in through the form, every chart renders.

Uses Debian's `chromium` (`make browser-deps`) driven by Playwright; Playwright's own browser
download is not needed. The screenshots land in the git-ignored test-artifacts/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from apparel.config import PROJECT_ROOT
from tests.conftest import query
from tests.superset.conftest import LiveStore, RunningSuperset

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = PROJECT_ROOT / "test-artifacts"

# Per chart: rendered when its container holds a canvas (ECharts, also the heatmap), an svg, table
# rows or a big number. (Looking inside the container: the chart's header has an svg icon of its
# own.) The country map appends its svg before it has fetched its GeoJSON: it counts once its
# regions are drawn (and a map that cannot load shows an .alert-danger instead).
RENDER_STATE = """() => {
  const drawn = '.chart-container canvas, .chart-container svg, .chart-container table tbody tr, '
    + '.chart-container .header-line';
  const isDrawn = c => c.querySelector('.superset-legacy-chart-country-map')
    ? c.querySelector('.superset-legacy-chart-country-map path.region') !== null
    : c.querySelector(drawn) !== null;
  const charts = [...document.querySelectorAll('.dashboard-component-chart-holder')]
    .filter(c => c.querySelector('.chart-container'));
  return {
    containers: document.querySelectorAll('.chart-container').length,
    loading: document.querySelectorAll('.loading').length,
    rendered: charts.filter(isDrawn).length,
    errors: [...document.querySelectorAll(
      '.dashboard-component-chart-holder [data-test="error-message"], '
      + '.dashboard-component-chart-holder .ant-alert-error, .dashboard-component-chart-holder .alert-danger'
    )].map(e => e.innerText.slice(0, 300)),
    titles: charts.filter(c => !isDrawn(c))
      .map(c => (c.querySelector('.header-title') || c).innerText.slice(0, 80)),
  };
}"""


@dataclass
class Browser:
    page: Any  # playwright's Page
    errors: list[str] = field(default_factory=list)  # uncaught JavaScript errors


@pytest.fixture
def browser(superset: RunningSuperset) -> Iterator[Browser]:
    """A Chromium page logged in through Superset's login form."""
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make browser-deps`")
    from playwright.sync_api import sync_playwright

    settings = superset.settings
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            # Superset's CSP forbids eval; Playwright's wait_for_function needs it.
            context = chromium.new_context(viewport={"width": 1600, "height": 1000}, bypass_csp=True)
            page = context.new_page()
            logged_in = Browser(page)
            page.on("pageerror", lambda e: logged_in.errors.append(str(e)))
            page.goto(f"{settings.base_url}/login/")
            page.fill("#username", settings.admin_user)
            page.fill("#password", settings.admin_password)
            page.click("[data-test=login-button]")
            page.wait_for_url(lambda url: "/login" not in url, timeout=30_000)
            yield logged_in
        finally:
            chromium.close()


def open_dashboard(page: Any, base_url: str, slug: str, charts: int) -> tuple[str, float]:
    """Open a dashboard, wait until each of its `charts` charts has drawn or failed, assert none
    failed, save a screenshot. Returns the page's text and the seconds it took."""
    started = time.monotonic()
    page.goto(f"{base_url}/superset/dashboard/{slug}/")
    wait_rendered(page, charts)
    seconds = time.monotonic() - started
    page.screenshot(path=str(ARTIFACTS / f"superset-{slug}.png"), full_page=True)
    assert_all_rendered(page.evaluate(RENDER_STATE), charts)
    return page.inner_text("body"), seconds


def wait_rendered(page: Any, charts: int, timeout: float = 90_000) -> None:
    page.wait_for_function(
        f"""() => {{
          const s = ({RENDER_STATE})();
          return s.containers >= {charts} && s.loading === 0
            && (s.rendered >= {charts} || s.errors.length > 0);
        }}""",
        timeout=timeout,
    )


def assert_all_rendered(state: dict[str, Any], charts: int) -> None:
    assert state["errors"] == [], state["errors"]
    assert state["containers"] == charts
    assert state["rendered"] == charts, f"not rendered: {state['titles']}"


def test_sales_dashboard_renders_every_chart(superset: RunningSuperset, browser: Browser) -> None:
    text, seconds = open_dashboard(browser.page, superset.settings.base_url, "sales", 12)
    assert browser.errors == []
    assert "Django Apparel: Sales" in text
    assert "Rp 22,746,740,000" in text, "revenue KPI in rupiah with thousands separators"
    # When the marts were last built, as a date and time (WIB), not as a number of milliseconds.
    built = query(
        superset.warehouse_url,
        "select to_char(max(loaded_at) at time zone 'Asia/Jakarta', 'YYYY-MM-DD HH24:MI:SS')"
        " from marts.dm_revenue_by_months",
    )[0][0]
    assert big_number(browser.page, "Data as of") == built
    print(f"sales dashboard rendered 12 charts in {seconds:.1f} s")


def test_customers_markets_dashboard_renders_every_chart(superset: RunningSuperset, browser: Browser) -> None:
    page = browser.page
    text, seconds = open_dashboard(page, superset.settings.base_url, "customers-markets", 6)
    assert browser.errors == []
    assert "Django Apparel: Customers & markets" in text
    # The map colours each province the mart has a code for: the codes match the map's GeoJSON.
    provinces = query(
        superset.warehouse_url,
        "select count(distinct province_iso_code) from marts.dm_market_reach",
    )[0][0]
    filled = page.evaluate(
        """() => [...document.querySelectorAll('.superset-legacy-chart-country-map path.region')]
          .filter(p => p.style.fill && p.style.fill !== 'none').length"""
    )
    assert filled == provinces > 0
    print(f"customers & markets dashboard rendered 6 charts in {seconds:.1f} s")


def big_number(page: Any, chart_name: str) -> str:
    return page.inner_text(f'[data-test-chart-name="{chart_name}"] .header-line')


def wait_text(page: Any, selector: str, expected: str, timeout: float = 15_000) -> None:
    """Wait until the first element `selector` finds shows `expected`."""
    page.wait_for_function(
        """([selector, expected]) => {
          const e = document.querySelector(selector);
          return e !== null && e.innerText.trim() === expected;
        }""",
        arg=[selector, expected],
        timeout=timeout,
    )


def test_live_dashboard_renders_and_refreshes_itself(
    superset: RunningSuperset, live_store: LiveStore, browser: Browser
) -> None:
    """Every chart renders; then an order the shop takes reaches the screen: through the CDC stream
    into raw_store, then by the dashboard's own timed refresh, without a reload."""
    page = browser.page
    data_requests: list[int] = []  # slice ids, in the order the page asked for their data
    page.on(
        "request",
        lambda r: (
            data_requests.append(json.loads(parse_qs(urlparse(r.url).query)["form_data"][0])["slice_id"])
            if "/api/v1/chart/data" in r.url
            else None
        ),
    )
    text, seconds = open_dashboard(page, superset.settings.base_url, "live-orders", 9)
    assert "Django Apparel: Live orders" in text
    assert big_number(page, "Orders, last hour") == f"{live_store.orders:,}"
    assert big_number(page, "Revenue, last hour") == f"Rp {live_store.revenue:,}"
    first_load = len(data_requests)
    charts = set(data_requests)
    assert len(charts) == 9
    # Beside the stream's lag, how far the marts are behind the shop, in seconds.
    assert float(big_number(page, "Shop to marts").replace(",", "")) > 0
    page.evaluate("() => { window.notReloaded = true; }")

    # The shop takes an order: the stream mirrors it, and without a reload the dashboard's next
    # timed refresh (every 10 s) shows it.
    (order_id,) = live_store.shop(
        "with o as (insert into shop_order (customer_id, province_id, city_id, status)"
        " select customer_id, province_id, city_id, 'paid' from shop_order order by id desc limit 1"
        " returning id)"
        " insert into shop_orderline (order_id, product_id, quantity, unit_price, amount)"
        " select id, 1, 2, 150000, 300000 from o returning order_id"
    )
    try:
        refresh_started = time.monotonic()
        orders_kpi = '[data-test-chart-name="Orders, last hour"] .header-line'
        wait_text(page, orders_kpi, f"{live_store.orders + 1:,}", timeout=40_000)
        refresh_seconds = time.monotonic() - refresh_started
        # The other charts refresh a moment later: the dashboard staggers its requests.
        revenue_kpi = '[data-test-chart-name="Revenue, last hour"] .header-line'
        wait_text(page, revenue_kpi, f"Rp {live_store.revenue + 300_000:,}")
        wait_text(page, '[data-test-chart-name="Latest orders"] tbody tr td', str(order_id))
        # Playwright hands over request events while it waits: wait until each chart asked again.
        deadline = time.monotonic() + 15
        while set(data_requests[first_load:]) != charts and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        wait_rendered(page, 9)
        state = page.evaluate(RENDER_STATE)
    finally:
        # Gone again (a tombstone in the mirror) before other tests compare figures.
        live_store.shop("delete from shop_order where id = %s", (order_id,))
        live_store.wait_mirrored(
            "select _deleted_at is not null from raw_store.shop_order where id = %s", (order_id,)
        )

    assert_all_rendered(state, 9)
    assert set(data_requests[first_load:]) == charts, "every chart asked for its data again"
    assert page.evaluate("() => window.notReloaded === true"), "refreshed in place, not reloaded"
    assert browser.errors == []
    print(
        f"live dashboard rendered 9 charts in {seconds:.1f} s; a new order was on screen "
        f"{refresh_seconds:.1f} s later, by the automatic refresh ({len(data_requests)} data requests)"
    )
