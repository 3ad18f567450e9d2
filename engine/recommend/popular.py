"""Popularity and time-decayed trending: the cold-start source.

``score(i, now) = sum over i's events of w * 2 ** (-(now - t) / half_life_s)``; with ``half_life_s = None``
it is the plain weighted count (for data without timestamps). Kept lazily, O(1) per event: each item
stores ``acc_i = sum w * 2 ** ((t - t_ref) / half_life_s)`` relative to one reference time, and
``score(i, now) = acc_i * 2 ** (-(now - t_ref) / half_life_s)``. When an event lands more than 64
half-lives after ``t_ref`` every accumulator is rebased (O(items), once in 64 half-lives), so nothing
overflows. Events may arrive slightly out of order; the formula holds for any order.
"""
from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np

Key = Hashable
_REBASE = 64.0


class TrendingModel:
    def __init__(self, half_life_s: float | None = None) -> None:
        if half_life_s is not None and not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0 or None, got {half_life_s}")
        self.half_life_s = half_life_s
        self.acc: dict[Key, float] = {}
        self.t_ref: float | None = None
        self.last_t: float | None = None
        self.n_events = 0

    def add_event(self, item: Key, weight: float = 1.0, timestamp: float | None = None) -> None:
        """O(1) (amortised: a rebase is O(items) once every 64 half-lives)."""
        w = float(weight)
        if self.half_life_s is not None:
            if timestamp is None:
                raise ValueError("a trending model with a half-life needs event timestamps")
            if self.t_ref is None:
                self.t_ref = float(timestamp)
            if (timestamp - self.t_ref) / self.half_life_s > _REBASE:
                self._rebase(float(timestamp))
            w *= 2.0 ** ((timestamp - self.t_ref) / self.half_life_s)
        if timestamp is not None:
            self.last_t = timestamp if self.last_t is None else max(self.last_t, timestamp)
        self.acc[item] = self.acc.get(item, 0.0) + w
        self.n_events += 1

    def _rebase(self, t: float) -> None:
        if self.t_ref is None or self.half_life_s is None:
            return
        f = 2.0 ** (-(t - self.t_ref) / self.half_life_s)
        self.acc = {k: v * f for k, v in self.acc.items()}
        self.t_ref = t

    def _factor(self, now: float | None) -> float:
        if self.half_life_s is None or self.t_ref is None:
            return 1.0
        now = self.last_t if now is None else now
        factor: float = 2.0 ** (-((now if now is not None else self.t_ref) - self.t_ref) / self.half_life_s)
        return factor

    def score(self, item: Key, now: float | None = None) -> float:
        """Decayed score at ``now`` (default: the latest event time)."""
        return self.acc.get(item, 0.0) * self._factor(now)

    def scores(self, items: Sequence[Key], now: float | None = None) -> np.ndarray:
        """:meth:`score` of each of ``items``, ``(len(items),)`` float64."""
        acc = self.acc
        return np.fromiter((acc.get(i, 0.0) for i in items), np.float64, len(items)) * self._factor(now)

    def scores_dense(self, rows: Mapping[Any, int], n: int, now: float | None = None) -> np.ndarray:
        """Scores over catalog rows, ``(n,)`` float64 (0 for items without events)."""
        out = np.zeros(n, np.float64)
        f = self._factor(now)
        for k, v in self.acc.items():
            r = rows.get(k)
            if r is not None:
                out[r] = v * f
        return out

    def top(self, k: int, now: float | None = None) -> list[tuple[Key, float]]:
        """The ``k`` highest items, ties by key order of first appearance."""
        f = self._factor(now)
        ranked = sorted(enumerate(self.acc.items()), key=lambda e: (-e[1][1], e[0]))[:k]
        return [(key, v * f) for _, (key, v) in ranked]
