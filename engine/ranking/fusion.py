"""Score fusion for hybrid search: BM25 and vector scores of one candidate set -> one score.

``minmax``: each part scaled to [0, 1] over the candidate set, then ``weight * vector + (1 - weight) * bm25``.
``zscore`` (the engine's default, ``EngineConfig.fusion``): the same with z-scores.
``rrf``: reciprocal rank fusion, ``weight/(60 + rank_vec) + (1-weight)/(60 + rank_bm25)``
(k = 60 per Cormack et al. 2009). Candidates missing from one side score 0 there.
"""
from __future__ import annotations

import numpy as np

from engine.ranking.scores import zscore
from engine.types import Fusion

RRF_K = 60


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(-x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    return ranks


def fuse(bm25: np.ndarray, vector: np.ndarray, weight: float, method: Fusion | str = Fusion.MINMAX) -> np.ndarray:
    """Fused scores (float64, same length as the inputs); higher is better. ``weight`` is the vector share."""
    method = Fusion(method)
    bm25 = np.asarray(bm25, np.float64)
    vector = np.asarray(vector, np.float64)
    if len(bm25) == 0:
        return np.zeros(0)
    if method is Fusion.RRF:
        return weight / (RRF_K + _ranks(vector)) + (1 - weight) / (RRF_K + _ranks(bm25))
    scale = _minmax if method is Fusion.MINMAX else zscore
    return weight * scale(vector) + (1 - weight) * scale(bm25)
