"""The impression writer process (issue 13, part 4): serving processes only spool their impressions, with
their deferred ranker features as specs; a writer process computes those features and stores the lists."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.events import open_event_store
from engine.learn import impressions as imp_mod
from engine.learn.impressions import WRITER_ENV, SpoolWriter, spool_dir
from engine.ranking.features import pack_floats, unpack_floats
from engine.search import ranked_search
from engine.service import Engine, Padded, Reordered
from tests.conftest import ADMIN_KEY, INGEST_KEY, READ_KEY, start_server

READ = {"Authorization": f"Bearer {READ_KEY}"}


def test_packed_floats_are_exact_and_checked() -> None:
    x = [0.1, -2.5e-300, 1e308, 3.0]
    assert unpack_floats(pack_floats(x)).tolist() == x
    for bad in ("not base64!", "AAAA"):  # the second decodes to 3 bytes: not float64s
        with pytest.raises(ValueError):
            unpack_floats(bad)


def test_a_spec_computes_the_same_features_in_another_engine(config: EngineConfig, encoder: Encoder) -> None:
    here = Engine(config, encoder=encoder, log_impressions=True)
    there = Engine(config, encoder=encoder)  # the writer's: its own snapshot and live models
    here.ingest([{"event_id": "w1", "user_id": "ann", "type": "purchase", "item_id": "goggles"},
                 {"event_id": "w2", "user_id": "ann", "type": "view", "item_id": "gloves-nitrile-m"}])
    snap, cfg = here.snapshot(), here.config
    mine, _ = here.shoppers.search_profile("ann", snap, consent=True)
    found = ranked_search(snap, "nitrile gloves", here.embed_query("nitrile gloves"), k=3, offset=1, mask=None,
                          pool=cfg.candidate_pool, weight=cfg.hybrid_weight, fusion=cfg.fusion,
                          item_rates=here._item_rates, defer_features=True, usual_price=10.0, affinity=mine,
                          personalize=0.3)
    recs = here.recommend("ann", k=4)
    assert found.later is not None and recs.later is not None
    assert "bm25_title" in found.later()[0] and "cooc_last" in recs.later()[0]
    assert found.later()[0]["title_vector"] != 0  # computed in this process, carried by the spec
    assert any(f["price_known"] == 1.0 for f in found.later())  # the shopper's usual price, carried too
    assert all(f["profile_sim"] > 0 for f in found.later())  # and the affinity's parts
    there.refresh_live()  # as the writer does before a pass
    for later in (found.later, recs.later):
        for x in (later, Reordered(later, (2, 0, 1)), Padded(later, 2)):
            spec = json.loads(json.dumps(x.spec()))  # through the spool line's JSON
            got, want = there.deferred(spec)(), x()
            assert got == want, [(k, a[k], b[k]) for a, b in zip(got, want) for k in a if a[k] != b.get(k)]
            # A spec spooled before the item's age was carried: computed, the age unknown (0; here every
            # item is less than a day old or has no event, so 0 as well)
            if spec.get("rates") is not None:
                spec["rates"] = spec["rates"][:3]
            spec.get("inputs", {}).pop("age_days", None)
            assert there.deferred(spec)() == want
    with pytest.raises(ValueError, match="unknown deferred"):
        there.deferred({"kind": "nope"})


def test_spool_only_processes_and_the_writer(config: EngineConfig, encoder: Encoder, monkeypatch: Any) -> None:
    from web import create_app

    monkeypatch.setenv(WRITER_ENV, str(os.getpid()))  # a live process stands for the writer
    engine = Engine(config, encoder=encoder, log_impressions=True)
    assert engine.impressions is not None and engine.impressions.spool_only
    client = create_app({"TESTING": True, "ENGINE_CONFIG": config, "ENGINE": engine}).test_client()
    client.post("/v1/events", json={"event_id": "s1", "user_id": "ann", "type": "purchase", "item_id": "goggles"},
                headers={"Authorization": f"Bearer {INGEST_KEY}"})
    search = client.get("/v1/search", query_string={"q": "gloves", "k": 3}).get_json()
    recs = client.get("/v1/users/ann/recommendations", query_string={"k": 4}, headers=READ).get_json()
    store = open_event_store(config.events_url)
    assert engine.impressions.flush() == 0 and store.count_impressions() == 0  # nothing but the spool
    segments = list(spool_dir(store).glob(f"{os.getpid()}.*.jsonl"))
    assert len(segments) == 1 and b'"deferred"' in segments[0].read_bytes()
    status = engine.impressions.status()
    assert status["writer"] == "process" and status["writer_alive"] and status["spooled_bytes"] > 0

    writer_engine = Engine(config, encoder=encoder)
    writer = SpoolWriter(lambda: writer_engine.shoppers.events, writer_engine.deferred, retention_s=86400.0,
                         before_pass=writer_engine.refresh_live)
    assert writer.write() == 2 and writer.write() == 0  # each line once
    shown = store.get_impression(search["request_id"])
    assert shown is not None and shown.items == [h["id"] for h in search["hits"]]
    assert all("bm25_title" in f and "bm25" in f for f in shown.features)  # deferred and request-time features
    rec = store.get_impression(recs["request_id"])
    assert rec is not None and all("cooc_last" in f for f in rec.features)
    assert segments[0].exists()  # this process lives and may append to it: not sealed

    monkeypatch.setattr(imp_mod, "SEGMENT_S", 0.0)  # the next list starts a new segment
    again = client.get("/v1/search", query_string={"q": "goggles"}).get_json()
    assert writer.write() == 1 and not segments[0].exists()  # sealed and stored: deleted
    assert store.get_impression(again["request_id"]) is not None

    bad = spool_dir(store) / f"{os.getpid()}.{time.time_ns()}.jsonl"
    gone = {"request_id": "gone-item", "ts": time.time(), "surface": "search", "user_id": None, "query": "q",
            "items": ["goggles"], "offset": 0, "features": [{}], "policy": "p", "propensities": None,
            "deferred": {"kind": "search", "query": "q", "ids": ["no-such-item"], "bm25": "", "vec": "", "fused": "",
                         "personal": None, "shown": [0]}}
    bad.write_text("not json\n" + json.dumps(gone) + "\n")
    assert writer.write() == 1  # the unreadable line is skipped, the list without its deferred features kept
    kept = store.get_impression("gone-item")
    assert kept is not None and kept.features == [{}]


def test_the_writer_works_between_the_requests_of_the_serving_processes(config: EngineConfig, encoder: Encoder,
                                                                        monkeypatch: Any) -> None:
    # A spool-only process mirrors its in-flight requests into <pid>.busy; the writer process, which shares
    # the cores and caches with the requests, waits for none to be in flight before each record it stores.
    monkeypatch.setenv(WRITER_ENV, str(os.getpid()))
    engine = Engine(config, encoder=encoder, log_impressions=True)
    for q in ("gloves", "goggles", "pipette tips"):
        engine.search(q, k=3)
    store = open_event_store(config.events_url)
    busy = spool_dir(store) / f"{os.getpid()}.busy"
    assert busy.read_bytes() == (0).to_bytes(8, "little")  # the first segment shared the count
    writer = SpoolWriter(lambda: store, engine.deferred, retention_s=86400.0)
    writer.gap_wait_s = 0.2
    engine.in_flight.enter()  # a request is being answered
    assert busy.read_bytes() == (1).to_bytes(8, "little")
    t0 = time.monotonic()
    assert writer.write() == 3  # nothing lost: after the longest wait each record goes in anyway
    assert time.monotonic() - t0 >= 3 * 0.2 and writer.busy()  # it waited before each one
    engine.in_flight.exit()
    assert busy.read_bytes() == (0).to_bytes(8, "little") and not writer.busy()
    engine.search("magnets", k=3)
    t0 = time.monotonic()
    assert writer.write() == 1 and time.monotonic() - t0 < 0.2  # a gap: no wait
    # the busy file of a process that is gone is forgotten and deleted
    dead = spool_dir(store) / "999999999.busy"
    dead.write_bytes((1).to_bytes(8, "little"))
    assert writer.write() == 0 and not dead.exists() and not writer.busy()


def test_serve_runs_a_writer_process(config: EngineConfig) -> None:
    proc, base = start_server(config)
    store = open_event_store(config.events_url)
    try:
        deadline = time.time() + 30  # the writer loads the served version first, and says so
        while time.time() < deadline and "impression_writer" in requests.get(f"{base}/v1/info", timeout=30).json()["warming"]:
            time.sleep(0.2)
        assert "impression_writer" not in requests.get(f"{base}/v1/info", timeout=30).json()["warming"]
        assert len(list(spool_dir(store).glob("writer-*.ready"))) == 1
        rid = requests.get(f"{base}/v1/search", params={"q": "nitrile gloves"}, timeout=30).json()["request_id"]
        deadline = time.time() + 30
        while time.time() < deadline and store.get_impression(rid) is None:
            time.sleep(0.2)
        stored = store.get_impression(rid)
        assert stored is not None and all("bm25_title" in f for f in stored.features)
        writers = _writers_of(proc.pid)
        assert len(writers) == 1
        stats = requests.get(f"{base}/v1/admin/stats", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30).json()
        assert stats["impression_log"]["writer"] == "process" and stats["impression_log"]["writer_alive"] is True
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in writers):
        time.sleep(0.2)
    assert not [w for w in writers if Path(f"/proc/{w}").exists()], "the writer stops with the server"
    assert not list(spool_dir(store).glob("writer-*.ready"))
    store.close()


def _writers_of(parent: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                args = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"writer" in args and b"--parent" in args and args[args.index(b"--parent") + 1] == str(parent).encode():
                out.append(int(d.name))
    return out


def test_the_writer_process_runs_under_the_idle_policy(config: EngineConfig) -> None:
    """The writer yields every core to the requests (engine.learn.impressions.lower_priority): its threads run
    under SCHED_IDLE, which a request's thread preempts at once (a nice value does not, README)."""
    proc, base = start_server(config)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not _writers_of(proc.pid):
            time.sleep(0.2)
        writers = _writers_of(proc.pid)
        assert len(writers) == 1
        deadline = time.time() + 60  # the writer sets its policy first thing, before it loads the version
        while time.time() < deadline and os.sched_getscheduler(writers[0]) != os.SCHED_IDLE:
            time.sleep(0.2)
        threads = [int(t.name) for t in Path(f"/proc/{writers[0]}/task").iterdir()]
        assert [os.sched_getscheduler(t) for t in threads] == [os.SCHED_IDLE] * len(threads)
        assert os.sched_getscheduler(proc.pid) == os.SCHED_OTHER  # the server itself keeps the normal policy
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
