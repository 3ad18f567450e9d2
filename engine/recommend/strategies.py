"""Recommendation strategies: the arms a bandit or the Q-learning policy chooses among (issue 10).

Each strategy is the blender's machinery with other source weights, and for two of them a narrower set of
rows, so that every strategy keeps the exclusions, filters, reasons and ranker features of the blend:

========  ==========================================================================================
blend     the tuned blend (:class:`BlendWeights`), what serves without a policy
content   the shopper's interest profile against the items (weights content 1, popularity 0.1)
cooccurrence  items taken together with the recent ones (co-occurrence 1, content 0.2, popularity 0.1)
trending  what is popular lately (popularity 1, content and co-occurrence 0.1)
new       items nobody has touched yet (no stored event: trending score exactly 0), by content similarity
category  the blend within the leaf category the shopper's last ``CATEGORY_WINDOW`` items fall in most
          (ties: the most recent); the whole catalog for a shopper without history
========  ==========================================================================================

The weights are not tuned: a strategy is a distinct kind of list for the policy to choose, and the small
secondary weights only break the ties of a source that is flat for this shopper.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from engine.catalog import category_key
from engine.errors import InvalidQuery
from engine.recommend.blend import BlendWeights

STRATEGIES = ("blend", "content", "cooccurrence", "trending", "new", "category")
ARMS = STRATEGIES[1:]  # what a bandit chooses among (the blend mixes them)
CATEGORY_WINDOW = 10

WEIGHTS = {
    "blend": BlendWeights(),
    "content": BlendWeights(content=1.0, cooccurrence=0.0, popular=0.1),
    "cooccurrence": BlendWeights(content=0.2, cooccurrence=1.0, popular=0.1),
    "trending": BlendWeights(content=0.1, cooccurrence=0.1, popular=1.0),
    "new": BlendWeights(content=1.0, cooccurrence=0.0, popular=0.0),
    "category": BlendWeights(),
}


def check_strategy(strategy: str | None, field: str = "strategy") -> str:
    """``strategy`` (None: ``blend``) if it is one of :data:`STRATEGIES`, else ``InvalidQuery`` naming ``field``."""
    if strategy is None:
        return "blend"
    if strategy not in WEIGHTS:
        raise InvalidQuery(field, f"must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return strategy


def strategy_rows(strategy: str, *, popular: np.ndarray, category_rows: dict[str, np.ndarray], history_categories: Sequence[str]) -> np.ndarray | None:
    """Bool ``(n,)`` mask of the rows ``strategy`` may recommend (None: all). ``popular``: trending scores
    over the rows; ``category_rows``: category key -> rows (the snapshot's); ``history_categories``: the
    leaf category paths of the shopper's known items, oldest first."""
    if strategy == "new":
        return np.asarray(np.asarray(popular) == 0, bool)
    if strategy == "category" and history_categories:
        recent = [c for c in history_categories[-CATEGORY_WINDOW:] if c]
        if not recent:
            return None
        counts = Counter(recent)
        best = max(counts.values())
        leaf = next(c for c in reversed(recent) if counts[c] == best)
        mask = np.zeros(len(popular), bool)
        mask[category_rows.get(category_key(leaf), np.empty(0, np.int64))] = True
        return mask
    return None
