"""Personalization math, in one place: a shopper's affinity to items and how it re-ranks search results.

Affinity of a shopper to candidate rows: ``z(content) + COOC_WEIGHT * z(co-occurrence)`` over the candidate
set, where content is the shopper's interest profile scored against the items' vectors (kernel ``BETA``) and
co-occurrence scores the items taken together with the shopper's recent items (recency weights
``HISTORY_DECAY ** age``). Personalized search orders by ``(1 - p) * z(fused) + p * affinity``, with
strength ``p`` in [0, 1] (``EngineConfig.personalize``; 0 is off). ``COOC_WEIGHT`` and ``p`` are tuned by
``vitrine eval personalized-search`` on Scientific validation, which ranks with these same functions.
The search ranker reads the affinity's parts as well (:meth:`ShopperAffinity.parts`): the content score, the
raw co-occurrence with the recent items, and the history's share in each item's leaf category.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from engine.ranking.scores import zscore
from engine.recommend.compose import BETA, HISTORY_DECAY, Touch
from engine.recommend.content import InterestProfile
from engine.recommend.live import LiveModels
from engine.snapshot import Snapshot

COOC_WEIGHT = 8.0  # co-occurrence beside content in a shopper's affinity (tuned: eval personalized-search)

def personal_score(content: np.ndarray, cooccurrence: np.ndarray, cooc_weight: float = COOC_WEIGHT) -> np.ndarray:
    """A shopper's affinity to candidates: ``z(content) + w * z(co-occurrence)`` over the candidate set."""
    return zscore(np.asarray(content, np.float64)) + cooc_weight * zscore(np.asarray(cooccurrence, np.float64))


def personalized(fused: np.ndarray, personal: np.ndarray, strength: float) -> np.ndarray:
    """Search scores re-ranked for a shopper: ``(1 - p) * z(fused) + p * personal`` (``personal`` is already
    a sum of z-scores, see :func:`personal_score`); ``fused`` when p = 0."""
    if strength <= 0:
        return fused
    return (1 - strength) * zscore(fused) + strength * np.asarray(personal, np.float64)


PARTS = ("profile_sim", "cooc_recent", "category_share")  # ShopperAffinity.parts' columns


@dataclass(frozen=True)
class ShopperAffinity:
    """A shopper's affinity to candidate rows: :meth:`score` of their :meth:`parts`, which are also search
    ranker features: per row (``PARTS``), the profile's content score, the co-occurrence with the shopper's
    recent items (raw), and the share of the history in the row's leaf category."""

    snap: Snapshot
    profile: InterestProfile
    scored: Mapping[Any, tuple[float, Any]]  # item id -> (co-occurrence score with the recent items, via)
    leaf_share: np.ndarray  # per category code (Snapshot.category_code): the share of the history's events in it

    @staticmethod
    def score(parts: np.ndarray) -> np.ndarray:
        """The personal score over the rows of these :meth:`parts`."""
        return personal_score(parts[:, 0], parts[:, 1], COOC_WEIGHT)

    def parts(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), len(PARTS))`` float64."""
        rows = np.asarray(rows, np.int64)
        ids, scored = self.snap.catalog.ids, self.scored
        content, _ = self.profile.score(np.asarray(self.snap.vectors[rows]), BETA)
        cooc = np.fromiter((scored.get(ids[r], (0.0, None))[0] for r in rows.tolist()), np.float64, len(rows))
        return np.column_stack([np.asarray(content, np.float64), cooc,
                                self.leaf_share[self.snap.category_code[rows]]])


def affinity(snap: Snapshot, live: LiveModels, history: Sequence[Touch], profile: InterestProfile
             ) -> ShopperAffinity:
    """The affinity of a shopper with this ``history`` (oldest first, every item in ``snap``) and ``profile``."""
    recent = [(t.item_id, HISTORY_DECAY ** age) for age, t in enumerate(reversed(history))]
    with live.current() as models:
        scored = models.cooccurrence.scores(recent)
    share = np.zeros(len(snap.category_paths), np.float64)
    for c, n in Counter(int(snap.category_code[snap.catalog.row(t.item_id)]) for t in history).items():
        if snap.category_paths[c]:  # an unknown category is no one's leaf
            share[c] = n / len(history)
    return ShopperAffinity(snap, profile, scored, share)
