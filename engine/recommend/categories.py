"""Category transitions: how often a shopper's next item falls in leaf category ``b`` after one in ``a``.

A first-order Markov model over leaf categories, fed each shopper's consecutive items. It generalizes
where item co-occurrence is sparse: a new filament after a printer is likely even if no shopper has
bought that exact pair. ``log_prob(a, cats)`` is ``log((n(a->b) + ALPHA * p(b)) / (n(a->.) + ALPHA))``,
where ``p(b)`` is the smoothed share of transitions ending in ``b``: an unseen ``a`` falls back to ``p``.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

ALPHA = 5.0


class CategoryTransitions:
    def __init__(self) -> None:
        self.pairs: dict[str, dict[str, float]] = {}
        self.out: dict[str, float] = {}
        self.into: dict[str, float] = {}
        self.total = 0.0

    def add(self, a: str, b: str, weight: float = 1.0) -> None:
        """One shopper went from an item in leaf ``a`` to one in leaf ``b`` (unknown categories are skipped)."""
        if not a or not b:
            return
        row = self.pairs.setdefault(a, {})
        row[b] = row.get(b, 0.0) + weight
        self.out[a] = self.out.get(a, 0.0) + weight
        self.into[b] = self.into.get(b, 0.0) + weight
        self.total += weight

    def add_sequences(self, sequences: Iterable[Sequence[str]]) -> None:
        for seq in sequences:
            for a, b in zip(seq[:-1], seq[1:]):
                self.add(a, b)

    def log_prob(self, a: str, cats: Sequence[str]) -> np.ndarray:
        """``log P(b | a)`` for each ``b`` in ``cats`` (smoothed; see the module docstring)."""
        n_cats = len(self.into) + 1
        row = self.pairs.get(a, {})
        out_a = self.out.get(a, 0.0)
        memo: dict[str, float] = {}
        res = np.empty(len(cats), np.float64)
        for i, b in enumerate(cats):
            v = memo.get(b)
            if v is None:
                prior = (self.into.get(b, 0.0) + 1.0) / (self.total + n_cats)
                v = memo[b] = math.log((row.get(b, 0.0) + ALPHA * prior) / (out_a + ALPHA))
            res[i] = v
        return res
