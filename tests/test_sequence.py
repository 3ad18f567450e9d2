"""Issue 9, part 8: the sequence model behind the ranker's ``seq`` features learns what comes next, runs in
numpy exactly as torch trained it, travels inside the ranker's file, and serves the scores the offline rows
were built with."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.learn import registry
from engine.learn.model import MlpRanker, ModelError
from engine.learn.sequence import SeqConfig, SeqModel, score_matrix, train_seq
from engine.learn.train import _served_seq
from engine.ranking.features import RECOMMEND_FEATURES
from engine.service import Engine

COL = {name: i for i, name in enumerate(RECOMMEND_FEATURES)}
SMALL = SeqConfig(dim=16, layers=2, epochs=30, lr=5e-3, dropout=0.0)  # two layers: the export of a stack


def chains(n: int = 30, count: int = 400) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    """Items 0..n-1 with random unit text vectors; every shopper walks i, i+1, i+2, ... (mod n)."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    seqs = [(int(rng.integers(0, n)) + np.arange(int(rng.integers(2, 25)))) % n for _ in range(count)]
    return vectors, [f"i{j}" for j in range(n)], seqs


def by_seq(model: SeqModel) -> MlpRanker:
    """A one-layer ranker scoring candidates by the sequence model's score alone, carrying the model."""
    F = len(RECOMMEND_FEATURES)
    W = np.zeros((F, 1), np.float32)
    W[COL["seq"], 0] = 1.0
    return MlpRanker(RECOMMEND_FEATURES, np.zeros(F, np.float32), np.ones(F, np.float32), [(W, np.zeros(1, np.float32))],
                     model)


def test_it_learns_what_comes_next_and_numpy_runs_it_as_torch_did() -> None:
    vectors, ids, seqs = chains()
    model = train_seq(seqs, vectors, ids, SMALL)
    assert model.info is not None and model.info["export_max_diff"] < 1e-4
    hists = [np.array([3, 4, 5]), np.array([10]), np.array([28, 29]), (7 + np.arange(12)) % 30, (1 + np.arange(25)) % 30]
    nxt = [(int(h[-1]) + 1) % 30 for h in hists]
    assert score_matrix(model, hists, vectors, ids).argmax(axis=1).tolist() == nxt
    # One shopper at a time (serving) gives the batch's scores.
    one = model.scores(vectors[hists[0]], [ids[r] for r in hists[0]], vectors, ids)
    assert np.allclose(one, score_matrix(model, hists[:1], vectors, ids)[0], atol=1e-5)
    assert np.array_equal(model.scores(vectors[:0], [], vectors, ids), np.zeros(30)), "no history, no opinion"
    # Fixed seeds give the same model bit for bit, with two threads too: without torch's deterministic
    # algorithms, two-thread backward passes summed in another order from run to run (checked: not equal).
    assert SMALL.threads == 2
    again = train_seq(seqs, vectors, ids, SMALL)
    assert np.array_equal(score_matrix(again, hists, vectors, ids), score_matrix(model, hists, vectors, ids))
    assert not torch.are_deterministic_algorithms_enabled(), "the setting is put back after training"


def test_it_travels_in_the_rankers_file_and_a_damaged_one_is_refused(config: EngineConfig) -> None:
    vectors, ids, seqs = chains()
    seq = train_seq(seqs, vectors, ids, SeqConfig(dim=16, epochs=2))
    version = registry.publish(config.rankers_path, "recommend", by_seq(seq), {"training": {"data": "test"}})
    loaded, manifest = registry.load_version(config.rankers_path, "recommend", version, RECOMMEND_FEATURES)
    assert loaded.seq is not None and manifest["model"]["sequence_model"]["item_vectors"] == 30
    h = np.array([1, 2, 3])
    assert np.array_equal(score_matrix(loaded.seq, [h], vectors, ids), score_matrix(seq, [h], vectors, ids))
    assert _served_seq(config, "recommend", RECOMMEND_FEATURES) is not None, "retraining on logs keeps it"

    folder = config.rankers_path / "damaged"
    folder.mkdir()
    arrays = {**seq.arrays(), "seq.l0.in_w": np.zeros((5, 5), np.float32)}
    model = by_seq(seq)
    model.seq = None
    model.save(folder)
    with np.load(folder / "weights.npz") as z:
        kept = {k: z[k] for k in z.files}
    kept.update(arrays)
    np.savez(folder / "weights.npz", allow_pickle=False, **kept)
    with pytest.raises(ModelError, match="sequence layer 0 in_w"):
        MlpRanker.load(folder)


def test_served_seq_features_are_the_offline_scores(config: EngineConfig, encoder: Encoder) -> None:
    """A published ranker with a sequence model: the seq feature of each recommended item is the score the
    offline rows (score_matrix) give the same history, and a ranker that follows it orders by it."""
    engine = Engine(config, encoder=encoder, log_impressions=True)
    snap = engine.snapshot()
    ids, vectors = snap.catalog.ids, np.asarray(snap.vectors)
    rng = np.random.default_rng(1)
    seqs = [rng.permutation(len(ids))[:8] for _ in range(60)]
    seq = train_seq(seqs, vectors, ids, SeqConfig(dim=16, epochs=3))
    registry.publish(config.rankers_path, "recommend", by_seq(seq), {"training": {"data": "test"}})
    history = ["goggles", "fil-pla-red", "gloves-latex"]
    now = time.time()
    engine.ingest([{"event_id": f"sq-{i}", "user_id": "sq", "type": "view", "item_id": item, "timestamp": now - 10 + i}
                   for i, item in enumerate(history)])
    recs = engine.recommend("sq", k=6).recommendations
    offline = score_matrix(seq, [np.array([snap.catalog.row(i) for i in history])], vectors, ids)[0]
    served = [r.features["seq"] for r in recs if r.features is not None]
    assert len(served) == 6
    assert np.allclose(served, [offline[snap.catalog.row(r.id)] for r in recs], atol=1e-4)
    assert served == sorted(served, reverse=True), "the ranker follows the seq feature"
    assert any(abs(r.features["seq_z"]) > 0 for r in recs if r.features is not None)
