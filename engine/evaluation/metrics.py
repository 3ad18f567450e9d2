"""Ranking metrics. Gains are graded (any non-negative number); ranks start at 1."""
from __future__ import annotations

import math
from typing import Sequence


def dcg(gains: Sequence[float], k: int) -> float:
    """Discounted cumulative gain with linear gain: sum of gain_i / log2(i + 1) over the first k."""
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))


def ndcg_at_k(ranked_gains: Sequence[float], all_gains: Sequence[float], k: int) -> float:
    """nDCG@k of a ranking, given the gains in ranked order and every judged gain of the query.

    A query whose judged gains are all zero scores 0 (it cannot be ranked well or badly)."""
    ideal = dcg(sorted(all_gains, reverse=True), k)
    return dcg(ranked_gains, k) / ideal if ideal > 0 else 0.0


def recall_at_k(ranked: Sequence[object], relevant: set[object], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def reciprocal_rank(ranked: Sequence[object], relevant: set[object]) -> float:
    for i, item in enumerate(ranked, start=1):
        if item in relevant:
            return 1.0 / i
    return 0.0
