"""Events: validation, idempotent durable storage, incremental features, deletion, concurrency, import."""
from __future__ import annotations

import csv
import gzip
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError, InvalidQuery
from engine.events import (MAX_BATCH, EventStore, EventType, FeatureConfig, InvalidEvent, SQLiteEventStore,
                           open_event_store, register_backend, validate_event, validate_many)
from engine.events.importer import SYNTHETIC_BASE, import_events

ROOT = Path(__file__).resolve().parents[1]
INTERACTIONS = ROOT.parent / "shared" / "data" / "amazon_scientific_unisrec" / "interactions.csv.gz"
NOW = 1_700_000_000.0
HOUR = 3600.0
CATEGORIES = {"drill": "Tools > Power Tools > Drills", "saw": "Tools > Hand Tools", "hose": "Garden > Hoses",
              "mug": None}


def ev(event_id: Any, user_id: Any = "u1", type: str = "view", item_id: str | None = "drill",
       **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"event_id": event_id, "user_id": user_id, "type": type, **extra}
    if item_id is not None:
        obj["item_id"] = item_id
    return obj


def add(store: EventStore, objs: list[dict[str, Any]], now: float = NOW) -> Any:
    """Validate and store ``objs``, with the categories of ``CATEGORIES`` (as the engine gives the served
    catalog's)."""
    events, rejected = validate_many(objs, now=now)
    assert not rejected, rejected
    return store.add_many(events, categories=CATEGORIES)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = open_event_store(f"sqlite:///{tmp_path / 'events.db'}",
                         config=FeatureConfig(half_life_s=HOUR))
    yield s
    s.close()


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("obj, field", [
    (["not", "an", "object"], "event"),
    ({"user_id": "u", "type": "view", "item_id": "i"}, "event_id"),
    (ev(""), "event_id"),
    (ev("   "), "event_id"),
    (ev("x" * 129), "event_id"),
    (ev(["e1"]), "event_id"),
    ({"event_id": "e", "type": "view", "item_id": "i"}, "user_id"),
    (ev("e", user_id=""), "user_id"),
    (ev("e", user_id="u" * 129), "user_id"),
    (ev("e", user_id={"id": 1}), "user_id"),
    ({"event_id": "e", "user_id": "u", "item_id": "i"}, "type"),
    (ev("e", type="like"), "type"),
    (ev("e", type="VIEW"), "type"),
    (ev("e", type="search", item_id=None), "query"),
    (ev("e", type="search", item_id=None, query="   "), "query"),
    (ev("e", type="search", item_id=None, query=42), "query"),
    (ev("e", type="search", item_id=None, query="q" * 1001), "query"),
    (ev("e", type="rating"), "value"),
    (ev("e", type="rating", value=0), "value"),
    (ev("e", type="rating", value=5.5), "value"),
    (ev("e", type="rating", value="4"), "value"),
    (ev("e", type="rating", value=True), "value"),
    (ev("e", type="view", value=float("nan")), "value"),
    (ev("e", type="purchase", value=-1), "value"),
    (ev("e", timestamp="yesterday"), "timestamp"),
    (ev("e", timestamp=NOW + 2 * 86400), "timestamp"),
    (ev("e", timestamp=-5), "timestamp"),
    (ev("e", timestamp="1969-12-31T23:59:00Z"), "timestamp"),
    (ev("e", timestamp="2023-11-17T00:00:00Z"), "timestamp"),
    (ev("e", timestamp=True), "timestamp"),
    (ev("e", timestamp=[NOW]), "timestamp"),
    (ev("e", item="drill"), "item"),
])
def test_each_rule_rejects_and_names_the_field(obj: Any, field: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_event(obj, known_item=None, now=NOW)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize("etype", ["view", "click", "add_to_cart", "remove_from_cart", "purchase", "rating"])
def test_item_id_is_required_for_item_events(etype: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_event(ev("e7", type=etype, item_id=None, value=3), now=NOW)
    assert (info.value.field, info.value.event_id) == ("item_id", "e7")


def test_known_item_check() -> None:
    known = {"drill"}.__contains__
    assert validate_event(ev("e"), known_item=known, now=NOW).item_id == "drill"
    with pytest.raises(InvalidEvent) as info:
        validate_event(ev("e", item_id="ghost"), known_item=known, now=NOW)
    assert info.value.field == "item_id" and "ghost" in info.value.message
    # a search has no item to check
    assert validate_event(ev("s", type="search", item_id=None, query="drill"), known_item=known, now=NOW).query


def test_valid_events_and_their_normal_form() -> None:
    e = validate_event(ev(" e1 ", user_id=17, item_id=" drill "), now=NOW)
    assert (e.event_id, e.user_id, e.item_id, e.type, e.timestamp) == ("e1", "17", "drill", EventType.VIEW, NOW)
    assert validate_event(ev("e", type="rating", value=4), now=NOW).value == 4.0
    assert validate_event(ev("e", type="rating", value=1), now=NOW).value == 1.0
    assert validate_event(ev("e", type="purchase"), now=NOW).value is None
    assert validate_event(ev("e", type="purchase", value=0), now=NOW).value == 0.0
    assert validate_event(ev("e", type="view", value=2.5), now=NOW).value == 2.5
    s = validate_event(ev("e", type="search", item_id=None, query="  cordless drill "), now=NOW)
    assert (s.query, s.item_id) == ("cordless drill", None)
    assert validate_event(ev("x" * 128, user_id="u" * 128), now=NOW).event_id == "x" * 128


@pytest.mark.parametrize("raw, expected", [
    ("2023-11-14T22:13:20Z", 1_700_000_000.0),
    ("2023-11-14T22:13:20+00:00", 1_700_000_000.0),
    ("2023-11-15T00:13:20+02:00", 1_700_000_000.0),
    ("2023-11-14T22:13:20", 1_700_000_000.0),  # no zone: UTC
    ("2023-11-14T22:13:20.5Z", 1_700_000_000.5),
    (1_699_999_999.25, 1_699_999_999.25),
    (1_699_999_000, 1_699_999_000.0),
    (NOW + 23 * HOUR, NOW + 23 * HOUR),  # up to a day ahead of the server clock is tolerated
])
def test_timestamps(raw: Any, expected: float) -> None:
    assert validate_event(ev("e", timestamp=raw), now=NOW).timestamp == expected


def test_timestamp_default_and_milliseconds_hint() -> None:
    assert validate_event(ev("e"), now=NOW).timestamp == NOW
    with pytest.raises(InvalidEvent, match="milliseconds"):
        validate_event(ev("e", timestamp=NOW * 1000), now=NOW)


def test_validate_many_keeps_going_and_limits_the_batch() -> None:
    events, rejected = validate_many([ev("a"), ev("b", type="nope"), "junk", ev("", user_id="")], now=NOW)
    assert [e.event_id for e in events] == ["a"]
    assert [(r.index, r.event_id, r.field) for r in rejected] == [(1, "b", "type"), (2, None, "event"),
                                                                  (3, None, "event_id")]
    assert rejected[0].to_dict()["message"].startswith("must be one of view, click")
    with pytest.raises(InvalidQuery) as info:
        validate_many([ev(f"e{i}") for i in range(MAX_BATCH + 1)], now=NOW)
    assert info.value.field == "events"


# --------------------------------------------------------------------------- storing


def test_mixed_batch_stores_only_the_valid_events(store: SQLiteEventStore) -> None:
    objs = [ev("ok1"), ev("bad1", type="rating", value=9), ev("ok2", type="click"),
            ev("bad2", item_id=None), ev("ok3", type="search", item_id=None, query="saw")]
    events, rejected = validate_many(objs, now=NOW)
    assert [(r.index, r.field) for r in rejected] == [(1, "value"), (3, "item_id")]
    result = store.add_many(events)
    assert (result.accepted, result.duplicates) == (["ok1", "ok2", "ok3"], [])
    assert store.count() == 3
    assert store.get_event("bad1") is None
    stored = store.get_event("ok3")
    assert stored is not None and (stored.type, stored.query, stored.item_id) == (EventType.SEARCH, "saw", None)


def test_idempotent_on_event_id(store: SQLiteEventStore) -> None:
    batch = [ev("e1"), ev("e2", type="click"), ev("e3", type="purchase", value=2), ev("e1", type="purchase")]
    first = add(store, batch)
    assert first.accepted == ["e1", "e2", "e3"] and first.duplicates == ["e1"]  # repeated within the batch
    item, user, n = store.item_stats("drill", now=NOW), store.user_stats("u1"), store.count()
    second = add(store, batch)
    assert second.accepted == [] and second.duplicates == ["e1", "e2", "e3", "e1"]
    # a retry with different content is still the same event: the first version stays
    third = add(store, [ev("e2", user_id="someone-else", type="purchase")])
    assert third.duplicates == ["e2"]
    assert (store.count(), store.item_stats("drill", now=NOW), store.user_stats("u1")) == (n, item, user)
    assert store.user_stats("someone-else")["events"] == 0
    e2 = store.get_event("e2")
    assert e2 is not None and e2.type is EventType.CLICK
    assert item["counts"]["view"] == 1 and item["counts"]["purchase"] == 1


def test_seq_increases_and_user_events_are_in_time_order(store: SQLiteEventStore) -> None:
    add(store, [ev("late", timestamp=NOW - 10), ev("early", timestamp=NOW - 100), ev("other", user_id="u2")])
    add(store, [ev("tie-b", timestamp=NOW - 50), ev("tie-a", timestamp=NOW - 50), ev("middle", timestamp=NOW - 60)])
    events = store.user_events("u1")
    assert [e.event_id for e in events] == ["early", "middle", "tie-b", "tie-a", "late"]
    seqs = [e.seq or 0 for e in store.events_after(0)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6
    assert [e.event_id for e in store.user_events("u1", limit=2)] == ["tie-a", "late"]
    assert [e.event_id for e in store.events_after(seqs[3], limit=10)] == ["tie-a", "middle"]
    assert store.user_events("nobody") == []


def test_counts_by_type_per_day(store: SQLiteEventStore) -> None:
    day = 86400.0
    add(store, [ev("a", timestamp=NOW), ev("b", timestamp=NOW + 60), ev("c", type="click", timestamp=NOW),
                ev("d", timestamp=NOW - day), ev("e", type="search", item_id=None, query="x", timestamp=NOW)],
        now=NOW + 120)
    assert store.counts_by_type_per_day() == [
        ("2023-11-13", "view", 1), ("2023-11-14", "click", 1), ("2023-11-14", "search", 1), ("2023-11-14", "view", 2),
    ]


def test_store_settings_are_durable(store: SQLiteEventStore) -> None:
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: the WAL is synced at every commit
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_store_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown URL"):
        open_event_store("mysql://db/events")  # postgresql:// is known since issue 13
    with pytest.raises(ConfigError, match="file path"):
        open_event_store("sqlite:///:memory:")
    register_backend("test-sqlite://", lambda url, **kw: SQLiteEventStore(tmp_path / url.split("://")[1], **kw))
    s = open_event_store("test-sqlite://other.db")
    assert isinstance(s, SQLiteEventStore) and s.path == tmp_path / "other.db"
    s.close()


# --------------------------------------------------------------------------- features


def test_item_features_by_hand(store: SQLiteEventStore) -> None:
    # weights view 1, click 2, add_to_cart 3, remove_from_cart 0, purchase 5, rating 1; half-life 1 hour
    later = [ev("p", type="purchase", value=1, timestamp=NOW), ev("c", type="click", timestamp=NOW - HOUR / 2)]
    earlier = [ev("v1", timestamp=NOW - HOUR), ev("v2", user_id="u2", timestamp=NOW - HOUR),
               ev("v3", timestamp=NOW - 2 * HOUR), ev("v4", timestamp=NOW - 2 * HOUR),
               ev("a", type="add_to_cart", timestamp=NOW - 3 * HOUR), ev("r", type="remove_from_cart", timestamp=NOW),
               ev("s1", type="rating", value=4, timestamp=NOW - 4 * HOUR),
               ev("s2", type="rating", value=5, user_id="u2", timestamp=NOW - 4 * HOUR)]
    add(store, later)
    add(store, earlier)  # older than what is stored: decayed to the stored as_of, not the other way
    stats = store.item_stats("drill", now=NOW)
    assert stats["counts"] == {"view": 4, "click": 1, "add_to_cart": 1, "remove_from_cart": 1, "purchase": 1,
                               "rating": 2}
    assert stats["events"] == 10
    assert stats["ctr"] == pytest.approx(1 / 4)
    assert stats["conversion"] == pytest.approx(1 / 4)
    assert stats["rating_avg"] == pytest.approx(4.5)
    # purchase 5*1 + click 2*2^-0.5 + views 2*2^-1 + 2*2^-2 + add_to_cart 3*2^-3 + remove 0 + ratings 2*2^-4
    expected = 5 + 2 * 2 ** -0.5 + 1.0 + 0.5 + 0.375 + 0.125
    assert expected == pytest.approx(8.414213562, rel=1e-9)
    assert stats["popularity"] == pytest.approx(expected, rel=1e-12)
    assert store.item_stats("drill", now=NOW + HOUR)["popularity"] == pytest.approx(expected / 2)
    assert store.item_stats("drill", now=NOW + 10 * HOUR)["popularity"] == pytest.approx(expected / 1024)
    assert store.item_stats("drill", now=NOW - HOUR)["popularity"] == pytest.approx(expected)  # not before as_of


def test_rates_are_undefined_without_views(store: SQLiteEventStore) -> None:
    add(store, [ev("c", type="click", item_id="saw"), ev("p", type="purchase", item_id="saw")])
    stats = store.item_stats("saw", now=NOW)
    assert (stats["ctr"], stats["conversion"], stats["rating_avg"]) == (None, None, None)
    empty = store.item_stats("never-seen", now=NOW)
    assert (empty["events"], empty["popularity"], empty["ctr"]) == (0, 0.0, None)
    assert set(empty["counts"].values()) == {0}


def test_popular_items_rank_by_decayed_score(store: SQLiteEventStore) -> None:
    add(store, [ev("old1", item_id="saw", type="purchase", timestamp=NOW - 5 * HOUR),
                ev("old2", item_id="saw", type="purchase", timestamp=NOW - 5 * HOUR),
                ev("new", item_id="hose", timestamp=NOW),
                ev("mid", item_id="drill", type="click", timestamp=NOW - HOUR)])
    # saw: 10 * 2^-5 = 0.3125; hose: 1; drill: 2 * 2^-1 = 1 (ties by id)
    top = store.popular_items(3, now=NOW)
    assert [i for i, _ in top] == ["drill", "hose", "saw"]
    assert [s for _, s in top] == pytest.approx([1.0, 1.0, 0.3125])
    assert [i for i, _ in store.popular_items(1, now=NOW + 5 * HOUR)] == ["drill"]  # ranks do not change
    add(store, [ev("more", item_id="saw", type="purchase", timestamp=NOW)])
    assert [i for i, _ in store.popular_items(2, now=NOW)] == ["saw", "drill"]


def test_user_features_and_category_affinity(store: SQLiteEventStore) -> None:
    add(store, [ev("1", timestamp=NOW - 30), ev("2", type="click", timestamp=NOW - 20), ev("3", item_id="saw"),
                ev("4", type="purchase", item_id="hose", timestamp=NOW - 40), ev("5", item_id="mug"),
                ev("6", type="search", item_id=None, query="hammer"), ev("7", user_id="u2", item_id="hose")])
    stats = store.user_stats("u1")
    assert stats["counts"] == {"view": 3, "click": 1, "add_to_cart": 0, "remove_from_cart": 0, "purchase": 1,
                               "search": 1, "rating": 0}
    assert (stats["events"], stats["ctr"], stats["conversion"]) == (6, pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert (stats["first_event_at"], stats["last_event_at"]) == (NOW - 40, NOW)
    assert stats["categories"] == {
        "top": {"Tools": 3, "Garden": 1},
        "leaf": {"Tools > Power Tools > Drills": 2, "Garden > Hoses": 1, "Tools > Hand Tools": 1},
    }
    assert list(stats["categories"]["leaf"]) == ["Tools > Power Tools > Drills", "Garden > Hoses", "Tools > Hand Tools"]
    # the categories given with the events are the ones counted (the catalog's at event time)
    store.add_many(validate_many([ev("8", user_id="u3", item_id="drill")], now=NOW)[0],
                   categories={"drill": "Toys > Robots"})
    assert store.user_stats("u3")["categories"] == {"top": {"Toys": 1}, "leaf": {"Toys > Robots": 1}}
    nobody = store.user_stats("nobody")
    assert (nobody["events"], nobody["first_event_at"], nobody["categories"]) == (0, None, {"top": {}, "leaf": {}})


def test_changed_feature_settings_rebuild_features(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    s = open_event_store(url, config=FeatureConfig(half_life_s=HOUR))
    add(s, [ev("a", timestamp=NOW - HOUR)])
    assert s.item_stats("drill", now=NOW)["popularity"] == pytest.approx(0.5)
    s.close()
    s = open_event_store(url, config=FeatureConfig(half_life_s=HOUR / 2, weights={"view": 4}))
    assert s.item_stats("drill", now=NOW)["popularity"] == pytest.approx(1.0)
    s.close()


# --------------------------------------------------------------------------- deletion


def rows_mentioning(db: Path, needle: str) -> dict[str, int]:
    """For every table in the file: rows with ``needle`` in any column."""
    conn = sqlite3.connect(db)
    try:
        hits = {}
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            cond = " OR ".join(f"instr(CAST({c} AS TEXT), ?) > 0" for c in cols)
            hits[table] = conn.execute(f"SELECT count(*) FROM {table} WHERE {cond}", [needle] * len(cols)).fetchone()[0]
        return hits
    finally:
        conn.close()


def test_put_profile_keeps_the_newest_fold_of_the_shopper_own_events(tmp_path: Path) -> None:
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    add(store, [ev("a1", "ann"), ev("a2", "ann", "click"), ev("b1", "bob")])
    first, second = (e.seq for e in store.user_events("ann"))
    bob_seq = store.user_events("bob")[0].seq
    assert store.get_profile("ann") is None
    assert store.put_profile("ann", b"after-a2", second)
    assert not store.put_profile("ann", b"after-a1", first)  # older than the stored one
    assert not store.put_profile("ann", b"bob-event", bob_seq)  # not one of ann's events
    assert store.get_profile("ann") == (b"after-a2", second)
    assert [e.event_id for e in store.user_events("ann", after_seq=first)] == ["a2"]


def test_delete_user_leaves_no_trace(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    gone, kept = "shopper-to-forget-7f3a", "shopper-who-stays-19c2"
    store = open_event_store(f"sqlite:///{db}", config=FeatureConfig(half_life_s=HOUR))
    assert isinstance(store, SQLiteEventStore)
    store.register_user_table("user_notes", "CREATE TABLE IF NOT EXISTS user_notes (owner TEXT, note TEXT)", "owner")
    both = [ev("g1", gone, timestamp=NOW - HOUR), ev("g2", gone, "purchase", "saw", value=2, timestamp=NOW - 60),
            ev("g3", gone, "search", None, query="garden hose", timestamp=NOW),
            ev("g4", gone, "rating", "drill", value=2),
            ev("k1", kept, timestamp=NOW - HOUR), ev("k2", kept, "click", timestamp=NOW - 10),
            ev("k3", kept, "rating", "drill", value=5)]
    add(store, both)
    gone_seq, kept_seq = store.user_events(gone)[-1].seq, store.user_events(kept)[-1].seq
    assert store.put_profile(gone, json.dumps({"user": gone, "vector": [0.1, 0.2]}).encode(), gone_seq)
    assert store.put_profile(kept, b"kept-profile", kept_seq)
    store._conn().execute("INSERT INTO user_notes VALUES (?, 'likes drills')", (gone,))
    assert sum(rows_mentioning(db, gone).values()) > 0

    assert store.delete_user(gone) == 4
    assert store.delete_user(gone) == 0
    assert store.user_events(gone) == [] and store.get_profile(gone) is None
    assert store.user_stats(gone)["events"] == 0
    assert set(rows_mentioning(db, gone).values()) == {0}
    assert rows_mentioning(db, kept)["events"] == 3 and store.get_profile(kept) == (b"kept-profile", kept_seq)
    # a reader that folded the shopper's events before the deletion cannot store its profile after it
    assert not store.put_profile(gone, b"late-fold", gone_seq)
    assert store.get_profile(gone) is None
    assert store.user_stats(kept)["events"] == 3

    # the item features now hold only what the other shopper did
    reference = open_event_store(f"sqlite:///{tmp_path / 'reference.db'}", config=FeatureConfig(half_life_s=HOUR))
    add(reference, [e for e in both if e["user_id"] == kept])
    for item in ("drill", "saw"):
        got, want = store.item_stats(item, now=NOW), reference.item_stats(item, now=NOW)
        assert got["popularity"] == pytest.approx(want["popularity"], abs=1e-12)
        assert {**got, "popularity": 0} == {**want, "popularity": 0}
    assert store.item_stats("saw", now=NOW)["events"] == 0
    reference.close()
    store.close()
    # deleted rows are overwritten (secure_delete) and the WAL is folded in: not even the bytes remain
    for f in tmp_path.glob("events.db*"):
        assert gone.encode() not in f.read_bytes(), f


# --------------------------------------------------------------------------- durability and concurrency


def assert_features_match_events(store: SQLiteEventStore, items: list[str], users: list[str]) -> None:
    """Incremental features equal features recomputed from the events table."""
    before = [store.item_stats(i, now=NOW) for i in items] + [store.user_stats(u) for u in users]
    store.rebuild_features()
    after = [store.item_stats(i, now=NOW) for i in items] + [store.user_stats(u) for u in users]
    for b, a in zip(before, after):
        if "popularity" in b:
            assert b["popularity"] == pytest.approx(a["popularity"], rel=1e-9)
            b, a = {**b, "popularity": 0}, {**a, "popularity": 0}
        assert b == a


KILLED_WRITER = r"""
import sys, time
from engine.events import open_event_store, validate_many
store = open_event_store(sys.argv[1])
i = 0
while True:
    objs = [{"event_id": f"b{i}-{j}", "user_id": f"u{j % 7}", "type": "view", "item_id": f"i{j % 13}"}
            for j in range(100)]
    store.add_many(validate_many(objs, now=time.time())[0])
    print(f"ACK {i}", flush=True)
    i += 1
"""


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, url], cwd=ROOT, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked: list[int] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while len(acked) < 5 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line.split()[1]))
        proc.send_signal(signal.SIGKILL)  # right after the 5th ACK, most likely inside the next add_many
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert acked == [0, 1, 2, 3, 4], err
    assert proc.returncode == -signal.SIGKILL

    store = open_event_store(url)
    assert isinstance(store, SQLiteEventStore)
    for b in acked:
        for j in range(100):
            assert store.get_event(f"b{b}-{j}") is not None
    total = store.count()
    assert total >= 500 and total % 100 == 0  # a batch is stored whole or not at all
    assert sum(store.item_stats(f"i{j}", now=NOW)["counts"]["view"] for j in range(13)) == total
    assert_features_match_events(store, [f"i{j}" for j in range(13)], [f"u{j}" for j in range(7)])
    store.close()


WRITER = r"""
import json, sys, threading, time
from engine.events import open_event_store, validate_many
url, name, threads, batches, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
store = open_event_store(url)
time.sleep(max(0.0, start_at - time.time()))
accepted = []
lock = threading.Lock()

def work(t):
    for b in range(batches):
        objs = [{"event_id": f"{name}-{t}-{b}-{j}", "user_id": f"u{j % 5}", "type": "click", "item_id": f"i{j % 9}"}
                for j in range(40)]
        # ids every writer sends too: each must be stored exactly once
        objs += [{"event_id": f"shared-{b}-{j}", "user_id": f"u{j % 5}", "type": "view", "item_id": f"i{j % 9}"}
                 for j in range(10)]
        result = store.add_many(validate_many(objs, now=time.time())[0])
        with lock:
            accepted.extend(result.accepted)

ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(accepted))
"""


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    batches = 40
    start_at = time.time() + 2.0  # every writer starts then, so that they overlap
    # 2 processes with 1 thread each, and this process with 4 threads: 6 writers on one file
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, f"p{k}", "1", str(batches), str(start_at)], cwd=ROOT,
                              env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(2)]
    store = open_event_store(url)
    assert isinstance(store, SQLiteEventStore)
    accepted: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        try:
            time.sleep(max(0.0, start_at - time.time()))
            for b in range(batches):
                objs = [{"event_id": f"main-{t}-{b}-{j}", "user_id": f"u{j % 5}", "type": "click",
                         "item_id": f"i{j % 9}"} for j in range(40)]
                objs += [{"event_id": f"shared-{b}-{j}", "user_id": f"u{j % 5}", "type": "view",
                          "item_id": f"i{j % 9}"} for j in range(10)]
                result = store.add_many(validate_many(objs, now=time.time())[0])
                with lock:
                    accepted.extend(result.accepted)
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        accepted.extend(json.loads(out))
    assert not errors, errors

    writers = ("main-0", "main-1", "main-2", "main-3", "p0-0", "p1-0")
    unique = {f"{w}-{b}-{j}" for w in writers for b in range(batches) for j in range(40)}
    unique |= {f"shared-{b}-{j}" for b in range(batches) for j in range(10)}
    assert len(accepted) == len(set(accepted)) == len(unique)  # every id accepted by exactly one writer
    assert set(accepted) == unique
    assert store.count() == len(unique)
    seqs = [e.seq or 0 for e in store.events_after(0, limit=100_000)]
    assert len(seqs) == len(set(seqs)) == len(unique) and seqs == sorted(seqs)
    clicks = sum(store.item_stats(f"i{j}", now=NOW)["counts"]["click"] for j in range(9))
    views = sum(store.item_stats(f"i{j}", now=NOW)["counts"]["view"] for j in range(9))
    assert (clicks, views) == (6 * batches * 40, batches * 10)
    assert_features_match_events(store, [f"i{j}" for j in range(9)], [f"u{j}" for j in range(5)])
    store.close()


class _BrokenCategories(dict[str, str]):
    """Categories whose look-up fails: a batch whose feature update raises."""

    def get(self, key: str, default: Any = None) -> Any:
        raise ValueError("category lookup failed")


def test_group_commit_isolates_a_failing_batch(store: SQLiteEventStore) -> None:
    broken = _BrokenCategories()
    outcomes: dict[str, Any] = {}

    def call(name: str, objs: list[dict[str, Any]], categories: Any) -> None:
        try:
            outcomes[name] = store.add_many(validate_many(objs, now=NOW)[0], categories=categories)
        except ValueError as e:
            outcomes[name] = e

    # hold the writer lock so that both calls queue up and are committed together by one leader
    with store._write_lock:
        threads = [threading.Thread(target=call, args=("good", [ev("g1"), ev("g2")], None)),
                   threading.Thread(target=call, args=("bad", [ev("b1"), ev("b2", item_id="saw")], broken))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(store._pending) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(store._pending) == 2
    for t in threads:
        t.join(timeout=30)
    assert outcomes["good"].accepted == ["g1", "g2"]
    assert isinstance(outcomes["bad"], ValueError)
    assert [e.event_id for e in store.events_after(0)] == ["g1", "g2"]
    assert store.item_stats("saw", now=NOW)["events"] == 0 and store.item_stats("drill", now=NOW)["events"] == 2
    assert store.add_many(validate_many([ev("b1")], now=NOW)[0]).accepted == ["b1"]  # not stored before


# --------------------------------------------------------------------------- import


def scientific_slice(tmp_path: Path, rows: int = 2000) -> tuple[Path, list[dict[str, str]]]:
    """The first ``rows`` interactions, shuffled (so the file order is not the seq_pos order)."""
    if not INTERACTIONS.exists():
        pytest.skip(f"{INTERACTIONS} not present")
    with gzip.open(INTERACTIONS, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        data = [row for _, row in zip(range(rows), reader)]
    header = list(data[0])
    random.Random(7).shuffle(data)
    path = tmp_path / "interactions-slice.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(data)
    return path, data


def test_import_scientific_slice_in_seq_pos_order_and_idempotent(tmp_path: Path, store: SQLiteEventStore) -> None:
    path, rows = scientific_slice(tmp_path)
    seen: list[int] = []
    report = import_events(store, path, batch_size=300, progress=lambda r: seen.append(r.rows_read))
    assert (report.rows_read, report.accepted, report.duplicates, report.rejected) == (2000, 2000, 0, [])
    assert seen == [300, 600, 900, 1200, 1500, 1800, 2000]
    assert report.ignored_columns == ["user_index", "item_index"]
    assert any("imported as 'purchase'" in n for n in report.notes)
    assert any("seq_pos" in n for n in report.notes)
    assert store.count() == 2000

    by_user: dict[str, list[tuple[int, str]]] = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append((int(row["seq_pos"]), row["item_id"]))
    assert len(by_user) > 100
    for user, history in by_user.items():
        events = store.user_events(user)
        assert [e.item_id for e in events] == [item for _, item in sorted(history)], user
        assert [e.timestamp for e in events] == [SYNTHETIC_BASE + pos for pos, _ in sorted(history)]
        assert {e.type for e in events} == {EventType.PURCHASE}
    user = rows[0]["user_id"]
    assert store.user_stats(user)["counts"]["purchase"] == len(by_user[user])

    again = import_events(store, path)
    assert (again.accepted, again.duplicates, again.rejected) == (0, 2000, [])
    assert store.count() == 2000
    assert store.user_stats(user)["counts"]["purchase"] == len(by_user[user])


def test_import_rejects_lines_too_deep_or_with_endless_numbers(tmp_path: Path, store: SQLiteEventStore) -> None:
    """Issue 8: a line nested 1,000 deep or holding a 5,000-digit number is a rejected line, not a crash."""
    good = json.dumps({"event_id": "d1", "user_id": "u1", "type": "view", "item_id": "drill", "timestamp": NOW})
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([good, "[" * 1000 + "]" * 1000, '{"event_id": "d2", "value": ' + "9" * 5000 + "}"]))
    report = import_events(store, path, now=NOW)
    assert report.accepted == 1 and [(r.line, r.reason.split(":")[0]) for r in report.rejected] == [
        (2, "invalid JSON"), (3, "invalid JSON")]


def test_import_jsonl_reports_rejected_lines(tmp_path: Path, store: SQLiteEventStore) -> None:
    lines = [
        json.dumps({"event_id": "j1", "user_id": "u1", "type": "view", "item_id": "drill", "timestamp": NOW - 5}),
        "",
        json.dumps({"user_id": "u1", "type": "rating", "item_id": "saw", "value": 7}),
        "{not json",
        json.dumps({"event_id": "j2", "user_id": "u2", "type": "search", "query": "hose", "session": "s9"}),
        json.dumps(["a", "list"]),
        json.dumps({"event_id": "j3", "type": "view", "item_id": "drill"}),
        json.dumps({"event_id": "j4", "user_id": "u3", "type": "click", "item_id": "hose",
                    "timestamp": "2023-11-14T22:00:00Z"}),
        json.dumps({"user_id": "u4", "item_id": "saw", "seq_pos": "x"}),
    ]
    path = tmp_path / "events.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    report = import_events(store, path, now=NOW)
    assert report.format == "jsonl"
    assert (report.rows_read, report.accepted, report.duplicates) == (8, 3, 0)
    assert [(r.line, r.reason.split(":")[0]) for r in report.rejected] == [
        (3, "value"), (4, "invalid JSON"), (6, "not a JSON object but list"), (7, "user_id"), (9, "seq_pos")]
    assert report.ignored_columns == ["session"]
    j4 = store.get_event("j4")
    assert j4 is not None and j4.timestamp == NOW - 800
    summary = "\n".join(report.summary_lines())
    assert "line 3: value: a rating must be in 1..5" in summary and "8 rows read, 3 events stored" in summary
    assert report.to_dict()["rejected"][0] == {"line": 3, "reason": "value: a rating must be in 1..5, got 7"}


def test_import_csv_with_types_values_and_bad_rows(tmp_path: Path, store: SQLiteEventStore) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "event_id,user_id,type,item_id,value,query,timestamp\n"
        "c1,u1,rating,drill,4.5,,1699999000\n"
        "c2,u1,purchase,saw,abc,,\n"
        "c3,u2,search,,,\"hose, green\",2023-11-14T22:00:00Z\n"
        "c4,u2,view,drill\n"
        "c5,u2,view,drill,,,,extra\n",
        encoding="utf-8",
    )
    report = import_events(store, path, now=NOW)
    assert (report.accepted, report.notes) == (2, [])
    assert [(r.line, r.reason.split(":")[0]) for r in report.rejected] == [
        (3, "value"), (5, "4 fields but the header has 7"), (6, "8 fields but the header has 7")]
    c1, c3 = store.get_event("c1"), store.get_event("c3")
    assert c1 is not None and (c1.value, c1.timestamp) == (4.5, 1699999000.0)
    assert c3 is not None and (c3.query, c3.timestamp) == ("hose, green", NOW - 800)


def test_import_unreadable_files(tmp_path: Path, store: SQLiteEventStore) -> None:
    from engine.errors import CatalogError

    with pytest.raises(CatalogError, match="unknown events format"):
        import_events(store, tmp_path / "events.xlsx")
    with pytest.raises(CatalogError, match="does not exist"):
        import_events(store, tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("customer,item\nu1,i1\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="no user_id column"):
        import_events(store, bad)


def test_derived_event_ids_are_stable_per_file_and_line(tmp_path: Path, store: SQLiteEventStore) -> None:
    a = tmp_path / "a.csv"
    a.write_text("user_id,item_id,type\nu1,drill,view\nu1,drill,view\n", encoding="utf-8")
    first = import_events(store, a)
    assert first.accepted == 2  # the same row on two lines is two events
    assert import_events(store, a).duplicates == 2
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "a.csv").write_bytes(a.read_bytes())
    assert import_events(store, copy / "a.csv").duplicates == 2  # same name and lines: same events
    assert store.item_stats("drill", now=NOW)["counts"]["view"] == 2


def test_events_carry_the_list_they_came_from(tmp_path: Path) -> None:
    """Issue 9 (attribution): an event may name the list its item was shown in and the item's position."""
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    events, rejected = validate_many([
        ev("a1", request_id="0f" * 16, position=3),
        ev("a2"),
        ev("a3", position=0), ev("a4", position=2.5), ev("a5", position=True), ev("a6", request_id="x\ny"),
    ], now=NOW)
    assert [(r.event_id, r.field) for r in rejected] == [("a3", "position"), ("a4", "position"), ("a5", "position"),
                                                          ("a6", "request_id")]
    store.add_many(events)
    first, second = store.get_event("a1"), store.get_event("a2")
    assert first is not None and (first.request_id, first.position) == ("0f" * 16, 3)
    assert second is not None and (second.request_id, second.position) == (None, None)
    store.close()


def test_a_store_from_before_request_ids_gains_the_columns(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = open_event_store(f"sqlite:///{db}")
    add(store, [ev("old-1")])
    store.close()
    conn = sqlite3.connect(db)  # as a store written before issue 9 left it
    conn.execute("ALTER TABLE events DROP COLUMN position")
    conn.execute("ALTER TABLE events DROP COLUMN request_id")
    conn.commit()
    conn.close()
    store = open_event_store(f"sqlite:///{db}")
    add(store, [ev("new-1", request_id="r1", position=1)])
    old, new = store.get_event("old-1"), store.get_event("new-1")
    assert old is not None and old.request_id is None and new is not None and new.position == 1
    store.close()
