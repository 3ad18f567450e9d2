"""Personalization math, in one place: a shopper's affinity to items and how it re-ranks search results.

Affinity of a shopper to candidate rows: ``z(content) + COOC_WEIGHT * z(co-occurrence)`` over the candidate
set, where content is the shopper's interest profile scored against the items' vectors (kernel ``BETA``) and
co-occurrence scores the items taken together with the shopper's recent items (recency weights
``HISTORY_DECAY ** age``). Personalized search orders by ``(1 - p) * z(fused) + p * affinity``, with
strength ``p`` in [0, 1] (``EngineConfig.personalize``; 0 is off). ``COOC_WEIGHT`` and ``p`` are tuned by
``vitrine eval personalized-search`` on Scientific validation, which ranks with these same functions.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from engine.ranking.scores import zscore
from engine.recommend.compose import BETA, HISTORY_DECAY, Touch
from engine.recommend.content import InterestProfile
from engine.recommend.live import LiveModels
from engine.snapshot import Snapshot

COOC_WEIGHT = 8.0  # co-occurrence beside content in a shopper's affinity (tuned: eval personalized-search)

Affinity = Callable[[np.ndarray], np.ndarray]


def personal_score(content: np.ndarray, cooccurrence: np.ndarray, cooc_weight: float = COOC_WEIGHT) -> np.ndarray:
    """A shopper's affinity to candidates: ``z(content) + w * z(co-occurrence)`` over the candidate set."""
    return zscore(np.asarray(content, np.float64)) + cooc_weight * zscore(np.asarray(cooccurrence, np.float64))


def personalized(fused: np.ndarray, personal: np.ndarray, strength: float) -> np.ndarray:
    """Search scores re-ranked for a shopper: ``(1 - p) * z(fused) + p * personal`` (``personal`` is already
    a sum of z-scores, see :func:`personal_score`); ``fused`` when p = 0."""
    if strength <= 0:
        return fused
    return (1 - strength) * zscore(fused) + strength * np.asarray(personal, np.float64)


def affinity(snap: Snapshot, live: LiveModels, history: Sequence[Touch], profile: InterestProfile) -> Affinity:
    """``rows -> personal_score`` of a shopper with this ``history`` (oldest first) and ``profile``."""
    recent = [(t.item_id, HISTORY_DECAY ** age) for age, t in enumerate(reversed(history))]
    with live.current() as models:
        scored = models.cooccurrence.scores(recent)
    ids = snap.catalog.ids

    def score(rows: np.ndarray) -> np.ndarray:
        content, _ = profile.score(np.asarray(snap.vectors[rows]), BETA)
        cooc = np.array([scored.get(ids[r], (0.0, None))[0] for r in rows], np.float64)
        return personal_score(content, cooc, COOC_WEIGHT)

    return score
