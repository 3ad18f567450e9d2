"""Statistical features per item and per user, kept incrementally in the event store's SQLite file.

They are updated in the same transaction as the events they count, so they always agree with the
events table (``rebuild`` recomputes them from it). Definitions:

- counts: events per type (an item has no ``search`` count);
- ``ctr`` = clicks / views and ``conversion`` = purchases / views. Both are ``None`` while views
  are 0 (undefined, not 0). They may exceed 1 when a shop sends clicks or purchases but not every view;
- ``rating_avg``: mean rating value, ``None`` without ratings;
- popularity: the sum over the item's events of ``weight(type) * 2^(-(now - t) / half_life)``, stored
  as ``(score, as_of)`` and decayed lazily on read: ``score_now = score * 2^(-(now - as_of) / half_life)``
  (``as_of`` is the latest event time; a ``now`` before it reads the score at ``as_of``);
- category affinity (users): events per top-level category (``"A"``) and per full path (``"A > B > C"``,
  the leaf) of the items the user interacted with, as the caller of ``add`` gives them (the served catalog's,
  at event time). A rebuild recomputes every count from the events but keeps these, which it cannot know.
"""
from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.catalog import CATEGORY_SEP, category_segments
from engine.events.model import ITEM_TYPES, Event, EventType

Categories = Mapping[str, str | None]  # item id -> its category path when the event arrived
DAY = 86400.0
DEFAULT_WEIGHTS: Mapping[str, float] = {
    "view": 1.0, "click": 2.0, "add_to_cart": 3.0, "remove_from_cart": 0.0, "purchase": 5.0, "rating": 1.0,
}
ITEM_COUNTS = tuple(t for t in EventType if t in ITEM_TYPES)
USER_COUNTS = tuple(EventType)
_RATING = ITEM_COUNTS.index(EventType.RATING)
USER_TABLES = ("user_features", "user_categories")  # keyed by user_id; cleared by delete_user
_CHUNK = 500


@dataclass(frozen=True)
class FeatureConfig:
    """Popularity half-life (seconds) and the weight of each item event type in it."""

    half_life_s: float = 7 * DAY
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    def __post_init__(self) -> None:
        if not self.half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0, got {self.half_life_s}")
        unknown = set(self.weights) - {t.value for t in ITEM_COUNTS}
        if unknown:
            raise ValueError(f"weights: unknown event type(s) {sorted(unknown)}")

    def weight(self, etype: EventType) -> float:
        return float(self.weights.get(etype.value, 0.0))

    def key(self) -> str:
        """Canonical text stored in the database, to notice a change of settings."""
        w = ",".join(f"{t.value}={self.weight(t):g}" for t in ITEM_COUNTS)
        return f"half_life_s={self.half_life_s:g};{w}"


def _cols(types: Sequence[EventType]) -> list[str]:
    return [f"n_{t.value}" for t in types]


SCHEMA = [
    "CREATE TABLE IF NOT EXISTS item_features (item_id TEXT PRIMARY KEY, "
    + ", ".join(f"{c} INTEGER NOT NULL" for c in _cols(ITEM_COUNTS))
    + ", rating_sum REAL NOT NULL, pop_score REAL NOT NULL, pop_as_of REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS user_features (user_id TEXT PRIMARY KEY, "
    + ", ".join(f"{c} INTEGER NOT NULL" for c in _cols(USER_COUNTS))
    + ", first_ts REAL NOT NULL, last_ts REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS user_categories (user_id TEXT NOT NULL, level TEXT NOT NULL, "
    "category TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (user_id, level, category)) WITHOUT ROWID",
]


# --------------------------------------------------------------------------- popularity arithmetic


def decay(score: float, as_of: float, now: float, half_life_s: float) -> float:
    """``score`` (valid at ``as_of``) seen at ``now``."""
    return score * math.exp2(-(now - as_of) / half_life_s)


def score_at(score: float, as_of: float, now: float, half_life_s: float) -> float:
    """Popularity read at ``now``; never extrapolated back before ``as_of`` (the latest event)."""
    return decay(score, as_of, max(now, as_of), half_life_s)


def combine(a: tuple[float, float], b: tuple[float, float], half_life_s: float,
            sign: float = 1.0) -> tuple[float, float]:
    """``a + sign * b`` for two (score, as_of) pairs, expressed at the later of the two times."""
    t = max(a[1], b[1])
    return decay(a[0], a[1], t, half_life_s) + sign * decay(b[0], b[1], t, half_life_s), t


# --------------------------------------------------------------------------- updates


@dataclass
class _ItemDelta:
    counts: Counter[EventType] = field(default_factory=Counter)
    rating_sum: float = 0.0
    pop: tuple[float, float] | None = None


def _item_deltas(events: Iterable[Event], config: FeatureConfig) -> dict[str, _ItemDelta]:
    out: dict[str, _ItemDelta] = {}
    for e in events:
        if e.item_id is None or e.type not in ITEM_TYPES:
            continue
        d = out.setdefault(e.item_id, _ItemDelta())
        d.counts[e.type] += 1
        if e.type is EventType.RATING and e.value is not None:
            d.rating_sum += e.value
        p = (config.weight(e.type), e.timestamp)
        d.pop = p if d.pop is None else combine(d.pop, p, config.half_life_s)
    return out


def _select_in(conn: sqlite3.Connection, sql: str, keys: Sequence[str]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i:i + _CHUNK]
        rows.extend(conn.execute(sql.format(marks=",".join("?" * len(chunk))), chunk))
    return rows


def _update_items(conn: sqlite3.Connection, deltas: Mapping[str, _ItemDelta], config: FeatureConfig,
                  sign: int) -> None:
    cols = _cols(ITEM_COUNTS)
    n = len(cols)
    current = {r[0]: r for r in _select_in(
        conn, f"SELECT item_id, {', '.join(cols)}, rating_sum, pop_score, pop_as_of "
              "FROM item_features WHERE item_id IN ({marks})", list(deltas))}
    upserts, deletes = [], []
    for item_id, d in deltas.items():
        row = current.get(item_id)
        counts = list(row[1:1 + n]) if row else [0] * n
        rating_sum, pop = (row[1 + n], (row[2 + n], row[3 + n])) if row else (0.0, (0.0, 0.0))
        counts = [c + sign * d.counts[t] for c, t in zip(counts, ITEM_COUNTS)]
        rating_sum += sign * d.rating_sum
        if d.pop is not None:
            pop = combine(pop, d.pop, config.half_life_s, sign) if row else d.pop
        if sum(counts) <= 0:
            deletes.append((item_id,))
        else:
            upserts.append((item_id, *counts, rating_sum if counts[_RATING] > 0 else 0.0, max(pop[0], 0.0), pop[1]))
    conn.executemany(f"INSERT OR REPLACE INTO item_features VALUES ({','.join('?' * (n + 4))})", upserts)
    conn.executemany("DELETE FROM item_features WHERE item_id = ?", deletes)


def add(conn: sqlite3.Connection, events: Sequence[Event], config: FeatureConfig,
        categories: Categories | None, *, skip_users: Collection[str] = ()) -> None:
    """Count newly stored ``events``; call inside the transaction that inserted them. The events of
    ``skip_users`` (shoppers without consent to personalization) count in the item features only."""
    if not events:
        return
    _update_items(conn, _item_deltas(events, config), config, +1)
    if skip_users:
        events = [e for e in events if e.user_id not in skip_users]
    users: dict[str, list[Any]] = {}
    cats: Counter[tuple[str, str, str]] = Counter()
    idx = {t: i for i, t in enumerate(USER_COUNTS)}
    n = len(USER_COUNTS)
    for e in events:
        u = users.get(e.user_id)
        if u is None:
            u = users[e.user_id] = [0] * n + [e.timestamp, e.timestamp]
        u[idx[e.type]] += 1
        u[n] = min(u[n], e.timestamp)
        u[n + 1] = max(u[n + 1], e.timestamp)
        if e.item_id is not None and categories is not None:
            for level, cat in category_levels(categories.get(e.item_id)):
                cats[(e.user_id, level, cat)] += 1
    cols = _cols(USER_COUNTS)
    conn.executemany(
        f"INSERT INTO user_features VALUES ({','.join('?' * (n + 3))}) ON CONFLICT(user_id) DO UPDATE SET "
        + ", ".join(f"{c} = {c} + excluded.{c}" for c in cols)
        + ", first_ts = min(first_ts, excluded.first_ts), last_ts = max(last_ts, excluded.last_ts)",
        [(uid, *vals) for uid, vals in users.items()],
    )
    conn.executemany(
        "INSERT INTO user_categories VALUES (?, ?, ?, ?) ON CONFLICT(user_id, level, category) "
        "DO UPDATE SET n = n + excluded.n",
        [(*k, v) for k, v in cats.items()],
    )


def subtract_items(conn: sqlite3.Connection, events: Sequence[Event], config: FeatureConfig) -> None:
    """Take ``events`` (about to be deleted) out of the item features; rows left with no events go."""
    _update_items(conn, _item_deltas(events, config), config, -1)


def category_levels(path: str | None) -> list[tuple[str, str]]:
    """``[("top", "A"), ("leaf", "A > B > C")]`` for ``"A > B > C"``; empty for no category."""
    if not path:
        return []
    segments = category_segments(path)
    if not segments:
        return []
    return [("top", segments[0]), ("leaf", CATEGORY_SEP.join(segments))]


def clear(conn: sqlite3.Connection) -> None:
    """Empty the counts before a rebuild; the category affinity stays (see the module docstring)."""
    for table in ("item_features", "user_features"):
        conn.execute(f"DELETE FROM {table}")


# --------------------------------------------------------------------------- reads


def _rates(counts: Mapping[str, int]) -> dict[str, float | None]:
    views = counts["view"]
    return {"ctr": counts["click"] / views if views else None,
            "conversion": counts["purchase"] / views if views else None}


def item_stats(conn: sqlite3.Connection, item_id: str, now: float, config: FeatureConfig) -> dict[str, Any]:
    """Counts, rates, mean rating and popularity at ``now``; zeros for an item without events."""
    cols = _cols(ITEM_COUNTS)
    row = conn.execute(f"SELECT {', '.join(cols)}, rating_sum, pop_score, pop_as_of FROM item_features "
                       "WHERE item_id = ?", (item_id,)).fetchone()
    n = len(cols)
    values = row[:n] if row else [0] * n
    counts = {t.value: int(v) for t, v in zip(ITEM_COUNTS, values)}
    ratings = counts["rating"]
    return {
        "item_id": item_id, "events": sum(counts.values()), "counts": counts, **_rates(counts),
        "rating_avg": row[n] / ratings if row and ratings else None,
        "popularity": score_at(row[n + 1], row[n + 2], now, config.half_life_s) if row else 0.0,
        "popularity_half_life_s": config.half_life_s,
    }


def user_stats(conn: sqlite3.Connection, user_id: str) -> dict[str, Any]:
    """Counts, rates, first/last event time and category affinity; zeros for an unknown user."""
    cols = _cols(USER_COUNTS)
    row = conn.execute(f"SELECT {', '.join(cols)}, first_ts, last_ts FROM user_features WHERE user_id = ?",
                       (user_id,)).fetchone()
    n = len(cols)
    counts = {t.value: int(v) for t, v in zip(USER_COUNTS, row[:n] if row else [0] * n)}
    cats: dict[str, dict[str, int]] = {"top": {}, "leaf": {}}
    for level, cat, count in conn.execute(
            "SELECT level, category, n FROM user_categories WHERE user_id = ? ORDER BY n DESC, category",
            (user_id,)):
        cats.setdefault(level, {})[cat] = int(count)
    return {
        "user_id": user_id, "events": sum(counts.values()), "counts": counts, **_rates(counts),
        "first_event_at": row[n] if row else None, "last_event_at": row[n + 1] if row else None,
        "categories": cats,
    }


def popularity_scan(conn: sqlite3.Connection) -> Iterable[tuple[str, float, float]]:
    """(item_id, score, as_of) of every item with events."""
    return conn.execute("SELECT item_id, pop_score, pop_as_of FROM item_features")
