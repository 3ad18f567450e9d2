"""`vitrine eval dp-trending`: what differentially private trending costs in accuracy, on the demo events.

Protocol: the demo shoppers' events (``data/demo/events.csv.gz``) in a fresh event store, folded by the
live models twice: exactly (the served trending) and with the private model (each shopper's first
``items`` items, :mod:`engine.recommend.live`). At the latest event time, ``draws`` releases per epsilon
(seeded) are compared with the exact scores over the demo catalog:

- **top-10 overlap**: the share of the exact top 10 in the release's top 10;
- **NDCG@10**: the release's top 10 scored with the exact scores as gains, against the exact order;
- **L1 error**: ``sum |release - exact| / sum exact`` over the catalog.

"no noise" is the private model before noise: the loss from the cap alone. Caps of 1, 5 and 20 items per
shopper are shown (the sensitivity is the cap times the largest event weight, 5).
"""
from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.catalog import Catalog

ROOT = Path(__file__).resolve().parents[2]
SECTION = "dp-trending"
EPSILONS = (1.0, 0.1)
CAPS = (1, 5, 20)  # items counted per shopper: the default (trending_dp_items) and two others


@dataclass
class DpRow:
    label: str
    overlap: float
    ndcg: float
    l1: float
    overlap_sd: float = 0.0


@dataclass
class DpTrendingReport:
    items: int
    draws: int
    shoppers: int
    events: int
    sensitivity: float
    rows: list[DpRow]
    started_at: str
    seconds: float

    def lines(self) -> list[str]:
        out = [f"DP trending on the demo events: {self.events} events of {self.shoppers} shoppers, {self.draws} "
               f"releases per epsilon; the default cap is {self.items} items per shopper (sensitivity "
               f"{self.sensitivity:g})", "", "| trending | top-10 overlap | NDCG@10 | L1 error |", "|---|---|---|---|"]
        for r in self.rows:
            sd = f" ± {r.overlap_sd:.3f}" if r.overlap_sd else ""
            out.append(f"| {r.label} | {r.overlap:.3f}{sd} | {r.ndcg:.3f} | {r.l1:.3f} |")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "draws": self.draws, "shoppers": self.shoppers, "events": self.events,
                "sensitivity": self.sensitivity, "rows": [r.__dict__ for r in self.rows],
                "started_at": self.started_at, "seconds": self.seconds}


def _ndcg10(scores: np.ndarray, exact: np.ndarray) -> float:
    ideal = np.sort(exact)[::-1][:10]
    top = np.argsort(-scores, kind="stable")[:10]
    disc = 1.0 / np.log2(np.arange(2, 12))
    best = float((ideal * disc[:len(ideal)]).sum())
    return float((exact[top] * disc[:len(top)]).sum()) / best if best > 0 else 0.0


def _compare(scores: np.ndarray, exact: np.ndarray) -> tuple[float, float, float]:
    top_exact = set(np.argsort(-exact, kind="stable")[:10].tolist())
    top = set(np.argsort(-scores, kind="stable")[:10].tolist())
    l1 = float(np.abs(scores - exact).sum() / max(exact.sum(), 1e-12))
    return len(top & top_exact) / 10.0, _ndcg10(scores, exact), l1


def run(catalog: Catalog, events_csv: Path = ROOT / "data" / "demo" / "events.csv.gz", *, items: int = 5,
        draws: int = 50, seed: int = 0) -> DpTrendingReport:
    from engine.events import open_event_store
    from engine.events.importer import import_events
    from engine.recommend.live import LiveModels

    t0 = time.time()
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    work = Path(tempfile.mkdtemp(prefix="vitrine-dp-"))
    try:
        store = open_event_store(f"sqlite:///{work / 'events.db'}")
        try:
            import_events(store, events_csv, batch_size=5000)
            exact_models = LiveModels(store)
            rows: list[DpRow] = []
            with exact_models.current() as m:
                at = m.trending.last_t or time.time()
                exact = m.trending.scores_dense(catalog.id_map, len(catalog), now=at)
            events, shoppers = store.count(), store.count_users()
            rows.append(DpRow("exact (served today)", 1.0, 1.0, 0.0))
            rng = np.random.default_rng(seed)  # the served release's formula (LiveModels.trending_release)
            sensitivity = 0.0
            for cap in sorted({*CAPS, items}):
                private = LiveModels(store, dp_epsilon=1.0, dp_items=cap, dp_rng=np.random.default_rng(seed))
                with private.current() as p:
                    clipped = p.dp_trending.scores_dense(catalog.id_map, len(catalog), now=at)
                    sens = p.dp_sensitivity
                if cap == items:
                    sensitivity = sens
                rows.append(DpRow(f"cap {cap}, no noise", *_compare(clipped, exact)))
                for eps in EPSILONS:
                    got = np.array([_compare(clipped + rng.laplace(0.0, sens / eps, len(catalog)), exact)
                                    for _ in range(draws)])
                    rows.append(DpRow(f"cap {cap} (sensitivity {sens:g}), epsilon {eps:g}",
                                      float(got[:, 0].mean()), float(got[:, 1].mean()), float(got[:, 2].mean()),
                                      float(got[:, 0].std())))
        finally:
            store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return DpTrendingReport(items, draws, shoppers, events, sensitivity, rows, started, time.time() - t0)


def record_results(report: DpTrendingReport, command: str, *, results: Path = ROOT / "bench" / "RESULTS.md") -> None:
    from engine.evaluation.simulate import replace_section, run_lines

    body = "\n".join([
        "### Differentially private trending (`vitrine eval dp-trending`)", "",
        *run_lines(command, report.started_at, report.seconds), "",
        *report.lines(),
    ])
    replace_section(results, SECTION, body)
