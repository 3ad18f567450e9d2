"""Issue 9, part 2: attribution. Outcome events are joined to the impressions they came from (by
request_id, else by the shopper's latest impression of the item within the window), and each surface's
CTR, add-to-cart rate, conversion and CTR by position come from that join."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from engine.config import EngineConfig
from engine.errors import ConfigError, InvalidQuery
from engine.events import EventStore, EventType, SQLiteEventStore, validate_many
from engine.events.impressions import Impression
from engine.learn.attribution import Outcome, attributed, outcomes, surface_stats
from engine.service import Engine
from tests.conftest import ADMIN_KEY, make_config

NOW = 1_700_000_000.0
WINDOW = 1800.0
CLICK, CART, BUY = EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE


@pytest.fixture
def store(tmp_path: Path) -> EventStore:
    return SQLiteEventStore(tmp_path / "events.db")


def shown(store: EventStore, *imps: tuple[str, float, str, str | None, list[str], int]) -> None:
    """Log impressions: (request_id, ts, surface, user_id, items, offset)."""
    store.add_impressions([Impression(rid, ts, surface, user, None, items, offset)
                           for rid, ts, surface, user, items, offset in imps])


def happened(store: EventStore, *evs: tuple[str, str, str, str, float] | tuple[str, str, str, str, float, str]) -> None:
    """Store events: (event_id, user_id, type, item_id, timestamp[, request_id])."""
    objs = [{"event_id": e[0], "user_id": e[1], "type": e[2], "item_id": e[3], "timestamp": e[4]}
            | ({"request_id": e[5]} if len(e) > 5 else {}) for e in evs]
    events, rejected = validate_many(objs, now=time.time())
    assert not rejected
    assert len(store.add_many(events).accepted) == len(evs)


def test_an_event_with_a_request_id_belongs_to_that_list(store: EventStore) -> None:
    shown(store, ("r1", NOW, "search", "ann", ["a", "b", "c"], 10), ("r2", NOW + 5, "similar", "ann", ["a"], 0))
    happened(store,
             ("c1", "ann", "click", "b", NOW + 10, "r1"),
             ("c2", "ann", "click", "b", NOW + 11, "r1"),  # the same outcome again: counted once
             ("c3", "bob", "click", "c", NOW + 12, "r1"),  # the list's id is enough, whoever sends it
             ("c4", "ann", "click", "z", NOW + 13, "r1"),  # not in that list
             ("c5", "ann", "click", "a", NOW + 14, "gone"),  # an unknown list: no fallback to the window
             ("v1", "ann", "view", "a", NOW + 15, "r1"),  # not an outcome type
             ("p1", "ann", "purchase", "b", NOW + 7 * 86400, "r1"),  # no window for a named list
             ("c6", "ann", "click", "a", NOW - 60, "r2"),  # a client clock a minute behind the server's
             ("k1", "ann", "add_to_cart", "a", NOW - 2 * 86400, "r2"))  # over a day before the list: no
    assert attributed(store, since=NOW, window_s=WINDOW) == [
        Outcome("r1", "search", "b", 12, CLICK), Outcome("r1", "search", "b", 12, BUY),
        Outcome("r1", "search", "c", 13, CLICK),  # position: offset 10 + the 2nd and 3rd places
        Outcome("r2", "similar", "a", 1, CLICK)]


def test_an_event_without_one_joins_the_shoppers_latest_list_of_the_item_within_the_window(
        store: EventStore) -> None:
    shown(store,
          ("old", NOW, "search", "ann", ["a", "b"], 0),
          ("new", NOW + 600, "for_you", "ann", ["x", "a"], 0),
          ("bobs", NOW + 700, "search", "bob", ["a", "b"], 0),  # another shopper's, later
          ("nobody", NOW + 800, "trending", None, ["a", "b"], 0))  # logged without a user
    happened(store,
             ("k1", "ann", "add_to_cart", "a", NOW + 900),  # old and new hold a: the latest wins
             ("k2", "ann", "add_to_cart", "b", NOW + 900),  # only old holds b
             ("k3", "ann", "click", "b", NOW + WINDOW),  # exactly the window after old: inside
             ("k4", "ann", "purchase", "b", NOW + WINDOW + 1),  # one second past it: not attributed
             ("k5", "ann", "click", "a", NOW - 1),  # before any list
             ("k6", "carol", "purchase", "a", NOW + 900),  # no list of hers
             ("k7", "ann", "click", "x", NOW + 599))  # before the list that holds x
    assert outcomes(store, since=NOW, window_s=WINDOW) == {
        "new": {"a": frozenset({CART})}, "old": {"b": frozenset({CART, CLICK})}}
    assert attributed(store, since=NOW, window_s=WINDOW)[0] == Outcome("new", "for_you", "a", 2, CART)
    # a shorter window: the add to cart 300 s after "new" (900 s after "old") finds neither
    assert outcomes(store, since=NOW, window_s=299) == {}
    assert outcomes(store, since=NOW, window_s=300) == {"new": {"a": frozenset({CART})}}
    # only lists logged in [since, until) are counted; an outcome joined to an earlier list stays there
    assert outcomes(store, since=NOW + 1, window_s=WINDOW) == {"new": {"a": frozenset({CART})}}
    assert outcomes(store, since=NOW, until=NOW + 600, window_s=WINDOW) == {"old": {"b": frozenset({CART, CLICK})}}
    with pytest.raises(InvalidQuery, match="window_s"):
        outcomes(store, since=NOW, window_s=0)


def test_per_surface_rates_and_ctr_by_position(store: EventStore) -> None:
    shown(store,
          ("s1", NOW, "search", "ann", ["a", "b", "c", "d"], 0),
          ("s2", NOW, "search", "bob", ["a", "b", "c", "d"], 0),
          ("s3", NOW + 60, "search", "ann", ["e", "f"], 4),  # page 2: positions 5 and 6
          ("f1", NOW + 120, "for_you", "ann", ["a", "b"], 0),
          ("deep", NOW, "similar", None, ["a", "b", "c", "d"], 18),  # positions 19..22: 19 and 20 reported
          ("before", NOW - 86400, "recommend", "ann", ["a"], 0))  # before `since`: left out
    happened(store,
             ("e1", "ann", "click", "a", NOW + 1, "s1"),
             ("e2", "ann", "click", "a", NOW + 2, "s1"),  # twice: one clicked item
             ("e3", "bob", "click", "a", NOW + 3, "s2"),
             ("e4", "bob", "click", "c", NOW + 4, "s2"),
             ("e5", "ann", "click", "f", NOW + 70),  # by the window: s3
             ("e6", "ann", "add_to_cart", "a", NOW + 200),  # by the window: f1, the latest list with a
             ("e7", "ann", "purchase", "a", NOW + 300, "s1"),
             ("e8", "bob", "purchase", "d", NOW + 300),  # by the window: s2, though never clicked there
             ("e9", "ann", "click", "a", NOW - 86400 + 5, "before"))
    stats = surface_stats(store, since=NOW, window_s=WINDOW)
    assert [s.surface for s in stats.surfaces] == ["search", "for_you", "similar"]  # most lists first, then name
    search, for_you, similar = stats.surfaces
    assert (search.lists, search.shown, search.clicks, search.add_to_cart, search.purchases) == (3, 10, 4, 0, 2)
    assert (search.ctr, search.add_to_cart_rate, search.conversion) == (0.4, 0.0, 0.2)
    assert [(p.position, p.shown, p.clicks, p.ctr) for p in search.by_position] == [
        (1, 2, 2, 1.0), (2, 2, 0, 0.0), (3, 2, 1, 0.5), (4, 2, 0, 0.0), (5, 1, 0, 0.0), (6, 1, 1, 1.0)]
    assert (for_you.lists, for_you.shown, for_you.clicks, for_you.add_to_cart, for_you.add_to_cart_rate) == (
        1, 2, 0, 1, 0.5)
    assert [(p.position, p.shown) for p in for_you.by_position] == [(1, 1), (2, 1)]
    assert (similar.shown, similar.ctr, [p.position for p in similar.by_position]) == (4, 0.0, [19, 20])
    d = stats.to_dict()
    assert d["window_minutes"] == 30 and d["surfaces"][0] == {
        "surface": "search", "lists": 3, "shown": 10, "clicks": 4, "add_to_cart": 0, "purchases": 2, "ctr": 0.4,
        "add_to_cart_rate": 0.0, "conversion": 0.2, "by_position": [p.to_dict() for p in search.by_position],
        "explored_lists": 0, "explored": 0, "exploration_share": 0.0}
    assert d["surfaces"][0]["by_position"][2] == {"position": 3, "shown": 2, "clicks": 1, "ctr": 0.5}
    assert surface_stats(store, since=NOW + 86400, window_s=WINDOW).surfaces == ()


def test_the_window_is_a_setting(tmp_path: Path) -> None:
    assert EngineConfig().attribution_window_minutes == 30.0
    assert EngineConfig.load(env={"VITRINE_ATTRIBUTION_WINDOW_MINUTES": "2.5"}).attribution_window_minutes == 2.5
    for bad in ("0", "-1", "nan"):
        with pytest.raises(ConfigError, match="attribution_window_minutes"):
            EngineConfig.load(env={"VITRINE_ATTRIBUTION_WINDOW_MINUTES": bad})
    now = time.time()
    for minutes, carts in ((1.0, 0), (5.0, 1)):  # an add to cart 2 minutes after the list
        folder = tmp_path / str(minutes)
        config = make_config(folder / "indexes", folder / "models", attribution_window_minutes=minutes)
        engine = Engine(config)
        shown(engine.events, ("r", now - 180, "for_you", "ann", ["a"], 0))
        happened(engine.events, ("k", "ann", "add_to_cart", "a", now - 60))
        assert [s.add_to_cart for s in engine.surface_stats(2).surfaces] == [carts]
    with pytest.raises(InvalidQuery, match="days"):
        engine.surface_stats(0)


def test_admin_stats_has_the_surfaces(client: Any, app: Any) -> None:
    store = app.extensions["vitrine"].events
    now = time.time()
    shown(store, ("r1", now - 120, "search", "ann", ["a", "b"], 0), ("r2", now - 100, "trending", None, ["b"], 0))
    happened(store, ("c1", "ann", "click", "b", now - 60, "r1"), ("c2", "ann", "add_to_cart", "b", now - 30))
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = client.get("/v1/admin/stats", query_string={"days": 2}, headers=auth).get_json()
    assert {"days", "since", "events_per_day", "totals", "events", "shoppers"} < set(body)
    assert body["totals"]["click"] == 1 and body["events"] == 2  # the event counts are as before
    assert [(s["surface"], s["lists"], s["shown"], s["clicks"], s["add_to_cart"], s["ctr"]) for s in body["surfaces"]] \
        == [("search", 1, 2, 1, 1, 0.5), ("trending", 1, 1, 0, 0, 0.0)]
    assert body["surfaces"][0]["by_position"] == [{"position": 1, "shown": 1, "clicks": 0, "ctr": 0.0},
                                                  {"position": 2, "shown": 1, "clicks": 1, "ctr": 1.0}]
    assert client.get("/v1/admin/stats").status_code == 401
    doc = client.get("/v1/openapi.json").get_json()
    assert "surfaces" in doc["components"]["schemas"]["EventStats"]["required"]
    # the admin page has the tables the script fills
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/admin").get_data(as_text=True))
    assert token is not None
    client.post("/admin/login", data={"key": ADMIN_KEY, "csrf": token.group(1)})
    page = client.get("/admin").get_data(as_text=True)
    assert 'id="surfaces-table"' in page and 'id="positions-table"' in page
