"""Event ingest, shopper features and deletion through the HTTP API (Flask test client, real SQLite)."""
from __future__ import annotations

from typing import Any

from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.service import Engine
from tests.conftest import ADMIN_KEY, INGEST_KEY, READ_KEY

INGEST = {"Authorization": f"Bearer {INGEST_KEY}"}
READ = {"Authorization": f"Bearer {READ_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def post(client: Any, body: Any, headers: dict[str, str] = INGEST) -> Any:
    return client.post("/v1/events", json=body, headers=headers)


def test_ingest_needs_the_ingest_key(client: Any) -> None:
    ev = {"event_id": "e1", "user_id": "u1", "type": "view", "item_id": "goggles"}
    assert post(client, ev, headers={}).status_code == 401
    assert post(client, ev, headers=ADMIN).status_code == 401  # admin key is another scope
    assert post(client, ev).status_code == 200


def test_ingest_off_without_a_key(config: EngineConfig, encoder: Encoder) -> None:
    from web import create_app

    off = config.replace(ingest_key=None)
    client = create_app({"TESTING": True, "ENGINE_CONFIG": off, "ENGINE": Engine(off, encoder=encoder)}).test_client()
    resp = post(client, {"event_id": "e1", "user_id": "u1", "type": "view", "item_id": "goggles"})
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "ingest_disabled"


def test_batch_reports_each_event_and_is_idempotent(client: Any) -> None:
    batch = [
        {"event_id": "a1", "user_id": "u1", "type": "view", "item_id": "fil-pla-red", "timestamp": 1700000000},
        {"event_id": "a2", "user_id": "u1", "type": "click", "item_id": "fil-pla-red", "timestamp": 1700000010},
        {"event_id": "a3", "user_id": "u1", "type": "purchase", "item_id": "no-such-item"},
        {"event_id": "a4", "user_id": "u1", "type": "teleport", "item_id": "fil-pla-red"},
        {"event_id": "a5", "user_id": "u1", "type": "search"},
        {"user_id": "u1", "type": "view", "item_id": "goggles"},
    ]
    body = post(client, batch).get_json()
    assert body["accepted"] == ["a1", "a2"] and body["duplicates"] == []
    fields = {r["index"]: r["field"] for r in body["rejected"]}
    assert fields == {2: "item_id", 3: "type", 4: "query", 5: "event_id"}
    again = post(client, {"events": batch[:2]}).get_json()
    assert again["accepted"] == [] and again["duplicates"] == ["a1", "a2"]
    stats = client.get("/v1/items/fil-pla-red").get_json()["stats"]
    assert stats["counts"]["view"] == 1 and stats["counts"]["click"] == 1 and stats["ctr"] == 1.0


def test_bad_bodies(client: Any) -> None:
    resp = client.post("/v1/events", data="{not json", content_type="application/json", headers=INGEST)
    assert resp.status_code == 400 and resp.get_json()["error"]["field"] == "body"
    assert post(client, "just a string").get_json()["error"]["field"] == "events"
    too_many = [{"event_id": f"x{i}", "user_id": "u", "type": "view", "item_id": "goggles"} for i in range(1001)]
    resp = post(client, too_many)
    assert resp.status_code == 400 and resp.get_json()["error"]["field"] == "events"


def test_user_features_and_deletion(client: Any) -> None:
    assert client.get("/v1/users/nobody", headers=READ).get_json()["counts"]["view"] == 0  # cold start, not 404
    post(client, [
        {"event_id": "b1", "user_id": "u9", "type": "view", "item_id": "gloves-latex"},
        {"event_id": "b2", "user_id": "u9", "type": "add_to_cart", "item_id": "gloves-latex"},
        {"event_id": "b3", "user_id": "u9", "type": "purchase", "item_id": "goggles"},
        {"event_id": "b4", "user_id": "u9", "type": "search", "query": "gloves"},
    ])
    user = client.get("/v1/users/u9", headers=READ).get_json()
    assert user["counts"]["purchase"] == 1 and user["counts"]["add_to_cart"] == 1
    assert user["categories"]["top"]  # category affinity from the served catalog
    assert client.delete("/v1/users/u9", headers=INGEST).status_code == 401  # admin only
    gone = client.delete("/v1/users/u9", headers=ADMIN).get_json()
    assert gone["deleted_events"] == 4
    user = client.get("/v1/users/u9", headers=READ).get_json()
    assert user["counts"]["purchase"] == 0 and not user["categories"]["top"]
    assert client.get("/v1/items/goggles").get_json()["stats"]["counts"]["purchase"] == 0
