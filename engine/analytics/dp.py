"""Differential privacy for the analytics reports: the Laplace mechanism and the per-key daily budget.

A report released with ``dp_epsilon = eps`` adds independent Laplace noise of scale ``sensitivity / eps``
to every count it releases, where ``sensitivity`` is the report's L1 sensitivity to adding or removing one
shopper *after* each shopper's contribution is clipped (each report states its clip): this is
eps-differential privacy for the counts (Dwork et al. 2006, "Calibrating noise to sensitivity").
Keys that are not public (search queries) are released only when their noisy count passes a threshold,
which makes those tables (eps, delta)-DP with the stated delta (Korolova et al. 2009).
Ratios and segments are computed from the noisy counts (post-processing, no extra cost).

Budget: each key has ``daily_budget`` epsilon per UTC day; every DP request spends its epsilon before
the report is computed (sequential composition) in one store transaction, and is refused once the
remainder is smaller than the epsilon asked.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from engine.errors import InvalidQuery, PrivacyBudgetExhausted
from engine.events import EventStore

MIN_EPSILON = 0.01
MAX_EPSILON = 10.0
DELTA = 1e-6  # for the thresholded (query-keyed) tables only

PRIVACY_DDL = ("CREATE TABLE IF NOT EXISTS analytics_privacy (day TEXT NOT NULL, key TEXT NOT NULL, "
               "spent REAL NOT NULL, requests INTEGER NOT NULL, PRIMARY KEY (day, key))")


def secure_rng() -> np.random.Generator:
    """A generator seeded from ``os.urandom`` (256 bits): the served noise."""
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "little")))


def check_epsilon(value: float | None) -> float | None:
    if value is None:
        return None
    if not MIN_EPSILON <= value <= MAX_EPSILON:
        raise InvalidQuery("dp_epsilon", f"must be in {MIN_EPSILON}..{MAX_EPSILON}, got {value}")
    return float(value)


@dataclass(frozen=True)
class Laplace:
    """Laplace noise of scale ``sensitivity / epsilon``; variance ``2 (sensitivity / epsilon)**2``."""

    epsilon: float
    sensitivity: float
    rng: np.random.Generator

    @property
    def scale(self) -> float:
        return self.sensitivity / self.epsilon

    def noise(self, size: int) -> np.ndarray:
        """``size`` independent draws, float64 of shape ``(size,)``."""
        return self.rng.laplace(0.0, self.scale, size)

    def counts(self, values: np.ndarray | list[float]) -> np.ndarray:
        """Noisy counts, rounded and clamped at 0 (post-processing)."""
        arr = np.asarray(values, dtype=np.float64)
        out: np.ndarray = np.maximum(np.rint(arr + self.noise(arr.size)), 0.0)
        return out

    def threshold(self, per_key: float, keys_per_shopper: int, delta: float = DELTA) -> float:
        """The noisy count a non-public key needs to be released: one shopper's keys (each holding at most
        ``per_key`` of its count) all pass it with probability at most ``delta`` in total."""
        return per_key + self.scale * math.log(keys_per_shopper / (2 * delta))


def utc_day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).date().isoformat()


class PrivacyBudget:
    """The per-key daily epsilon budget, kept in the event store (``analytics_privacy``). Thread- and
    process-safe: a check and its spend are one write transaction."""

    def __init__(self, store: Callable[[], EventStore], daily_budget: float) -> None:
        self._store = store
        self.daily_budget = daily_budget
        self._ready = False

    def _ensure(self) -> EventStore:
        store = self._store()
        if not self._ready:
            store.ensure_tables([PRIVACY_DDL])
            self._ready = True
        return store

    def spend(self, key: str, epsilon: float, *, now: float | None = None) -> dict[str, Any]:
        """Spend ``epsilon`` of today's budget of ``key``; :class:`PrivacyBudgetExhausted` if it is short."""
        day = utc_day(time.time() if now is None else now)

        def fn(conn: sqlite3.Connection) -> float:
            row = conn.execute("SELECT spent FROM analytics_privacy WHERE day = ? AND key = ?", (day, key)).fetchone()
            spent = float(row[0]) if row else 0.0
            if spent + epsilon > self.daily_budget + 1e-9:
                raise PrivacyBudgetExhausted(
                    f"privacy budget exhausted: {key} spent {spent:g} of its daily {self.daily_budget:g} epsilon on "
                    f"{day} (UTC); this request asks {epsilon:g}. Ask a smaller dp_epsilon or wait for the next day",
                    remaining=max(self.daily_budget - spent, 0.0))
            conn.execute("INSERT INTO analytics_privacy VALUES (?, ?, ?, 1) ON CONFLICT (day, key) DO UPDATE SET "
                         "spent = spent + excluded.spent, requests = requests + 1", (day, key, epsilon))
            return spent + epsilon

        spent = self._ensure().run_write(fn)
        return {"day": day, "key": key, "daily_budget": self.daily_budget, "spent": round(spent, 9),
                "remaining": round(max(self.daily_budget - spent, 0.0), 9)}

    def status(self, key: str, *, days: int = 7, now: float | None = None) -> dict[str, Any]:
        """Today's spend of ``key`` and the last ``days`` days' history (newest first)."""
        now = time.time() if now is None else now
        day = utc_day(now)
        first = utc_day(now - (days - 1) * 86400)
        rows = self._ensure().run_read(lambda c: c.execute(
            "SELECT day, spent, requests FROM analytics_privacy WHERE key = ? AND day >= ? ORDER BY day DESC",
            (key, first)).fetchall())
        today = next((r for r in rows if r[0] == day), None)
        spent = float(today[1]) if today else 0.0
        return {"day": day, "key": key, "daily_budget": self.daily_budget, "spent": round(spent, 9),
                "remaining": round(max(self.daily_budget - spent, 0.0), 9),
                "requests": int(today[2]) if today else 0,
                "history": [{"day": d, "spent": round(float(s), 9), "requests": int(n)} for d, s, n in rows]}
