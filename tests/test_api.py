"""HTTP API through Flask's test client: answers, every error case, admin auth, OpenAPI coverage."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.errors import InvalidQuery
from engine.service import Engine
from tests.conftest import ADMIN_KEY, make_config

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def error_of(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.is_json
    err: dict[str, Any] = resp.get_json()["error"]
    assert err["message"]
    return err


def test_search(client: Any) -> None:
    resp = client.get("/v1/search", query_string={"q": "pla filament", "k": 3})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["k"] == 3 and len(body["hits"]) == 3 and body["version"]
    assert body["hits"][0]["id"] in {"fil-pla-red", "fil-pla-black", "pla-dup-title"}
    assert set(body["hits"][0]["score_parts"]) == {"bm25", "vector"}


def test_search_filters_and_paging(client: Any) -> None:
    body = client.get(
        "/v1/search", query_string={"q": "gloves", "category": "Industrial & Scientific > Lab & Safety > Gloves",
                                    "max_price": "10", "in_stock": "true"}
    ).get_json()
    assert [h["id"] for h in body["hits"]] == ["gloves-latex"]
    p2 = client.get("/v1/search", query_string={"q": "lab", "k": 2, "offset": 2}).get_json()
    whole = client.get("/v1/search", query_string={"q": "lab", "k": 4}).get_json()
    assert [h["id"] for h in p2["hits"]] == [h["id"] for h in whole["hits"][2:]]


@pytest.mark.parametrize(
    "params, field",
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "x", "k": "abc"}, "k"),
        ({"q": "x", "k": "0"}, "k"),
        ({"q": "x", "k": "1000000"}, "k"),
        ({"q": "x", "offset": "-5"}, "offset"),
        ({"q": "x", "offset": "1.5"}, "offset"),
        ({"q": "x", "min_price": "cheap"}, "min_price"),
        ({"q": "x", "max_price": "nan"}, "max_price"),
        ({"q": "x", "min_price": "10", "max_price": "5"}, "min_price"),
        ({"q": "x", "in_stock": "maybe"}, "in_stock"),
        ({"q": "x" * 600}, "q"),
    ],
)
def test_search_bad_parameters(client: Any, params: dict[str, str], field: str) -> None:
    err = error_of(client.get("/v1/search", query_string=params), 400)
    assert err["field"] == field and field in err["message"]


def test_items_and_similar(client: Any) -> None:
    item = client.get("/v1/items/fil-pla-red").get_json()
    assert item["title"].startswith("PLA 3D Printer Filament") and item["price"] == 22.99
    sim = client.get("/v1/items/fil-pla-red/similar?k=3").get_json()
    assert [h["id"] for h in sim["similar"]][0] == "fil-pla-black" and len(sim["similar"]) == 3
    same = client.get("/v1/items/goggles/similar?same_category=true").get_json()
    assert same["similar"] == []  # the only item of its category
    error_of(client.get("/v1/items/nope"), 404)
    error_of(client.get("/v1/items/nope/similar"), 404)
    assert error_of(client.get("/v1/items/goggles/similar?k=-1"), 400)["field"] == "k"
    assert error_of(client.get("/v1/items/goggles/similar?same_category=perhaps"), 400)["field"] == "same_category"


def test_unknown_route_and_method_are_json(client: Any) -> None:
    error_of(client.get("/v1/nothing-here"), 404)
    error_of(client.post("/v1/search"), 405)


def test_info_and_health(client: Any, config: EngineConfig) -> None:
    info = client.get("/v1/info").get_json()
    assert info["items"] == 31 and info["version"] and info["dims"] == 384
    health = client.get("/healthz").get_json()
    assert health == {"status": "ok", "index_version": info["version"]}
    # issue 8: no absolute paths or hashes to the public; the whole manifest to the admin key only
    public = json.dumps(info) + json.dumps(health)
    assert str(config.index_dir.parent) not in public and "sha256" not in public and "git_sha" not in public
    manifest = client.get("/v1/admin/versions", headers=AUTH).get_json()["manifest"]
    assert manifest["catalog"]["file_sha256"] and manifest["version"] == info["version"]
    error_of(client.get("/v1/admin/versions"), 401)


def test_no_index_is_503_not_500(tmp_path: Path, models_dir: Path, encoder: Encoder) -> None:
    from web import create_app

    config = make_config(tmp_path / "empty", models_dir)
    client = create_app({"TESTING": True, "ENGINE_CONFIG": config, "ENGINE": Engine(config, encoder=encoder)}).test_client()
    assert error_of(client.get("/v1/search?q=x"), 503)["code"] == "index_not_built"
    assert client.get("/healthz").get_json()["status"] == "no_index"


def test_admin_needs_the_key(client: Any) -> None:
    assert error_of(client.post("/v1/admin/rebuild"), 401)["code"] == "unauthorized"
    error_of(client.post("/v1/admin/rebuild", headers={"Authorization": "Bearer wrong-key-000"}), 401)
    error_of(client.post("/v1/admin/rollback", headers={"Authorization": ADMIN_KEY}), 401)  # no scheme
    error_of(client.get("/v1/admin/rebuild/0123", headers={"Authorization": "Basic x"}), 401)


def test_admin_off_without_a_configured_key(config: EngineConfig, encoder: Encoder) -> None:
    from web import create_app

    open_config = config.replace(admin_key=None)
    client = create_app({"TESTING": True, "ENGINE_CONFIG": open_config,
                         "ENGINE": Engine(open_config, encoder=encoder)}).test_client()
    err = error_of(client.post("/v1/admin/rebuild", headers={"Authorization": "Bearer anything"}), 403)
    assert err["code"] == "admin_disabled"


def test_admin_bad_input(client: Any) -> None:
    assert error_of(client.post("/v1/admin/rebuild", headers=AUTH, data="{nope", content_type="application/json"),
                    400)["field"] == "body"
    assert error_of(client.post("/v1/admin/rebuild", headers=AUTH, json=["a"]), 400)["field"] == "body"
    assert error_of(client.post("/v1/admin/rebuild", headers=AUTH, json={"catalog": "/no/such.csv"}),
                    400)["field"] == "catalog"
    assert error_of(client.post("/v1/admin/rebuild", headers=AUTH, json={"catalog": 5}), 400)["field"] == "catalog"
    assert error_of(client.post("/v1/admin/rebuild", headers=AUTH, json={"full": "sometimes"}), 400)["field"] == "full"
    error_of(client.get("/v1/admin/rebuild/" + "0" * 32, headers=AUTH), 404)
    error_of(client.get("/v1/admin/rebuild/../../etc", headers=AUTH), 404)


def test_admin_rebuild_runs_in_background_and_publishes(config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    from web import create_app

    config = config.replace(catalog_dirs=(tmp_path,))
    client = create_app({"TESTING": True, "ENGINE_CONFIG": config, "ENGINE": Engine(config, encoder=encoder)}).test_client()
    before = client.get("/v1/info").get_json()["version"]
    catalog = tmp_path / "new.jsonl"
    catalog.write_text(
        json.dumps({"id": "new-1", "title": "Ultrasonic Cleaner 2L with Heater", "category": "Lab > Cleaning"}) + "\n"
        + json.dumps({"id": "new-2", "title": "Magnetic Stirrer with Hot Plate", "category": "Lab > Mixing"}) + "\n",
        encoding="utf-8",
    )
    resp = client.post("/v1/admin/rebuild", headers=AUTH, json={"catalog": str(catalog)})
    assert resp.status_code == 202
    status_url = resp.get_json()["status_url"]
    deadline, state = time.time() + 180, {}
    while time.time() < deadline:
        state = client.get(status_url, headers=AUTH).get_json()
        if state["state"] in ("succeeded", "failed"):
            break
        time.sleep(0.2)
    assert state["state"] == "succeeded", state
    info = client.get("/v1/info").get_json()
    assert info["version"] == state["version"] != before and info["items"] == 2
    assert client.get("/v1/items/new-1").status_code == 200
    # And back again.
    rolled = client.post("/v1/admin/rollback", headers=AUTH).get_json()
    assert rolled == {"previous": state["version"], "current": before}
    assert client.get("/v1/info").get_json()["version"] == before


def test_rebuild_conflicts_with_a_running_build(client: Any, config: EngineConfig) -> None:
    from engine.pipeline import build_lock

    with build_lock(config.index_dir):
        err = error_of(client.post("/v1/admin/rebuild", headers=AUTH, json={}), 409)
    assert err["code"] == "build_in_progress"


def test_openapi_describes_every_route(app: Any, client: Any) -> None:
    doc = client.get("/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("pages."):  # HTML pages: not the JSON API
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, f"{method} {path} missing from openapi.json"


DAY = 86400


def today_midnight() -> int:
    return int(time.time()) // DAY * DAY


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def test_admin_stats_counts_events_of_the_last_days(client: Any, engine: Engine) -> None:
    t0 = today_midnight()
    events = [  # (event_id, user, type, timestamp)
        ("today-view", "u1", "view", t0 + 1),
        ("today-search", "u4", "search", t0 + 2),
        ("yesterday-view", "u1", "view", t0 - DAY),  # the first second of the 2-day window
        ("yesterday-click", "u2", "click", t0 - DAY + 200),
        ("before-yesterday", "u6", "view", t0 - DAY - 1),  # the last second before it
        ("five-days-ago", "u3", "purchase", t0 - 5 * DAY),
        ("forty-days-ago", "u5", "view", t0 - 40 * DAY),
    ]
    result = engine.ingest([
        {"event_id": e, "user_id": u, "type": t, "timestamp": ts} | (
            {"query": "gloves"} if t == "search" else {"item_id": "goggles"})
        for e, u, t, ts in events])
    assert len(result.accepted) == len(events)

    body = client.get("/v1/admin/stats", query_string={"days": 2}, headers=AUTH).get_json()
    today, yesterday = utc_day(t0), utc_day(t0 - DAY)
    assert body["events_per_day"] == [
        {"day": yesterday, "type": "click", "count": 1}, {"day": yesterday, "type": "view", "count": 1},
        {"day": today, "type": "search", "count": 1}, {"day": today, "type": "view", "count": 1}]
    assert body["totals"] == {"view": 2, "click": 1, "add_to_cart": 0, "remove_from_cart": 0, "purchase": 0,
                              "search": 1, "rating": 0}
    assert (body["events"], body["shoppers"], body["days"], body["since"]) == (4, 3, 2, yesterday)

    default = client.get("/v1/admin/stats", headers=AUTH).get_json()  # 30 days
    assert (default["days"], default["events"], default["shoppers"]) == (30, 6, 5)
    assert default["totals"]["purchase"] == 1 and default["totals"]["view"] == 3
    year = engine.event_stats(366)
    assert (year.events, year.shoppers) == (7, 6)
    assert sum(e["count"] for e in year.events_per_day) == 7


@pytest.mark.parametrize("days", ["0", "367", "-1", "abc", "1.5"])
def test_admin_stats_bad_days(client: Any, days: str) -> None:
    err = error_of(client.get("/v1/admin/stats", query_string={"days": days}, headers=AUTH), 400)
    assert err["field"] == "days" and "days" in err["message"]


def test_admin_stats_needs_the_key(client: Any) -> None:
    error_of(client.get("/v1/admin/stats"), 401)
    error_of(client.get("/v1/admin/stats", headers={"Authorization": "Bearer wrong-key-000"}), 401)


def test_sample_shoppers_most_item_events_first(engine: Engine) -> None:
    t0 = time.time() - DAY
    events = [  # (user, item or None for a search, seconds after t0); stored out of time order
        ("ann", "goggles", 30), ("ann", "earplugs", 10), ("ann", None, 40), ("ann", "calipers", 20),
        ("bob", "zip-ties", 5), ("bob", "multimeter", 50), ("bob", "screws-m3", 1),
        ("cy", "magnet-neodymium", 3),
        ("dee", None, 7), ("dee", None, 8),
    ]
    engine.ingest([{"event_id": f"e{n}", "user_id": u, "type": "search" if item is None else "view",
                    "timestamp": t0 + s} | ({"query": "x"} if item is None else {"item_id": item})
                   for n, (u, item, s) in enumerate(events)])
    titles = {i: engine.item(i).title for i in ("goggles", "multimeter", "magnet-neodymium")}
    # ann and bob have 3 item events each (ann's search does not count), so by id; dee has none
    assert [s.to_dict() for s in engine.sample_shoppers()] == [
        {"user_id": "ann", "events": 3, "last_item_id": "goggles", "last_item_title": titles["goggles"]},
        {"user_id": "bob", "events": 3, "last_item_id": "multimeter", "last_item_title": titles["multimeter"]},
        {"user_id": "cy", "events": 1, "last_item_id": "magnet-neodymium",
         "last_item_title": titles["magnet-neodymium"]},
    ]
    assert [s.user_id for s in engine.sample_shoppers(limit=2)] == ["ann", "bob"]
    # the counts come from the per-shopper features, kept as events arrive (limit 1 is not cached yet)
    engine.ingest([{"event_id": f"cy-{n}", "user_id": "cy", "type": "click", "item_id": "goggles",
                    "timestamp": t0 + 60 + n} for n in range(3)])
    assert [s.to_dict() for s in engine.sample_shoppers(limit=1)] == [
        {"user_id": "cy", "events": 4, "last_item_id": "goggles", "last_item_title": titles["goggles"]}]
    # a deleted shopper leaves the menu at once (the cached answers are dropped on deletion)
    engine.delete_user("ann")
    assert [s.user_id for s in engine.sample_shoppers()] == ["cy", "bob"]  # and cy's new events count
    for bad in (0, 1001):
        with pytest.raises(InvalidQuery) as e:
            engine.sample_shoppers(limit=bad)
        assert e.value.field == "limit"
