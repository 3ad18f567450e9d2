"""Issue 12, behaviour analytics: the reports against hand-computed values on a small fixture, the Laplace
noise's scale, the daily privacy budget, deleted shoppers leaving the copy, and the HTTP API (400s naming
the field, 429 once the budget is spent, CSV). Real SQLite, real DuckDB, a real server."""
from __future__ import annotations

import csv
import datetime as dt
import io
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import requests

from engine.analytics.dp import Laplace
from engine.analytics.reports import SENSITIVITY, parse_params
from engine.analytics.service import Analytics
from engine.config import EngineConfig
from engine.errors import InvalidQuery, PrivacyBudgetExhausted, WarmingUp
from engine.events import open_event_store
from engine.events.impressions import Impression
from engine.events.model import Event, EventType
from engine.events.store import EventStore
from tests.conftest import ADMIN_KEY, start_server, stop_server

D = dt.date(2026, 11, 2)  # a Monday
DAY0 = (D - dt.date(1970, 1, 1)).days
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
A, B, C = "beaker-set", "flask-erlenmeyer", "gloves-nitrile-m"
CATALOG = [(A, "Industrial & Scientific > Lab Supplies > Glassware"),
           (B, "Industrial & Scientific > Lab Supplies > Glassware"),
           (C, "Industrial & Scientific > Lab & Safety > Gloves")]
LAB, SAFETY = "Industrial & Scientific > Lab Supplies", "Industrial & Scientific > Lab & Safety"


def ts(day: int, seconds: float = 43200.0) -> float:
    return (DAY0 + day) * 86400.0 + seconds


def d(day: int) -> str:
    return (D + dt.timedelta(days=day)).isoformat()


def seed(store: EventStore) -> None:
    """The fixture: four shoppers over two weeks, four search lists (the values below are counted by hand)."""
    rows: list[tuple[str, str, int, str | None, float, dict[str, Any]]] = [
        ("u1", "view", 0, A, 0, {"request_id": "r1", "position": 1}),
        ("u1", "click", 0, A, 10, {"request_id": "r1", "position": 1}),
        ("u1", "add_to_cart", 0, A, 20, {}),
        ("u1", "purchase", 0, A, 30, {"value": 30.0}),
        ("u1", "view", 1, B, 0, {}),
        ("u2", "view", 0, A, 0, {}),
        ("u2", "view", 0, B, 5, {}),
        ("u2", "view", 8, C, 0, {}),
        ("u2", "purchase", 8, C, 5, {"value": 5.0}),
        ("u3", "view", 1, C, 0, {}),
        ("u3", "click", 1, C, 5, {}),
        ("u4", "view", -10, A, 0, {}),
        ("u4", "purchase", 0, A, 40, {"value": 200.0}),
    ]
    events = [Event(f"e{i}", u, EventType(t), ts(day, 43200 + s), item_id=item, **extra)
              for i, (u, t, day, item, s, extra) in enumerate(rows)]
    store.add_impressions([
        Impression("r1", ts(0), "search", "u1", "Beaker ", [A, B]),
        Impression("r2", ts(0, 43260), "search", "u1", "beaker set", [B]),
        Impression("r3", ts(0), "search", "u2", "gloves xl", []),
        Impression("r4", ts(1), "search", "u3", "beaker", [A, B, C]),
        Impression("r5", ts(1), "search", "u3", "beaker", [C], offset=3),  # a second page: not a search
    ])
    store.add_many(events)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    seed(s)
    yield s
    s.close()


def make_analytics(store: EventStore, budget: float = 10.0, seed_: int = 7) -> Analytics:
    rng = np.random.default_rng(seed_)
    return Analytics(lambda: store, lambda: ("v1", lambda: CATALOG), daily_budget=budget, rng=lambda: rng)


def table(report: Any, name: str) -> list[dict[str, Any]]:
    t = report.tables[name]
    return [dict(zip(t.columns, row)) for row in t.rows]


def test_funnel_by_day_category_and_surface_match_hand_counts(store: EventStore) -> None:
    an = make_analytics(store)
    rng = {"from": d(0), "to": d(1)}
    by_day = table(an.report("funnel", rng), "funnel")
    assert [(r["day"], r["view"], r["click"], r["add_to_cart"], r["purchase"]) for r in by_day] == [
        (d(0), 3, 1, 1, 2), (d(1), 2, 1, 0, 0)]
    assert by_day[0]["click_rate"] == pytest.approx(1 / 3, abs=1e-4) and by_day[0]["purchase_rate"] == 2.0
    by_cat = table(an.report("funnel", rng | {"by": "category"}), "funnel")
    assert [(r["category"], r["view"], r["click"], r["add_to_cart"], r["purchase"]) for r in by_cat] == [
        (SAFETY, 1, 1, 0, 0), (LAB, 4, 1, 1, 2)]
    by_surface = table(an.report("funnel", rng | {"by": "surface"}), "funnel")
    # by request_id (u1's view and click of A in r1), else by the window: u1's cart and purchase of A follow r1,
    # u3's view and click of C follow r4; u2's lists showed nothing, u4 saw none
    assert [(r["surface"], r["view"], r["click"], r["add_to_cart"], r["purchase"]) for r in by_surface] == [
        ("direct", 3, 0, 0, 1), ("search", 2, 2, 1, 1)]
    only = table(an.report("funnel", rng | {"category": "industrial & scientific > lab & safety"}), "funnel")
    assert [(r["day"], r["view"], r["click"]) for r in only] == [(d(1), 1, 1)]
    searched = table(an.report("funnel", rng | {"surface": "search"}), "funnel")
    assert [(r["day"], r["view"], r["click"], r["purchase"]) for r in searched] == [(d(0), 1, 1, 1), (d(1), 1, 1, 0)]


def test_cohorts_weekly_retention_of_new_shoppers(store: EventStore) -> None:
    rep = make_analytics(store).report("cohorts", {"from": d(0), "to": d(13)})
    # u1, u2, u3 are new in the week of D (u4 was first seen 10 days before); u2 comes back in week 1.
    assert table(rep, "cohorts") == [{"cohort": d(0), "new_shoppers": 3}, {"cohort": d(7), "new_shoppers": 0}]
    assert [(r["cohort"], r["week"], r["active"], r["retention"]) for r in table(rep, "retention")] == [
        (d(0), 0, 3, 1.0), (d(0), 1, 1, pytest.approx(1 / 3, abs=1e-4)), (d(7), 0, 0, None)]


def test_rfm_segments(store: EventStore) -> None:
    rep = make_analytics(store).report("rfm", {"from": d(0), "to": d(13)})
    cells = {(r["recency"], r["frequency"], r["monetary"]): r["shoppers"] for r in table(rep, "cells")}
    # u1: 13.5 days, 1 purchase, 30 -> (3, 1, 2); u4: 13.5 days, 200 -> (3, 1, 3); u2: 5.5 days, 5 -> (4, 1, 1)
    assert cells == {(3, 1, 2): 1, (3, 1, 3): 1, (4, 1, 1): 1}
    seg = {r["segment"]: r["shoppers"] for r in table(rep, "segments")}
    assert seg["promising"] == 2 and seg["new"] == 1 and sum(seg.values()) == 3


def test_movers_against_the_previous_period(store: EventStore) -> None:
    rep = make_analytics(store).report("movers", {"from": d(7), "to": d(13)})
    items = [(r["item"], r["current"], r["previous"], r["change"]) for r in table(rep, "items")]
    assert items == [(A, 0, 6, -6), (B, 0, 2, -2), (C, 2, 2, 0)]
    cats = [(r["category"], r["current"], r["previous"]) for r in table(rep, "categories")]
    assert cats == [(LAB, 0, 8), (SAFETY, 2, 2)]


def test_search_analytics(store: EventStore) -> None:
    rep = make_analytics(store).report("search", {"from": d(0), "to": d(1)})
    assert table(rep, "top_queries") == [{"query": "beaker", "searches": 2, "clicks": 1, "ctr": 0.5},
                                         {"query": "beaker set", "searches": 1, "clicks": 0, "ctr": 0.0},
                                         {"query": "gloves xl", "searches": 1, "clicks": 0, "ctr": 0.0}]
    assert table(rep, "zero_result") == [{"query": "gloves xl", "searches": 1}]
    assert table(rep, "no_click") == [{"query": "beaker", "searches": 1}, {"query": "beaker set", "searches": 1}]
    pos = [(r["position"], r["impressions"], r["clicks"]) for r in table(rep, "ctr_by_position")][:4]
    assert pos == [(1, 3, 1), (2, 2, 0), (3, 1, 0), (4, 0, 0)]
    assert table(rep, "refinements") == [{"query": "beaker", "next_query": "beaker set", "count": 1}]


@pytest.mark.parametrize("report", ["funnel", "search", "cohorts", "rfm", "movers"])
@pytest.mark.parametrize("epsilon", [1.0, 0.1])
def test_laplace_noise_has_the_stated_variance(report: str, epsilon: float) -> None:
    """2,000 draws of the mechanism each report uses: empirical variance within 10% of 2 (sensitivity/eps)^2."""
    params = parse_params(report, {"from": d(0), "to": d(13)})
    sens = SENSITIVITY[report](params)
    draws = Laplace(epsilon, sens, np.random.default_rng(12)).noise(2000)
    expected = 2 * (sens / epsilon) ** 2
    assert abs(draws.var() / expected - 1) < 0.10
    assert abs(draws.mean()) < 4 * np.sqrt(expected / 2000)


def test_dp_report_states_its_noise_and_spends_the_budget(store: EventStore) -> None:
    an = make_analytics(store, budget=1.0)
    rep = an.report("funnel", {"from": d(0), "to": d(1), "dp_epsilon": "0.4"}, key="k1")
    assert rep.dp is not None and rep.dp["sensitivity"] == 80 and rep.dp["noise_scale"] == 200
    assert rep.dp["budget"]["spent"] == pytest.approx(0.4) and rep.dp["budget"]["remaining"] == pytest.approx(0.6)
    assert [r["day"] for r in table(rep, "funnel")] == [d(0), d(1)]  # every day of the range, public keys
    an.report("rfm", {"from": d(0), "to": d(1), "dp_epsilon": "0.6"}, key="k1")
    with pytest.raises(PrivacyBudgetExhausted):
        an.report("cohorts", {"from": d(0), "to": d(1), "dp_epsilon": "0.01"}, key="k1")
    assert an.privacy("k1")["spent"] == pytest.approx(1.0) and an.privacy("k1")["requests"] == 2
    assert an.privacy("k2")["spent"] == 0  # per key
    an.report("funnel", {"from": d(0), "to": d(1)}, key="k1")  # without dp_epsilon: no budget needed


def test_dp_answers_are_noisy_but_centred(store: EventStore) -> None:
    """The served counts of a cell (3 views on D) over 300 draws at epsilon 10: scale 8, mean near the truth."""
    an = make_analytics(store, budget=10_000.0)
    views = [table(an.report("funnel", {"from": d(0), "to": d(0), "dp_epsilon": "10"}), "funnel")[0]["view"]
             for _ in range(300)]
    b = 8.0  # E[max(3 + Laplace(b), 0)] = 3 + b/2 * exp(-3/b): the clamp at 0 lifts the mean
    assert len(set(views)) > 10 and abs(np.mean(views) - (3 + b / 2 * np.exp(-3 / b))) < 2.0


def test_deleted_shopper_leaves_the_copy(store: EventStore) -> None:
    an = make_analytics(store)
    assert table(an.report("funnel", {"from": d(0), "to": d(0)}), "funnel")[0]["purchase"] == 2
    store.delete_user("u4")
    assert table(an.report("funnel", {"from": d(0), "to": d(0)}), "funnel")[0]["purchase"] == 1
    assert an.mirror.con.execute("SELECT count(*) FROM events WHERE user_id = 'u4'").fetchone() == (0,)
    store.add_many([Event("late", "u5", EventType.PURCHASE, ts(0, 50000), item_id=A)])  # incremental copy
    assert table(an.report("funnel", {"from": d(0), "to": d(0)}), "funnel")[0]["purchase"] == 2


def test_warm_up_copies_in_the_background_and_reports_wait_or_say_warming_up(store: EventStore) -> None:
    an = Analytics(lambda: store, lambda: ("v1", lambda: CATALOG), daily_budget=10.0, warm_wait_s=0.2)
    with an.mirror.lock:  # the copy cannot progress while this holds the copy's lock
        thread = an.warm()
        assert an.warm() is thread and thread.is_alive()
        with pytest.raises(WarmingUp) as e:
            an.report("funnel", {"from": d(0), "to": d(1), "dp_epsilon": "1"})
        assert e.value.progress == {"rows_copied": 0}
    assert an.privacy()["spent"] == 0  # refused before any budget was spent
    thread.join(30)
    assert not thread.is_alive() and an.mirror.last_seq == store.count()  # warm: everything copied
    assert table(an.report("funnel", {"from": d(0), "to": d(1)}), "funnel")[0]["view"] == 3


@pytest.mark.parametrize(("report", "args", "field"), [
    ("funnel", {"from": "2026-13-01"}, "from"), ("funnel", {"to": "yesterday"}, "to"),
    ("funnel", {"from": "2026-11-10", "to": "2026-11-01"}, "from"), ("funnel", {"by": "week"}, "by"),
    ("funnel", {"surface": "email"}, "surface"), ("funnel", {"dp_epsilon": "0"}, "dp_epsilon"),
    ("funnel", {"dp_epsilon": "nan"}, "dp_epsilon"), ("funnel", {"dp_epsilon": "x"}, "dp_epsilon"),
    ("cohorts", {"category": "Lab"}, "category"), ("cohorts", {"weeks": "0"}, "weeks"),
    ("search", {"limit": "5000"}, "limit"), ("rfm", {"by": "day"}, "by"), ("nope", {}, "report"),
    ("funnel", {"from": "2020-01-01", "to": "2026-01-01"}, "from"), ("movers", {"from": "0001-01-01"}, "from"),
    ("funnel", {"to": "9999-12-31"}, "to"),
])
def test_bad_parameters_name_the_field(report: str, args: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidQuery) as e:
        parse_params(report, args)
    assert e.value.field == field


@pytest.fixture
def server(config: EngineConfig, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    store = open_event_store(config.events_url)
    seed(store)
    store.close()
    monkeypatch.setenv("VITRINE_DP_DAILY_BUDGET", "1.0")
    # The fixture's lists are dated from 2026-11-02: past the default 30-day retention from 2026-12-02 on, so
    # the server's impression writer would prune them at its first pass (a race with the requests below).
    monkeypatch.setenv("VITRINE_IMPRESSION_RETENTION_DAYS", "36500")
    proc, base = start_server(config)
    yield base
    stop_server(proc)


def test_http_reports_csv_400_and_privacy_budget(server: str) -> None:
    base = f"{server}/v1/admin/analytics"
    assert requests.get(f"{base}/funnel", timeout=30).status_code == 401  # the admin key is needed
    r = requests.get(f"{base}/funnel", params={"from": d(0), "to": d(1)}, headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["tables"]["funnel"]["rows"][0][:5] == [d(0), 3, 1, 1, 2] and r.json()["dp"] is None
    r = requests.get(f"{base}/search", params={"from": d(0), "to": d(1), "format": "csv", "table": "zero_result"},
                     headers=ADMIN, timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert list(csv.reader(io.StringIO(r.text))) == [["query", "searches"], ["gloves xl", "1"]]
    for params, field in (({"from": "2026-02-30"}, "from"), ({"by": "x"}, "by"), ({"format": "xml"}, "format"),
                          ({"format": "csv", "table": "nope"}, "table"), ({"dp_epsilon": "-1"}, "dp_epsilon")):
        r = requests.get(f"{base}/funnel", params=params, headers=ADMIN, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, (params, r.text)
    assert requests.get(f"{base}/nope", headers=ADMIN, timeout=30).status_code == 404
    for i in range(2):  # two workers, one budget (in the store)
        r = requests.get(f"{base}/cohorts", params={"from": d(0), "to": d(13), "dp_epsilon": "0.5"},
                         headers=ADMIN, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["dp"]["budget"]["spent"] == pytest.approx(0.5 * (i + 1))
    r = requests.get(f"{base}/rfm", params={"dp_epsilon": "0.1"}, headers=ADMIN, timeout=60)
    assert r.status_code == 429 and r.json()["error"]["code"] == "privacy_budget_exhausted"
    p = requests.get(f"{base}/privacy", headers=ADMIN, timeout=30).json()
    assert p["spent"] == pytest.approx(1.0) and p["remaining"] == 0 and p["requests"] == 2
