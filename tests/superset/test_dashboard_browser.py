"""The Sales dashboard in a real headless Chromium: log in through the form, every chart renders.

Uses Debian's `chromium` (`make browser-deps`) driven by Playwright; Playwright's own browser
download is not needed. The screenshot lands in the git-ignored test-artifacts/.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from apparel.config import PROJECT_ROOT
from tests.superset.conftest import RunningSuperset

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
EXPECTED_CHARTS = 11

# Per chart container: rendered when it holds a canvas (ECharts), an svg, or table rows.
RENDER_STATE = """() => {
  const charts = [...document.querySelectorAll('.dashboard-component-chart-holder')];
  return {
    containers: document.querySelectorAll('.chart-container').length,
    loading: document.querySelectorAll('.loading').length,
    rendered: charts.filter(c => c.querySelector('canvas, svg, table tbody tr')).length,
    errors: [...document.querySelectorAll(
      '.dashboard-component-chart-holder [data-test="error-message"], '
      + '.dashboard-component-chart-holder .ant-alert-error, .dashboard-component-chart-holder .alert-danger'
    )].map(e => e.innerText.slice(0, 300)),
    titles: charts.filter(c => !c.querySelector('canvas, svg, table tbody tr'))
      .map(c => (c.querySelector('.header-title') || c).innerText.slice(0, 80)),
  };
}"""


def test_dashboard_renders_every_chart(superset: RunningSuperset) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make browser-deps`")
    from playwright.sync_api import sync_playwright

    settings = superset.settings
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            # Superset's CSP forbids eval; Playwright's wait_for_function needs it.
            context = browser.new_context(viewport={"width": 1600, "height": 1000}, bypass_csp=True)
            page = context.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))

            page.goto(f"{settings.base_url}/login/")
            page.fill("#username", settings.admin_user)
            page.fill("#password", settings.admin_password)
            page.click("[data-test=login-button]")
            page.wait_for_url(lambda url: "/login" not in url, timeout=30_000)

            started = time.monotonic()
            page.goto(f"{settings.base_url}/superset/dashboard/sales/")
            page.wait_for_function(
                f"""() => {{
                  const s = ({RENDER_STATE})();
                  return s.containers >= {EXPECTED_CHARTS} && s.loading === 0
                    && (s.rendered >= {EXPECTED_CHARTS} || s.errors.length > 0);
                }}""",
                timeout=90_000,
            )
            state = page.evaluate(RENDER_STATE)
            text = page.inner_text("body")
            seconds = time.monotonic() - started
            page.screenshot(path=str(ARTIFACTS / "superset-sales.png"), full_page=True)
        finally:
            browser.close()

    assert state["errors"] == [], state["errors"]
    assert state["containers"] == EXPECTED_CHARTS
    assert state["rendered"] == EXPECTED_CHARTS, f"not rendered: {state['titles']}"
    assert page_errors == []
    assert "Django Apparel: Sales" in text
    assert "Rp 22,746,740,000" in text, "revenue KPI in rupiah with thousands separators"
    print(f"dashboard rendered {EXPECTED_CHARTS} charts in {seconds:.1f} s")
