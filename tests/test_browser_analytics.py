"""Issue 12: the admin page's behaviour analytics in a real browser (Debian's Chromium driven by Playwright)
against a real server process (`vitrine serve`) over HTTP: every report's chart renders as inline SVG with its
tables, a private report states its noise and spends the budget shown, the CSV downloads, and no request
leaves the server and no script or console error (a CSP violation among them) occurs. Patterns of
tests/test_browser.py; screenshots go to `test-artifacts/screenshots/`."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from engine.embedding.base import Encoder
from tests.conftest import ADMIN_KEY, INGEST_KEY, make_config, start_server, stop_server

from tests.browser_support import SHOTS, browser, playwright_api, require_chromium, watched_page  # noqa: F401

ITEMS = ["fil-pla-red", "gloves-nitrile-m", "beaker-set", "solder-wire"]
STEPS = ["view", "click", "add_to_cart", "purchase"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, built_index_dir: Path, models_dir: Path,
         encoder: Encoder) -> Iterator[str]:
    """A server on a private copy of the fixture index, with a few shoppers' funnels over the last 10 days."""
    require_chromium()
    work = tmp_path_factory.mktemp("analytics-site")
    index_dir = work / "indexes"
    shutil.copytree(built_index_dir, index_dir, symlinks=True)
    config = make_config(index_dir, models_dir, events_url=f"sqlite:///{work / 'events.db'}")
    proc, base = start_server(config)
    try:
        now = time.time()
        events = [{"event_id": f"a-{u}-{d}-{s}", "user_id": f"shopper-{u}", "type": step,
                   "item_id": ITEMS[(u + d) % len(ITEMS)], "timestamp": now - 86400 * d - 60 * (4 - s)}
                  for u in range(8) for d in range(0, 10, 1 + u % 3) for s, step in enumerate(STEPS[: 1 + (u + d) % 4])]
        r = requests.post(f"{base}/v1/events", json=events, headers={"Authorization": f"Bearer {INGEST_KEY}"},
                          timeout=30)
        assert r.status_code == 200 and len(r.json()["accepted"]) == len(events), r.text
        yield base
    finally:
        stop_server(proc)


@pytest.fixture
def page(browser: Any, site: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    with watched_page(browser, site, request, accept_downloads=True) as pg:
        yield pg


def login(pg: Any) -> None:
    pg.goto("/admin")
    pg.fill("#admin-key", ADMIN_KEY)
    with pg.expect_navigation():
        pg.click(".admin-login button[type=submit]")


def show(pg: Any, report: str) -> None:
    before = pg.locator("#analytics-chart").get_attribute("data-rows")
    pg.select_option("#analytics-report", report)
    with pg.expect_response(lambda r: "/v1/admin/analytics/" in r.url and "privacy" not in r.url) as resp:
        pg.click("#analytics-load")
    assert resp.value.status == 200, resp.value.text()
    pg.wait_for_function("() => document.getElementById('analytics-message').textContent === ''")
    del before


def test_analytics_charts_render_without_errors(page: Any) -> None:
    login(page)
    page.wait_for_selector("#analytics-chart svg rect")  # the default report: the funnel by day
    funnel = page.locator('#analytics-tables table[data-table="funnel"]')
    assert "purchase" in funnel.locator("thead").inner_text()
    assert funnel.locator("tbody tr").count() >= 5
    assert "Exact counts" in page.locator("#analytics-dp").inner_text()
    page.locator("#analytics-title").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "admin-analytics-funnel.png"), full_page=True)
    for report, drawn in (("funnel-category", "rect"), ("funnel-surface", "rect"), ("search", "svg"),
                          ("cohorts", "polyline"), ("rfm", "rect"), ("movers", "rect")):
        show(page, report)
        # attached: a flat retention line (everyone back every week) has an empty box, which Playwright calls hidden
        page.wait_for_selector(f"#analytics-chart svg {drawn}" if drawn != "svg" else "#analytics-chart svg",
                               state="attached")
        assert page.locator("#analytics-tables table").count() >= 1
        page.screenshot(path=str(SHOTS / f"admin-analytics-{report}.png"), full_page=True)


def test_private_report_spends_the_budget_and_csv_downloads(page: Any) -> None:
    login(page)
    page.wait_for_selector("#analytics-chart svg rect")
    page.fill("#analytics-dp_epsilon", "0.5")
    show(page, "rfm")
    assert "epsilon 0.5" in page.locator("#analytics-dp").inner_text()
    page.wait_for_function("() => /0\\.5 of 10(\\.0)? epsilon spent/.test("
                           "document.getElementById('analytics-privacy').textContent)")
    page.fill("#analytics-dp_epsilon", "")
    page.select_option("#analytics-report", "funnel")
    with page.expect_download() as dl:
        page.click("#analytics-csv")
    text = Path(dl.value.path()).read_text(encoding="utf-8")
    assert text.splitlines()[0].startswith("day,view,click,add_to_cart,purchase")
