"""Issue 13, part 1: one contract for every event store backend, run against SQLite (a temp file) and
PostgreSQL (a fresh database on the throwaway server of scripts/pg_throwaway.sh), with the same answers
expected from both; then what only a shared server does: 4 concurrent writer processes tailed by seq with
no gap or duplicate, two `vitrine serve` processes sharing one database, and the server going away and
coming back."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import requests

from engine.ads.campaigns import Campaigns, parse_campaign, utc_day
from engine.ads.reports import hourly
from engine.analytics.dp import PrivacyBudget
from engine.analytics.mirror import Mirror
from engine import pipeline
from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.errors import StoreUnavailable
from engine.events import Event, EventStore, EventType, open_event_store
from engine.events.impressions import Impression
from engine.qa.store import Pair, QaStore
from tests.conftest import FIXTURE_CATALOG, INGEST_KEY, READ_KEY, ROOT, start_server, stop_server

T0 = 1_760_000_000.0  # 2025-10-09T08:53:20Z
INGEST = {"Authorization": f"Bearer {INGEST_KEY}"}
READ = {"Authorization": f"Bearer {READ_KEY}"}


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[EventStore]:
    s = open_event_store(store_url)
    try:
        yield s
    finally:
        s.close()


def ev(eid: str, user: str, etype: str, item: str | None, ts: float, **kw: Any) -> Event:
    return Event(event_id=eid, user_id=user, type=EventType(etype), timestamp=ts, item_id=item, **kw)


def test_add_dedupe_and_read_back(store: EventStore) -> None:
    r = store.add_many([ev("a", "u1", "view", "i1", T0), ev("b", "u1", "click", "i1", T0 + 1),
                        ev("a", "u1", "view", "i1", T0)])
    assert (r.accepted, r.duplicates) == (["a", "b"], ["a"])
    again = store.add_many([ev("b", "u9", "purchase", "i9", T0), ev("c", "u2", "rating", "i2", T0 + 2, value=4.0)])
    assert (again.accepted, again.duplicates) == (["c"], ["b"])  # a duplicate is skipped whatever its content
    got = store.get_event("c")
    assert got is not None and (got.user_id, got.type, got.value, got.timestamp) == ("u2", EventType.RATING, 4.0,
                                                                                      T0 + 2)
    assert store.get_event("missing") is None
    assert store.count() == 3
    assert store.health() is None


def test_tailing_and_user_events(store: EventStore) -> None:
    store.add_many([ev(f"e{i}", f"u{i % 2}", "view", f"i{i % 3}", T0 + 10 - i, request_id=f"r{i}", position=i)
                    for i in range(10)])
    everything = store.events_after(0)
    seqs = [e.seq or 0 for e in everything]
    assert [e.event_id for e in everything] == [f"e{i}" for i in range(10)] and seqs == sorted(seqs)
    assert [e.event_id for e in store.events_after(seqs[3], limit=2)] == ["e4", "e5"]
    assert store.events_after(seqs[-1]) == []
    mine = store.user_events("u0")
    assert [e.event_id for e in mine] == ["e8", "e6", "e4", "e2", "e0"]  # (timestamp, seq) order
    assert [e.event_id for e in store.user_events("u0", limit=2)] == ["e2", "e0"]
    assert [e.event_id for e in store.user_events("u0", after_seq=seqs[6])] == ["e8"]
    assert mine[0].request_id == "r8" and mine[0].position == 8
    rows, upto = store.outcomes_after(0, limit=100)
    assert [r[1] for r in rows] == [f"r{i}" for i in range(10)] and upto == seqs[-1]


def test_features_and_aggregates(store: EventStore) -> None:
    store.add_many([ev("v1", "u1", "view", "i1", T0, ), ev("v2", "u2", "view", "i1", T0 + 1),
                    ev("c1", "u1", "click", "i1", T0 + 2), ev("p1", "u1", "purchase", "i2", T0 + 3),
                    ev("r1", "u2", "rating", "i2", T0 + 4, value=5.0), ev("s1", "u3", "search", None, T0 + 86400,
                                                                             query="gloves")],
                   categories={"i1": "Lab > Gloves", "i2": "Lab > Goggles > Safety"})
    i1 = store.item_stats("i1", now=T0 + 2)
    assert i1["counts"]["view"] == 2 and i1["counts"]["click"] == 1 and i1["ctr"] == 0.5
    assert i1["popularity"] == pytest.approx(1.0 * 2 ** (-2 / 604800) + 2 ** (-1 / 604800) + 2.0, rel=1e-9)
    i2 = store.item_stats("i2")
    assert i2["rating_avg"] == 5.0 and i2["ctr"] is None and i2["counts"]["purchase"] == 1
    u1 = store.user_stats("u1")
    assert u1["counts"]["view"] == 1 and u1["first_event_at"] == T0 and u1["last_event_at"] == T0 + 3
    assert u1["categories"] == {"top": {"Lab": 3}, "leaf": {"Lab > Gloves": 2, "Lab > Goggles > Safety": 1}}
    assert [i for i, _ in store.popular_items(5, now=T0 + 10)] == ["i2", "i1"]  # purchase 5 + rating 1 > 4
    assert store.counts_by_type_per_day() == [("2025-10-09", "click", 1), ("2025-10-09", "purchase", 1),
                                              ("2025-10-09", "rating", 1), ("2025-10-09", "view", 2),
                                              ("2025-10-10", "search", 1)]
    assert store.count_users() == 3 and store.count_users(since=T0 + 3) == 3 and store.count_users(T0 + 5) == 1
    assert store.top_users(2) == [("u1", 3, "i2"), ("u2", 2, "i2")]


def _imp(rid: str, ts: float, user: str | None, items: list[str], **kw: Any) -> Impression:
    return Impression(rid, ts, kw.pop("surface", "search"), user, "q", items, **kw)


def test_impressions(store: EventStore) -> None:
    rows = [_imp("r1", T0, "u1", ["a", "b", "c"], policy="bandit/v1", propensities=[0.5, 0.3, 0.2],
                 features=[{"score": 1.0}, {"score": 0.5}, {}], context={"explored": [2]}),
            _imp("r2", T0 + 10, "u2", ["b", "d"], offset=10, policy="hybrid/zscore", surface="recommend"),
            _imp("r3", T0 + 20, None, ["e"], policy="bandit/v2")]
    assert store.add_impressions(rows) == 3
    assert store.add_impressions(rows[:1]) == 0  # same request_id: skipped
    assert store.count_impressions() == 3
    got = store.get_impression("r1")
    assert got == rows[0]
    tail = store.policy_impressions_after(0, "bandit/")
    assert [i.request_id for _, i in tail] == ["r1", "r3"] and tail[0][0] < tail[1][0]
    assert store.policy_impressions_after(tail[0][0], "bandit/")[0][1].request_id == "r3"
    assert [i.request_id for i in store.impressions("search", T0, T0 + 15)] == ["r1"]
    assert store.impression_shapes(T0) == [("recommend", 10, 2, 1), ("search", 0, 1, 1), ("search", 0, 3, 1)]
    assert store.exploration_counts(T0) == {"search": (1, 1)}
    assert store.policy_lists("bandit/", T0, feature="score") == [
        ("r1", "bandit/v1", "u1", 0, 3, [1.0, 0.5, None]), ("r3", "bandit/v2", None, 0, 1, [])]
    store.add_many([ev("x1", "u1", "click", "b", T0 + 1, request_id="r1"),  # names its list
                    ev("x2", "u2", "purchase", "d", T0 + 12),  # the window: u2's latest list holding d
                    ev("x3", "u2", "purchase", "zz", T0 + 12)])  # in no list
    out = store.attributed_outcomes(T0, None, window_s=60.0, types=[EventType.CLICK, EventType.PURCHASE])
    assert out == [("r1", "search", "b", 2, EventType.CLICK), ("r2", "recommend", "d", 12, EventType.PURCHASE)]
    assert store.prune_impressions(T0 + 15) == 2 and store.count_impressions() == 1


def test_experiments_and_estimates(store: EventStore) -> None:
    a = ("exp-a", "search", "ab", json.dumps([{"name": "A", "policy": "p", "share": 1.0}]), "running", T0, None, None)
    assert store.add_experiment(a) is None
    assert store.add_experiment(a) == "exp-a"
    b = ("exp-b", "search", "ab", "[]", "running", T0 + 1, None, None)
    assert store.add_experiment(b) == "exp-a"  # one running per surface
    assert store.stop_experiment("exp-a", T0 + 5, winner="A") and not store.stop_experiment("nope", T0)
    assert store.add_experiment(b) is None
    assert [e[0] for e in store.experiments()] == ["exp-b", "exp-a"]
    assert [e[0] for e in store.experiments(running=True)] == ["exp-b"]
    assert store.get_experiment("exp-a") == ("exp-a", "search", "ab", a[3], "stopped", T0, T0 + 5, "A")
    store.add_ope_estimate("search", "p", T0, T0 - 100, 7, {"ips": {"value": 0.1}})
    store.add_ope_estimate("search", "p", T0, T0 - 50, 9, {"ips": {"value": 0.2}})  # same key: replaced
    store.add_ope_estimate("search", "p", T0 - 1, T0 - 50, 3, {"ips": {"value": 0.0}})
    assert store.latest_ope_estimate("search", "p") == {"computed_at": T0, "since": T0 - 50, "rows": 9,
                                                          "estimates": {"ips": {"value": 0.2}}}
    assert store.latest_ope_estimate("search", "other") is None


def test_consent_and_profiles(store: EventStore) -> None:
    store.add_many([ev("a", "u1", "view", "i1", T0), ev("b", "u2", "view", "i1", T0)], categories={"i1": "A > B"})
    seq = store.user_events("u1")[-1].seq or 0
    assert store.put_profile("u1", b"\x00\x01profile", seq) and store.get_profile("u1") == (b"\x00\x01profile", seq)
    assert not store.put_profile("u1", b"older", seq - 1)  # a newer one is stored
    assert not store.put_profile("u1", b"x", 10**9)  # no such event
    assert store.personalization("u1")
    assert store.set_consent("u1", False)["personalization"] is False
    assert not store.personalization("u1")
    assert store.get_profile("u1") is None  # the personal tables were cleared at once
    assert store.user_stats("u1")["events"] == 0 and store.user_stats("u1")["categories"] == {"top": {}, "leaf": {}}
    store.add_many([ev("c", "u1", "click", "i1", T0 + 1)], categories={"i1": "A > B"})
    assert store.user_stats("u1")["events"] == 0  # counts in the item aggregates only
    assert store.item_stats("i1")["counts"]["click"] == 1
    assert not store.put_profile("u1", b"x", store.user_events("u1")[-1].seq or 0)
    store.add_many([ev("d", "u1", "view", "i1", T0 + 2, personalization=True)])  # consent given with an event
    assert store.personalization("u1") and store.user_stats("u1")["events"] == 1
    assert store.user_stats("u2")["events"] == 1  # others untouched


def test_erase_user_receipt_and_traces(store: EventStore) -> None:
    store.register_user_table("ext_notes", "CREATE TABLE IF NOT EXISTS ext_notes (user_id TEXT, note TEXT)")
    store.run_write(lambda conn: conn.execute("INSERT INTO ext_notes VALUES (?, ?)", ("gone", "hello")))
    store.add_many([ev("a", "gone", "view", "i1", T0), ev("b", "gone", "purchase", "i1", T0 + 1),
                    ev("c", "stays", "view", "i1", T0 + 2)], categories={"i1": "A"})
    store.add_impressions([_imp("r1", T0, "gone", ["i1"])])
    store.put_profile("gone", b"p", store.user_events("gone")[-1].seq or 0)
    epoch = store.deletion_epoch()
    removed = store.erase_user("gone", ("rcpt-1", T0 + 10))
    assert removed["events"] == 2 and removed["item_features"] == 2 and removed["profiles"] == 1
    assert removed["impressions"] == 1 and removed["ext_notes"] == 1 and removed["user_features"] == 1
    assert store.deletion_epoch() == epoch + 1
    assert store.item_stats("i1")["counts"] == {**store.item_stats("i1")["counts"], "view": 1, "purchase": 0}
    receipt = store.get_receipt("rcpt-1")
    assert receipt is not None and receipt["removed"] == removed and receipt["epoch"] == epoch + 1
    assert store.receipt_traces("rcpt-1") == {}
    store.add_many([ev("late", "gone", "view", "i1", T0 + 20)])  # a planted trace
    store.run_write(lambda conn: conn.execute("INSERT INTO ext_notes VALUES (?, ?)", ("gone", "again")))
    assert store.receipt_traces("rcpt-1") == {"events": 1, "user_features": 1, "ext_notes": 1}
    assert store.get_receipt("nope") is None and store.receipt_traces("nope") == {}
    assert store.delete_user("stays") == 1 and store.count() == 1


def test_extensions_sqlite_flavoured_sql(store: EventStore) -> None:
    """The real extension modules (ads campaigns and reports, QA pairs, the DP budget, the analytics copy)
    through ensure_tables / run_write / run_read, their SQL unchanged."""
    ads = Campaigns(lambda: store)
    good = {"advertiser": "acme", "name": "Gloves", "items": ["g1"], "bid": 40, "daily_budget": 100,
            "start": "2026-01-01T00:00:00Z", "targeting": {}}
    c = ads.create(parse_campaign({**good, "id": "c1"}, known_item=lambda i: True))
    assert [x.id for x in ads.list()] == ["c1"] and ads.list("other") == [] and ads.get("c1") == c
    now = T0 + 3600 * 5 + 7
    assert ads.charge("k1", c, "g1", "ann", 30, now=now).charged
    assert ads.charge("k1", c, "g1", "ann", 30, now=now).reason == "duplicate"
    assert ads.charge("k2", c, "g1", "ann", 30, now=now + 1).reason == "repeat_click"
    assert ads.charge("k3", c, "g1", "bob", 30, now=now + 2).charged
    assert ads.charge("k4", c, "g1", "cy", 50, now=now + 3).reason == "budget"
    assert ads.spend("c1", utc_day(now)) == (60, 2) and ads.spends(utc_day(now)) == {"c1": 60}
    hour = time.gmtime(now).tm_hour
    assert hourly(store, "c1", utc_day(now))[hour] == {"hour": hour, "clicks": 2, "spend": 60}

    qa = QaStore(lambda: store, dim=4)
    pairs = [Pair("g1", "Latex free?", "Yes"), Pair("g1", "Size?", "M", answered_at=T0)]
    vecs = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert qa.add(pairs, vecs, vecs + 1, T0) == 2 and qa.add(pairs, vecs, vecs, T0) == 0
    assert qa.known([p.key for p in pairs] + ["x"]) == {p.key for p in pairs} and qa.count() == 2
    corpus = qa.corpus()
    assert corpus.questions == ["Latex free?", "Size?"] and np.array_equal(corpus.q_vecs, vecs)

    budget = PrivacyBudget(lambda: store, daily_budget=1.0)
    assert budget.spend("k", 0.25, now=T0)["remaining"] == 0.75
    assert budget.status("k", now=T0)["requests"] == 1

    store.add_many([ev("m1", "u1", "view", "g1", T0), ev("m2", "u2", "click", "g1", T0 + 1, request_id="r1")])
    store.add_impressions([_imp("r1", T0, "u2", ["g1"])])
    mirror = Mirror()
    assert mirror.sync(store) == 2 and mirror.sync(store) == 0
    assert mirror.con.execute("SELECT surface FROM events ORDER BY seq").fetchall() == [("direct",), ("search",)]


# --------------------------------------------------------------------------- concurrent writers


def _writer(url: str, worker: int, batches: int, size: int) -> None:
    store = open_event_store(url)
    for b in range(batches):
        store.add_many([ev(f"w{worker}-{b}-{i}", f"u{worker}", "view", f"i{i}", T0 + b) for i in range(size)])
    store.close()


def test_tailing_by_seq_under_4_concurrent_writers(store: EventStore, store_url: str) -> None:
    """4 writer processes append small batches while this one tails by seq: every event once, in seq order."""
    batches, size = 60, 5
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(store_url, w, batches, size)) for w in range(4)]
    for p in procs:
        p.start()
    seen: list[tuple[int, str]] = []
    last = 0
    while True:
        alive = any(p.is_alive() for p in procs)
        got = store.events_after(last, limit=37)
        seen += [(e.seq or 0, e.event_id) for e in got]
        last = seen[-1][0] if seen else 0
        if not got and not alive:
            break
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    expected = {f"w{w}-{b}-{i}" for w in range(4) for b in range(batches) for i in range(size)}
    ids = [e for _, e in seen]
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == expected  # no gap, no duplicate
    seqs = [s for s, _ in seen]
    assert seqs == sorted(set(seqs))
    assert [(e.seq, e.event_id) for e in store.events_after(0, limit=10**6)] == seen  # nothing appeared behind


# --------------------------------------------------------------------------- PostgreSQL only


def test_two_servers_share_one_postgres(pg_url: str, config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    """Two `vitrine serve` processes (gunicorn, 2 workers each) on one database and one index folder: an
    event sent to one changes the other's next recommendation, and a version published into the folder is
    served by every worker of both."""
    shared = dataclasses.replace(config, events_url=pg_url)
    (a, base_a), (b, base_b) = start_server(shared), start_server(shared)
    try:
        def post(base: str, *evs: tuple[str, str, str, str]) -> None:
            body = [{"event_id": e, "user_id": u, "type": t, "item_id": i} for e, u, t, i in evs]
            r = requests.post(f"{base}/v1/events", json=body, headers=INGEST, timeout=30)
            assert r.status_code == 200 and len(r.json()["accepted"]) == len(body), r.text

        def recs(base: str, user: str) -> list[str]:
            r = requests.get(f"{base}/v1/users/{user}/recommendations", params={"k": 5}, headers=READ, timeout=30)
            assert r.status_code == 200, r.text
            return [x["id"] for x in r.json()["recommendations"]]

        for n in range(3):  # others bought the soldering iron after the solder wire, through server A
            post(base_a, (f"o{n}a", f"o{n}", "purchase", "solder-wire"), (f"o{n}b", f"o{n}", "purchase", "solder-iron"))
        before = recs(base_b, "shopper")
        post(base_a, ("s1", "shopper", "purchase", "solder-wire"))
        after = recs(base_b, "shopper")  # B's very next answer
        assert after != before and after[0] == "solder-iron" and "solder-wire" not in after
        user = requests.get(f"{base_b}/v1/users/shopper", headers=READ, timeout=30).json()
        assert user["counts"]["purchase"] == 1
        stats = requests.get(f"{base_a}/v1/items/solder-iron", timeout=30).json()["stats"]
        assert stats["counts"]["purchase"] == 3
        post(base_b, ("s2", "shopper", "view", "multimeter"))  # and the other way round
        assert requests.get(f"{base_a}/v1/users/shopper", headers=READ, timeout=30).json()["counts"]["view"] == 1

        old = requests.get(f"{base_a}/v1/info", timeout=30).json()["version"]
        catalog = tmp_path / "edited.jsonl"
        rows = [json.loads(line) for line in FIXTURE_CATALOG.read_text().splitlines() if line.strip()]
        catalog.write_text("".join(json.dumps(dict(r, title=r["title"] + " (new edition)")) + "\n" for r in rows))
        new = pipeline.build(config, catalog, encoder=encoder).version
        assert new != old

        def served(base: str) -> set[str]:  # 12 fresh connections: both workers answer
            return {requests.get(f"{base}/v1/info", timeout=30).json()["version"] for _ in range(12)}

        deadline = time.time() + 30
        while time.time() < deadline and not served(base_a) == served(base_b) == {new}:
            time.sleep(0.2)
        assert served(base_a) == served(base_b) == {new}
        hit = requests.get(f"{base_b}/v1/search", params={"q": "solder wire", "k": 1}, timeout=30).json()
        assert hit["version"] == new and hit["hits"][0]["title"].endswith("(new edition)")
    finally:
        stop_server(a)
        stop_server(b)
        for spool in (ROOT / "instance").glob(f"postgres-*-{pg_url.rsplit('/', 1)[1]}.impressions"):
            shutil.rmtree(spool, ignore_errors=True)  # the servers' impression spool (beside the store's path)


def _pg_ctl(folder: str, *args: str) -> None:
    bin_dir = Path(folder, "bin").read_text().strip()
    owner = Path(folder, "owner").read_text().strip()
    cmd = [f"{bin_dir}/pg_ctl", "-D", f"{folder}/data", "-w", *args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", owner, "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def test_server_down_is_store_unavailable_and_it_reconnects() -> None:
    """A private throwaway server, stopped and started again under an open store."""
    script = str(ROOT / "scripts" / "pg_throwaway.sh")
    out = subprocess.run([script, "start"], capture_output=True, text=True, timeout=120, check=True)
    values = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    folder = values["PG_THROWAWAY_DIR"]
    try:
        store = open_event_store(values["VITRINE_TEST_PG_URL"])
        store.add_many([ev("a", "u", "view", "i", T0)])
        _pg_ctl(folder, "-m", "fast", "stop")
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.add_many([ev("b", "u", "view", "i", T0)])
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.count()
        time.sleep(1.1)  # past the health answer's reuse
        assert store.health() == "event store server unreachable"
        _pg_ctl(folder, "-l", f"{folder}/server.log", "start")
        assert store.add_many([ev("b", "u", "view", "i", T0)]).accepted == ["b"]  # connected again
        assert store.count() == 2
        time.sleep(1.1)
        assert store.health() is None
        store.close()
        with pytest.raises(StoreUnavailable, match="unreachable"):
            open_event_store("postgresql://vitrine@127.0.0.1:1/vitrine")  # nothing listens there
    finally:
        subprocess.run([script, "stop", folder], timeout=120)
