"""The reports, as SQL over the DuckDB copy (:mod:`engine.analytics.mirror`).

Every report reads UTC days ``[from, to]`` (both inclusive) and answers tables of ``columns`` and
``rows``. With a :class:`~engine.analytics.dp.Laplace` mechanism each shopper's contribution is first
clipped (``CLIPS``) and every released count gets noise of scale ``sensitivity / epsilon``; the cells
released are fixed by public values (the days, the catalog's categories, the engine's surfaces, the
positions, the cohort weeks), never by the data, except search queries, which pass a noisy threshold.

Definitions:

- funnel: events of each step (view, click, add_to_cart, purchase) per day, top category or surface;
  DP clip: a shopper adds at most ``FUNNEL_CLIP`` to each step (with n more events of a step, each weighs
  ``FUNNEL_CLIP / n``), so the L1 sensitivity is ``4 * FUNNEL_CLIP``.
- search: over first result pages (impressions of surface ``search`` at offset 0 with a query; queries
  lower-cased and trimmed): searches, clicks (a click event with the list's request_id), zero-result and
  no-click searches per query, CTR by position, and refinements (the same shopper's next, different query
  within ``REFINE_WINDOW_S``). DP clip: a shopper's first ``SEARCH_CLIP`` searches, positions up to
  ``DP_POSITIONS``.
- cohorts: shoppers whose first event ever falls in the range, by the Monday of that week; a shopper is
  active in week k if it has an event k calendar weeks later (weeks up to the one holding ``to``). DP: one cohort per shopper, at most one per
  week cell: L1 sensitivity ``weeks``.
- rfm: shoppers with a purchase in the range, scored 1..4 on fixed bins (recency: days from their last
  purchase to the end of ``to``; frequency: purchases; monetary: the sum of the purchases' ``value``) and
  named segments from (R, F). DP: one cell per shopper: L1 sensitivity 1.
- movers: events (view, click, add_to_cart, purchase) per item and top category in the range against the
  as long period before it; ranked by the absolute change. DP clip: a shopper adds at most ``MOVERS_CLIP``
  per period (weighted like the funnel's), L1 sensitivity ``4 * MOVERS_CLIP`` (items and categories, both periods).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import duckdb
import numpy as np

from engine.analytics.dp import DELTA, Laplace, check_epsilon
from engine.errors import InvalidQuery

REPORTS = ("funnel", "search", "cohorts", "rfm", "movers")
STEPS = ("view", "click", "add_to_cart", "purchase")
# The surfaces the engine and the storefront log (engine.service, web/pages.py), and "direct" (no list).
SURFACES = ("search", "recommend", "recommend_session", "similar", "for_you", "trending", "direct")
FUNNEL_BY = ("day", "category", "surface")
FUNNEL_CLIP = 20
SEARCH_CLIP = 3
DP_POSITIONS = 10
POSITIONS = 20
REFINE_WINDOW_S = 300.0
MOVERS_CLIP = 20
MAX_DAYS = 731
DEFAULT_DAYS = 30
# Which filters each report takes (beyond from/to/dp_epsilon/format/table).
FILTERS: dict[str, tuple[str, ...]] = {
    "funnel": ("category", "surface", "by"), "search": ("limit",), "cohorts": ("weeks",),
    "rfm": ("category", "surface"), "movers": ("category", "surface", "limit"),
}
_ALL_FILTERS = ("category", "surface", "by", "limit", "weeks")


def _day_number(text: str, name: str) -> int:
    try:
        date = dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidQuery(name, f"must be a date YYYY-MM-DD, got {text[:40]!r}") from None
    if not dt.date(1970, 1, 1) <= date <= dt.date(2999, 12, 31):
        raise InvalidQuery(name, f"must be a day in 1970-01-01..2999-12-31, got {text[:40]!r}")
    return (date - dt.date(1970, 1, 1)).days


def day_text(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(day))).isoformat()


@dataclass(frozen=True)
class Params:
    report: str
    d0: int
    d1: int
    category: str | None = None
    surface: str | None = None
    by: str = "day"
    limit: int = 20
    weeks: int = 8
    dp_epsilon: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"from": day_text(self.d0), "to": day_text(self.d1)}
        for name in FILTERS[self.report]:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def _int(args: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(str(raw))
    except ValueError:
        raise InvalidQuery(name, f"must be an integer in {lo}..{hi}, got {str(raw)[:40]!r}") from None
    if not lo <= value <= hi:
        raise InvalidQuery(name, f"must be an integer in {lo}..{hi}, got {value}")
    return value


def parse_params(report: str, args: Mapping[str, Any], *, now: float | None = None) -> Params:
    """Validate a report's query parameters; :class:`InvalidQuery` names the first bad one."""
    if report not in REPORTS:
        raise InvalidQuery("report", f"unknown report {report[:40]!r}; use one of {', '.join(REPORTS)}")
    for name, raw in args.items():
        if raw is not None and not isinstance(raw, str):
            raise InvalidQuery(name, "must be a string")
    today = int((time.time() if now is None else now) // 86400)
    d1 = _day_number(args["to"], "to") if args.get("to") else today
    d0 = _day_number(args["from"], "from") if args.get("from") else d1 - DEFAULT_DAYS + 1
    if d0 > d1:
        raise InvalidQuery("from", f"must not be after to ({day_text(d1)})")
    if d1 - d0 + 1 > MAX_DAYS:
        raise InvalidQuery("from", f"the range spans {d1 - d0 + 1} days; at most {MAX_DAYS}")
    allowed = FILTERS[report]
    for name in _ALL_FILTERS:
        if args.get(name) not in (None, "") and name not in allowed:
            raise InvalidQuery(name, f"the {report} report takes no {name}; it takes {', '.join(allowed) or 'none'}")
    category = args.get("category") or None
    if category is not None and (len(category) > 500 or not category.strip()):
        raise InvalidQuery("category", "must be a category path 'A > B' of at most 500 characters")
    surface = args.get("surface") or None
    if surface is not None and surface not in SURFACES:
        raise InvalidQuery("surface", f"must be one of {', '.join(SURFACES)}, got {surface[:40]!r}")
    by = args.get("by") or "day"
    if by not in FUNNEL_BY:
        raise InvalidQuery("by", f"must be one of {', '.join(FUNNEL_BY)}, got {by[:40]!r}")
    eps_raw = args.get("dp_epsilon")
    eps: float | None = None
    if eps_raw not in (None, ""):
        try:
            eps = float(str(eps_raw))
        except ValueError:
            raise InvalidQuery("dp_epsilon", f"must be a number, got {str(eps_raw)[:40]!r}") from None
        if not math.isfinite(eps):
            raise InvalidQuery("dp_epsilon", "must be a finite number")
    return Params(report, d0, d1, category=category, surface=surface, by=by,
                  limit=_int(args, "limit", 20, 1, 1000), weeks=_int(args, "weeks", 8, 1, 52),
                  dp_epsilon=check_epsilon(eps))


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows}


@dataclass
class Report:
    name: str
    params: Params
    tables: dict[str, Table]
    chart: dict[str, Any]
    dp: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"report": self.name, **self.params.to_dict(), "dp": self.dp,
                "tables": {k: t.to_dict() for k, t in self.tables.items()}, "chart": self.chart, "notes": self.notes}

    def csv(self, table: str | None) -> str:
        name = table or next(iter(self.tables))
        if name not in self.tables:
            raise InvalidQuery("table", f"the {self.name} report has tables {', '.join(self.tables)}; got {name[:40]!r}")
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(self.tables[name].columns)
        w.writerows(self.tables[name].rows)
        return out.getvalue()


def _rate(num: float, den: float) -> float | None:
    return round(num / den, 4) if den > 0 else None


class _Sql:
    """The filtered event rows of a report, as a SQL subquery with its named parameters."""

    def __init__(self, p: Params, *, d0: int | None = None, types: tuple[str, ...] = STEPS) -> None:
        self.args: dict[str, Any] = {"d0": p.d0 if d0 is None else d0, "d1": p.d1}
        where = ["e.day BETWEEN $d0 AND $d1", "e.type IN (" + ", ".join(f"'{t}'" for t in types) + ")"]
        if p.category:
            self.args["cat"] = p.category.strip().lower()
            where.append("(i.ckey = $cat OR starts_with(i.ckey, $cat || ' > '))")
        if p.surface:
            self.args["surface"] = p.surface
            where.append("e.surface = $surface")
        self.sql = ("SELECT e.uid AS user_id, e.step, e.type, e.item_id, e.ts, e.day, e.surface, e.value, "
                    "coalesce(i.top, '(unknown)') AS category FROM events e LEFT JOIN items i ON i.item_id = e.item_id "
                    "WHERE " + " AND ".join(where))

    def weighted(self, k: int, *, per_step: bool) -> str:
        """The rows with a weight ``w = min(1, k / n)``, ``n`` the shopper's events of the row's step
        (``per_step``) or of all four steps, in the whole copy (``totals``): a shopper's weights sum to at
        most ``k`` per step (or in all), over any range and filter, and one with at most ``k`` counts exactly."""
        uk = "b.user_id * 8 + b.step" if per_step else "b.user_id * 8 + 4"
        return (f"SELECT b.*, least(1.0, {k} / t.n) AS w FROM ({self.sql}) b JOIN totals t ON t.uk = {uk}")


def _public_tops(con: duckdb.DuckDBPyConnection, p: Params, categories: list[str]) -> list[Any]:
    """The report categories a DP table releases, from the catalog alone: all of them (and "(unknown)",
    events of items the catalog lacks), or those under the category filter."""
    if not p.category:
        return categories + ["(unknown)"]
    return [r[0] for r in con.execute("SELECT DISTINCT top FROM items WHERE ckey = $cat OR starts_with(ckey, $cat || ' > ') "
                                      "ORDER BY 1", {"cat": p.category.strip().lower()}).fetchall()]


def _dp_info(lap: Laplace, clip: str, **extra: Any) -> dict[str, Any]:
    return {"epsilon": lap.epsilon, "sensitivity": lap.sensitivity, "noise_scale": lap.scale,
            "noise_variance": 2 * lap.scale ** 2, "clip": clip, **extra}


def funnel(con: duckdb.DuckDBPyConnection, p: Params, lap: Laplace | None, categories: list[str]) -> Report:
    q = _Sql(p)
    key = {"day": "day", "category": "category", "surface": "surface"}[p.by]
    if lap:
        src, agg = q.weighted(FUNNEL_CLIP, per_step=True), "sum(w)"
    else:
        src, agg = q.sql, "count(*)"
    counts = ", ".join(f"coalesce({agg} FILTER (WHERE type = '{s}'), 0)" for s in STEPS)
    rows = con.execute(f"SELECT {key}, {counts} FROM ({src}) GROUP BY 1 ORDER BY 1", q.args).fetchall()
    got = {r[0]: [float(x) for x in r[1:]] for r in rows}
    if lap:  # every public cell, zero or not, gets noise
        keys: list[Any] = (list(range(p.d0, p.d1 + 1)) if p.by == "day" else list(SURFACES) if p.by == "surface"
                           else _public_tops(con, p, categories))
        flat = np.array([got.get(k, [0.0] * 4) for k in keys], dtype=np.float64).reshape(-1)
        noisy = lap.counts(flat).reshape(-1, 4) if flat.size else np.zeros((0, 4))
        got = {k: [float(x) for x in noisy[i]] for i, k in enumerate(keys)}
    table = Table([p.by, *STEPS, "click_rate", "cart_rate", "purchase_rate"])
    for k in sorted(got):
        v, c, a, pu = got[k]
        table.rows.append([day_text(k) if p.by == "day" else k, int(v), int(c), int(a), int(pu),
                           _rate(c, v), _rate(a, c), _rate(pu, a)])
    dp = _dp_info(lap, f"each shopper adds at most {FUNNEL_CLIP} to each step, summed over the cells (a shopper with "
                  f"n > {FUNNEL_CLIP} events of a step, in all the data, has each weighted {FUNNEL_CLIP}/n); L1 sensitivity "
                  f"4 x {FUNNEL_CLIP}") if lap else None
    return Report("funnel", p, {"funnel": table}, {"table": "funnel", "x": p.by, "y": list(STEPS), "kind": "bars"}, dp)


def search(con: duckdb.DuckDBPyConnection, p: Params, lap: Laplace | None, categories: list[str]) -> Report:
    args = {"d0": p.d0, "d1": p.d1}
    first = ("SELECT request_id, coalesce(user_id, request_id) AS shopper, user_id, ts, lower(trim(query)) AS q, n "
             "FROM impressions WHERE surface = 'search' AND offset_ = 0 AND query IS NOT NULL AND day BETWEEN $d0 AND $d1")
    if lap:
        first = (f"SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY shopper ORDER BY ts, request_id) AS rn "
                 f"FROM ({first})) WHERE rn <= {SEARCH_CLIP}")
    npos = DP_POSITIONS if lap else POSITIONS
    con.execute(f"CREATE OR REPLACE TEMP TABLE s AS {first}", args)
    con.execute("CREATE OR REPLACE TEMP TABLE c AS SELECT DISTINCT e.request_id, e.position FROM events e "
                "JOIN s ON s.request_id = e.request_id WHERE e.type = 'click'")
    per_query = con.execute(
        "SELECT q, count(*), count(*) FILTER (WHERE clicked), count(*) FILTER (WHERE n = 0), "
        "count(*) FILTER (WHERE n > 0 AND NOT clicked) FROM (SELECT s.q, s.n, s.request_id IN (SELECT request_id FROM c) "
        "AS clicked FROM s) GROUP BY q").fetchall()
    shown = dict(con.execute(f"SELECT least(n, {npos}), count(*) FROM s GROUP BY 1").fetchall())
    clicks_at = dict(con.execute(f"SELECT position, count(DISTINCT request_id) FROM c WHERE position BETWEEN 1 AND {npos} "
                                 "GROUP BY 1").fetchall())
    refines = con.execute(
        "SELECT q, nq, count(*) FROM (SELECT q, lead(q) OVER w AS nq, lead(ts) OVER w - ts AS gap FROM s "
        "WHERE user_id IS NOT NULL WINDOW w AS (PARTITION BY user_id ORDER BY ts, request_id)) "
        "WHERE gap <= $window AND nq <> q GROUP BY 1, 2", {"window": REFINE_WINDOW_S}).fetchall()
    con.execute("DROP TABLE s")
    con.execute("DROP TABLE c")
    impressions = [float(sum(v for n, v in shown.items() if n >= pos)) for pos in range(1, npos + 1)]
    clicks = [float(clicks_at.get(pos, 0)) for pos in range(1, npos + 1)]
    dp = None
    q_rows = [(q, float(a), float(b), float(z), float(nc)) for q, a, b, z, nc in per_query]
    r_rows = [(a, b, float(n)) for a, b, n in refines]
    if lap:
        # One shopper: <= K searches, each adds 1 to searches, clicks, zero and no-click of its query (4K),
        # 1 to at most DP_POSITIONS shown positions and 1 to at most as many clicked positions (2 x 10 x K),
        # and at most K - 1 refinements.
        tau = lap.threshold(SEARCH_CLIP, SEARCH_CLIP)
        noisy_q = []
        for q, *vals in q_rows:
            nv = lap.counts(np.array(vals))
            if nv[0] >= tau:
                noisy_q.append((q, *[float(x) for x in nv]))
        q_rows = noisy_q
        tau_r = lap.threshold(SEARCH_CLIP - 1, max(SEARCH_CLIP - 1, 1))
        r_rows = [(a, b, float(v)) for a, b, n in r_rows for v in lap.counts(np.array([n])) if v >= tau_r]
        impressions = [float(x) for x in lap.counts(np.array(impressions))]
        clicks = [float(x) for x in lap.counts(np.array(clicks))]
        dp = _dp_info(lap, f"each shopper's first {SEARCH_CLIP} searches in the range, positions 1..{DP_POSITIONS} "
                      f"(L1 sensitivity {SEARCH_CLIP} x (4 + 2 x {DP_POSITIONS}) + {SEARCH_CLIP - 1})",
                      delta=DELTA, query_threshold=round(tau, 2), refinement_threshold=round(tau_r, 2))
    top = sorted(q_rows, key=lambda r: (-r[1], r[0]))[:p.limit]
    zero = sorted((r for r in q_rows if r[3] > 0), key=lambda r: (-r[3], r[0]))[:p.limit]
    noclick = sorted((r for r in q_rows if r[4] > 0), key=lambda r: (-r[4], r[0]))[:p.limit]
    tables = {
        "top_queries": Table(["query", "searches", "clicks", "ctr"],
                             [[q, int(a), int(b), _rate(b, a)] for q, a, b, _, _ in top]),
        "zero_result": Table(["query", "searches"], [[q, int(z)] for q, _, _, z, _ in zero]),
        "no_click": Table(["query", "searches"], [[q, int(nc)] for q, _, _, _, nc in noclick]),
        "ctr_by_position": Table(["position", "impressions", "clicks", "ctr"],
                                 [[i + 1, int(a), int(b), _rate(b, a)] for i, (a, b) in enumerate(zip(impressions, clicks))]),
        "refinements": Table(["query", "next_query", "count"],
                             [[a, b, int(n)] for a, b, n in sorted(r_rows, key=lambda r: (-r[2], r[0], r[1]))[:p.limit]]),
    }
    return Report("search", p, tables, {"table": "top_queries", "x": "query", "y": ["searches", "clicks"],
                                        "kind": "hbars"}, dp)


def _week(day: int) -> int:
    """Calendar week number (weeks start on Monday; day 0 = 1970-01-01 was a Thursday)."""
    return (day + 3) // 7


def cohorts(con: duckdb.DuckDBPyConnection, p: Params, lap: Laplace | None, categories: list[str]) -> Report:
    args = {"d0": p.d0, "d1": p.d1, "weeks": p.weeks}
    rows = con.execute(  # one pass over the events: (shopper, active week); then per shopper its first day
        "WITH uw AS (SELECT uid, (day + 3) // 7 AS wk, min(day) AS d FROM events GROUP BY 1, 2), "
        "new AS (SELECT uid, min(wk) AS w FROM uw GROUP BY 1 HAVING min(d) BETWEEN $d0 AND $d1) "
        "SELECT n.w, uw.wk - n.w AS k, count(*) FROM uw JOIN new n USING (uid) "
        "WHERE uw.wk - n.w < $weeks GROUP BY 1, 2 ORDER BY 1, 2", args).fetchall()
    last_week = _week(p.d1)  # cells up to the week of `to`: public, whatever the data holds
    weeks = list(range(_week(p.d0), _week(p.d1) + 1))
    cells = {(w, k): float(n) for w, k, n in rows}
    keys = [(w, k) for w in weeks for k in range(p.weeks) if w + k <= last_week]
    values = np.array([cells.get(c, 0.0) for c in keys])
    if lap and values.size:
        values = lap.counts(values)
    got = dict(zip(keys, values.tolist()))
    size = {w: got.get((w, 0), 0.0) for w in weeks}
    table = Table(["cohort", "week", "active", "retention"])
    summary = Table(["cohort", "new_shoppers"])
    for w in weeks:
        summary.rows.append([day_text(w * 7 - 3), int(size[w])])
        for k in range(p.weeks):
            if (w, k) in got:
                table.rows.append([day_text(w * 7 - 3), k, int(got[(w, k)]), _rate(got[(w, k)], size[w])])
    dp = _dp_info(lap, f"one cohort per shopper, at most 1 in each of its {p.weeks} week cells "
                  f"(L1 sensitivity {p.weeks})") if lap else None
    return Report("cohorts", p, {"retention": table, "cohorts": summary},
                  {"table": "retention", "x": "week", "series": "cohort", "y": ["retention"], "kind": "lines"}, dp,
                  notes=["week 0 is the calendar week (from Monday) of the shopper's first event; the cohort's size"])


R_BINS = ((7, 4), (30, 3), (90, 2))  # days since the last purchase -> score; more: 1
F_BINS = ((1, 1), (3, 2), (9, 3))  # purchases -> score; more: 4
M_BINS = ((20.0, 1), (100.0, 2), (500.0, 3))  # sum of value -> score; more: 4


def segment(r: int, f: int) -> str:
    if r == 4:
        return "new" if f == 1 else "loyal" if f == 2 else "champions"
    if r == 3:
        return "promising" if f == 1 else "loyal"
    if r == 2:
        return "hibernating" if f == 1 else "at_risk"
    return "lost" if f == 1 else "at_risk"


SEGMENTS = ("champions", "loyal", "new", "promising", "at_risk", "hibernating", "lost")


def _case(expr: str, bins: tuple[tuple[float, int], ...], last: int) -> str:
    return "CASE " + " ".join(f"WHEN {expr} < {b} THEN {s}" if isinstance(b, float) else f"WHEN {expr} <= {b} THEN {s}"
                              for b, s in bins) + f" ELSE {last} END"


def rfm(con: duckdb.DuckDBPyConnection, p: Params, lap: Laplace | None, categories: list[str]) -> Report:
    q = _Sql(p, types=("purchase",))
    q.args["end"] = (p.d1 + 1) * 86400.0
    rows = con.execute(
        f"SELECT r, f, m, count(*) FROM (SELECT {_case('($end - last) / 86400', R_BINS, 1)} AS r, "
        f"{_case('f', F_BINS, 4)} AS f, {_case('m', M_BINS, 4)} AS m FROM (SELECT user_id, max(ts) AS last, "
        f"count(*) AS f, sum(coalesce(value, 0)) AS m FROM ({q.sql}) GROUP BY user_id)) GROUP BY 1, 2, 3", q.args).fetchall()
    cells = {(int(r), int(f), int(m)): float(n) for r, f, m, n in rows}
    keys = [(r, f, m) for r in range(4, 0, -1) for f in range(4, 0, -1) for m in range(4, 0, -1)]
    values = np.array([cells.get(k, 0.0) for k in keys])
    if lap:
        values = lap.counts(values)
    table = Table(["recency", "frequency", "monetary", "segment", "shoppers"],
                  [[r, f, m, segment(r, f), int(v)] for (r, f, m), v in zip(keys, values) if v > 0])
    seg = {s: 0.0 for s in SEGMENTS}
    for (r, f, _), v in zip(keys, values):
        seg[segment(r, f)] += float(v)
    total = sum(seg.values())
    segments = Table(["segment", "shoppers", "share"], [[s, int(v), _rate(v, total)] for s, v in seg.items()])
    dp = _dp_info(lap, "one (R, F, M) cell per shopper (L1 sensitivity 1)") if lap else None
    return Report("rfm", p, {"segments": segments, "cells": table},
                  {"table": "segments", "x": "segment", "y": ["shoppers"], "kind": "hbars"}, dp,
                  notes=["scores 4 (best) .. 1: recency <=7, <=30, <=90 days; frequency 1, <=3, <=9 purchases; "
                         "monetary < 20, < 100, < 500 (sum of purchase values)"])


def movers(con: duckdb.DuckDBPyConnection, p: Params, lap: Laplace | None, categories: list[str]) -> Report:
    span = p.d1 - p.d0 + 1
    q = _Sql(p, d0=p.d0 - span)
    q.args["cut"] = p.d0
    q.sql = f"SELECT *, day >= $cut AS cur FROM ({q.sql})"
    if lap:  # a shopper adds at most MOVERS_CLIP to all four steps, hence to each period
        con.execute(f"CREATE OR REPLACE TEMP TABLE mv AS SELECT item_id, category, cur, sum(w) AS w FROM "
                    f"({q.weighted(MOVERS_CLIP, per_step=False)}) GROUP BY ALL", q.args)
        src, agg = "mv", "sum(w)"  # per period: weights of one shopper sum to <= MOVERS_CLIP
    else:
        src, agg = f"({q.sql})", "count(*)"
    out: dict[str, Table] = {}
    for name, key in (("items", "item_id"), ("categories", "category")):
        rows = con.execute(f"SELECT {key}, coalesce({agg} FILTER (WHERE cur), 0), coalesce({agg} FILTER (WHERE NOT cur), 0) "
                           f"FROM {src} GROUP BY 1", {} if lap else q.args).fetchall()
        got = {k: (float(a), float(b)) for k, a, b in rows}
        if lap:  # every public key: the catalog's items (of the category filter) or its top categories
            if name == "items":
                sql = "SELECT item_id FROM items"
                if p.category:
                    sql += " WHERE ckey = $cat OR starts_with(ckey, $cat || ' > ')"
                keys = [r[0] for r in con.execute(sql, {"cat": q.args["cat"]} if p.category else {}).fetchall()]
            else:
                keys = _public_tops(con, p, categories)
            flat = np.array([got.get(k, (0.0, 0.0)) for k in keys]).reshape(-1)
            noisy = lap.counts(flat).reshape(-1, 2) if flat.size else np.zeros((0, 2))
            got = {k: (float(noisy[i, 0]), float(noisy[i, 1])) for i, k in enumerate(keys)}
        ranked = sorted(got.items(), key=lambda kv: (-abs(kv[1][0] - kv[1][1]), str(kv[0])))[:p.limit]
        out[name] = Table([name[:-1] if name == "items" else "category", "current", "previous", "change", "change_pct"],
                          [[k, int(a), int(b), int(a - b), round(100 * (a - b) / b, 1) if b else None]
                           for k, (a, b) in ranked])
    if lap:
        con.execute("DROP TABLE mv")
    dp = _dp_info(lap, f"each shopper adds at most {MOVERS_CLIP} per period (one with n > {MOVERS_CLIP} events "
                  f"in all the data has each weighted {MOVERS_CLIP}/n); L1 sensitivity 2 periods x 2 tables x {MOVERS_CLIP}",
                  previous_from=day_text(p.d0 - span)) if lap else None
    return Report("movers", p, out, {"table": "items", "x": "item", "y": ["current", "previous"], "kind": "hbars"}, dp,
                  notes=[f"previous period: {day_text(p.d0 - span)} .. {day_text(p.d0 - 1)}"])


SENSITIVITY: dict[str, Callable[[Params], float]] = {
    "funnel": lambda p: 4.0 * FUNNEL_CLIP,
    "search": lambda p: float(SEARCH_CLIP * (4 + 2 * DP_POSITIONS) + SEARCH_CLIP - 1),
    "cohorts": lambda p: float(p.weeks),
    "rfm": lambda p: 1.0,
    "movers": lambda p: 4.0 * MOVERS_CLIP,
}
RUN: dict[str, Callable[[duckdb.DuckDBPyConnection, Params, Laplace | None, list[str]], Report]] = {
    "funnel": funnel, "search": search, "cohorts": cohorts, "rfm": rfm, "movers": movers,
}
