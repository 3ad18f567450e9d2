"""Advertisers' reports: per campaign and UTC day, and per hour of a day (issue 11, part 4).

- **Impressions**: sponsored results shown, from the impression log (surface ``ads_<placement>``: one record per
  page with ads, ``context.campaigns`` naming each shown item's campaign). The log is written off the request
  path, so the last ``impression_flush_seconds`` may be missing.
- **Clicks, spend**: the charged clicks (``ads_clicks``): a repeated or over-budget click is not counted.
- **Average CPC** = spend / clicks; **CTR** = clicks / impressions.
- **Attributed purchases**: a purchase event of the clicking shopper, on the advertised item, within
  ``window_s`` (24 h by default) after a charged click, counted once per click. **Revenue** is the purchase's
  ``value`` when the event carries one, else the item's catalog price, both in the shop's currency units and
  kept in minor units (x 100, rounded); **ROAS** = revenue / spend.

Money stays integer minor units; rates are floats.
"""
from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from engine.ads.campaigns import utc_day
from engine.errors import InvalidQuery
from engine.events import EventStore

ATTRIBUTION_WINDOW_S = 86400.0


@dataclass(frozen=True)
class ReportRow:
    campaign_id: str
    day: str
    impressions: int
    clicks: int
    spend: int  # minor units
    purchases: int
    revenue: int  # minor units

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    @property
    def avg_cpc(self) -> float:
        return self.spend / self.clicks if self.clicks else 0.0

    @property
    def roas(self) -> float:
        return self.revenue / self.spend if self.spend else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ctr": self.ctr, "avg_cpc": self.avg_cpc, "roas": self.roas}


COLUMNS = ("campaign_id", "day", "impressions", "clicks", "ctr", "spend", "avg_cpc", "purchases", "revenue", "roas")


def check_day(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    import datetime as dt

    try:
        dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidQuery(field, f"must be a UTC day YYYY-MM-DD, got {value!r}") from None
    return value


def daily(store: EventStore, campaign_ids: Sequence[str], *, day_from: str, day_to: str,
          price_of: Callable[[str], float | None], window_s: float = ATTRIBUTION_WINDOW_S) -> list[ReportRow]:
    """One row per campaign of ``campaign_ids`` and UTC day in ``[day_from, day_to]`` with any activity."""
    if day_from > day_to:
        raise InvalidQuery("from", f"must not be after 'to' ({day_from} > {day_to})")
    wanted = set(campaign_ids)
    import datetime as dt

    t0 = dt.datetime.fromisoformat(day_from).replace(tzinfo=dt.timezone.utc).timestamp()
    t1 = dt.datetime.fromisoformat(day_to).replace(tzinfo=dt.timezone.utc).timestamp() + 86400.0

    def read(conn: sqlite3.Connection) -> tuple[list[Any], list[Any], list[Any]]:
        imps = conn.execute("SELECT ts, context FROM impressions WHERE ts >= ? AND ts < ? AND surface LIKE 'ads_%'",
                            (t0, t1)).fetchall()
        clicks = conn.execute("SELECT campaign_id, day, count(*), sum(price) FROM ads_clicks WHERE day >= ? AND day <= ? "
                              "GROUP BY campaign_id, day", (day_from, day_to)).fetchall()
        buys = conn.execute(
            "SELECT c.campaign_id, c.day, c.click_id, c.item_id, ("
            " SELECT coalesce(e.value, -1) FROM events e WHERE e.user_id = c.user_id AND e.item_id = c.item_id "
            " AND e.type = 'purchase' AND e.ts > c.ts AND e.ts <= c.ts + ? ORDER BY e.ts LIMIT 1) AS value "
            "FROM ads_clicks c WHERE c.day >= ? AND c.day <= ? AND c.user_id IS NOT NULL",
            (window_s, day_from, day_to)).fetchall()
        return imps, clicks, buys

    imps, clicks, buys = store.run_read(read)
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for ts, context in imps:
        for cid in (json.loads(context or "{}") or {}).get("campaigns", []):
            if cid in wanted:
                counts[cid, utc_day(float(ts))][0] += 1
    for cid, day, n, spend in clicks:
        if cid in wanted:
            counts[cid, day][1] += int(n)
            counts[cid, day][2] += int(spend or 0)
    for cid, day, _, item, value in buys:
        if cid in wanted and value is not None:
            counts[cid, day][3] += 1
            price = float(value) if value >= 0 else (price_of(item) or 0.0)
            counts[cid, day][4] += int(round(price * 100))
    return [ReportRow(cid, day, *c) for (cid, day), c in sorted(counts.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


def hourly(store: EventStore, campaign_id: str, day: str) -> list[dict[str, int]]:
    """Per UTC hour of ``day``: the campaign's charged clicks and spend (minor units)."""
    rows = store.run_read(lambda conn: conn.execute(
        "SELECT CAST(strftime('%H', ts, 'unixepoch') AS INTEGER) AS h, count(*), sum(price) FROM ads_clicks "
        "WHERE campaign_id = ? AND day = ? GROUP BY h", (campaign_id, day)).fetchall())
    by_hour = {int(h): (int(n), int(s or 0)) for h, n, s in rows}
    return [{"hour": h, "clicks": by_hour.get(h, (0, 0))[0], "spend": by_hour.get(h, (0, 0))[1]} for h in range(24)]


def to_csv(rows: Sequence[ReportRow]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        d = r.to_dict()
        w.writerow([d[c] if not isinstance(d[c], float) else f"{d[c]:.6f}" for c in COLUMNS])
    return out.getvalue()
