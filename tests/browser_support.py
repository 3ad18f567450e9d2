"""What the browser tests share: Debian's Chromium under Playwright, one browser per module, and a page
whose every request must stay on the server and which fails its test on any script or console error.

A test module does ``from tests.browser_support import browser, watched_page`` and defines its own
``site`` (a server) and a ``page`` fixture around :func:`watched_page`.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import ROOT

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("VITRINE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
SHOTS = ROOT / "test-artifacts" / "screenshots"


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium package")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@contextmanager
def watched_page(browser: Any, base: str, request: pytest.FixtureRequest, *,
                 console_ok: Callable[[str], bool] = lambda text: False, **context_args: Any) -> Iterator[Any]:
    """A fresh browser context (own cookies) on ``base``: after the test, no request may have left the
    server (``blob:`` downloads aside) and no script or console error may have occurred (``console_ok``
    lets a test accept errors it provokes on purpose). A failing test leaves ``<test>-FAILED.png``."""
    context = browser.new_context(base_url=base, viewport={"width": 1200, "height": 900}, **context_args)
    foreign: list[str] = []
    context.on("request", lambda r: foreign.append(r.url)
               if not (r.url.startswith(base) or r.url.startswith("blob:")) else None)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(f"console: {m.text}")
          if m.type == "error" and not console_ok(m.text) else None)
    pg.set_default_timeout(15000)
    yield pg
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        pg.screenshot(path=str(SHOTS / f"{request.node.name}-FAILED.png"), full_page=True)
    context.close()
    assert not foreign, f"requests left the server: {foreign}"
    assert not errors, f"JavaScript or console errors (a CSP violation shows here): {errors}"
