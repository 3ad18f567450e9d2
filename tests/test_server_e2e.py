"""The real server process (`vitrine serve`, gunicorn) on a free port, queried over HTTP,
including atomic swaps while clients keep querying."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import requests

from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine import pipeline
from engine.index import versions as index_versions
from tests.conftest import FIXTURE_CATALOG, INGEST_KEY, start_server, stop_server


@pytest.fixture
def server(config: EngineConfig) -> Iterator[str]:
    proc, base = start_server(config)
    try:
        yield base
    finally:
        stop_server(proc)


def test_real_server_answers_over_http(server: str) -> None:
    r = requests.get(f"{server}/v1/search", params={"q": "pla filament", "k": 3}, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    assert r.json()["hits"][0]["id"] in {"fil-pla-red", "fil-pla-black", "pla-dup-title"}
    assert requests.get(f"{server}/v1/items/goggles", timeout=10).json()["brand"] == "3M"
    assert requests.get(f"{server}/v1/items/missing", timeout=10).status_code == 404
    bad = requests.get(f"{server}/v1/search", params={"q": "x", "k": "many"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "k"
    assert "gunicorn" in requests.get(f"{server}/healthz", timeout=10).headers.get("Server", "")
    assert requests.get(f"{server}/v1/openapi.json", timeout=10).json()["paths"]


def test_publish_and_rollback_while_clients_query(server: str, config: EngineConfig, encoder: Encoder,
                                                  tmp_path: Path) -> None:
    statuses: Counter[int] = Counter()
    versions: set[str] = set()
    errors: list[str] = []
    stop = threading.Event()
    queries = ["pla filament", "nitrile gloves", "soldering iron", "glass beaker", "ph meter", "zip ties"]

    def client(n: int) -> None:
        session = requests.Session()
        i = n
        while not stop.is_set():
            try:
                r = session.get(f"{server}/v1/search", params={"q": queries[i % len(queries)], "k": 5}, timeout=30)
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    versions.add(r.json()["version"])
                else:
                    errors.append(r.text)
            except requests.RequestException as e:  # a failed request is a failure too
                errors.append(repr(e))
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        published = [index_versions.current_version(config.index_dir)]
        for i in range(2):
            catalog = tmp_path / f"c{i}.jsonl"
            with FIXTURE_CATALOG.open() as src, catalog.open("w") as dst:
                for line in src:
                    row = json.loads(line)
                    row["description"] += f" (edition {i})"
                    dst.write(json.dumps(row) + "\n")
            published.append(pipeline.build(config, catalog, encoder=encoder).version)
            time.sleep(1.0)
        pipeline.rollback(config)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:3]
    assert statuses[200] > 20
    assert set(published) <= versions | {published[0]}  # every published version was served
    final = requests.get(f"{server}/v1/info", timeout=10).json()["version"]
    assert final == published[1]  # after the rollback


def test_acknowledged_events_survive_kill_9(config: EngineConfig) -> None:
    proc, base = start_server(config)
    auth = {"Authorization": f"Bearer {INGEST_KEY}"}
    acked: list[str] = []
    try:
        for b in range(5):
            batch = [{"event_id": f"k{b}-{i}", "user_id": f"u{i % 7}", "type": "view", "item_id": "goggles"}
                     for i in range(100)]
            r = requests.post(f"{base}/v1/events", json=batch, headers=auth, timeout=30)
            assert r.status_code == 200
            acked += r.json()["accepted"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # master and workers, no chance to flush anything
        proc.communicate(timeout=30)
    assert len(acked) == 500
    proc, base = start_server(config)
    try:
        again = requests.post(f"{base}/v1/events", json=[{"event_id": e, "user_id": "u0", "type": "view",
                                                          "item_id": "goggles"} for e in acked[:1000]],
                              headers=auth, timeout=30).json()
        assert again["duplicates"] == acked and again["accepted"] == []  # every acknowledged event is stored
        stats = requests.get(f"{base}/v1/items/goggles", timeout=10).json()["stats"]
        assert stats["counts"]["view"] == 500
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
