"""The item page's "Ask a question" box in a real browser (Debian's Chromium, Playwright) against a real server
process, with past answers imported into its event store (issue 12). Same fixtures and checks as
tests/test_browser.py: no request leaves the server, no script or console error."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from engine.embedding.base import Encoder
from engine.service import Engine
from tests.conftest import make_config, start_server, stop_server

from tests.browser_support import SHOTS, browser, playwright_api, require_chromium, watched_page  # noqa: F401

expect = playwright_api.expect
TEMPERATURE = "Print it at 200 to 215 C on the nozzle with the bed at 60 C."
PAIRS = [
    ("fil-pla-red", "What temperature should I print this at?", TEMPERATURE),
    ("fil-pla-red", "Does it smell when printing?", "Barely, much less than ABS did in my garage."),
    ("fil-pla-red", "Is the colour a true red?", "It is a bright fire-engine red, a bit darker than the photo."),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, built_index_dir: Path, models_dir: Path,
         encoder: Encoder) -> Iterator[dict[str, Any]]:
    require_chromium()
    work = tmp_path_factory.mktemp("qa-site")
    index_dir = work / "indexes"
    shutil.copytree(built_index_dir, index_dir, symlinks=True)
    config = make_config(index_dir, models_dir, events_url=f"sqlite:///{work / 'events.db'}")
    pairs = work / "pairs.jsonl"
    import json

    pairs.write_text("".join(json.dumps({"item_id": i, "question": q, "answer": a, "date": "2024-03-01"}) + "\n"
                             for i, q, a in PAIRS), encoding="utf-8")
    engine = Engine(config, encoder=encoder)
    assert engine.qa.import_file(pairs).stored == len(PAIRS)
    engine.events.close()
    proc, base = start_server(config)
    try:
        yield {"base": base}
    finally:
        stop_server(proc)


@pytest.fixture
def page(browser: Any, site: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[Any]:
    with watched_page(browser, site["base"], request) as pg:
        yield pg


def ask(pg: Any, question: str) -> None:
    pg.fill("#ask-q", question)
    with pg.expect_response(lambda r: "/answers?" in r.url):
        pg.click(".ask-form button[type=submit]")


def test_ask_a_question_on_the_item_page(page: Any) -> None:
    page.goto("/items/fil-pla-red")
    expect(page.locator("#ask-title")).to_have_text("Ask a question")
    ask(page, "which nozzle temperature do I need?")
    first = page.locator(".answers li").first
    expect(first.locator(".answer-text")).to_have_text(TEMPERATURE)
    expect(first.locator(".answer-meta")).to_contain_text("What temperature should I print this at?")
    expect(first.locator(".answer-meta")).to_contain_text("2024-03-01")
    page.screenshot(path=str(SHOTS / "item-ask-answers.png"), full_page=True)

    ask(page, "what brand is this?")  # a catalog field, first, with its source
    first = page.locator(".answers li").first
    expect(first.locator(".answer-text")).to_have_text("eSUN")
    expect(first.locator(".answer-meta")).to_contain_text("catalog's field 'brand'")

    ask(page, "what is the capital city of France")
    expect(page.locator(".ask-status")).to_contain_text("No good answer found")
    expect(page.locator(".answers li")).to_have_count(0)
    page.screenshot(path=str(SHOTS / "item-ask-no-answer.png"), full_page=True)
