"""The storefront and admin pages in a real browser: Debian's Chromium driven by Playwright, against a real
server process (`vitrine serve`, gunicorn, 2 workers) over HTTP.

Chromium is installed by `make test` (Debian's package) when missing. Screenshots of every page go to
`test-artifacts/screenshots/`; a failing test also leaves `<test>-FAILED.png` there.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from engine import pipeline
from engine.embedding.base import Encoder
from engine.events import open_event_store
from tests.conftest import (ADMIN_KEY, ADS_KEY, FIXTURE_CATALOG, INGEST_KEY, READ_KEY, make_config, start_server,
                            stop_server)

from tests.browser_support import SHOTS, browser, playwright_api, require_chromium, watched_page  # noqa: F401

expect = playwright_api.expect
FILAMENT = "Industrial & Scientific > 3D Printing > Filament"
UPDATED = re.compile(r"^\d+$")  # the "for you" strip's data-updated after a refresh
# Demo shoppers for the picker: real histories sent through the API before the pages are opened.
SHOPPER = "maker-anna"
HISTORIES = {
    SHOPPER: ["fil-pla-red", "fil-pla-black"],
    "solder-sam": ["solder-wire", "solder-iron", "tape-kapton"],
    "solder-sue": ["solder-wire", "solder-iron"],
    "lab-lee": ["gloves-nitrile-m", "goggles"],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, built_index_dir: Path, models_dir: Path,
         encoder: Encoder) -> Iterator[dict[str, Any]]:
    """A server on a private index of a catalog copy (the admin test edits it and rebuilds)."""
    require_chromium()
    work = tmp_path_factory.mktemp("site")
    index_dir = work / "indexes"
    shutil.copytree(built_index_dir, index_dir, symlinks=True)  # keeps the embedding cache
    catalog = work / "catalog.jsonl"
    shutil.copy(FIXTURE_CATALOG, catalog)
    config = make_config(index_dir, models_dir, events_url=f"sqlite:///{work / 'events.db'}",
                         demo_shopper_menu=True, ads_relevance_floor=-1.0,
                         ads_match_organic=False)  # any item may be an ad (the ads test)
    pipeline.build(config, catalog, encoder=encoder)  # the served manifest now names the copy
    proc, base = start_server(config)
    try:
        events = [{"event_id": f"seed-{u}-{i}", "user_id": u, "type": "purchase", "item_id": item,
                   "timestamp": time.time() - 3600 * (len(items) - i)}
                  for u, items in HISTORIES.items() for i, item in enumerate(items)]
        r = requests.post(f"{base}/v1/events", json=events, headers={"Authorization": f"Bearer {INGEST_KEY}"},
                          timeout=30)
        assert r.status_code == 200 and len(r.json()["accepted"]) == len(events), r.text
        yield {"base": base, "catalog": catalog, "index_dir": index_dir, "events_url": config.events_url}
    finally:
        stop_server(proc)


@pytest.fixture
def page(browser: Any, site: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[Any]:
    """Console errors from HTTP statuses the tests provoke on purpose (a 404 page, a wrong admin key) are
    accepted."""
    with watched_page(browser, site["base"], request,
                      console_ok=lambda text: text.startswith("Failed to load resource")) as pg:
        yield pg


def shot(pg: Any, name: str) -> None:
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def hit_ids(pg: Any, selector: str = "#hits li.card") -> list[str]:
    return [str(x) for x in pg.locator(selector).evaluate_all("els => els.map(e => e.dataset.item)")]


def as_shopper(pg: Any, shopper: str) -> None:
    pg.goto("/")
    with pg.expect_navigation():
        pg.select_option("#shopper-select", shopper)  # the page submits the picker on change
    assert pg.locator('meta[name="shopper"]').get_attribute("content") == shopper


# -- search ------------------------------------------------------------------------------------

def test_type_a_query_and_see_results(page: Any) -> None:
    page.goto("/")
    shot(page, "home")
    page.fill("#q", "pla filament")
    with page.expect_navigation():
        page.press("#q", "Enter")
    ids = hit_ids(page)
    assert ids[0] in {"fil-pla-red", "fil-pla-black", "pla-dup-title"}
    assert page.locator("#results-title").inner_text().startswith("Results for")
    shot(page, "search-results")


def test_plain_search_works_without_javascript(browser: Any, site: dict[str, Any]) -> None:
    context = browser.new_context(base_url=site["base"], java_script_enabled=False)
    pg = context.new_page()
    pg.goto("/")
    pg.fill("#q", "nitrile gloves")
    with pg.expect_navigation():
        pg.click("form.search button[type=submit]")
    assert "gloves-nitrile-m" in hit_ids(pg)[:3]
    shot(pg, "search-no-javascript")
    context.close()


def test_follow_a_suggestion_with_the_keyboard(page: Any) -> None:
    page.goto("/")
    page.click("#q")
    page.keyboard.type("filam")  # a prefix
    page.wait_for_selector("#suggestions li[role=option]")
    assert page.get_attribute("#q", "aria-expanded") == "true"
    texts = page.locator("#suggestions li .text").all_inner_texts()
    assert any("Filament" in t for t in texts), texts
    shot(page, "suggestions")
    idx = next(i for i, t in enumerate(texts) if "Filament" in t)
    for _ in range(idx + 1):
        page.keyboard.press("ArrowDown")
    assert page.get_attribute("#q", "aria-activedescendant") == f"suggestion-{idx}"
    with page.expect_navigation():
        page.keyboard.press("Enter")
    url = urlsplit(page.url)
    if url.path.startswith("/items/"):  # an item suggestion: its page
        assert page.locator("article.product h1").inner_text()
    else:  # a category suggestion: a search filtered to it
        assert parse_qs(url.query)["category"][0].endswith("Filament")
        assert hit_ids(page)


def test_a_typo_still_suggests(page: Any) -> None:
    page.goto("/")
    page.fill("#q", "solderng")  # one letter missing
    page.wait_for_selector("#suggestions li[role=option]")
    assert any("Solder" in t for t in page.locator("#suggestions li .text").all_inner_texts())


def facet_count(pg: Any, name: str) -> int:
    link = pg.locator("#category-facet a", has_text=name).first
    return int(link.locator("xpath=..").locator(".count").inner_text())


def test_filter_by_category_with_the_facet(page: Any) -> None:
    page.goto("/?q=filament")  # the facet starts below the catalog's one root
    assert facet_count(page, "3D Printing") >= facet_count(page, "Lab & Safety")
    with page.expect_navigation():
        page.locator("#category-facet a", has_text="3D Printing").first.click()
    assert parse_qs(urlsplit(page.url).query)["category"] == ["Industrial & Scientific > 3D Printing"]
    count = facet_count(page, "Filament")  # now one level down
    with page.expect_navigation():
        page.locator("#category-facet a", has_text="Filament").first.click()
    assert parse_qs(urlsplit(page.url).query)["category"] == [FILAMENT]
    cats = page.locator("#hits .category").all_inner_texts()
    assert cats and set(cats) == {"Filament"} and len(cats) == count
    shot(page, "search-category-filter")


def test_price_filter(page: Any) -> None:
    page.goto("/?q=filament")
    page.fill("#max_price", "20")
    with page.expect_navigation():
        page.click(".price-filter button")
    prices = [float(p.strip("$")) for p in page.locator("#hits .price").all_inner_texts()]
    assert prices and max(prices) <= 20.0


def test_why_this_result_shows_score_parts(page: Any) -> None:
    page.goto("/?q=soldering")
    first = page.locator("#hits li.card").first
    assert not first.locator("dl.why").is_visible()
    page.check("#debug-toggle")
    assert first.locator("dl.why").is_visible()
    parts = first.locator("dl.why dt").all_inner_texts()
    assert {"bm25", "vector"} <= set(parts)
    shot(page, "search-why")


# -- items -------------------------------------------------------------------------------------

def test_open_an_item_and_see_similar_items(page: Any) -> None:
    page.goto("/?q=soldering iron")
    first = page.locator("#hits a.item-link").first
    title = first.inner_text()
    with page.expect_navigation():
        first.click()
    assert page.locator("article.product h1").inner_text() == title
    similar = page.locator("#similar a.item-link")
    assert similar.count() >= 3
    next_title = similar.first.inner_text()
    shot(page, "item")
    with page.expect_navigation():
        similar.first.click()
    assert page.locator("article.product h1").inner_text() == next_title


def test_often_bought_together_links_on(page: Any) -> None:
    page.goto("/items/solder-wire")
    together = page.locator("#also-bought a.item-link")
    assert "solder-iron" in [str(x) for x in together.evaluate_all("els => els.map(e => e.dataset.item)")]
    with page.expect_navigation():
        page.locator('#also-bought a[data-item="solder-iron"]').click()
    assert urlsplit(page.url).path == "/items/solder-iron"


def test_unknown_item_is_a_404_page(page: Any) -> None:
    resp = page.goto("/items/no-such-item")
    assert resp.status == 404 and "Not found" in page.locator("h1").inner_text()


# -- shopper mode ------------------------------------------------------------------------------

def for_you(pg: Any) -> list[str]:
    return hit_ids(pg, "#for-you li.card")


def test_a_demo_shopper_clicks_and_for_you_changes(page: Any, site: dict[str, Any]) -> None:
    as_shopper(page, SHOPPER)
    assert page.locator("#shopper-select option", has_text=f"{SHOPPER} (2 events)").count() == 1
    before = for_you(page)
    assert before, "a shopper with a history gets recommendations"
    shot(page, "shopper-home")
    page.goto("/?q=soldering")
    with page.expect_navigation():
        page.locator('#hits a.item-link[data-item="solder-wire"]').click()
    expect(page.locator("#for-you")).to_have_attribute("data-updated", UPDATED)  # after the view event
    stamp = page.locator("#for-you").get_attribute("data-updated")
    page.evaluate("window.__same_page = true")
    page.locator('button.event[data-type="purchase"]').click()
    expect(page.locator(".actions .status")).to_have_text("Bought.")
    expect(page.locator("#for-you")).not_to_have_attribute("data-updated", stamp or "")  # refreshed again
    after = for_you(page)
    assert page.evaluate("window.__same_page") is True  # changed without a reload
    assert after != before and "solder-iron" in after[:3]  # others bought the iron after the wire
    assert "solder-wire" not in after  # just bought: excluded
    reasons = page.locator("#for-you .reason").all_inner_texts()
    assert any("Lead-Free Solder Wire" in r for r in reasons), reasons
    shot(page, "shopper-for-you-changed")
    history = requests.get(f"{site['base']}/v1/users/{SHOPPER}", timeout=10,
                           headers={"Authorization": f"Bearer {READ_KEY}"}).json()
    assert history["counts"]["purchase"] == 3 and history["counts"]["view"] >= 1 and history["counts"]["click"] >= 1
    # the click names the result list it came from and its place there, and that list's impression is logged
    store = open_event_store(site["events_url"])
    try:
        click = [e for e in store.user_events(SHOPPER) if e.type.value == "click" and e.item_id == "solder-wire"][-1]
        assert click.request_id and click.position is not None and click.position >= 1, click
        deadline = time.time() + 10
        while store.get_impression(click.request_id) is None and time.time() < deadline:
            time.sleep(0.2)
        shown = store.get_impression(click.request_id)
        assert shown is not None and shown.surface == "search" and shown.query == "soldering"
        assert shown.items[click.position - 1 - shown.offset] == "solder-wire"
    finally:
        store.close()


def test_personalization_toggle_compares_with_plain_results(page: Any) -> None:
    as_shopper(page, SHOPPER)
    page.goto("/?q=filament")
    assert "Personalized for" in page.locator(".personal-toggle").inner_text()
    with page.expect_navigation():
        page.click("#personal-off")
    assert "Not personalized" in page.locator(".personal-toggle").inner_text()
    assert parse_qs(urlsplit(page.url).query)["personal"] == ["0"]
    shot(page, "search-not-personalized")


def test_a_fresh_anonymous_shopper_starts_cold(page: Any) -> None:
    page.goto("/")
    with page.expect_navigation():
        page.select_option("#shopper-select", "new")
    anon = page.locator('meta[name="shopper"]').get_attribute("content")
    assert anon.startswith("anon-")
    page.goto("/items/goggles")
    expect(page.locator("#for-you")).to_have_attribute("data-updated", UPDATED)
    assert for_you(page), "cold start: trending, then the viewed item's neighbours"


def test_readable_on_a_phone(browser: Any, site: dict[str, Any]) -> None:
    context = browser.new_context(base_url=site["base"], viewport={"width": 390, "height": 844})
    pg = context.new_page()
    pg.goto("/?q=pla filament")
    assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(pg, "phone-search")
    context.close()


# -- admin -------------------------------------------------------------------------------------

def test_admin_login_rebuild_and_rollback(page: Any, site: dict[str, Any]) -> None:
    page.goto("/admin")
    page.fill("#admin-key", "not the key")
    with page.expect_navigation():
        page.click(".admin-login button[type=submit]")
    assert page.locator("#login-error").is_visible()
    page.fill("#admin-key", ADMIN_KEY)
    with page.expect_navigation():
        page.click(".admin-login button[type=submit]")
    old_version = page.locator("#current-version").inner_text()
    page.wait_for_selector("#events-chart svg rect")  # the seeded events, by type per day
    assert "purchase" in page.locator("#events-chart .legend").inner_text()
    # the surfaces' rates end with each surface's exploration share (no exploring policy here: 0.0%)
    page.wait_for_selector("#surfaces-table tbody tr")
    assert "exploration share" in page.locator("#surfaces-table thead").inner_text()
    first = page.locator("#surfaces-table tbody tr").first
    cells = first.locator("td")
    assert cells.count() == 6 and cells.nth(5).inner_text() == "0.0%" or (
        cells.count() == 1 and cells.first.get_attribute("colspan") == "7")
    shot(page, "admin")

    rows = [json.loads(line) for line in site["catalog"].read_text().splitlines()]
    rows[0]["title"] += " (new edition)"
    site["catalog"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    page.click("#rebuild")
    page.wait_for_selector("#job:not([hidden])")
    expect(page.locator("#job")).to_have_attribute("data-state", "succeeded", timeout=120000)
    assert page.locator("#job-progress").evaluate("p => p.value") == 1
    new_version = page.locator("#current-version").inner_text()
    assert new_version != old_version and "now serving" in page.locator("#job-status").inner_text()
    assert page.locator("#manifest-embedded").inner_text().startswith("1 /")  # only the edited item
    assert page.locator("#versions li.current").inner_text().startswith(new_version)
    shot(page, "admin-rebuilt")

    page.click("#rollback")
    expect(page.locator("#current-version")).to_have_text(old_version)
    assert "rolled back" in page.locator("#admin-message").inner_text()
    served = requests.get(f"{site['base']}/v1/info", timeout=10).json()["version"]
    assert served == old_version
    shot(page, "admin-rolled-back")


def test_admin_needs_the_key(browser: Any, site: dict[str, Any]) -> None:
    # no session: the page asks for the key, and the API refuses the browser
    context = browser.new_context(base_url=site["base"])
    pg = context.new_page()
    pg.goto("/admin")
    assert pg.locator("#admin-key").is_visible()
    status = pg.evaluate("fetch('/v1/admin/stats').then(r => r.status)")
    assert status == 401
    context.close()


# -- sponsored products (last: the campaign it makes is paused at the end) ---------------------------------

def test_a_sponsored_result_is_labelled_its_click_charged_and_reported(page: Any, site: dict[str, Any]) -> None:
    ads = {"Authorization": f"Bearer {ADS_KEY}"}
    organic = {h["id"] for h in requests.get(f"{site['base']}/v1/search", params={"q": "gloves", "k": 10},
                                             timeout=10).json()["hits"]}
    item = next(i for i in ("magnet-neodymium", "screws-m3", "tape-kapton", "solder-wire") if i not in organic)
    made = requests.post(f"{site['base']}/v1/ads/campaigns", headers=ads, timeout=10, json={
        "id": "browser", "advertiser": "acme", "items": [item], "bid": 35, "daily_budget": 100000,
        "targeting": {"keywords": [{"text": "gloves", "match": "broad"}]}})
    assert made.status_code == 201, made.text
    time.sleep(0.5)  # each worker reloads its campaigns within reload_check_seconds (0.1 s here)
    try:
        page.goto("/?q=gloves")
        card = page.locator("#hits li.card.sponsored")
        expect(card).to_have_count(1)
        expect(card.locator(".sponsored-label")).to_have_text("Sponsored")
        assert card.get_attribute("data-item") == item and card.get_attribute("data-position") is None
        shot(page, "sponsored")
        with page.expect_navigation():
            card.locator("a.ad-link").click()
        deadline = time.time() + 10
        spend = 0
        while time.time() < deadline and not spend:
            spend = requests.get(f"{site['base']}/v1/ads/campaigns/browser", headers=ads, timeout=10).json()["spend_today"]
            time.sleep(0.2)
        assert spend > 0  # the click reached POST /v1/ads/clicks and was charged
        page.goto("/ads")
        page.fill("#ads-key", ADS_KEY)
        page.click("#ads-login button[type=submit]")
        expect(page.locator("#ads-report tbody tr")).to_have_count(1)
        row = page.locator("#ads-report tbody tr").first.locator("td")
        assert row.nth(1).inner_text() == "1"  # clicks
        assert page.locator("#ads-spend-chart svg polyline.spend-line").count() == 1
        assert page.locator("#ads-clicks-chart svg rect").count() == 24
        shot(page, "advertiser")
    finally:
        requests.post(f"{site['base']}/v1/ads/campaigns/browser/pause", headers=ads, timeout=10)
