"""The HTML pages and the browser-session rules, through Flask's test client (the browser tests drive the
same pages in Chromium): status codes, no-JS forms, CSRF, a session's own-shopper events, the admin login."""
from __future__ import annotations

import re
from typing import Any

import pytest

from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.service import Engine
from engine.tokens import ShopperToken
from tests.conftest import ADMIN_KEY, INGEST_KEY, SHOPPER_SECRET


@pytest.fixture
def demo_client(config: EngineConfig, encoder: Encoder) -> Any:
    """A storefront with the demo's "shopping as" menu on (``demo_shopper_menu``)."""
    from web import create_app

    demo = config.replace(demo_shopper_menu=True)
    return create_app({"TESTING": True, "ENGINE_CONFIG": demo, "ENGINE": Engine(demo, encoder=encoder)}).test_client()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, "every page carries the session's CSRF token"
    return m.group(1)


def hits(html: str) -> list[str]:
    block = html.split('id="hits"', 1)[1].split("</ol>", 1)[0]
    return re.findall(r'<li class="card" data-item="([^"]+)"', block)


def test_search_page_renders_results_facets_and_paging(client: Any) -> None:
    page = client.get("/?q=pla+filament")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert hits(html)[0] in {"fil-pla-red", "fil-pla-black", "pla-dup-title"} and len(hits(html)) == 10
    assert 'id="category-facet"' in html and 'rel="next"' in html
    second = client.get("/?q=pla+filament&page=2").get_data(as_text=True)
    assert not set(hits(second)) & set(hits(html))


def test_search_page_bad_input_is_a_400_naming_the_field(client: Any) -> None:
    for query, field in (("/?q=pla&page=0", "page"), ("/?q=pla&page=two", "page"), ("/?q=pla&max_price=-1", "max_price"),
                         ("/?q=pla&min_price=5&max_price=1", "min_price")):
        resp = client.get(query)
        assert resp.status_code == 400, query
        assert f'data-field="{field}"' in resp.get_data(as_text=True), query


def test_item_page_and_404(client: Any) -> None:
    html = client.get("/items/solder-wire").get_data(as_text=True)
    assert "Lead-Free Solder Wire" in html and 'id="similar"' in html and 'id="also-bought"' in html
    missing = client.get("/items/no-such-item")
    assert missing.status_code == 404 and missing.mimetype == "text/html"


def test_choosing_a_shopper_needs_the_form_token(demo_client: Any) -> None:
    client = demo_client
    assert client.post("/shopper", data={"shopper": "someone"}).status_code == 400
    token = csrf_of(client.get("/").get_data(as_text=True))
    resp = client.post("/shopper", data={"shopper": "someone", "csrf": token, "next": "https://evil.example/"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/"  # never off-site
    assert 'name="shopper" content="someone"' in client.get("/").get_data(as_text=True)


def test_without_the_demo_menu_a_session_is_never_a_shopper_it_was_not_given(client: Any) -> None:
    """Issue 8: outside the demo, the shopper comes from the shop's signed token or is a fresh anonymous id."""
    token = csrf_of(client.get("/").get_data(as_text=True))
    assert client.post("/shopper", data={"shopper": "someone", "csrf": token}).status_code == 403
    assert 'name="shopper" content=""' in client.get("/").get_data(as_text=True)
    client.post("/shopper", data={"shopper": "new", "csrf": token})
    anon = re.search(r'name="shopper" content="(anon-[0-9a-f]{16})"', client.get("/").get_data(as_text=True))
    assert anon, "a fresh anonymous id made by the server"
    ev = {"event_id": "a1", "user_id": anon.group(1), "type": "view", "item_id": "goggles"}
    assert client.post("/v1/events", json=ev, headers={"X-CSRF-Token": token}).status_code == 200
    # the shop signs its shopper in: ?shopper_token= binds the session, then the URL drops it
    signed = ShopperToken.sign(SHOPPER_SECRET, "shop-user-42", ttl_s=600)
    resp = client.get(f"/?q=pla&shopper_token={signed}")
    assert resp.status_code == 303 and resp.headers["Location"] == "/?q=pla"
    assert 'name="shopper" content="shop-user-42"' in client.get("/").get_data(as_text=True)
    forged = signed[:-2] + ("AA" if not signed.endswith("AA") else "BB")
    assert client.get(f"/?shopper_token={forged}").status_code == 401
    assert client.get("/v1/users/shop-user-42").status_code == 200  # its own data
    assert client.get("/v1/users/someone-else").status_code == 403


def test_a_session_sends_events_of_its_own_shopper_only(demo_client: Any) -> None:
    client = demo_client
    token = csrf_of(client.get("/").get_data(as_text=True))
    client.post("/shopper", data={"shopper": "browser-bob", "csrf": token})
    own = {"event_id": "b1", "user_id": "browser-bob", "type": "view", "item_id": "goggles"}
    assert client.post("/v1/events", json=own).status_code == 401  # no CSRF header: no session rights
    ok = client.post("/v1/events", json=own, headers={"X-CSRF-Token": token})
    assert ok.status_code == 200 and ok.get_json()["accepted"] == ["b1"]
    other = client.post("/v1/events", json=[dict(own, event_id="b2", user_id="someone-else")],
                        headers={"X-CSRF-Token": token})
    assert other.status_code == 403 and other.get_json()["error"]["field"] == "user_id"
    assert client.get("/v1/users/someone-else").status_code == 403  # another shopper's data
    assert client.post("/v1/events", json=dict(own, event_id="b3"), headers={"X-CSRF-Token": "forged"}).status_code == 401


def test_a_session_is_not_admin_without_logging_in(client: Any) -> None:
    token = csrf_of(client.get("/admin").get_data(as_text=True))
    assert client.post("/v1/admin/rollback", headers={"X-CSRF-Token": token}).status_code == 401
    assert client.post("/admin/login", data={"key": "wrong-key-123", "csrf": token}).status_code == 401
    assert client.post("/admin/login", data={"key": ADMIN_KEY, "csrf": "forged"}).status_code == 400
    assert client.post("/admin/login", data={"key": ADMIN_KEY, "csrf": token}).status_code == 303
    page = client.get("/admin").get_data(as_text=True)
    assert 'id="current-version"' in page and 'id="rebuild"' in page
    assert client.post("/v1/admin/rollback").status_code == 401  # the session needs the CSRF header too
    rolled = client.post("/v1/admin/rollback", headers={"X-CSRF-Token": token})  # let in, and answered:
    assert rolled.status_code == 404 and "no earlier version" in rolled.get_json()["error"]["message"]
    client.post("/admin/logout", data={"csrf": token})
    assert client.post("/v1/admin/rollback", headers={"X-CSRF-Token": token}).status_code == 401


def test_changing_the_admin_key_logs_the_browser_out(config: EngineConfig, encoder: Encoder) -> None:
    from web import create_app

    first = create_app({"TESTING": True, "ENGINE_CONFIG": config, "ENGINE": Engine(config, encoder=encoder)})
    c = first.test_client()
    token = csrf_of(c.get("/admin").get_data(as_text=True))
    c.post("/admin/login", data={"key": ADMIN_KEY, "csrf": token})
    assert 'id="rebuild"' in c.get("/admin").get_data(as_text=True)
    changed = config.replace(admin_key="a-brand-new-admin-key")
    second = create_app({"TESTING": True, "ENGINE_CONFIG": changed, "ENGINE": Engine(changed, encoder=encoder)})
    c2 = second.test_client()
    cookie = c.get_cookie("session")
    assert cookie is not None
    c2.set_cookie("session", cookie.value)
    assert 'id="admin-key"' in c2.get("/admin").get_data(as_text=True)  # asked for the key again


def test_api_keys_still_work_beside_sessions(client: Any) -> None:
    ev = {"event_id": "k1", "user_id": "api-user", "type": "view", "item_id": "goggles"}
    assert client.post("/v1/events", json=ev, headers={"Authorization": f"Bearer {INGEST_KEY}"}).status_code == 200
    assert client.post("/v1/events", json=ev, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_pages_allow_only_their_own_server(client: Any) -> None:
    headers = client.get("/").headers
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
