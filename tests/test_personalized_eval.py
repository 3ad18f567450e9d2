"""`vitrine eval personalized-search` on a 60-shopper slice of Scientific, cut at test time."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.evaluation.personalized_eval import Case, category_query, metrics, run_personalized_eval
from tests.conftest import make_config, scientific_slice


def test_rank_and_metrics_by_hand() -> None:
    # Candidates 0..3; the target (index 2) is third by fused score, first by the shopper's affinity.
    case = Case(fused=np.array([3.0, 2.0, 1.0, 0.0]), content=np.array([0.0, 0.0, 1.0, 0.0]),
                cooccurrence=np.zeros(4), target=2)
    assert case.rank(0.0) == 3
    assert case.rank(1.0, 0.0) == 1
    missing = Case(np.array([1.0]), np.array([1.0]), np.array([0.0]), target=-1)
    m = metrics([case, missing], 0.0)
    assert m["MRR"] == pytest.approx((1 / 3) / 2, abs=1e-4)
    assert m["NDCG@10"] == pytest.approx((1 / np.log2(4)) / 2, abs=1e-4)


def test_category_query_drops_the_root() -> None:
    assert category_query("Industrial & Scientific > Lab > Pipettes") == "Lab Pipettes"
    assert category_query("Industrial & Scientific") == "Industrial & Scientific"


def test_eval_on_a_slice(tmp_path: Path, models_dir: Path) -> None:
    data_dir = scientific_slice(tmp_path, 60)
    report = run_personalized_eval(make_config(tmp_path / "indexes", models_dir), data_dir=data_dir)
    data = report.to_dict()
    assert data["users"] == 60 and "derived" in data["queries"]
    for split in ("valid", "test"):
        for mode in ("off", "on"):
            assert 0.0 <= data[split][mode]["MRR"] <= 1.0
    # The grid holds p = 0, so the tuned setting can't be worse than "off" on validation.
    v = data["valid"]
    assert v["on"]["MRR"] + v["on"]["NDCG@10"] >= v["off"]["MRR"] + v["off"]["NDCG@10"]
    assert any("DERIVED" in line for line in report.lines())
