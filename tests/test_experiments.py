"""Issue 9, part 6: experiments. Named variants of a surface's ranking with a sticky split of shoppers by
hashed id, team-draft interleaving for search, per-variant CTR and conversion with 95% intervals, and the
admin routes and panel that create, stop and choose a winner."""
from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest, chi2_contingency, chisquare

from engine.errors import InvalidQuery, NotFound, StoreUnavailable
from engine.events import EventStore, SQLiteEventStore, validate_many
from engine.events.impressions import Impression
from engine.learn.experiments import (
    Experiment, Experiments, InterleavingResult, Kind, Preference, Rate, State, Variant, assign, bucket,
    interleaving_credit, policy_tag, sign_test, stats, team_draft, wilson,
)
from tests.conftest import ADMIN_KEY

NOW = 1_700_000_000.0
WINDOW = 1800.0
N_IDS = 10_000


@pytest.fixture
def store(tmp_path: Path) -> EventStore:
    return SQLiteEventStore(tmp_path / "events.db")


def experiments(store: EventStore, at: float | list[float] = NOW, **kw: Any) -> Experiments:
    """Experiments over ``store`` whose wall clock says ``at`` (or ``at[0]``, which the test may move)."""
    clock = at if isinstance(at, list) else [at]
    return Experiments(lambda: store, window_s=WINDOW, wall=lambda: clock[0], **kw)


def split(*shares: float) -> tuple[Variant, ...]:
    return tuple(Variant(f"v{i}", "blend" if i == 0 else "ranker", s) for i, s in enumerate(shares))


def shown(store: EventStore, *imps: tuple[str, float, str | None, list[str], str, int, list[int] | None]) -> None:
    """Log impressions: (request_id, ts, user_id, items, policy, offset, teams or None)."""
    store.add_impressions([
        Impression(rid, ts, "search", user, None, items, offset,
                   [{"score": 1.0, "team": t} for t in teams] if teams is not None else [], policy)
        for rid, ts, user, items, policy, offset, teams in imps])


def happened(store: EventStore, *evs: tuple[str, str, str, str, float, str]) -> None:
    """Store events: (event_id, user_id, type, item_id, timestamp, request_id)."""
    objs = [{"event_id": e[0], "user_id": e[1], "type": e[2], "item_id": e[3], "timestamp": e[4], "request_id": e[5]}
            for e in evs]
    events, rejected = validate_many(objs, now=time.time())
    assert not rejected
    assert len(store.add_many(events).accepted) == len(evs)


# -- assignment ------------------------------------------------------------------------------------

def test_assignment_is_the_documented_hash_and_sticky(store: EventStore, tmp_path: Path) -> None:
    digest = hashlib.sha256(b"colors:ann").digest()
    assert bucket("colors", "ann") == (int.from_bytes(digest[:8], "big") >> 11) / 2 ** 53
    variants = split(0.5, 0.5)
    first = [assign("colors", f"user-{i}", variants).name for i in range(500)]
    assert first == [assign("colors", f"user-{i}", variants).name for i in range(500)]
    # the same through the store, from another Experiments over the same file (another process)
    exp = experiments(store).create("colors", "search", [v.to_dict() for v in variants])
    other = Experiments(lambda: SQLiteEventStore(tmp_path / "events.db"), window_s=WINDOW).get("colors")
    assert other == exp
    assert [other.assign(f"user-{i}").name for i in range(500)] == first
    assert [exp.assign(f"user-{i}").name for i in range(500)] == first
    assert bucket("colors", "ann") != bucket("sizes", "ann")  # the experiment's name is in the hash


@pytest.mark.parametrize("shares", [(0.5, 0.5), (0.7, 0.3), (0.2, 0.3, 0.5)])
def test_assignment_is_balanced_chi_square_on_10000_ids(shares: tuple[float, ...]) -> None:
    variants = split(*shares)
    got = Counter(assign("balance", f"shopper-{i}", variants).name for i in range(N_IDS))
    observed = [got[v.name] for v in variants]
    expected = [s * N_IDS for s in shares]
    assert sum(observed) == N_IDS
    assert chisquare(observed, expected).pvalue > 0.001, (observed, expected)


def test_assignments_of_two_experiments_are_independent() -> None:
    variants = split(0.5, 0.5)
    pairs = Counter((assign("first", f"u{i}", variants).name, assign("second", f"u{i}", variants).name)
                    for i in range(N_IDS))
    table = [[pairs["v0", "v0"], pairs["v0", "v1"]], [pairs["v1", "v0"], pairs["v1", "v1"]]]
    assert chi2_contingency(table).pvalue > 0.001, table


def test_assign_checks_the_shares() -> None:
    for bad in (split(0.5, 0.4), split(0.7, 0.7), split(1.0, 0.0), ()):
        with pytest.raises(InvalidQuery, match="variants"):
            assign("e", "ann", bad)
    assert assign("e", "ann", split(1.0)).name == "v0"


# -- team-draft interleaving -------------------------------------------------------------------------

ITEMS = [f"i{n}" for n in range(12)]


@settings(max_examples=200, deadline=None)
@given(a=st.permutations(ITEMS), b=st.permutations(ITEMS), k=st.integers(0, 14), seed=st.text(max_size=8))
def test_team_draft_properties(a: list[str], b: list[str], k: int, seed: str) -> None:
    merged, teams = team_draft(a, b, k, seed)
    assert len(merged) == len(teams) == min(k, len(ITEMS))
    assert len(set(merged)) == len(merged)  # no duplicates
    for n in range(1, len(teams) + 1):  # every prefix: the teams' sizes differ by at most one
        assert abs(teams[:n].count(0) - teams[:n].count(1)) <= 1
    for team, ranking in ((0, a), (1, b)):  # each team's items come in its own ranking's order
        picked = [m for m, t in zip(merged, teams) if t == team]
        assert picked == sorted(picked, key=ranking.index)
    assert team_draft(a, b, k, seed) == (merged, teams)  # seeded: the same list again
    assert team_draft(a, a, k, seed)[0] == a[:k]  # identical rankings: that ranking


def test_team_draft_small_cases() -> None:
    a, b = ["a1", "a2", "a3", "s"], ["b1", "s", "b2", "b3"]
    merged, teams = team_draft(a, b, 4, "request-1")
    assert sorted(merged[:2]) == ["a1", "b1"] and teams[:2] in ([0, 1], [1, 0])
    coins = {tuple(team_draft(a, b, 8, f"r{i}")[1][:2]) for i in range(50)}
    assert coins == {(0, 1), (1, 0)}  # the coin goes both ways
    # a shared item is taken once, by whichever team reaches it first
    merged, teams = team_draft(["x", "y"], ["x", "z"], 3, 7)
    assert merged.count("x") == 1 and len(merged) == 3
    # one ranking runs out: the other fills the list
    assert team_draft(["a"], ["b1", "b2", "b3"], 3, 1) in (
        (["a", "b1", "b2"], [0, 1, 1]), (["b1", "a", "b2"], [1, 0, 1]))
    assert team_draft([], [], 5, 1) == ([], [])
    with pytest.raises(InvalidQuery, match="k"):
        team_draft(a, b, -1, 1)


def test_interleaving_credit_and_its_aggregate() -> None:
    teams = [0, 1, 0, 1]
    assert interleaving_credit(teams, [1]) is Preference.A
    assert interleaving_credit(teams, [2, 4, 1]) is Preference.B
    assert interleaving_credit(teams, [1, 2]) is Preference.TIE
    assert interleaving_credit(teams, [1, 1, 3, 2]) is Preference.A  # a place counts once
    assert interleaving_credit(teams, []) is Preference.NONE
    assert interleaving_credit(teams, [9]) is Preference.NONE  # past the end
    prefs = [Preference.A] * 10 + [Preference.B] * 30 + [Preference.TIE] * 10 + [Preference.NONE] * 7
    r = InterleavingResult.of(prefs)
    assert (r.wins_a, r.wins_b, r.ties, r.no_clicks) == (10, 30, 10, 7)
    assert r.preference == pytest.approx((30 - 10) / 50)
    p, lo, hi = wilson(30 + 10 / 2, 50)
    assert (r.low, r.high) == pytest.approx((2 * lo - 1, 2 * hi - 1))
    assert r.low < r.preference < r.high and r.low > 0  # b is better, and the interval says so
    assert r.p_value == pytest.approx(binomtest(10, 40).pvalue)
    empty = InterleavingResult.of([Preference.NONE])
    assert (empty.no_clicks, empty.preference, empty.low, empty.high, empty.p_value) == (1, 0.0, -1.0, 1.0, 1.0)


def test_sign_test_matches_scipy() -> None:
    for a, b in ((0, 0), (5, 5), (3, 12), (40, 60), (0, 9), (500, 560)):
        assert sign_test(a, b) == pytest.approx(1.0 if a + b == 0 else binomtest(a, a + b).pvalue, rel=1e-9)


# -- rates and intervals ------------------------------------------------------------------------------

@pytest.mark.parametrize("x,n", [(0, 10), (3, 10), (10, 10), (1, 1000), (480, 1000)])
def test_wilson_matches_scipy(x: int, n: int) -> None:
    ci = binomtest(x, n).proportion_ci(confidence_level=0.95, method="wilson")
    p, lo, hi = wilson(x, n)
    assert (p, lo, hi) == pytest.approx((x / n, ci.low, ci.high), abs=1e-9)
    assert wilson(0, 0) == (0.0, 0.0, 1.0)


def test_rate_is_wilson_when_items_are_independent_and_wider_when_clustered() -> None:
    single = Rate.clustered([(1, 1)] * 3 + [(0, 1)] * 17)  # one shown item per shopper
    ci = binomtest(3, 20).proportion_ci(method="wilson")
    assert (single.value, single.deff) == (0.15, pytest.approx(1.0))
    assert (single.low, single.high) == pytest.approx((ci.low, ci.high))
    # one shopper clicked all four of theirs, three clicked none: deff 5 by hand
    # (var_clustered = 4/3 * (3^2 + 3 * 1^2) / 16^2 = 1/16; var_binomial = .25 * .75 / 15 = 1/80)
    lumpy = Rate.clustered([(4, 4), (0, 4), (0, 4), (0, 4)])
    assert (lumpy.count, lumpy.shown, lumpy.value, lumpy.deff) == (4, 16, 0.25, pytest.approx(5.0))
    assert (lumpy.low, lumpy.high) == pytest.approx(wilson(4 / 5, 16 / 5)[1:])
    spread = Rate.clustered([(1, 4)] * 4)  # every shopper alike: no wider than Wilson
    assert spread.deff == 1.0 and (spread.low, spread.high) == pytest.approx(wilson(4, 16)[1:])
    assert lumpy.high - lumpy.low > spread.high - spread.low
    assert Rate.clustered([]).to_dict() == {"value": 0.0, "low": 0.0, "high": 1.0, "deff": 1.0}


# -- per-variant stats ---------------------------------------------------------------------------------

def test_split_stats_per_variant(store: EventStore) -> None:
    wall = [NOW]
    exps = experiments(store, wall)
    exp = exps.create("ab", "search", [{"name": "blend", "policy": "blend", "share": 0.5},
                                       {"name": "ranker-v3", "policy": "ranker", "share": 0.5}])
    a, b = exp.policy("blend"), exp.policy("ranker-v3")
    assert a == policy_tag("ab", "blend") == "exp:ab/blend"
    shown(store,
          ("a1", NOW + 1, "ann", ["x", "y", "z"], a, 0, None),
          ("a2", NOW + 2, "ann", ["x", "y", "z"], a, 0, None),  # ann again: one shopper, two lists
          ("a3", NOW + 3, "bob", ["x", "y"], a, 0, None),
          ("b1", NOW + 4, "cat", ["x", "y", "z"], b, 0, None),
          ("b2", NOW + 5, None, ["x", "y"], b, 0, None),  # no shopper: a cluster of its own
          ("early", NOW - 5, "ann", ["x"], a, 0, None),  # before the experiment
          ("other", NOW + 6, "ann", ["x"], "exp:abc/blend", 0, None),  # another experiment's
          ("plain", NOW + 7, "ann", ["x"], "blend", 0, None))  # not in an experiment
    happened(store,
             ("e1", "ann", "click", "x", NOW + 10, "a1"),
             ("e2", "ann", "click", "x", NOW + 11, "a1"),  # twice: one clicked item
             ("e3", "ann", "purchase", "x", NOW + 12, "a1"),
             ("e4", "bob", "click", "y", NOW + 13, "a3"),
             ("e5", "cat", "click", "z", NOW + 14, "b1"),
             ("e6", "cat", "add_to_cart", "z", NOW + 15, "b1"),
             ("e7", "ann", "click", "x", NOW + 16, "early"),
             ("e8", "ann", "click", "x", NOW + 17, "other"))
    s = exps.stats("ab", now=NOW + 100)
    assert (s.experiment, s.since, s.until, s.window_s, s.interleaving) == ("ab", NOW, NOW + 100, WINDOW, None)
    va, vb = s.variants
    assert (va.variant, va.policy, va.lists, va.shoppers, va.shown, va.clicks, va.add_to_cart, va.purchases) == (
        "blend", "blend", 3, 2, 8, 2, 0, 1)
    assert (vb.variant, vb.lists, vb.shoppers, vb.shown, vb.clicks, vb.add_to_cart, vb.purchases) == (
        "ranker-v3", 2, 2, 5, 1, 1, 0)
    assert va.ctr.value == 0.25 and vb.ctr.value == 0.2 and va.conversion.value == 0.125
    # two shoppers each: ann (1 click of 6 shown) and bob (1 of 2)
    assert va.ctr == Rate.clustered([(1, 6), (1, 2)])
    assert vb.conversion == Rate.clustered([(0, 3), (0, 2)]) and vb.conversion.high > 0
    d = s.to_dict()
    assert d["window_minutes"] == 30 and d["interleaving"] is None
    assert d["variants"][0]["ctr"] == va.ctr.to_dict() and d["variants"][1]["add_to_cart"] == 1
    # stopped: lists served after the stop are not counted
    wall[0] = NOW + 50
    assert exps.stop("ab").stopped_at == NOW + 50
    shown(store, ("late", NOW + 60, "dan", ["x"], a, 0, None))
    assert exps.stats("ab").until == NOW + 50 and exps.stats("ab").variants[0].lists == 3


def test_interleave_stats_credit_the_teams(store: EventStore) -> None:
    exps = experiments(store)
    exp = exps.create("mix", "search", [{"name": "old", "policy": "blend"}, {"name": "new", "policy": "ranker"}],
                      kind="interleave")
    assert exp.kind is Kind.INTERLEAVE and [v.share for v in exp.variants] == [0.5, 0.5]
    tag = exp.policy("interleaved")
    shown(store,
          ("l1", NOW + 1, "ann", ["p", "q", "r", "s"], tag, 0, [0, 1, 1, 0]),
          ("l2", NOW + 2, "bob", ["p", "q", "r", "s"], tag, 0, [1, 0, 0, 1]),
          ("l3", NOW + 3, "cat", ["p", "q"], tag, 10, [0, 1]),  # page 2: positions 11 and 12
          ("l4", NOW + 4, "dan", ["p", "q"], tag, 0, [1, 0]),
          ("l5", NOW + 5, "eve", ["p", "q"], tag, 0, None))  # logged without teams: left out
    happened(store,
             ("c1", "ann", "click", "q", NOW + 10, "l1"),  # team 1 (new)
             ("c2", "ann", "click", "r", NOW + 11, "l1"),  # team 1 again: new wins l1
             ("c3", "bob", "click", "q", NOW + 12, "l2"),  # team 0: old wins l2
             ("c4", "cat", "click", "q", NOW + 13, "l3"),  # position 12: team 1
             ("c5", "cat", "click", "p", NOW + 14, "l3"),  # position 11: team 0: a tie
             ("c6", "cat", "purchase", "q", NOW + 15, "l3"),
             ("c7", "eve", "click", "p", NOW + 16, "l5"))
    s = exps.stats("mix", now=NOW + 100)
    il = s.interleaving
    assert il is not None and (il.wins_a, il.wins_b, il.ties, il.no_clicks) == (1, 1, 1, 1)
    assert il.preference == 0.0 and il.low < 0 < il.high
    old, new = s.variants
    assert (old.lists, old.shown, old.clicks, old.purchases) == (4, 6, 2, 0)
    assert (new.lists, new.shown, new.clicks, new.purchases) == (4, 6, 3, 1)
    assert s.to_dict()["interleaving"]["wins_b"] == 1


def test_policy_lists_reads_the_team_of_each_item(store: EventStore) -> None:
    shown(store, ("l1", NOW, "ann", ["p", "q", "r"], "exp:mix/interleaved", 0, [0, 1, 0]),
          ("l2", NOW + 1, None, ["p"], "exp:mix/interleaved", 3, None),
          ("l3", NOW + 2, "bob", ["p"], "exp:mixed/interleaved", 0, [1]))
    assert store.policy_lists("exp:mix/", NOW, None, feature="team") == [
        ("l1", "exp:mix/interleaved", "ann", 0, 3, [0, 1, 0]), ("l2", "exp:mix/interleaved", None, 3, 1, [])]
    assert store.policy_lists("exp:mix/", NOW, NOW + 1) == [("l1", "exp:mix/interleaved", "ann", 0, 3, [])]
    with pytest.raises(ValueError):
        store.policy_lists("exp:", NOW, feature="x') OR 1 --")


# -- lifecycle and validation -----------------------------------------------------------------------

def test_create_stop_choose_a_winner(store: EventStore) -> None:
    clock = [0.0]
    exps = experiments(store, clock=lambda: clock[0])
    assert exps.running("search") is None and exps.list() == []
    exp = exps.create("first", "search", [{"name": "a", "policy": "blend", "share": 0.25},
                                          {"name": "b", "policy": "ranker", "share": 0.75}])
    assert exp == Experiment("first", "search", Kind.SPLIT, (Variant("a", "blend", 0.25), Variant("b", "ranker", 0.75)),
                             State.RUNNING, NOW)
    assert exps.running("search") == exp and exps.running("recommend") is None
    with pytest.raises(InvalidQuery) as e:
        exps.create("second", "search", [{"name": "a", "policy": "blend"}, {"name": "b", "policy": "ranker"}])
    assert e.value.field == "surface" and "first" in e.value.message
    with pytest.raises(InvalidQuery) as e:
        exps.create("first", "recommend", [{"name": "a", "policy": "blend"}, {"name": "b", "policy": "ranker"}])
    assert e.value.field == "name"
    rec = exps.create("second", "recommend", [{"name": "a", "policy": "blend"}, {"name": "b", "policy": "blend"}])
    assert [v.share for v in rec.variants] == [0.5, 0.5]  # an A/A test is allowed
    assert [e.name for e in exps.list()] == ["first", "second"]  # newest first; started together: by name

    stopped = exps.stop("first")
    assert (stopped.state, stopped.stopped_at, stopped.winner) == (State.STOPPED, NOW, None)
    assert exps.running("search") is None  # this process sees it at once
    assert exps.stop("first") == stopped  # again: nothing changes
    assert exps.choose_winner("first", "b").winner == "b"
    assert exps.choose_winner("first", "b").winner == "b"
    with pytest.raises(InvalidQuery, match="already has a winner"):
        exps.choose_winner("first", "a")
    with pytest.raises(InvalidQuery) as e:
        exps.choose_winner("second", "c")
    assert e.value.field == "variant"
    won = exps.choose_winner("second", "a")  # a running one stops with its winner
    assert (won.state, won.winner) == (State.STOPPED, "a")
    for call in (lambda: exps.get("nope"), lambda: exps.stop("nope"), lambda: exps.choose_winner("nope", "a"),
                 lambda: exps.stats("nope")):
        with pytest.raises(NotFound):
            call()
    again = exps.create("third", "search", [{"name": "a", "policy": "blend"}, {"name": "b", "policy": "ranker"}])
    assert exps.running("search") == again  # stopped: the surface is free again


def test_running_is_cached_and_cheap(store: EventStore) -> None:
    reads = Counter[str]()

    class Spy:
        def __getattr__(self, name: str) -> Any:
            reads[name] += 1
            return getattr(store, name)

    clock = [100.0]
    serving = Experiments(lambda: Spy(), window_s=WINDOW, cache_s=2.0, clock=lambda: clock[0])
    admin = experiments(store)  # another process
    assert serving.running("search") is None
    exp = admin.create("cached", "search", [{"name": "a", "policy": "blend"}, {"name": "b", "policy": "ranker"}])
    for _ in range(1000):
        assert serving.running("search") is None  # within cache_s: the answer read before
    assert reads["experiments"] == 1
    clock[0] += 2.0
    assert serving.running("search") == exp
    assert reads["experiments"] == 2


def test_serving_survives_a_store_it_cannot_read(store: EventStore, tmp_path: Path) -> None:
    exp = experiments(store).create("kept", "search", [{"name": "a", "policy": "blend"},
                                                       {"name": "b", "policy": "ranker"}])
    broken = [False]

    def flaky() -> EventStore:
        if broken[0]:
            raise StoreUnavailable("disk I/O error")
        return store

    clock = [0.0]
    serving = Experiments(flaky, window_s=WINDOW, clock=lambda: clock[0])
    assert serving.running("search") == exp
    broken[0], clock[0] = True, 10.0
    assert serving.running("search") == exp  # the last answer stays
    assert Experiments(flaky, window_s=WINDOW).running("search") is None  # nothing known: no experiment
    # a store opened read-only before it had the table reads as one without experiments
    with sqlite3.connect(tmp_path / "events.db") as conn:
        conn.execute("DROP TABLE experiments")
    assert store.experiments() == [] and store.get_experiment("kept") is None
    with pytest.raises(NotFound):
        experiments(store).get("kept")


@pytest.mark.parametrize("body,field", [
    ({"name": "Bad Name"}, "name"),
    ({"name": ""}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"name": None}, "name"),
    ({"name": 5}, "name"),
    ({"surface": "similar"}, "surface"),
    ({"surface": ["search"]}, "surface"),
    ({"kind": "bandit"}, "kind"),
    ({"kind": "interleave", "surface": "recommend"}, "kind"),
    ({"kind": "interleave", "variants": [{"name": "a", "policy": "blend"}, {"name": "b", "policy": "ranker"},
                                         {"name": "c", "policy": "ranker"}]}, "kind"),
    ({"kind": "interleave", "variants": [{"name": "a", "policy": "blend", "share": 0.9},
                                         {"name": "b", "policy": "ranker", "share": 0.1}]}, "variants"),
    ({"variants": [{"name": "a", "policy": "blend"}]}, "variants"),
    ({"variants": "a,b"}, "variants"),
    ({"variants": None}, "variants"),
    ({"variants": [{"name": "a", "policy": "blend"}, "b"]}, "variants[1]"),
    ({"variants": [{"name": "a", "policy": "blend"}, {"name": "a", "policy": "ranker"}]}, "variants[1].name"),
    ({"variants": [{"name": "a", "policy": "blend"}, {"name": "interleaved", "policy": "ranker"}]}, "variants[1].name"),
    ({"variants": [{"name": "A b", "policy": "blend"}, {"name": "b", "policy": "ranker"}]}, "variants[0].name"),
    ({"variants": [{"name": "a", "policy": "random"}, {"name": "b", "policy": "ranker"}]}, "variants[0].policy"),
    ({"variants": [{"name": "a", "policy": "ranker:../../etc"}, {"name": "b", "policy": "ranker"}]},
     "variants[0].policy"),
    ({"variants": [{"name": "a", "policy": "ranker:recommend-20240101T000000Z-abcdef"},
                   {"name": "b", "policy": "ranker"}]}, "variants[0].policy"),  # another surface's version
    ({"variants": [{"name": "a", "policy": "blend", "share": 0.5}, {"name": "b", "policy": "ranker"}]},
     "variants[1].share"),
    ({"variants": [{"name": "a", "policy": "blend", "share": 0.6}, {"name": "b", "policy": "ranker", "share": 0.6}]},
     "variants"),
    ({"variants": [{"name": "a", "policy": "blend", "share": 0}, {"name": "b", "policy": "ranker", "share": 1}]},
     "variants[0].share"),
    ({"variants": [{"name": "a", "policy": "blend", "share": "0.5"}, {"name": "b", "policy": "ranker", "share": 0.5}]},
     "variants[0].share"),
    ({"variants": [{"name": "a", "policy": "blend", "share": True}, {"name": "b", "policy": "ranker", "share": 0.5}]},
     "variants[0].share"),
    ({"variants": [{"name": "a", "policy": "blend", "share": 10 ** 400}, {"name": "b", "policy": "ranker"}]},
     "variants[0].share"),
    ({"variants": [{"name": "a", "policy": "blend", "weight": 1}, {"name": "b", "policy": "ranker"}]},
     "variants[0].weight"),
])
def test_bad_input_names_the_field(store: EventStore, body: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"name": "good", "surface": "search", "kind": "split",
                            "variants": [{"name": "a", "policy": "blend"}, {"name": "b", "policy": "ranker"}]}
    args.update(body)
    with pytest.raises(InvalidQuery) as e:
        experiments(store).create(args["name"], args["surface"], args["variants"], kind=args["kind"])
    assert e.value.field == field, e.value
    assert experiments(store).list() == []


def test_a_pinned_ranker_version_must_be_published(store: EventStore, tmp_path: Path) -> None:
    version = "search-20240101T000000Z-abcdef"
    exps = experiments(store, rankers_root=tmp_path / "rankers")
    variants = [{"name": "pinned", "policy": f"ranker:{version}"}, {"name": "blend", "policy": "blend"}]
    with pytest.raises(InvalidQuery, match="not published") as e:
        exps.create("pin", "search", variants)
    assert e.value.field == "variants[0].policy"
    (tmp_path / "rankers" / "search" / version).mkdir(parents=True)
    exp = exps.create("pin", "search", variants)
    assert exp.variants[0].ranker_version == version and exp.variants[0].uses_ranker
    assert exp.variants[1].ranker_version is None and not exp.variants[1].uses_ranker


# -- HTTP and the admin page ---------------------------------------------------------------------------
# These go through get_engine().experiments: the Engine attribute the lead adds in engine/service.py. Until
# then the fixture below gives the test's engine one, the same way.

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
BODY = {"name": "web-ab", "surface": "search",
        "variants": [{"name": "blend", "policy": "blend", "share": 0.7},
                     {"name": "ranker", "policy": "ranker", "share": 0.3}]}


@pytest.fixture
def admin_client(app: Any, client: Any) -> Iterator[Any]:
    engine = app.extensions["vitrine"]
    if not hasattr(engine, "experiments"):
        engine.experiments = Experiments(lambda: engine.events,
                                         window_s=engine.config.attribution_window_minutes * 60.0,
                                         rankers_root=engine.config.rankers_path)
    yield client


def test_admin_experiment_routes(admin_client: Any, app: Any) -> None:
    c = admin_client
    assert c.get("/v1/admin/experiments", headers=AUTH).get_json() == {"experiments": []}
    r = c.post("/v1/admin/experiments", json=BODY, headers=AUTH)
    assert r.status_code == 201, r.get_json()
    made = r.get_json()
    assert made["name"] == "web-ab" and made["state"] == "running" and made["kind"] == "split"
    assert [v["share"] for v in made["variants"]] == [0.7, 0.3] and made["stats"]["variants"][0]["lists"] == 0
    engine = app.extensions["vitrine"]
    assert engine.experiments.running("search").name == "web-ab"

    store = engine.events
    now = time.time()
    shown(store, ("w1", now, "ann", ["x", "y"], "exp:web-ab/blend", 0, None),
          ("w2", now, "bob", ["x", "y"], "exp:web-ab/ranker", 0, None))
    happened(store, ("we1", "ann", "click", "x", now + 1, "w1"))
    listed = c.get("/v1/admin/experiments", headers=AUTH).get_json()["experiments"]
    assert [e["name"] for e in listed] == ["web-ab"]
    blend, ranker = listed[0]["stats"]["variants"]
    assert (blend["lists"], blend["shown"], blend["clicks"], blend["ctr"]["value"]) == (1, 2, 1, 0.5)
    assert 0 < blend["ctr"]["low"] < 0.5 < blend["ctr"]["high"] < 1
    assert (ranker["lists"], ranker["clicks"], ranker["ctr"]["value"]) == (1, 0, 0.0)

    def error(resp: Any, status: int) -> dict[str, Any]:
        assert resp.status_code == status, resp.get_json()
        err: dict[str, Any] = resp.get_json()["error"]
        return err

    assert error(c.post("/v1/admin/experiments", json=BODY, headers=AUTH), 400)["field"] == "name"
    busy = c.post("/v1/admin/experiments", json=BODY | {"name": "again"}, headers=AUTH)
    assert error(busy, 400)["field"] == "surface"
    assert error(c.post("/v1/admin/experiments", json=BODY | {"name": "X"}, headers=AUTH), 400)["field"] == "name"
    assert error(c.post("/v1/admin/experiments", json=BODY | {"colour": 1}, headers=AUTH), 400)["field"] == "colour"
    assert error(c.post("/v1/admin/experiments", json=[BODY], headers=AUTH), 400)["field"] == "body"
    assert error(c.post("/v1/admin/experiments", headers=AUTH), 400)["field"] == "body"
    no_variants = {k: v for k, v in BODY.items() if k != "variants"} | {"name": "nv", "surface": "recommend"}
    assert error(c.post("/v1/admin/experiments", json=no_variants, headers=AUTH), 400)["field"] == "variants"
    assert error(c.post("/v1/admin/experiments/nope/stop", headers=AUTH), 404)["code"] == "not_found"
    assert error(c.post("/v1/admin/experiments/nope/winner", json={"variant": "a"}, headers=AUTH), 404)
    assert error(c.post("/v1/admin/experiments/web-ab/winner", json={"variant": "zzz"}, headers=AUTH),
                 400)["field"] == "variant"
    assert error(c.post("/v1/admin/experiments/web-ab/winner", json={}, headers=AUTH), 400)["field"] == "variant"
    assert c.get("/v1/admin/experiments").status_code == 401
    assert c.post("/v1/admin/experiments", json=BODY | {"name": "anon"}).status_code == 401

    stopped = c.post("/v1/admin/experiments/web-ab/stop", headers=AUTH).get_json()
    assert stopped["state"] == "stopped" and stopped["stopped_at"] is not None and stopped["winner"] is None
    assert engine.experiments.running("search") is None
    won = c.post("/v1/admin/experiments/web-ab/winner", json={"variant": "ranker"}, headers=AUTH).get_json()
    assert won["winner"] == "ranker" and won["stats"]["variants"][0]["clicks"] == 1
    inter = c.post("/v1/admin/experiments", json={
        "name": "mix", "surface": "search", "kind": "interleave",
        "variants": [{"name": "a", "policy": "blend"}, {"name": "b", "policy": "ranker"}]}, headers=AUTH).get_json()
    assert inter["kind"] == "interleave" and inter["stats"]["interleaving"]["wins_a"] == 0

    doc = c.get("/v1/openapi.json").get_json()
    assert {"get", "post"} <= set(doc["paths"]["/v1/admin/experiments"])
    assert "post" in doc["paths"]["/v1/admin/experiments/{name}/stop"]
    assert "post" in doc["paths"]["/v1/admin/experiments/{name}/winner"]
    assert "ExperimentStats" in doc["components"]["schemas"]


def test_admin_page_has_the_experiments_panel(admin_client: Any) -> None:
    c = admin_client
    token = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/admin").get_data(as_text=True))
    assert token is not None
    c.post("/admin/login", data={"key": ADMIN_KEY, "csrf": token.group(1)})
    page = c.get("/admin").get_data(as_text=True)
    for marker in ('id="experiments"', 'id="experiment-form"', 'id="experiment-variants"', 'id="experiment-start"'):
        assert marker in page
    with c.get("/static/admin.js") as resp:  # a file response: closed, or its file stays open
        script = resp.get_data(as_text=True)
    assert "/v1/admin/experiments" in script and "choose-winner" in script and "stop-experiment" in script
