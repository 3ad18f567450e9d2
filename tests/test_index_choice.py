"""The build's vector index choice under a memory budget (engine.index.vector.choose_index), through the
real pipeline on 2,500 real demo products: what it picks, what it records, what it refuses, and filtered
search served from the compressed codes. Real encoder, real FAISS, no mocks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine import pipeline
from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.errors import ConfigError
from engine.index import versions
from engine.index.vector import IndexChoiceError, VectorIndex, build_vector_index, recall_at_k
from engine.snapshot import Snapshot
from tests.conftest import DEMO_CATALOG, make_config

N_ITEMS = 2500
# At 2,500 items the 256 IVF centroids and the PQ tables add about 315 bytes per item, so 600 is tight:
# Flat (1,536), IVF-Flat, HNSW and the PQ refine stage do not fit; IVF-SQ8 and IVF-PQ do.
BUDGET = 600.0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, encoder: Encoder) -> tuple[EngineConfig, Path]:
    root = tmp_path_factory.mktemp("choice")
    with DEMO_CATALOG.open(encoding="utf-8") as fh:
        rows = [line for _, line in zip(range(N_ITEMS), fh)]
    catalog = root / "catalog.jsonl"
    catalog.write_text("".join(rows), encoding="utf-8")
    config = make_config(root / "indexes", models_dir, approx_threshold=1000, index_bytes_per_item=BUDGET,
                         target_recall=0.95)
    result = pipeline.build(config, catalog, encoder=encoder)
    return config, result.path


def test_tight_budget_picks_a_compressed_index_meeting_the_recall_it_reports(built: tuple[EngineConfig, Path]) -> None:
    config, path = built
    ix = versions.read_manifest(path)["index"]
    for key in ("spec", "kind", "recall_at_10", "bytes_per_item", "qps", "nprobe", "ef_search", "k_factor",
                "target_recall", "budget_bytes_per_item", "serves_from_codes", "candidates"):
        assert key in ix, key
    assert ix["spec"] not in ("Flat",) and not ix["spec"].endswith(",Flat") and ix["serves_from_codes"]
    assert ix["bytes_per_item"] <= BUDGET and ix["recall_at_10"] >= 0.95 and ix["qps"] > 0
    assert (path / "vectors.faiss").stat().st_size / N_ITEMS == pytest.approx(ix["bytes_per_item"], abs=0.1)
    tried = {c["spec"]: c for c in ix["candidates"]}
    assert tried["Flat"]["skipped"] and tried["HNSW32"]["skipped"]  # over budget: never built
    assert tried[ix["spec"]]["meets_target"]
    # Recompute the reported recall: the same held-out items as queries (each leaving itself out), exact
    # answers by numpy over the fp32 vectors, the served index with the recorded settings.
    vectors = np.load(path / "vectors.npy")
    served = VectorIndex.load(path / "vectors.faiss", None, ix["nprobe"], ef_search=ix["ef_search"],
                              k_factor=ix["k_factor"])
    own = np.sort(np.random.default_rng(1234).choice(N_ITEMS, size=500, replace=False))
    sims = vectors[own] @ vectors.T
    sims[np.arange(len(own)), own] = -np.inf
    truth = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    got = served.search(vectors[own], 11).rows
    got = np.array([[r for r in row if r != o][:10] for row, o in zip(got, own)])
    assert recall_at_k(truth, got) == pytest.approx(ix["recall_at_10"], abs=0.01)
    assert recall_at_k(truth, got) >= 0.95


def test_a_budget_no_candidate_meets_fails_naming_the_settings(built: tuple[EngineConfig, Path]) -> None:
    _, path = built
    vectors = np.load(path / "vectors.npy")
    with pytest.raises(IndexChoiceError) as e:  # nothing fits 40 bytes per item
        build_vector_index(vectors, approx_threshold=1000, bytes_per_item=40, target_recall=0.95)
    assert "index_bytes_per_item" in str(e.value) and "target_recall" in str(e.value)
    with pytest.raises(IndexChoiceError) as e:  # PQ fits 400 bytes but cannot reach 0.999
        build_vector_index(vectors, approx_threshold=1000, bytes_per_item=400, target_recall=0.999)
    assert "the best within the budget was" in str(e.value) and "target_recall 0.999" in str(e.value)
    assert isinstance(e.value, ConfigError)
    with pytest.raises(ConfigError, match="index_bytes_per_item"):
        EngineConfig(index_bytes_per_item=0)


def test_filtered_search_on_the_compressed_index_keeps_to_allowed_rows(built: tuple[EngineConfig, Path]) -> None:
    _, path = built
    snap = Snapshot.load(path)
    vindex = snap.vector_index
    assert vindex.vectors is None  # served from the codes, no fp32 array
    vectors = np.load(path / "vectors.npy")
    rng = np.random.default_rng(7)
    queries = vectors[rng.choice(N_ITEMS, 50, replace=False)]
    for share in (0.3, 0.03):  # FAISS with a selector; a decoded scan of the allowed rows
        allowed = rng.random(N_ITEMS) < share
        got = vindex.search(queries, 10, allowed=allowed).rows
        assert allowed[got[got >= 0]].all()
        sims = queries @ vectors.T
        sims[:, ~allowed] = -np.inf
        truth = np.argsort(-sims, axis=1, kind="stable")[:, :10]
        assert recall_at_k(truth, got) >= 0.95, share
    # Scores come from the codes: close to the exact ones.
    rows = np.arange(20)
    assert np.abs(vindex.score(queries[0], rows) - vectors[rows] @ queries[0]).max() < 0.01


def test_small_catalogs_stay_flat_and_exact(encoder: Encoder) -> None:
    with DEMO_CATALOG.open(encoding="utf-8") as fh:
        titles = [json.loads(line)["title"] for _, line in zip(range(300), fh)]
    index, info = build_vector_index(encoder.encode(titles), approx_threshold=1000, bytes_per_item=100)
    assert info.spec == "Flat" and info.recall_at_10 == 1.0 and not info.serves_from_codes
