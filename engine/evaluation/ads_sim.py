"""`vitrine simulate ads`: a day of demo traffic against campaigns with different budgets and bids (issue 11,
part 5): pacing error, overspend, the relevance of sponsored against organic results, revenue by floor.

Protocol (see README, "Sponsored products"):

- **Catalog and shoppers**: the demo catalog (the Scientific index of ``vitrine eval recommend``) and its
  real shoppers (``data/demo/events.csv.gz`` are their purchases, stored in a fresh event store).
- **A day of traffic**: ``requests`` (60,000) requests, each from a demo shopper drawn at random, at a time
  of day drawn from an hourly traffic curve (``TRAFFIC``: quiet at night, peaks at lunch and in the
  evening). A request is an item page view of one of the shopper's items (the similar strip's ad slot,
  60%) or a search (40%) for the leaf category of one of their items, or the first two words of its title
  (half each). The organic results come
  from the real engine (search, similar items), computed once and shared by every run below.
- **Campaigns**: ``campaigns`` (12), each advertising ``items`` (3) items of one of the leaf categories the traffic
  visits most, targeting that category and broad keywords from the items' titles, with a bid from 10 to
  120 cents. Their *demand* is measured first (a run with unlimited budgets); then each gets a daily budget
  of its demand times a factor drawn from ``BUDGET_FACTORS`` (0.3 to 3; seeded), and at least 25 bids, so
  that some campaigns are constrained and some are not.
- **Clicks**: an ad shown at position p is clicked with probability ``(1 / p) x attractiveness``, the
  attractiveness ``0.05 + 0.6 x max(0, relevance - 0.3)`` (relevance: the ad's vector score against its
  context); a click is sent to the real charging path (signed token, one write transaction, dedupe). The
  uniform draw is a hash of (seed, request, item): the same in every run of the day (common random numbers),
  so runs differ by what they show, not by the clicks' luck.
- **Runs**: the real ad server (:class:`engine.ads.serve.AdServer`: targeting, floor, pacing, GSP; the
  configured settings: slots, reserve, ``ads_match_organic``, ``ads_relevance_power``,
  ``ads_pacing_finish``, ``ads_pacing_tolerance``) with the simulated clock. *Demand* is a campaign's spend in a run with unlimited
  budgets; a campaign whose demand exceeds its budget is *constrained*, unless its pacer never held it back
  and it still ended under budget (every rival at full strength set the demand's prices; on the budgeted day
  rivals run out and prices fall, so such a campaign spent all its demand of that day), and its **pacing
  error** is ``|spend - budget| / budget``
  at the day's end in the run with the real budgets (target: at most 5% for every one). **Overspend** is
  the sum of ``max(0, spend - budget)`` (target: 0). **Relevance**: the mean vector score of the
  sponsored results against that of the organic results at the same positions of the same pages. The
  same day is run with relevance floors from 0.2 to 0.6: revenue (the spend of every campaign) against
  floor and mean relevance, plotted.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.ads.serve import AdServer, AdSettings
from engine.config import EngineConfig
from engine.errors import InvalidQuery

ROOT = Path(__file__).resolve().parents[2]
SECTION = "simulate-ads"
TRAFFIC = (1, 1, 1, 1, 1, 2, 3, 5, 7, 8, 9, 11, 12, 10, 8, 8, 9, 10, 12, 13, 12, 9, 5, 2)  # hourly weights
FLOORS = (0.2, 0.3, 0.35, 0.4, 0.5, 0.6)
ATTRACT_BASE, ATTRACT_SLOPE = 0.05, 0.6  # an ad's click probability at position 1: base + slope x (relevance - 0.3)
BUDGET_FACTORS = (0.3, 0.5, 0.7, 1.5, 3.0)  # a campaign's budget against its measured demand
MIN_BUDGET_BIDS = 25
TARGET_PACING = 0.05


@dataclass(frozen=True)
class AdSimSettings:
    requests: int = 60000
    campaigns: int = 12
    seed: int = 0
    floor: float = 0.35
    items: int = 3  # advertised items per campaign

    def __post_init__(self) -> None:
        if not 100 <= self.requests <= 1_000_000:
            raise InvalidQuery("requests", f"must be in 100..1000000, got {self.requests}")
        if not 1 <= self.campaigns <= 1000:
            raise InvalidQuery("campaigns", f"must be in 1..1000, got {self.campaigns}")
        if not 1 <= self.items <= 100:
            raise InvalidQuery("items", f"must be in 1..100, got {self.items}")


@dataclass
class Request:
    t: float  # seconds after midnight
    kind: str  # "search" or "similar"
    user: str
    query: str | None
    item: str | None
    organic: list[str]
    organic_scores: list[float]  # vector scores of the organic results, by position
    context_vec: np.ndarray
    category: str | None


@dataclass
class Run:
    floor: float
    unlimited: bool
    spend: dict[str, int] = field(default_factory=dict)
    clicks: int = 0
    shown: int = 0
    ad_relevance: list[float] = field(default_factory=list)
    organic_relevance: list[float] = field(default_factory=list)
    # per placement, (ad relevance, organic relevance at its position) for the ads within the organic list
    pairs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    throttled: dict[str, bool] = field(default_factory=dict)  # campaign -> its pacer skipped auctions

    def by_placement(self) -> dict[str, tuple[int, float, float]]:
        """Placement -> (ads compared, their mean relevance, the organic results' at their positions)."""
        return {k: (len(v), float(np.mean([a for a, _ in v])), float(np.mean([o for _, o in v])))
                for k, v in sorted(self.pairs.items()) if v}

    @property
    def revenue(self) -> int:
        return sum(self.spend.values())


@dataclass
class AdSimReport:
    settings: AdSimSettings
    campaigns: list[dict[str, Any]]
    runs: list[Run]
    started_at: str
    seconds: float
    slots: dict[str, Any] = field(default_factory=dict)  # the ad settings of the run

    def main(self) -> Run:
        return next(r for r in self.runs if not r.unlimited and r.floor == self.settings.floor)

    def demand(self) -> Run:
        return next(r for r in self.runs if r.unlimited)

    def pacing(self) -> list[dict[str, Any]]:
        main, demand = self.main(), self.demand()
        out = []
        for c in self.campaigns:
            spend, wanted = main.spend.get(c["id"], 0), demand.spend.get(c["id"], 0)
            throttled = main.throttled.get(c["id"], False)
            # demand measured with every rival at full strength; a campaign that entered every auction it
            # matched and still ended under budget had less demand than budget at that day's prices
            took_all = not throttled and spend < c["daily_budget"]
            out.append({"id": c["id"], "bid": c["bid"], "budget": c["daily_budget"], "demand": wanted, "spend": spend,
                        "throttled": throttled, "took_all": took_all,
                        "constrained": wanted > c["daily_budget"] and not took_all,
                        "pacing_error": abs(spend - c["daily_budget"]) / c["daily_budget"],
                        "overspend": max(0, spend - c["daily_budget"])})
        return out

    def target(self) -> dict[str, Any]:
        rows = self.pacing()
        constrained = [r for r in rows if r["constrained"]]
        worst = max((r["pacing_error"] for r in constrained), default=0.0)
        main = self.main()
        ad, org = float(np.mean(main.ad_relevance or [0])), float(np.mean(main.organic_relevance or [0]))
        return {"constrained": len(constrained), "worst_pacing_error": worst,
                "pacing_met": bool(constrained) and worst <= TARGET_PACING,
                "overspend": sum(r["overspend"] for r in rows), "ad_relevance": ad, "organic_relevance": org,
                "relevance_met": ad >= org}

    def to_dict(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings), "ad_settings": self.slots, "started_at": self.started_at,
                "seconds": self.seconds,
                "campaigns": self.campaigns, "pacing": self.pacing(), "target": self.target(),
                "runs": [{"floor": r.floor, "unlimited": r.unlimited, "revenue": r.revenue, "clicks": r.clicks,
                          "shown": r.shown, "ad_relevance": float(np.mean(r.ad_relevance or [0])),
                          "organic_relevance": float(np.mean(r.organic_relevance or [0])),
                          "by_placement": {k: {"ads": n, "ad_relevance": a, "organic_relevance": o}
                                           for k, (n, a, o) in r.by_placement().items()}} for r in self.runs]}

    def lines(self) -> list[str]:
        t = self.target()
        out = [f"vitrine simulate ads: {self.settings.requests} requests over a day, {len(self.campaigns)} campaigns, "
               f"{self.seconds:.0f} s", "", "| campaign | bid | budget | demand | spend | pacing error |",
               "|---|---|---|---|---|---|"]
        for row in self.pacing():
            note = ("" if row["constrained"] else " (entered every auction it matched: demand under budget at the "
                    "day's prices)" if row["took_all"] and row["demand"] > row["budget"] else " (demand under budget)")
            out.append(f"| {row['id']} | {row['bid']} | {row['budget']} | {row['demand']} | {row['spend']} | "
                       f"{row['pacing_error']:.1%}{note} |")
        out += ["", "| relevance floor | revenue (cents) | sponsored shown | clicks | mean sponsored relevance | "
                    "organic at the same positions |", "|---|---|---|---|---|---|"]
        for r in self.runs:
            if not r.unlimited:
                out.append(f"| {r.floor:g} | {r.revenue} | {r.shown} | {r.clicks} | "
                           f"{np.mean(r.ad_relevance or [0]):.3f} | {np.mean(r.organic_relevance or [0]):.3f} |")
        out += ["", f"constrained campaigns: {t['constrained']}; worst pacing error {t['worst_pacing_error']:.1%} "
                    f"(target <= {TARGET_PACING:.0%}: {'met' if t['pacing_met'] else 'NOT met'}); overspend "
                    f"{t['overspend']} (target 0: {'met' if t['overspend'] == 0 else 'NOT met'}); sponsored "
                    f"relevance {t['ad_relevance']:.3f} vs organic {t['organic_relevance']:.3f} "
                    f"({'at least as relevant' if t['relevance_met'] else 'LESS relevant'})"]
        for kind, (n, ad, org) in self.main().by_placement().items():
            out.append(f"- {kind}: {n} sponsored results within the organic list, relevance {ad:.3f} against "
                       f"{org:.3f} for the organic results at their positions")
        return out


def _traffic(config: EngineConfig, s: AdSimSettings, work: Path, data_dir: Path, encoder: Any
             ) -> tuple[Any, list[Request], list[dict[str, Any]]]:
    """The engine on the demo catalog with the demo shoppers stored, the day's requests and the campaigns."""
    import pandas as pd

    from engine.evaluation.recommend_eval import load_scientific
    from engine.events import open_event_store
    from engine.events.importer import import_events
    from engine.service import Engine

    load_scientific(config, data_dir, encoder=encoder)  # builds the demo catalog's index once
    eval_dir = (config.index_dir / "eval" / "scientific").resolve()
    cfg = config.replace(index_dir=eval_dir, models_dir=config.models_path.resolve(), ranker_dir=work / "rankers",
                         events_url=f"sqlite:///{work / 'events.db'}", strategy_policy="blend", explore_search="0",
                         explore_similar="0", reload_check_seconds=0.0)
    store = open_event_store(cfg.events_url)
    try:
        import_events(store, ROOT / "data" / "demo" / "events.csv.gz", batch_size=5000)
    finally:
        store.close()
    engine = Engine(cfg, encoder=encoder)
    snap = engine.snapshot()
    rng = np.random.default_rng(s.seed)
    events = pd.read_csv(ROOT / "data" / "demo" / "events.csv.gz")
    by_user = {u: g.tolist() for u, g in events.groupby("user_id")["item_id"]}
    users = sorted(by_user)
    weights = np.array(TRAFFIC, np.float64) / sum(TRAFFIC)
    hours = rng.choice(24, size=s.requests, p=weights)
    times = np.sort(hours * 3600.0 + rng.random(s.requests) * 3600.0)
    vectors = np.asarray(snap.vectors)
    requests: list[Request] = []
    cache: dict[tuple[str, str], tuple[list[str], list[float], np.ndarray, str | None]] = {}
    for t in times.tolist():
        user = users[int(rng.integers(len(users)))]
        item = by_user[user][int(rng.integers(len(by_user[user])))]
        if item not in snap.catalog:
            continue
        p = snap.catalog[snap.catalog.row(item)]
        if rng.random() < 0.4:  # a search: the item's leaf category, or two words of its title
            leaf = p.category_path.split(" > ")[-1]
            query = leaf if rng.random() < 0.5 and leaf else " ".join(p.title.split()[:2])
            key = ("search", query)
            if key not in cache:
                res = engine.search(query, k=10)
                cache[key] = ([h.id for h in res.hits], [float(h.vector or 0.0) for h in res.hits],
                              np.asarray(engine.embed_query(query), np.float32),
                              res.hits[0].category if res.hits else None)
            ids, scores, vec, cat = cache[key]
            requests.append(Request(t, "search", user, query, None, ids, scores, vec, cat))
        else:
            key = ("similar", item)
            if key not in cache:
                near = engine.similar(item, k=6)
                cache[key] = ([item, *(h.id for h in near.hits)], [1.0, *(float(h.score) for h in near.hits)],
                              np.asarray(vectors[snap.catalog.row(item)], np.float32), p.category_path)
            ids, scores, vec, cat = cache[key]
            requests.append(Request(t, "similar", user, None, item, ids, scores, vec, cat))
    # campaigns: 3 items of one leaf category each, in the categories the traffic visits most
    visits: dict[str, int] = {}
    for r in requests:
        if r.category:
            visits[r.category] = visits.get(r.category, 0) + 1
    top = sorted(visits, key=lambda c: -visits[c])[: max(s.campaigns, 1)]
    by_cat: dict[str, list[str]] = {}
    for row in range(len(snap.catalog)):
        prod = snap.catalog[row]
        if bool(snap.in_stock[row]):
            by_cat.setdefault(prod.category_path, []).append(prod.id)
    campaigns = []
    for i in range(s.campaigns):
        cat = top[i % len(top)]
        pool = by_cat.get(cat, [])
        if len(pool) < 3:
            continue
        n_items = min(len(pool), s.items)
        items = [str(x) for x in rng.choice(pool, size=n_items, replace=False)]
        words = [w for w in snap.catalog[snap.catalog.row(items[0])].title.lower().split() if len(w) > 3][:2]
        bid = int(rng.integers(10, 121))
        budget = bid * int(rng.choice([2, 5, 10, 25, 60, 150, 400]))
        campaigns.append({"id": f"sim{i:02d}", "advertiser": f"adv{i % 6}", "items": items, "bid": bid,
                          "daily_budget": budget, "start": 0,
                          "targeting": {"categories": [cat],
                                        "keywords": [{"text": w, "match": "broad"} for w in words]}})
    return engine, requests, campaigns


def _click_draw(seed: int, request: int, item: str) -> float:
    """The shopper's uniform draw for clicking ``item`` in request number ``request``: the same in every run of
    the day (common random numbers), so that two runs differ by what they show, not by the clicks' luck."""
    digest = hashlib.blake2b(f"{seed}:{request}:{item}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _run(engine: Any, requests: list[Request], campaigns: list[dict[str, Any]], *, floor: float, unlimited: bool,
         seed: int, day0: float) -> Run:
    """One day with the real ad server and charging, on a fresh campaigns table (budgets x 10^6 if unlimited)."""
    from engine.ads.campaigns import Campaigns, parse_campaign

    snap = engine.snapshot()
    store = engine.shoppers.events
    store.run_write(lambda conn: [conn.execute(f"DELETE FROM {t}") for t in ("ads_campaigns", "ads_spend", "ads_clicks")])
    ads = Campaigns(lambda: store)
    for c in campaigns:
        body = dict(c, daily_budget=c["daily_budget"] * (10**6 if unlimited else 1))
        ads.create(parse_campaign(body, known_item=lambda i: i in snap.catalog, now=day0))
    cfg = engine.config
    server = AdServer(ads, lambda: store, AdSettings(
        search_slots=cfg.ad_slots, reserve=cfg.ads_reserve, relevance_floor=floor, click_window_s=600.0,
        refresh_s=0.0, similar_slots=cfg.slots("ads_similar_slots"), recommend_slots=(),
        match_organic=cfg.ads_match_organic, traffic_curve=tuple(float(w) for w in TRAFFIC),
        pacing_finish=cfg.ads_pacing_finish, relevance_power=cfg.ads_relevance_power,
        pacing_tolerance=cfg.ads_pacing_tolerance))
    ids = snap.catalog.id_map
    vectors = np.asarray(snap.vectors)
    rng = np.random.default_rng([seed, int(floor * 1000), int(unlimited)])
    run = Run(floor, unlimited)
    common = dict(item_ids=lambda xs: [ids.get(i, -1) for i in xs], item_vectors=vectors, in_stock=snap.in_stock,
                  ctr_of=lambda xs: np.full(len(xs), 0.05), product=lambda r: snap.catalog[r],
                  same_product=lambda r: snap.title_keys[r])  # as the engine's placements
    for n, r in enumerate(requests):
        now = day0 + r.t
        rid = f"{n:032x}"
        organic_scores = r.organic_scores[1:] if r.kind == "similar" else r.organic_scores  # by display position
        if r.kind == "search":
            ads_ = server.search(query=r.query or "", category=r.category, qvec=r.context_vec, organic=r.organic,
                                 user=r.user, request_id=rid, rng=rng, now=now, organic_scores=organic_scores,
                                 **common)
        else:
            ads_ = server.context("similar", category=r.category, audience=[], near=r.context_vec[None, :],
                                  context_vec=r.context_vec, organic=r.organic, user=r.user, request_id=rid, rng=rng,
                                  now=now, organic_scores=organic_scores, **common)
        for a in ads_:
            run.shown += 1
            run.ad_relevance.append(a.relevance)
            if a.position - 1 < len(organic_scores):  # the organic result at the same position
                run.organic_relevance.append(organic_scores[a.position - 1])
                run.pairs.setdefault(r.kind, []).append((a.relevance, organic_scores[a.position - 1]))
            attractiveness = ATTRACT_BASE + ATTRACT_SLOPE * max(0.0, a.relevance - 0.3)
            if _click_draw(seed, n, a.id) < (1.0 / a.position) * attractiveness:
                run.clicks += 1
                server.click(a.ad, now=now + 5.0)
    day = dt.datetime.fromtimestamp(day0, dt.timezone.utc).strftime("%Y-%m-%d")
    run.spend = {c["id"]: ads.spend(c["id"], day)[0] for c in campaigns}
    run.throttled = {c["id"]: server.throttled(c["id"], day) for c in campaigns}
    return run


def run_ads_simulation(config: EngineConfig, s: AdSimSettings, *, out_dir: Path, data_dir: Path | None = None,
                       encoder: Any = None) -> AdSimReport:
    t0 = time.time()
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    work = Path(out_dir).resolve() / "ads-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    engine, requests, campaigns = _traffic(config, s, work, Path(data_dir or config.data_dir), encoder)
    day0 = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    runs = [_run(engine, requests, campaigns, floor=s.floor, unlimited=True, seed=s.seed, day0=day0)]
    # budgets against the measured demand: some campaigns constrained (factor < 1), some not; at least
    # MIN_BUDGET_BIDS clicks' worth, so that one click is a small part of a budget
    rng = np.random.default_rng([s.seed, 7])
    for c in campaigns:
        demand = runs[0].spend.get(c["id"], 0)
        c["daily_budget"] = max(MIN_BUDGET_BIDS * c["bid"], int(demand * float(rng.choice(BUDGET_FACTORS))))
    for floor in sorted(set(FLOORS) | {s.floor}):
        runs.append(_run(engine, requests, campaigns, floor=floor, unlimited=False, seed=s.seed, day0=day0))
    shutil.rmtree(work, ignore_errors=True)
    cfg = engine.config
    return AdSimReport(s, campaigns, runs, started, time.time() - t0,
                       {"search": cfg.ads_search_slots, "similar": cfg.ads_similar_slots, "reserve": cfg.ads_reserve,
                        "match_organic": cfg.ads_match_organic,
                        "relevance_power": cfg.ads_relevance_power, "pacing_finish": cfg.ads_pacing_finish,
                        "pacing_tolerance": cfg.ads_pacing_tolerance,
                        "items": s.items})


def write_outputs(report: AdSimReport, out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "simulate_ads.json"
    js.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    png = out_dir / "simulate_ads.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in report.runs if not r.unlimited]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot([r.floor for r in runs], [r.revenue / 100 for r in runs], marker="o", color="#4c72b0", label="revenue")
    ax.set_xlabel("relevance floor (vector score)")
    ax.set_ylabel("revenue per day")
    ax2 = ax.twinx()
    ax2.plot([r.floor for r in runs], [float(np.mean(r.ad_relevance or [0])) for r in runs], marker="s",
             color="#dd8452", label="mean sponsored relevance")
    ax2.set_ylabel("mean sponsored relevance")
    ax.set_title(f"vitrine simulate ads: {report.settings.requests} requests, {len(report.campaigns)} campaigns",
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png, js


def record_results(report: AdSimReport, png: Path, command: str, *, results: Path = ROOT / "bench" / "RESULTS.md",
                   image: Path | None = ROOT / "bench" / "simulate_ads.png") -> None:
    from engine.evaluation.simulate import replace_section, run_lines

    if image is not None:
        shutil.copyfile(png, image)
    body = "\n".join([
        "### Sponsored products on a simulated day (`vitrine simulate ads`)", "",
        *run_lines(command, report.started_at, report.seconds),
        f"- settings: search slots {report.slots['search']}, similar-strip slots {report.slots['similar']}, reserve "
        f"{report.slots['reserve']}, ads_match_organic {report.slots['match_organic']}, ads_relevance_power "
        f"{report.slots.get('relevance_power')}, ads_pacing_finish {report.slots.get('pacing_finish')}, "
        f"ads_pacing_tolerance {report.slots.get('pacing_tolerance')}, {report.slots.get('items')} items per "
        "campaign; clicks drawn as common random numbers", "",
        *report.lines()[2:], "",
        f"![Revenue against the relevance floor]({os.path.relpath(image, results.parent)})" if image else "",
    ])
    replace_section(results, SECTION, body)
