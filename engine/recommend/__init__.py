"""Recommendations: candidate sources, a profile of each shopper, and the blender that merges them.

Every source is a plain class over numpy arrays and dicts, fed incrementally, with no pickling:

- :mod:`engine.recommend.content`: a shopper's interest vectors, built from item embeddings weighted by
  event type and recency (``p <- decay * p + w * v`` per event); scored against every item vector
  (inner product, exact or through FAISS).
- :mod:`engine.recommend.cooccurrence`: item-to-item co-occurrence and transitions from all shoppers'
  sequences, updated as events arrive.
- :mod:`engine.recommend.popular`: popularity with an optional half-life (trending), for cold start.
- :mod:`engine.recommend.blend`: z-score normalisation per source, tuned weights, exclusions and
  filters, MMR diversity and a reason for every recommendation.

Item keys: the co-occurrence and trending models key items by any hashable id (the shop's item id in
production, so that they survive index versions; catalog rows in the evaluation). Dense arrays are
indexed by catalog row; ``to_csr`` / ``scores_dense`` take a ``{key: row}`` mapping to bridge the two.
"""
from __future__ import annotations

from engine.recommend.blend import BlendWeights, Blender, Recommendation, eligible_mask
from engine.recommend.content import DEFAULT_EVENT_WEIGHTS, InterestProfile, event_weight, score_profiles
from engine.recommend.cooccurrence import CooccurrenceModel
from engine.recommend.popular import TrendingModel

__all__ = [
    "DEFAULT_EVENT_WEIGHTS",
    "BlendWeights",
    "Blender",
    "CooccurrenceModel",
    "InterestProfile",
    "Recommendation",
    "TrendingModel",
    "eligible_mask",
    "event_weight",
    "score_profiles",
]
