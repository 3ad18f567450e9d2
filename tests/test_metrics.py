"""Ranking metrics against values computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.evaluation.metrics import dcg, ndcg_at_k, recall_at_k, reciprocal_rank
from engine.ranking.fusion import fuse


def test_dcg_by_hand() -> None:
    # 3/log2(2) + 2/log2(3) + 0 + 1/log2(5)
    assert dcg([3, 2, 0, 1], 10) == pytest.approx(3 + 2 / math.log2(3) + 1 / math.log2(5))
    assert dcg([3, 2, 0, 1], 1) == 3


def test_ndcg_perfect_worst_and_partial() -> None:
    gains = [0, 1, 3]
    assert ndcg_at_k([3, 1, 0], gains, 10) == pytest.approx(1.0)
    worst = (0 + 1 / math.log2(3) + 3 / 2) / (3 + 1 / math.log2(3))
    assert ndcg_at_k([0, 1, 3], gains, 10) == pytest.approx(worst)
    assert ndcg_at_k([0, 0], [0, 0], 10) == 0.0


def test_recall_and_rr() -> None:
    assert recall_at_k(["a", "b", "c"], {"c", "z"}, 2) == 0.0
    assert recall_at_k(["a", "b", "c"], {"c", "z"}, 3) == 0.5
    assert reciprocal_rank(["a", "b", "c"], {"c"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["a"], {"c"}) == 0.0


def test_fusion_by_hand() -> None:
    bm25 = np.array([0.0, 5.0, 10.0])
    vec = np.array([0.9, 0.5, 0.1])
    # minmax: bm25 -> [0, .5, 1], vec -> [1, .5, 0]
    assert fuse(bm25, vec, 0.25, "minmax") == pytest.approx([0.25, 0.5, 0.75])
    rrf = fuse(bm25, vec, 0.5, "rrf")
    assert rrf[1] == pytest.approx(0.5 / 62 + 0.5 / 62)
    assert fuse(np.zeros(3), vec, 1.0, "zscore").argmax() == 0
    assert len(fuse(np.zeros(0), np.zeros(0), 0.5)) == 0
