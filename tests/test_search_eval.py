"""`vitrine eval search` on a six-query slice of CrowdFlower, cut from ../shared/data at test time."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import pandas as pd
import pytest

from engine.config import EngineConfig
from engine.evaluation.search_eval import run_search_eval
from tests.conftest import ROOT

SOURCE = ROOT.parent / "shared" / "data" / "crowdflower_search_relevance" / "train.csv.gz"


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Path:
    df = pd.read_csv(SOURCE, keep_default_na=False)
    queries = sorted(df["query"].unique())
    even = [q for q in queries if zlib.crc32(q.encode()) % 2 == 0][:3]
    odd = [q for q in queries if zlib.crc32(q.encode()) % 2 == 1][:3]
    out = tmp_path / "data" / "crowdflower_search_relevance"
    out.mkdir(parents=True)
    df[df["query"].isin(even + odd)].to_csv(out / "train.csv.gz", index=False)
    return tmp_path / "data"


def test_eval_reports_on_the_odd_half_after_tuning_on_the_even_half(config: EngineConfig, tiny_data_dir: Path) -> None:
    report = run_search_eval(config, "crowdflower", data_dir=tiny_data_dir)
    data = report.to_dict()
    assert data["queries"] == {"tune": 3, "report": 3}
    assert "even" in data["split"] and "odd" in data["split"]
    for split in ("report", "tune"):
        assert all(0.0 < data[split][name] <= 1.0 for name in ("bm25", "vector", "hybrid"))
    # The grid contains weight 0 (BM25 order) and 1 (vector order), so the tuned hybrid can't lose on the tune half.
    assert data["tune"]["hybrid"] >= max(data["tune"]["bm25"], data["tune"]["vector"])
    json.dumps(data)
    assert any("odd" in line for line in report.lines())
