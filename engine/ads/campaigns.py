"""Advertisers' campaigns and their spend, in the event store's database (issue 11, parts 1 and 3).

A campaign (:class:`Campaign`) advertises catalog items with a bid per click and a daily budget, from a
start to an optional end, with its targeting (:mod:`engine.ads.targeting`), and is ``active`` or
``paused``. Money is an integer in minor units (cents) everywhere; a float is refused, not rounded.
:func:`parse_campaign` validates a JSON body and names the first bad field (``bid``,
``targeting.keywords[0].match``...); :meth:`Campaigns.update` validates a partial body the same way.

Tables (created on first use, beside the events, with the same durability: ``synchronous = FULL``):

- ``ads_campaigns``: one row per campaign, its settings as JSON;
- ``ads_spend``: per campaign and UTC day, the spend, clicks and charged clicks' ids count;
- ``ads_clicks``: every charged click, keyed by its click id (idempotent).

**Charging** (:meth:`Campaigns.charge`): in one write transaction (``BEGIN IMMEDIATE`` under the store's
cross-process lock) the click id is looked up (a repeat is not charged), the same shopper's click on the
same campaign and item within ``dedupe_window_s`` is looked up (not charged either), the day's spend is
read and the click is charged only while the spend is under the daily budget. So the budget is never
exceeded by more than one click's price, whatever the number of server processes.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal

from engine.ads.targeting import Targeting, parse_targeting, targeting_to_dict
from engine.errors import InvalidQuery, NotFound
from engine.events import EventStore, StoreTables

State = Literal["active", "paused"]
MAX_ITEMS = 100
MAX_MONEY = 10**12  # minor units
MAX_NAME = 200
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
DDL = (
    "CREATE TABLE IF NOT EXISTS ads_campaigns (id TEXT PRIMARY KEY, advertiser TEXT NOT NULL, data TEXT NOT NULL, "
    "state TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ads_spend (campaign_id TEXT NOT NULL, day TEXT NOT NULL, spend INTEGER NOT NULL, "
    "clicks INTEGER NOT NULL, PRIMARY KEY (campaign_id, day))",
    "CREATE TABLE IF NOT EXISTS ads_clicks (click_id TEXT PRIMARY KEY, campaign_id TEXT NOT NULL, item_id TEXT NOT NULL, "
    "user_id TEXT, ts REAL NOT NULL, day TEXT NOT NULL, price INTEGER NOT NULL, request_id TEXT)",
    "CREATE INDEX IF NOT EXISTS ads_clicks_user ON ads_clicks (user_id, campaign_id, item_id, ts)",
)


@dataclass(frozen=True)
class Campaign:
    id: str
    advertiser: str
    name: str
    items: tuple[str, ...]
    bid: int  # per click, minor units
    daily_budget: int  # minor units
    start: float  # epoch seconds
    end: float | None
    targeting: Targeting
    state: State = "active"
    frequency_cap: int | None = None  # impressions per shopper and UTC day; None: no cap
    created_at: float = 0.0
    updated_at: float = 0.0

    def live(self, now: float) -> bool:
        """Active and within its start and end."""
        return self.state == "active" and self.start <= now and (self.end is None or now < self.end)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "advertiser": self.advertiser, "name": self.name, "items": list(self.items),
                "bid": self.bid, "daily_budget": self.daily_budget, "start": _iso(self.start),
                "end": None if self.end is None else _iso(self.end), "targeting": targeting_to_dict(self.targeting),
                "state": self.state, "frequency_cap": self.frequency_cap, "created_at": _iso(self.created_at),
                "updated_at": _iso(self.updated_at)}


@dataclass(frozen=True)
class Charge:
    """What a click cost: ``charged`` False for a repeat (``reason``: ``duplicate`` or ``repeat_click``) or
    a budget it would cross (``budget``); ``spend`` is the day's spend after it."""

    charged: bool
    price: int
    spend: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"charged": self.charged, "price": self.price if self.charged else 0, "spend": self.spend,
                "reason": self.reason}


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def utc_day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d")


def _money(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidQuery(name, f"must be an integer amount in minor units (cents), got {value!r}")
    if not 0 < value <= MAX_MONEY:
        raise InvalidQuery(name, f"must be in 1..{MAX_MONEY} minor units, got {value}")
    return value


def _time(value: Any, name: str) -> float:
    """An ISO 8601 date-time (``Z`` or an offset; a bare date is midnight UTC) or epoch seconds."""
    if isinstance(value, bool):
        raise InvalidQuery(name, f"must be an ISO 8601 date-time or epoch seconds, got {value!r}")
    if isinstance(value, (int, float)):
        if not 0 <= value < 4e9:
            raise InvalidQuery(name, f"must be epoch seconds between 1970 and 2096, got {value}")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidQuery(name, f"must be an ISO 8601 date-time such as 2026-12-03T00:00:00Z, got {value!r}") \
                from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        return parsed.timestamp()
    raise InvalidQuery(name, f"must be an ISO 8601 date-time or epoch seconds, got {value!r}")


def _text(value: Any, name: str, max_len: int = MAX_NAME) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise InvalidQuery(name, f"must be a non-empty string of at most {max_len} characters")
    return value.strip()


FIELDS = ("id", "advertiser", "name", "items", "bid", "daily_budget", "start", "end", "targeting", "state",
          "frequency_cap")


def parse_campaign(body: Any, *, known_item: Callable[[str], bool], now: float | None = None,
                   base: Campaign | None = None) -> Campaign:
    """A validated campaign from a JSON object; with ``base``, a partial update of it (the id and
    advertiser stay). ``known_item``: whether an item id is in the served catalog."""
    if not isinstance(body, dict):
        raise InvalidQuery("body", "must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidQuery(unknown[0], f"unknown field; a campaign has {', '.join(FIELDS)}")
    now = time.time() if now is None else now
    if base is not None:
        for fixed in ("id", "advertiser"):
            if fixed in body and body[fixed] != getattr(base, fixed):
                raise InvalidQuery(fixed, "cannot be changed")

    def get(key: str, default: Any = None) -> Any:
        """The body's value, else the base campaign's (an update), else ``default``."""
        return body.get(key, default if base is None else getattr(base, key))

    cid = body.get("id") if base is None else base.id
    if base is None:
        if cid is None:
            cid = "cmp_" + secrets.token_hex(6)
        elif not isinstance(cid, str) or not _ID.match(cid):
            raise InvalidQuery("id", "must be 1 to 64 of letters, digits, '_', '.', ':' and '-'")
    advertiser = _text(body.get("advertiser"), "advertiser", 100) if base is None else base.advertiser
    name = _text(get("name", cid), "name")
    items_raw = get("items")
    if base is not None and "items" not in body:
        items = base.items
    else:
        if not isinstance(items_raw, list) or not 1 <= len(items_raw) <= MAX_ITEMS:
            raise InvalidQuery("items", f"must be a list of 1 to {MAX_ITEMS} catalog item ids")
        for i, item in enumerate(items_raw):
            if not isinstance(item, str) or not item:
                raise InvalidQuery(f"items[{i}]", "must be an item id (a string)")
            if not known_item(item):
                raise InvalidQuery(f"items[{i}]", f"unknown item {item!r}: not in the served catalog")
        items = tuple(dict.fromkeys(items_raw))
    bid = _money(get("bid"), "bid")
    budget = _money(get("daily_budget"), "daily_budget")
    if bid > budget:
        raise InvalidQuery("bid", f"must not exceed the daily budget ({bid} > {budget})")
    start = base.start if base is not None and "start" not in body else _time(body.get("start", now), "start")
    end_raw = body["end"] if "end" in body else (None if base is None else base.end)
    end = None if end_raw is None else (end_raw if base is not None and "end" not in body else _time(end_raw, "end"))
    if end is not None and end <= start:
        raise InvalidQuery("end", "must be after start")
    targeting = (base.targeting if base is not None and "targeting" not in body
                 else parse_targeting(body.get("targeting", {})))
    state = get("state", "active")
    if state not in ("active", "paused"):
        raise InvalidQuery("state", f"must be active or paused, got {state!r}")
    cap = get("frequency_cap")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= 1000):
        raise InvalidQuery("frequency_cap", f"must be null or an integer in 1..1000, got {cap!r}")
    return Campaign(str(cid), advertiser, name, items, bid, budget, start, end, targeting, state, cap,
                    base.created_at if base is not None else now, now)


def _row(row: sqlite3.Row | tuple[Any, ...]) -> Campaign:
    cid, advertiser, data, state, created, updated = row
    d = json.loads(data)
    return Campaign(cid, advertiser, d["name"], tuple(d["items"]), int(d["bid"]), int(d["daily_budget"]),
                    float(d["start"]), None if d["end"] is None else float(d["end"]),
                    parse_targeting(d["targeting"]), state, d.get("frequency_cap"), float(created), float(updated))


def _data(c: Campaign) -> str:
    return json.dumps({"name": c.name, "items": list(c.items), "bid": c.bid, "daily_budget": c.daily_budget,
                       "start": c.start, "end": c.end, "targeting": targeting_to_dict(c.targeting),
                       "frequency_cap": c.frequency_cap})


@dataclass
class Campaigns:
    """The campaigns and spend of one event store (thread-safe: every call is one store transaction)."""

    store: Callable[[], EventStore]
    dedupe_window_s: float = 600.0
    _tables: StoreTables = field(init=False)

    def __post_init__(self) -> None:
        self._tables = StoreTables(self.store, DDL)

    def events(self) -> EventStore:
        """The event store, with the ads tables created on first use."""
        return self._tables()

    def create(self, c: Campaign) -> Campaign:
        def write(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM ads_campaigns WHERE id = ?", (c.id,)).fetchone():
                return False
            conn.execute("INSERT INTO ads_campaigns VALUES (?, ?, ?, ?, ?, ?)",
                         (c.id, c.advertiser, _data(c), c.state, c.created_at, c.updated_at))
            return True

        if not self.events().run_write(write):
            raise InvalidQuery("id", f"a campaign {c.id!r} exists already")
        return c

    def get(self, cid: str) -> Campaign:
        row = self.events().run_read(lambda conn: conn.execute(
            "SELECT id, advertiser, data, state, created_at, updated_at FROM ads_campaigns WHERE id = ?",
            (cid,)).fetchone())
        if row is None:
            raise NotFound(f"no campaign {cid!r}")
        return _row(row)

    def list(self, advertiser: str | None = None) -> list[Campaign]:
        rows = self.events().run_read(lambda conn: conn.execute(
            "SELECT id, advertiser, data, state, created_at, updated_at FROM ads_campaigns "
            "WHERE ? IS NULL OR advertiser = ? ORDER BY created_at, id", (advertiser, advertiser)).fetchall())
        return [_row(r) for r in rows]

    def update(self, cid: str, body: Any, *, known_item: Callable[[str], bool], now: float | None = None) -> Campaign:
        """Apply a partial update (validated like a new campaign); ``{"state": "paused"}`` pauses."""
        new = parse_campaign(body, known_item=known_item, now=now, base=self.get(cid))

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE ads_campaigns SET data = ?, state = ?, updated_at = ? WHERE id = ?",
                         (_data(new), new.state, new.updated_at, cid))

        self.events().run_write(write)
        return new

    def set_state(self, cid: str, state: State, now: float | None = None) -> Campaign:
        c = replace(self.get(cid), state=state, updated_at=time.time() if now is None else now)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE ads_campaigns SET state = ?, updated_at = ? WHERE id = ?", (state, c.updated_at, cid))

        self.events().run_write(write)
        return c

    def spend(self, cid: str, day: str) -> tuple[int, int]:
        """(spend, clicks) of a campaign on a UTC day."""
        row = self.events().run_read(lambda conn: conn.execute(
            "SELECT spend, clicks FROM ads_spend WHERE campaign_id = ? AND day = ?", (cid, day)).fetchone())
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def spends(self, day: str) -> dict[str, int]:
        """Every campaign's spend on a UTC day."""
        rows = self.events().run_read(lambda conn: conn.execute(
            "SELECT campaign_id, spend FROM ads_spend WHERE day = ?", (day,)).fetchall())
        return {str(c): int(s) for c, s in rows}

    def charge(self, click_id: str, campaign: Campaign, item_id: str, user_id: str | None, price: int, *,
               now: float | None = None, request_id: str | None = None) -> Charge:
        """Charge one click (see the module docstring): idempotent by ``click_id`` and by shopper, campaign
        and item within ``dedupe_window_s``; only while the day's spend is under the daily budget."""
        now = time.time() if now is None else now
        day = utc_day(now)
        if isinstance(price, bool) or not isinstance(price, int) or price <= 0:
            raise InvalidQuery("price", f"must be a positive integer in minor units, got {price!r}")

        def write(conn: sqlite3.Connection) -> Charge:
            row = conn.execute("SELECT spend FROM ads_spend WHERE campaign_id = ? AND day = ?",
                               (campaign.id, day)).fetchone()
            spent = 0 if row is None else int(row[0])
            if conn.execute("SELECT 1 FROM ads_clicks WHERE click_id = ?", (click_id,)).fetchone():
                return Charge(False, price, spent, "duplicate")
            if user_id is not None and conn.execute(
                    "SELECT 1 FROM ads_clicks WHERE user_id = ? AND campaign_id = ? AND item_id = ? AND ts > ?",
                    (user_id, campaign.id, item_id, now - self.dedupe_window_s)).fetchone():
                return Charge(False, price, spent, "repeat_click")
            if spent + price > campaign.daily_budget:
                return Charge(False, price, spent, "budget")
            conn.execute("INSERT INTO ads_clicks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (click_id, campaign.id, item_id, user_id, now, day, price, request_id))
            conn.execute("INSERT INTO ads_spend VALUES (?, ?, ?, 1) ON CONFLICT (campaign_id, day) DO UPDATE "
                         "SET spend = spend + excluded.spend, clicks = clicks + 1", (campaign.id, day, price))
            return Charge(True, price, spent + price)

        result: Charge = self.events().run_write(write)
        return result
