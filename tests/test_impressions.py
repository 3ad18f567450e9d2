"""Issue 9, part 1: every list answered gets a request_id, and its impression is logged durably, off the
request path, in the event store (kill -9 after the response loses none)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import requests

from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.events import open_event_store
from engine.learn.impressions import spool_dir
from engine.service import Engine
from tests.conftest import INGEST_KEY, READ_KEY, start_server

READ = {"Authorization": f"Bearer {READ_KEY}"}


def logging_client(config: EngineConfig, encoder: Encoder) -> tuple[Any, Engine]:
    from web import create_app

    engine = Engine(config, encoder=encoder, log_impressions=True)
    return create_app({"TESTING": True, "ENGINE_CONFIG": config, "ENGINE": engine}).test_client(), engine


def test_every_list_gets_a_request_id_and_an_impression(config: EngineConfig, encoder: Encoder) -> None:
    client, engine = logging_client(config, encoder)
    client.post("/v1/events", json={"event_id": "e1", "user_id": "ann", "type": "purchase", "item_id": "goggles"},
                headers={"Authorization": f"Bearer {INGEST_KEY}"})
    search = client.get("/v1/search", query_string={"q": "gloves", "k": 3, "offset": 1}).get_json()
    recs = client.get("/v1/users/ann/recommendations", query_string={"k": 4}, headers=READ).get_json()
    anon = client.post("/v1/recommendations", json={"items": ["goggles"], "k": 2}).get_json()
    similar = client.get("/v1/items/fil-pla-red/similar?k=2").get_json()
    ids = [body["request_id"] for body in (search, recs, anon, similar)]
    assert len(set(ids)) == 4 and all(len(i) == 32 for i in ids)
    assert engine.impressions is not None
    engine.impressions.flush()
    store = engine.events
    shown = store.get_impression(search["request_id"])
    assert shown is not None and (shown.surface, shown.query, shown.offset) == ("search", "gloves", 1)
    assert shown.items == [h["id"] for h in search["hits"]] and shown.policy == "hybrid/zscore"
    assert [round(f["bm25"] or 0, 6) for f in shown.features] == [h["score_parts"]["bm25"] for h in search["hits"]]
    rec = store.get_impression(recs["request_id"])
    assert rec is not None and (rec.surface, rec.user_id, rec.policy) == ("recommend", "ann", "blend")
    assert rec.items == [r["id"] for r in recs["recommendations"]] and "content" in rec.features[0]
    session = store.get_impression(anon["request_id"])
    assert session is not None and (session.surface, session.user_id) == ("recommend_session", None)
    near = store.get_impression(similar["request_id"])
    assert near is not None and (near.surface, near.query) == ("similar", "fil-pla-red")
    assert store.count_impressions() == 4
    # a shopper's deletion takes their impressions too; old impressions are pruned
    engine.delete_user("ann")
    assert store.get_impression(recs["request_id"]) is None
    assert store.prune_impressions(time.time() + 1) == 3 and store.count_impressions() == 0


def test_without_logging_no_impression_is_kept(client: Any, app: Any) -> None:
    body = client.get("/v1/search", query_string={"q": "gloves"}).get_json()
    assert body["request_id"] and app.extensions["vitrine"].impressions is None


def test_impressions_survive_kill_9_after_the_response(config: EngineConfig, monkeypatch: Any) -> None:
    monkeypatch.setenv("VITRINE_IMPRESSION_FLUSH_SECONDS", "600")  # nothing reaches the store before the kill
    proc, base = start_server(config)
    ids: list[str] = []
    try:
        for q in ("gloves", "pla filament", "multimeter", "safety goggles", "solder"):
            ids.append(requests.get(f"{base}/v1/search", params={"q": q}, timeout=30).json()["request_id"])
        ids.append(requests.post(f"{base}/v1/recommendations", json={"items": ["goggles"]}, timeout=30)
                   .json()["request_id"])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # right after the answers: the flusher may not have run
        proc.communicate(timeout=30)
    store = open_event_store(config.events_url)
    assert all(store.get_impression(i) is None for i in ids)  # only in the dead workers' spool files
    monkeypatch.delenv("VITRINE_IMPRESSION_FLUSH_SECONDS")
    proc, base = start_server(config)  # the new workers store what the dead ones spooled
    try:
        deadline = time.time() + 30
        while time.time() < deadline and any(store.get_impression(i) is None for i in ids):
            requests.get(f"{base}/v1/search", params={"q": "x"}, timeout=30)  # a worker starts its flusher
            time.sleep(0.3)
        missing = [i for i in ids if store.get_impression(i) is None]
        assert not missing, missing
        assert not [p for p in spool_dir(store).glob("*.jsonl") if p.stat().st_size and not _alive(int(p.stem.split(".")[0]))]
        store.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_deferred_features_wait_for_a_gap_between_requests(config: EngineConfig, monkeypatch: Any) -> None:
    """The flusher computes ``later`` features only while no request is in flight; with a backlog it stops
    waiting, so a server that is never idle still stores every list with its features."""
    import threading

    from engine.events.impressions import Impression
    from engine.learn import impressions as imp_mod
    from engine.learn.impressions import ImpressionLog, InFlight

    monkeypatch.setattr(imp_mod, "IDLE_WAIT_S", 30.0)  # no deadline in this test: only a gap or a backlog
    store = open_event_store(config.events_url)
    in_flight = InFlight()
    log = ImpressionLog(lambda: store, retention_s=86400.0, flush_every_s=3600.0, in_flight=in_flight)
    seen: list[bool] = []

    def later() -> list[dict[str, float]]:
        seen.append(in_flight.busy())
        return [{"f": 1.0}]

    in_flight.enter()
    log.log(Impression("gap-1", time.time(), "search", None, "q", ["goggles"]), later)
    threading.Timer(0.3, in_flight.exit).start()  # the request ends
    t = time.monotonic()
    log.flush()
    assert seen == [False] and time.monotonic() - t >= 0.25, "computed in the gap after the request"
    stored = store.get_impression("gap-1")
    assert stored is not None and stored.features == [{"f": 1.0}]

    monkeypatch.setattr(imp_mod, "BACKLOG", 2)
    in_flight.enter()  # and it never ends
    for i in range(3):
        log.log(Impression(f"busy-{i}", time.time(), "search", None, "q", ["goggles"]), later)
    t = time.monotonic()
    log.flush()
    assert time.monotonic() - t < 10 and seen[1:] == [True, True, True]
    assert [getattr(store.get_impression(f"busy-{i}"), "features", None) for i in range(3)] == [[{"f": 1.0}]] * 3
    log.close()


def test_the_app_counts_requests_in_and_out(config: EngineConfig, encoder: Encoder) -> None:
    client, engine = logging_client(config, encoder)
    client.application.add_url_rule("/probe", "probe", lambda: {"busy": engine.in_flight.busy()})
    assert client.get("/probe").get_json() == {"busy": True}
    # counted out once the response's last byte is written (the WSGI iterable closed), not when the view returns
    r = client.get("/v1/search", query_string={"q": "gloves"}, headers=READ, buffered=False)
    assert r.status_code == 200 and engine.in_flight.busy()
    r.close()
    assert not engine.in_flight.busy()
    assert client.get("/v1/search", headers=READ).status_code == 400
    assert client.get("/no/such/page").status_code == 404
    assert not engine.in_flight.busy()
