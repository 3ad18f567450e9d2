"""`vitrine simulate`: the learning loop closed on simulated shoppers, and measured by CTR per round.

Protocol (issue 9, "the loop, closed and measured"):

- **Data**: Amazon Scientific (``load_scientific``: the demo catalog's index under
  ``<index_dir>/eval/scientific``, built there once). Every user's items but the last ``holdout`` (3)
  are their history; the last ``holdout`` items, less any already in the history, are their *true next
  items*. No held-out item of any user is ever stored.
- **Shoppers**: per seed and round, a new cohort of ``shoppers`` (1,000) users, drawn without replacement
  (``numpy.random.default_rng(seed)``; 5,000 distinct users over 5 rounds) among those with at least one
  true next item, the same cohort in both arms. A round thus measures the model of that round on shoppers
  nobody has served yet. With ``returning``, the same ``shoppers`` come back every round instead; then
  their true next items run out as they buy them (a purchased item is never recommended again), so an
  arm that served worse in one round leaves more to click in the next, and the two arms' CTRs of a later
  round no longer compare their rankers alone.
- **Two arms per seed**, each with its own real server (``vitrine serve``: gunicorn, 1 worker), its own
  event store and its own ranker folder, so that neither sees the other's clicks: ``blend`` never
  retrains; ``learned`` runs ``train_from_logs`` (the MLP of :mod:`engine.learn.train`, from the arm's
  logged impressions and attributed outcomes, in this process with the server's configuration) after
  every round but the last and publishes the model, which the server hot-reloads: round 1 of both arms is
  served by the blend, round ``r + 1`` of ``learned`` by the model trained on rounds 1..r. With
  ``bootstrap`` "history", the learned arm also trains on next-item lists of the stored histories, made
  once by the serving path (:mod:`engine.evaluation.history`), and serves their sequence model. Before
  serving, every user's history (``type`` purchase, in order, over the day before the run) is loaded into
  a store with :func:`engine.events.importer.import_events` (the ``vitrine events import`` path); each
  arm starts from a copy of that store.
- **A round**: each shopper asks ``GET /v1/users/<id>/recommendations?k=10`` (read key) ``lists_per_round``
  (1) times, examines the list and clicks by the click model; each click is sent at once through
  ``POST /v1/events`` (ingest key) with the list's ``request_id`` and the item's 1-based ``position``,
  and a click on a true next item becomes a purchase with probability ``buy``. The shoppers'
  requests run ``concurrency`` (4) at a time.
- **CTR** of a round = clicks / shown items; the **expected CTR** = the click model's expected clicks on
  the lists served / shown items (the same quantity without the noise of the draws). The attributed
  clicks in the arm's store (:func:`engine.learn.attribution.outcomes`) are counted too; a round where
  they differ from the clicks sent stops the run.

Click model (position-based; Richardson et al. 2007, Craswell et al. 2008), with the defaults of
:class:`ClickModel`:

- the shopper examines position ``p`` (1-based) with probability ``eta(p) = (1 / p) ** bias``, ``bias``
  1.0: the first slot always, the 10th one time in ten;
- clicks an examined item with probability ``rel_click`` 0.9 if it is one of their true next items, else
  ``noise_click`` 0.02;
- buys a clicked true next item with probability ``buy`` 0.5 (a ``purchase`` event with the same
  ``request_id`` and position); the engine never recommends a purchased item again.

A true next item that was clicked and not bought stays relevant, so a list may win it again; each round's
``repeat_clicks`` counts such clicks on true items the shopper had clicked before. Examination, click and
purchase draws come from a generator seeded by (seed, shopper, round, list), the same in both arms
(common random numbers): the arms differ only by the lists they serve. Requests run concurrently and the
live models (trending, co-occurrence) read every stored event, so a rerun may differ slightly.
"""
from __future__ import annotations

import csv
import datetime as dt
import http.client
import json
import logging
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import numpy as np

from engine.config import EngineConfig
from engine.errors import InvalidQuery, VitrineError
from engine.events import EventStore

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
ARMS = ("blend", "learned")
SECTION = "simulate"
TARGET_LIFT = 0.10  # the learned ranker's final-round CTR must be at least 10% above the blend's
# After each publish, this shopper (one stored purchase, never any outcome) asks for lists until the new
# model serves them, so that the next round starts on it.
WARMUP_USER = "sim-warmup"


# -- the click model -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Clicks:
    """One list's draws, each ``(k,)`` bool by position: examined, clicked, bought."""

    examined: np.ndarray
    clicked: np.ndarray
    bought: np.ndarray


@dataclass(frozen=True)
class ClickModel:
    """Position-based click model (see the module docstring): ``P(click at p) = eta(p) * attractiveness``
    with ``eta(p) = (1 / p) ** bias`` and attractiveness ``rel_click`` for a true next item, ``noise_click``
    otherwise; a clicked true item is bought with probability ``buy``."""

    bias: float = 1.0
    rel_click: float = 0.9
    noise_click: float = 0.02
    buy: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.bias <= 10.0:
            raise InvalidQuery("bias", f"must be in 0..10, got {self.bias}")
        for name in ("rel_click", "noise_click", "buy"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidQuery(name, f"must be in 0..1, got {value}")

    def examination(self, k: int) -> np.ndarray:
        """``eta(p)`` for positions 1..k, ``(k,)`` float64."""
        return (1.0 / np.arange(1, k + 1, dtype=np.float64)) ** self.bias

    def click_probability(self, relevant: np.ndarray) -> np.ndarray:
        """``P(click)`` per position of a list whose items are (``relevant[i]``) or are not true next items."""
        relevant = np.asarray(relevant, bool)
        return self.examination(len(relevant)) * np.where(relevant, self.rel_click, self.noise_click)

    def draw(self, relevant: np.ndarray, rng: np.random.Generator) -> Clicks:
        """One shopper's reaction to one list (three uniforms per position, always drawn in this order)."""
        relevant = np.asarray(relevant, bool)
        k = len(relevant)
        u_exam, u_click, u_buy = rng.random(k), rng.random(k), rng.random(k)
        examined = u_exam < self.examination(k)
        clicked = examined & (u_click < np.where(relevant, self.rel_click, self.noise_click))
        bought = clicked & relevant & (u_buy < self.buy)
        return Clicks(examined, clicked, bought)


BOOTSTRAPS = ("none", "history")


# -- settings and results --------------------------------------------------------------------------

@dataclass(frozen=True)
class SimSettings:
    """What to simulate; the defaults are those of ``vitrine simulate`` (about 10 minutes on 2 cores)."""

    rounds: int = 5
    shoppers: int = 1000
    seeds: tuple[int, ...] = (0, 1, 2)
    k: int = 10
    holdout: int = 3
    lists_per_round: int = 1
    returning: bool = False  # the same ``shoppers`` every round instead of a new cohort each round
    force_publish: bool = False  # publish each retrained model even when it orders the round worse (--force)
    # "history": the learned arm also trains on bootstrap lists of the stored histories (next-item targets,
    # engine.evaluation.history, made once from the base store by the serving path); "none": its logs alone
    bootstrap: str = "none"
    clicks: ClickModel = field(default_factory=ClickModel)
    concurrency: int = 4  # shoppers served at the same time
    server_threads: int = 4

    def __post_init__(self) -> None:
        checks = (("rounds", 1 <= self.rounds <= 100, "must be in 1..100"),
                  ("shoppers", 1 <= self.shoppers <= 100_000, "must be in 1..100000"),
                  ("seeds", 1 <= len(self.seeds) == len(set(self.seeds)), "give one or more distinct seeds"),
                  ("k", 1 <= self.k <= 100, "must be in 1..100"),
                  ("holdout", 1 <= self.holdout <= 3, "must be in 1..3 (Scientific users have 5+ items)"),
                  ("lists_per_round", 1 <= self.lists_per_round <= 20, "must be in 1..20"),
                  ("concurrency", 1 <= self.concurrency <= 64, "must be in 1..64"),
                  ("server_threads", 1 <= self.server_threads <= 64, "must be in 1..64"),
                  ("bootstrap", self.bootstrap in BOOTSTRAPS, f"must be one of {', '.join(BOOTSTRAPS)}"))
        for name, ok, message in checks:
            if not ok:
                raise InvalidQuery(name, f"{message}, got {getattr(self, name)!r}")


@dataclass
class RoundResult:
    """One round of one arm: what was shown and clicked, and the model trained after it (learned arm)."""

    round: int
    lists: int = 0
    shown: int = 0
    clicks: int = 0
    relevant_clicks: int = 0  # clicks on true next items
    repeat_clicks: int = 0  # ... on true next items the shopper had clicked in an earlier list
    purchases: int = 0
    # the click model's expected clicks on the lists served (sum of P(click) over the shown items): the
    # CTR's expectation without the draws' noise
    expected_clicks: float = 0.0
    attributed_clicks: int = 0  # clicks the store's attribution joined to this round's lists
    policies: dict[str, int] = field(default_factory=dict)  # the logged impressions' policy -> lists
    seconds: float = 0.0
    trained: dict[str, Any] | None = None  # the model published after this round (learned arm)

    @property
    def ctr(self) -> float:
        return self.clicks / self.shown if self.shown else 0.0

    @property
    def expected_ctr(self) -> float:
        return self.expected_clicks / self.shown if self.shown else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ctr": round(self.ctr, 6), "expected_ctr": round(self.expected_ctr, 6)}


@dataclass
class ArmRun:
    seed: int
    arm: str
    rounds: list[RoundResult] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "arm": self.arm, "seconds": round(self.seconds, 1),
                "rounds": [r.to_dict() for r in self.rounds]}


@dataclass
class SimReport:
    settings: SimSettings
    runs: list[ArmRun]
    started_at: str
    seconds: float
    data: dict[str, Any] = field(default_factory=dict)

    def ctr(self, arm: str, expected: bool = False) -> np.ndarray:
        """``(seeds, rounds)`` CTR of ``arm`` (``expected``: the click model's expectation on the lists
        served), seeds in the order of ``settings.seeds``."""
        by_seed = {r.seed: r for r in self.runs if r.arm == arm}
        return np.array([[x.expected_ctr if expected else x.ctr for x in by_seed[s].rounds]
                         for s in self.settings.seeds], np.float64)

    def summary(self) -> dict[str, list[dict[str, float]]]:
        """Per arm, per round: the CTR's mean, min, max and std (ddof 0) over the seeds."""
        out: dict[str, list[dict[str, float]]] = {}
        for arm in ARMS:
            c = self.ctr(arm)
            out[arm] = [{"round": i + 1, "mean": float(c[:, i].mean()), "min": float(c[:, i].min()),
                         "max": float(c[:, i].max()), "std": float(c[:, i].std())} for i in range(c.shape[1])]
        return out

    def target(self) -> dict[str, Any]:
        """The issue's target: the learned ranker's CTR rises over the rounds and ends >= 10% above the blend's."""
        blend, learned = self.ctr("blend").mean(axis=0), self.ctr("learned").mean(axis=0)
        lift = float(learned[-1] / blend[-1] - 1.0) if blend[-1] > 0 else float("nan")
        per_seed = (self.ctr("learned")[:, -1] / np.maximum(self.ctr("blend")[:, -1], 1e-12) - 1.0).tolist()
        rises = bool(len(learned) > 1 and learned[-1] > learned[0])
        eb, el = self.ctr("blend", True).mean(axis=0), self.ctr("learned", True).mean(axis=0)
        expected = [round(float(b and m / b - 1.0), 4) for b, m in zip(eb, el)]
        return {"learned_rises": rises, "rises_every_round": bool(np.all(np.diff(learned) > 0)),
                "final_lift": lift, "final_lift_per_seed": [round(x, 4) for x in per_seed],
                "expected_lift_by_round": expected,
                "target_lift": TARGET_LIFT, "met": bool(rises and lift >= TARGET_LIFT)}

    def to_dict(self) -> dict[str, Any]:
        s = self.settings
        return {"settings": {**asdict(s), "seeds": list(s.seeds)}, "started_at": self.started_at,
                "seconds": round(self.seconds, 1), "data": self.data, "summary": self.summary(),
                "target": self.target(), "runs": [r.to_dict() for r in self.runs]}

    def table(self) -> str:
        """Markdown: round, each arm's CTR mean [min-max] over the seeds (percent), the learned arm's lift."""
        summ = self.summary()
        lines = ["| round | blend CTR % mean [min-max] | learned CTR % mean [min-max] | learned vs blend |",
                 "|---|---|---|---|"]
        for b, m in zip(summ["blend"], summ["learned"]):
            lift = m["mean"] / b["mean"] - 1.0 if b["mean"] > 0 else float("nan")
            lines.append(f"| {b['round']} | {_pct(b)} | {_pct(m)} | {lift:+.1%} |")
        return "\n".join(lines)

    def lines(self) -> list[str]:
        s, t = self.settings, self.target()
        who = "" if s.returning else "a new cohort of "
        out = [f"vitrine simulate: {who}{s.shoppers} shoppers x {s.lists_per_round} list(s) of {s.k} per round, "
               f"{s.rounds} rounds, seeds {', '.join(map(str, s.seeds))} ({self.seconds / 60:.1f} min)",
               f"click model: eta(p) = (1/p)^{s.clicks.bias:g}, rel_click {s.clicks.rel_click:g}, "
               f"noise_click {s.clicks.noise_click:g}, buy {s.clicks.buy:g}; holdout {s.holdout}",
               "learned arm trains on: " + ("its logged lists and bootstrap lists of the stored histories"
                                            if s.bootstrap == "history" else "its logged lists"), ""]
        out += self.table().splitlines()
        out.append("")
        for run in self.runs:
            cells = "  ".join(f"{r.ctr:.4f}" for r in run.rounds)
            rep = sum(r.repeat_clicks for r in run.rounds) / max(1, sum(r.relevant_clicks for r in run.rounds))
            out.append(f"seed {run.seed} {run.arm:7s} CTR by round: {cells}  (repeat share of true-item clicks "
                       f"{rep:.0%})")
        out.append("")
        out.append("expected CTR under the click model (no click-draw noise), learned vs blend by round: "
                   + ", ".join(f"{x:+.1%}" for x in t["expected_lift_by_round"]))
        out.append(f"target (learned rises and ends >= {TARGET_LIFT:.0%} above the blend): "
                   f"{'met' if t['met'] else 'NOT met'}; rises: {t['learned_rises']}, final lift "
                   f"{t['final_lift']:+.1%} (per seed: {', '.join(f'{x:+.1%}' for x in t['final_lift_per_seed'])})")
        return out


def _pct(cell: dict[str, float]) -> str:
    return f"{100 * cell['mean']:.2f} [{100 * cell['min']:.2f}-{100 * cell['max']:.2f}]"


# -- the run -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shopper:
    index: int  # position in the sample (seeds the click draws)
    user_id: str
    targets: frozenset[str]


def run_simulation(config: EngineConfig, settings: SimSettings, *, out_dir: Path, data_dir: Path | None = None,
                   config_file: str | None = None, keep_stores: bool = False, encoder: Any = None,
                   show_progress: bool = True) -> SimReport:
    """Run every seed's two arms (see the module docstring) and return the CTR per round.

    ``out_dir`` receives ``runs/<seed>-<arm>/`` (each arm's event store, ranker folder and server log),
    deleted at the end unless ``keep_stores``. ``config_file`` is passed to the servers (``--config``);
    ``encoder`` embeds the catalog when the Scientific index is not built yet (see ``load_scientific``)."""
    from engine.evaluation.recommend_eval import load_scientific

    t0 = time.time()
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out_dir = Path(out_dir).resolve()
    work = out_dir / "runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = load_scientific(config, Path(data_dir or config.data_dir), encoder=encoder)
    eval_dir = (config.index_dir / "eval" / "scientific").resolve()
    users = [f"sci-{u}" for u in range(len(data.seqs))]
    hist = [[data.item_ids[r] for r in s[:-settings.holdout].tolist()] for s in data.seqs]
    targets = [frozenset(data.item_ids[r] for r in s[-settings.holdout:].tolist()) - set(h)
               for s, h in zip(data.seqs, hist)]
    eligible = [u for u in range(len(users)) if targets[u]]
    needed = settings.shoppers * (1 if settings.returning else settings.rounds)
    if needed > len(eligible):
        raise InvalidQuery("shoppers", f"at most {len(eligible)} Scientific users have a true next item, "
                                       f"{needed} are needed")
    base = work / "base.db"
    _import_histories(config, base, users, hist, set(data.item_ids), now=t0, work=work)
    _say(show_progress, f"stored the histories of {len(users)} users ({sum(map(len, hist))} events) in {base.name}")
    boot = None
    if settings.bootstrap == "history":
        from engine.evaluation.history import history_rows

        boot = history_rows(_arm_config(config, settings, eval_dir, work).replace(events_url=f"sqlite:///{base}"),
                            work=work)
        _say(show_progress, f"bootstrap lists of the stored histories, made by the serving path: "
                            f"{len(boot.train.with_positive().groups)} training lists with their target "
                            f"({boot.info['seconds']:.0f} s)")
    runs = []
    for seed in settings.seeds:
        pick = np.random.default_rng(seed).choice(len(eligible), size=needed, replace=False).tolist()
        sample = [Shopper(i, users[eligible[j]], targets[eligible[j]]) for i, j in enumerate(pick)]
        n = settings.shoppers
        cohorts = ([sample] * settings.rounds if settings.returning
                   else [sample[r * n:(r + 1) * n] for r in range(settings.rounds)])
        for arm in ARMS:
            runs.append(_run_arm(config, settings, seed, arm, cohorts, base, eval_dir, work / f"{seed}-{arm}",
                                 config_file, show_progress, boot))
    report = SimReport(settings, runs, started, time.time() - t0, {
        "dataset": "scientific", "users": len(users), "eligible_users": len(eligible),
        "history_events": sum(map(len, hist)), "items": data.n_items, "index_version": data.index_version})
    if not keep_stores:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _import_histories(config: EngineConfig, path: Path, users: Sequence[str], hist: Sequence[Sequence[str]],
                      items: set[str], *, now: float, work: Path) -> None:
    """Every user's history as purchases, in order (``seq_pos``), in the day before ``now``, through the
    bulk importer into a new store at ``path``."""
    from engine.events import open_event_store
    from engine.events.importer import import_events

    csv_path = work / "histories.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "type", "seq_pos"])
        for user, items_ in zip(users, hist):
            w.writerows([user, item, "purchase", pos] for pos, item in enumerate(items_))
        w.writerow([WARMUP_USER, min(items), "purchase", 0])
    store = open_event_store(f"sqlite:///{path}")
    try:
        report = import_events(store, csv_path, batch_size=5000, known_item=items.__contains__, now=now,
                               synthetic_base=now - 86400.0)
    finally:
        store.close()
    if report.rejected:
        raise VitrineError(f"{len(report.rejected)} history events were rejected, e.g. {report.rejected[0]}")
    csv_path.unlink()


def _copy_store(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite event store (the backup API, WAL included)."""
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def _arm_config(config: EngineConfig, settings: SimSettings, eval_dir: Path, folder: Path) -> EngineConfig:
    return config.replace(
        index_dir=eval_dir, models_dir=config.models_path.resolve(), ranker_dir=folder / "rankers",
        events_url=f"sqlite:///{folder / 'events.db'}", limits_path=folder / "limits.db",
        secret_key_file=str(folder / "secret_key"), secret_key=secrets.token_hex(16),
        ingest_key="sim-ingest-" + secrets.token_hex(8), read_key="sim-read-" + secrets.token_hex(8),
        admin_key=None, log_impressions=True, reload_check_seconds=0.1, impression_flush_seconds=0.2,
        max_k=max(config.max_k, settings.k), workers=1, threads=settings.server_threads, host="127.0.0.1",
        port=_free_port(), demo_shopper_menu=False,
    )


def _run_arm(config: EngineConfig, settings: SimSettings, seed: int, arm: str, cohorts: Sequence[Sequence[Shopper]],
             base: Path, eval_dir: Path, folder: Path, config_file: str | None, show_progress: bool,
             bootstrap: Any = None) -> ArmRun:
    from engine.events import open_event_store
    from engine.learn.train import train_from_logs

    t0 = time.time()
    folder.mkdir(parents=True)
    _copy_store(base, folder / "events.db")
    cfg = _arm_config(config, settings, eval_dir, folder)
    run = ArmRun(seed, arm)
    clicked_before: dict[str, set[str]] = {s.user_id: set() for c in cohorts for s in c}
    requested = 0
    with _Server(cfg, folder / "server.log", config_file) as server:
        store = open_event_store(cfg.events_url)
        try:
            for rnd, shoppers in enumerate(cohorts, start=1):
                res = RoundResult(rnd)
                t_start = time.time()
                lock = threading.Lock()

                def serve(s: Shopper, rnd: int = rnd, res: RoundResult = res) -> None:
                    with server.client() as http:
                        for j in range(settings.lists_per_round):
                            rng = np.random.default_rng([seed, s.index, rnd, j])
                            got = _shopper_list(http, cfg, s, settings, rng, clicked_before[s.user_id])
                            with lock:
                                for key, value in got.items():
                                    setattr(res, key, getattr(res, key) + value)

                with ThreadPoolExecutor(settings.concurrency) as pool:
                    list(pool.map(serve, shoppers))
                t_end = time.time()
                requested += len(shoppers) * settings.lists_per_round
                _wait_impressions(store, requested)
                res.seconds = round(t_end - t_start, 1)
                _count_logged(store, cfg, res, t_start, t_end, {s.user_id for s in shoppers})
                if res.attributed_clicks != res.clicks:
                    raise VitrineError(f"seed {seed} {arm} round {rnd}: {res.clicks} clicks were sent but the store "
                                       f"attributes {res.attributed_clicks} to the round's lists")
                if arm == "learned" and rnd < settings.rounds:
                    try:
                        manifest = train_from_logs(cfg, "recommend", seed=seed, force=settings.force_publish,
                                                   bootstrap=bootstrap)
                    except InvalidQuery as e:
                        res.trained = {"error": str(e)}
                        _say(show_progress, f"seed {seed} {arm}: round {rnd}: no model trained: {e}")
                    else:
                        if "version" in manifest:
                            res.trained = {"version": manifest["version"], **_training_info(manifest)}
                            requested += _await_model(server, store, cfg, manifest["version"], requested)
                        else:  # worse than the order it was trained on: kept out (train_from_logs' guard)
                            res.trained = {"not_published": manifest.get("not_published", ""),
                                           **_training_info(manifest)}
                run.rounds.append(res)
                _say(show_progress, f"seed {seed} {arm:7s} round {rnd}: CTR {res.ctr:.4f} ({res.clicks} clicks / "
                                    f"{res.shown} shown, {res.relevant_clicks} on true items, {res.repeat_clicks} "
                                    f"repeats; {res.seconds:.0f} s; policies {res.policies})"
                     + (f"; trained {res.trained.get('version', '')}" if res.trained else ""))
        finally:
            store.close()
    run.seconds = time.time() - t0
    return run


def _shopper_list(http: "_Client", cfg: EngineConfig, s: Shopper, settings: SimSettings, rng: np.random.Generator,
                  clicked_before: set[str]) -> dict[str, float]:
    """Serve one list to ``s``, draw their clicks and send them; returns the counts to add to the round."""
    body = http.call("GET", f"/v1/users/{quote(s.user_id, safe='')}/recommendations?k={settings.k}",
                     key=cfg.read_key)
    rid = body["request_id"]
    items = [r["id"] for r in body["recommendations"]]
    relevant = np.array([i in s.targets for i in items], bool)
    drawn = settings.clicks.draw(relevant, rng)
    events: list[dict[str, Any]] = []
    repeats = 0
    for pos in np.flatnonzero(drawn.clicked).tolist():
        item = items[pos]
        if relevant[pos]:
            repeats += item in clicked_before
            clicked_before.add(item)
        for kind in ("click", "purchase") if drawn.bought[pos] else ("click",):
            events.append({"event_id": f"sim-{rid}-{pos + 1}-{kind}", "user_id": s.user_id, "type": kind,
                           "item_id": item, "request_id": rid, "position": pos + 1})
    if events:
        answer = http.call("POST", "/v1/events", key=cfg.ingest_key, body={"events": events})
        if answer.get("rejected") or len(answer.get("accepted", ())) != len(events):
            raise VitrineError(f"events not stored: {answer}")
    return {"lists": 1, "shown": len(items), "clicks": int(drawn.clicked.sum()),
            "relevant_clicks": int((drawn.clicked & relevant).sum()), "repeat_clicks": repeats,
            "purchases": int(drawn.bought.sum()),
            "expected_clicks": float(settings.clicks.click_probability(relevant).sum())}


def _wait_impressions(store: EventStore, expected: int, timeout: float = 60.0) -> None:
    """Until the server's impression log has stored ``expected`` lists (it flushes in the background)."""
    deadline = time.time() + timeout
    while store.count_impressions() < expected:
        if time.time() > deadline:
            raise VitrineError(f"only {store.count_impressions()} of {expected} impressions were stored "
                               f"after {timeout:.0f} s")
        time.sleep(0.1)


def _count_logged(store: EventStore, cfg: EngineConfig, res: RoundResult, since: float, until: float,
                  users: set[str]) -> None:
    """The round as the store saw it: the served policies and the clicks attribution joined to the lists."""
    from engine.events import EventType
    from engine.learn.attribution import outcomes

    policies: Counter[str] = Counter()
    rids = set()
    for imp in store.impressions("recommend", since, until + 1.0):
        if imp.user_id in users:
            policies[imp.policy] += 1
            rids.add(imp.request_id)
    res.policies = dict(policies)
    got = outcomes(store, since=since, until=until + 1.0, window_s=cfg.attribution_window_minutes * 60.0)
    res.attributed_clicks = sum(EventType.CLICK in types for rid in rids for types in got.get(rid, {}).values())


def _training_info(manifest: dict[str, Any]) -> dict[str, Any]:
    t = manifest.get("training", {})
    return {"data": t.get("data"), "lists_used": t.get("lists_used"), "rows": t.get("rows"),
            "train_lists": t.get("train_lists"),
            "val_lists": t.get("val_lists"), "best_epoch": t.get("best_epoch"), "seconds": t.get("seconds"),
            "val_ndcg@10": manifest.get("metrics", {}).get("val_ndcg@10"),
            **({"logged": t["logged"]} if "logged" in t else {})}


def _await_model(server: "_Server", store: EventStore, cfg: EngineConfig, version: str, requested: int,
                 timeout: float = 30.0) -> int:
    """Ask for one list (as :data:`WARMUP_USER`) until its impression names ``version``;
    returns how many lists it asked for."""
    deadline = time.time() + timeout
    asked = 0
    with server.client() as http:
        while True:
            rid = http.call("GET", f"/v1/users/{WARMUP_USER}/recommendations?k=1", key=cfg.read_key)["request_id"]
            asked += 1
            _wait_impressions(store, requested + asked)
            imp = store.get_impression(rid)
            if imp is not None and imp.policy == f"ranker:{version}":
                return asked
            if time.time() > deadline:
                raise VitrineError(f"the server did not load ranker {version} within {timeout:.0f} s "
                                   f"(last policy {imp.policy if imp else None!r}); see {server.log_path}")
            time.sleep(0.1)


def _say(enabled: bool, message: str) -> None:
    log.info("%s", message)
    if enabled:
        print(message, file=sys.stderr, flush=True)


# -- the server and a small HTTP client --------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_ENV_KEYS = ("index_dir", "models_dir", "ranker_dir", "events_url", "limits_path", "secret_key_file", "secret_key",
             "ingest_key", "read_key", "log_impressions", "reload_check_seconds", "impression_flush_seconds",
             "max_k", "demo_shopper_menu")


class _Server:
    """``vitrine serve`` (gunicorn, 1 worker) for ``cfg`` as a child process; a context manager."""

    def __init__(self, cfg: EngineConfig, log_path: Path, config_file: str | None) -> None:
        self.cfg, self.log_path, self.config_file = cfg, log_path, config_file

    def __enter__(self) -> "_Server":
        env = dict(os.environ)  # the settings the caller's configuration came from, then this arm's
        env.update({"VITRINE_" + k.upper(): _env_value(getattr(self.cfg, k)) for k in _ENV_KEYS})
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        if self.config_file:
            env["VITRINE_CONFIG"] = str(Path(self.config_file).resolve())
        cmd = [sys.executable, "-m", "engine.cli", "--index-dir", str(self.cfg.index_dir), "serve", "--host",
               self.cfg.host, "--port", str(self.cfg.port), "--workers", "1", "--threads", str(self.cfg.threads)]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_healthy(120.0)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise VitrineError(f"the simulation's server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with self.client() as http:
                    if http.call("GET", "/healthz").get("status") == "ok":
                        return
            except (OSError, VitrineError):
                pass
            time.sleep(0.2)
        raise VitrineError(f"the simulation's server did not start in {timeout:.0f} s; see {self.log_path}")

    def client(self) -> "_Client":
        return _Client(self.cfg.host, self.cfg.port)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return "" if value is None else str(value)


class _Client:
    """One keep-alive HTTP connection answering JSON; a context manager. Not thread-safe (one per thread)."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=60)

    def call(self, method: str, path: str, *, key: str | None = None, body: Any = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()  # the server closed an idle keep-alive connection: once more
                if attempt == 2:
                    raise
        if resp.status != 200:
            raise VitrineError(f"{method} {path}: HTTP {resp.status}: {raw[:300].decode('utf-8', 'replace')}")
        answer: dict[str, Any] = json.loads(raw)
        return answer

    def __enter__(self) -> "_Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


# -- outputs -------------------------------------------------------------------------------------------

def write_outputs(report: SimReport, out_dir: Path) -> tuple[Path, Path]:
    """``<out_dir>/simulate.json`` (settings, every round of every arm, the summary and the target) and
    ``<out_dir>/simulate.png`` (see :func:`plot`). Returns (png, json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "simulate.json"
    js.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    png = out_dir / "simulate.png"
    plot(report, png)
    return png, js


def plot(report: SimReport, path: Path) -> None:
    """CTR per round of both arms: the mean over the seeds, with a band from the seeds' min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report.settings
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    rounds = np.arange(1, s.rounds + 1)
    for arm, color in zip(ARMS, ("#4c72b0", "#dd8452")):
        c = 100.0 * report.ctr(arm)
        label = "blend (never retrained)" if arm == "blend" else "learned ranker (retrained each round)"
        ax.plot(rounds, c.mean(axis=0), marker="o", color=color, label=label)
        ax.fill_between(rounds, c.min(axis=0), c.max(axis=0), color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("round")
    ax.set_ylabel("CTR (%)")
    ax.set_xticks(rounds)
    ax.set_title(f"vitrine simulate: {s.shoppers} shoppers, seeds {', '.join(map(str, s.seeds))} "
                 f"(band: min-max)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def record_results(report: SimReport, png: Path, command: str, *, results: Path = ROOT / "bench" / "RESULTS.md",
                   image: Path | None = ROOT / "bench" / "simulate.png", section: str = SECTION) -> None:
    """Replace the ``<!-- section -->`` section of ``results`` (appended if absent; the markers of
    ``bench/common.record``) with the command, machine, table and verdict; copy ``png`` to ``image``
    (linked from the section) unless ``image`` is None."""
    s, t = report.settings, report.target()
    c = s.clicks
    if image is not None:
        shutil.copyfile(png, image)
    picture = (f"![CTR per round]({os.path.relpath(image, results.parent)})" if image is not None
               else f"(plot: `{png.name}` beside the JSON, not kept here)")
    body = "\n".join([
        "### The learning loop, closed: simulated shoppers (`vitrine simulate`"
        + (", returning shoppers" if s.returning else "")
        + (", `--bootstrap history`)" if s.bootstrap == "history" else ")"),
        "",
        *run_lines(command, report.started_at, report.seconds, "; the machine is shared"),
        f"- {s.shoppers} Scientific shoppers per seed ("
        f"{'the same ones every round' if s.returning else 'a new cohort each round'}), {s.lists_per_round} "
        f"list(s) of {s.k} per round, {s.rounds} rounds; true next items: each shopper's last {s.holdout} items "
        "(held out)",
        f"- click model: examine position p with (1/p)^{c.bias:g}; click a true next item {c.rel_click:g}, "
        f"another {c.noise_click:g}; buy a clicked true item {c.buy:g}",
        "- the learned arm trains on " + ("its logged lists and next-item lists bootstrapped from the stored "
                                          "histories by the serving path (`--bootstrap history`)"
                                          if s.bootstrap == "history" else "its logged lists alone"),
        "",
        report.table(),
        "",
        "Expected CTR under the click model on the lists served (no click-draw noise), learned vs blend by round: "
        + ", ".join(f"{x:+.1%}" for x in t["expected_lift_by_round"]) + ".",
        "",
        picture,
        "",
        *(["The same shoppers come back each round and buy their true next items as they go, so the arms' later "
           "rounds differ by the items left to click as well as by their rankers (see README, \"vitrine simulate\").",
           ""] if s.returning else []),
        f"Target (the learned ranker's CTR rises over the rounds and ends at least {TARGET_LIFT:.0%} above the "
        f"blend's): **{'met' if t['met'] else 'not met'}**. Final round: learned vs blend "
        f"{t['final_lift']:+.1%} (per seed {', '.join(f'{x:+.1%}' for x in t['final_lift_per_seed'])}); "
        f"learned rises from round 1: {'yes' if t['learned_rises'] else 'no'}.",
    ])
    replace_section(results, section, body)


def run_lines(command: str, started_at: str, seconds: float, note: str = "") -> list[str]:
    """The ``- command:`` and ``- date:`` lines of a RESULTS.md section: when, how long, on how many cores,
    under what load (read now, at the end of the run)."""
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    took = f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
    return [f"- command: `{command}`",
            f"- date: {started_at}; {took} on {os.cpu_count()} cores (load average at the end {load}{note})"]


def replace_section(results: Path, section: str, body: str) -> None:
    """Replace the ``<!-- section -->`` ... ``<!-- /section -->`` block of ``results`` with ``body`` (appended
    when absent; the markers of ``bench/common.record``)."""
    start, end = f"<!-- {section} -->", f"<!-- /{section} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    results.write_text(text, encoding="utf-8")
