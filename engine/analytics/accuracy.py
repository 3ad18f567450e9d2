"""How much the Laplace noise costs: mean relative error of DP reports against the exact ones on the demo
events (``vitrine analytics dp-accuracy``).

The demo events (data/demo/events.csv.gz, 2,000 shoppers, purchases only) are loaded into a temporary store;
each report is computed exactly once, then ``draws`` times with ``dp_epsilon`` (no budget spent: this is an
offline measurement). The error of a draw is ``|noisy - exact| / exact`` averaged over the cells whose exact
count is not zero (count columns only), then averaged over draws; the weighted error is
``sum |noisy - exact| / sum exact`` over the same cells (large cells weigh more).
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from engine.analytics.reports import Params, Report, day_text, parse_params
from engine.analytics.service import Analytics
from engine.catalog import read_catalog
from engine.events import open_event_store
from engine.events.importer import import_events

ROOT = Path(__file__).resolve().parents[2]
DEMO_EVENTS = ROOT / "data" / "demo" / "events.csv.gz"
DEMO_CATALOG = ROOT / "data" / "demo" / "catalog.jsonl"
# (label, report, extra parameters, table, count columns)
CASES: list[tuple[str, str, dict[str, str], str, tuple[str, ...]]] = [
    ("funnel by day", "funnel", {}, "funnel", ("view", "click", "add_to_cart", "purchase")),
    ("funnel by category", "funnel", {"by": "category"}, "funnel", ("view", "click", "add_to_cart", "purchase")),
    ("cohorts (8 weeks)", "cohorts", {}, "retention", ("active",)),
    ("rfm segments", "rfm", {}, "segments", ("shoppers",)),
    ("movers: categories", "movers", {}, "categories", ("current", "previous")),
]


def _cells(report: Report, table: str, columns: tuple[str, ...]) -> dict[tuple[Any, ...], float]:
    t = report.tables[table]
    idx = [t.columns.index(c) for c in columns]
    keys = [i for i, c in enumerate(t.columns) if c not in columns and c in ("day", "category", "cohort", "week",
                                                                                "segment", "surface")]
    return {(tuple(r[i] for i in keys), c): float(r[j]) for r in t.rows for c, j in zip(columns, idx)}


def run(*, draws: int = 100, epsilons: tuple[float, ...] = (1.0, 0.1), seed: int | None = None,
        events: Path = DEMO_EVENTS, catalog_path: Path = DEMO_CATALOG) -> list[dict[str, Any]]:
    """One row per (report, epsilon): cells, mean relative error, and the noise scale."""
    catalog, _ = read_catalog(catalog_path)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = open_event_store(f"sqlite:///{Path(tmp) / 'events.db'}")
        import_events(store, events, known_item=catalog.__contains__)
        gen = np.random.default_rng(seed)
        an = Analytics(lambda: store, lambda: ("demo", lambda: ((p.id, p.category_path) for p in catalog)),
                       daily_budget=1e9, rng=lambda: gen)
        an.refresh()
        span = an.mirror.con.execute("SELECT min(day), max(day) FROM events").fetchone()
        assert span is not None
        whole = {"from": day_text(span[0]), "to": day_text(span[1])}
        half = (int(span[1]) - int(span[0]) + 1) // 2
        for label, name, extra, table, columns in CASES:
            args = whole | extra
            if name == "movers":
                args = {"from": day_text(int(span[1]) - half + 1), "to": day_text(span[1])}
            exact_params: Params = parse_params(name, args)
            exact = _cells(an.compute(exact_params), table, columns)
            nonzero = {k: v for k, v in exact.items() if v > 0}
            for eps in epsilons:
                params = dataclasses.replace(exact_params, dp_epsilon=eps)
                errors, weighted, scale = [], [], 0.0
                for _ in range(draws):
                    rep = an.compute(params)
                    scale = float(rep.dp["noise_scale"]) if rep.dp else 0.0
                    noisy = _cells(rep, table, columns)
                    errors.append(np.mean([abs(noisy.get(k, 0.0) - v) / v for k, v in nonzero.items()]))
                    weighted.append(sum(abs(noisy.get(k, 0.0) - v) for k, v in nonzero.items())
                                    / max(sum(nonzero.values()), 1.0))
                rows.append({"report": label, "epsilon": eps, "cells": len(nonzero),
                             "mean_exact": round(float(np.mean(list(nonzero.values()))), 1) if nonzero else 0.0,
                             "noise_scale": scale, "mean_relative_error": round(float(np.mean(errors)), 4),
                             "weighted_relative_error": round(float(np.mean(weighted)), 4)})
        store.close()
        an.close()
    return rows
