"""The one z-score of the engine: fusion, personalization and the recommendation blender all use it."""
from __future__ import annotations

import numpy as np


def zscore(x: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """Z-score ``(x - mean) / std`` along the last axis over the ``eligible`` entries (all when ``None``);
    float64, population std.

    Ineligible entries come out as 0, and so does a source with zero spread over the eligible rows."""
    x = np.asarray(x, np.float64)
    if x.ndim == 1:  # one shopper (the serving path): fewer passes over the catalog
        e1 = None if eligible is None else np.asarray(eligible, bool)
        xe = x if e1 is None else x[e1]
        if not len(xe):
            return np.zeros_like(x)
        mean = xe.mean()
        std = float(np.sqrt(np.mean((xe - mean) ** 2)))
        if std <= 1e-12:
            return np.zeros_like(x)
        out: np.ndarray = (x - mean) / std
        if e1 is not None:
            out[~e1] = 0.0
        return out
    e = np.ones(x.shape, bool) if eligible is None else np.broadcast_to(np.asarray(eligible, bool), x.shape)
    cnt = np.maximum(e.sum(axis=-1, keepdims=True), 1)
    xe = np.where(e, x, 0.0)
    mean = xe.sum(axis=-1, keepdims=True) / cnt
    var = (np.where(e, x - mean, 0.0) ** 2).sum(axis=-1, keepdims=True) / cnt
    std = np.sqrt(var)
    safe = np.where(std > 1e-12, std, 1.0)
    return np.where(e & (std > 1e-12), (x - mean) / safe, 0.0)
