"""The recommendation ranker bootstrapped from the shop's own histories (engine/evaluation/history.py):
lists made by the serving path on stores without the targets, and the ranker trained on them."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.errors import InvalidQuery
from engine.evaluation.history import history_rows
from engine.events import Event, EventType, open_event_store
from engine.learn import registry
from engine.learn.train import train_from_logs
from engine.ranking.features import RECOMMEND_FEATURES
from engine.service import Engine

SHOPPERS = 30


def _histories(config: EngineConfig, encoder: Encoder) -> dict[str, list[str]]:
    """30 shoppers of 4 distinct catalog items each, and one of a single item."""
    ids = list(Engine(config, encoder=encoder).snapshot().catalog.ids)
    rng = np.random.default_rng(3)
    out = {f"h{u:02d}": [ids[int(i)] for i in rng.choice(len(ids), size=4, replace=False)] for u in range(SHOPPERS)}
    out["lone"] = [ids[0]]
    return out


def _store(url: str, hist: dict[str, list[str]], t0: float, *, drop_last: bool = False) -> None:
    """Each shopper's items, one minute apart: the first viewed twice (a repeat, one item of the history),
    the middle ones viewed, the last clicked and bought; ``drop_last`` leaves out each shopper's last item."""
    store = open_event_store(url)
    try:
        events = []
        for u, items in hist.items():
            for j, item in enumerate(items[:-1] if drop_last else items):
                kinds = ["view", "view"] if j == 0 else ["click", "purchase"] if j == len(items) - 1 else ["view"]
                for n, kind in enumerate(kinds):
                    events.append(Event(f"{u}-{j}-{n}", u, EventType(kind), t0 + 60.0 * j + n, item))
        store.add_many(events)
    finally:
        store.close()


def test_history_lists_are_the_serving_paths_features_on_a_store_without_the_targets(
        config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    hist = _histories(config, encoder)
    t0 = time.time() - 86400.0
    _store(config.events_url, hist, t0)
    rows = history_rows(config, depths=(2,), val_depth=1, seq=False, work=tmp_path)
    # One list per shopper with an item at the depth: the lone shopper has none; a repeat is one item.
    assert len(rows.val.groups) == SHOPPERS and len(rows.train.groups) == SHOPPERS
    assert rows.info["depths"]["1"]["lists"] == SHOPPERS
    assert rows.val.X.shape == (sum(rows.val.groups), len(RECOMMEND_FEATURES))
    off = np.concatenate([[0], np.cumsum(rows.val.groups)])
    assert all(rows.val.y[a:b].sum() <= 1 for a, b in zip(off[:-1], off[1:]))
    assert rows.val.y.sum() >= 1 and rows.val.with_positive().groups

    # The first shopper's validation list is what a server computes for them on a store holding every
    # shopper's events but their last item: made here independently, and asked through the engine.
    cut = tmp_path / "cut.db"
    _store(f"sqlite:///{cut}", hist, t0, drop_last=True)
    engine = Engine(config.replace(events_url=f"sqlite:///{cut}", log_impressions=False), encoder=encoder)
    recs = engine.shoppers.recommend("h00", k=100, features=True)
    assert recs.later is not None
    served = np.array([[f[n] for n in RECOMMEND_FEATURES] for f in recs.later()], np.float32)
    assert served.shape[0] == rows.val.groups[0]
    assert np.allclose(rows.val.X[:off[1]], served, rtol=1e-4, atol=1e-5)
    target = hist["h00"][-1]
    assert rows.val.y[:off[1]].tolist() == [float(r.id == target) for r in recs.recommendations]
    col = RECOMMEND_FEATURES.index("history_len")
    # Before the target: 3 items in 4 events (the first viewed twice); the server counts the events.
    assert np.allclose(rows.val.X[:off[1], col], np.log1p(4))


def test_a_ranker_trained_on_the_histories_is_published_with_its_sequence_model(
        config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    hist = _histories(config, encoder)
    _store(config.events_url, hist, time.time() - 86400.0)
    with pytest.raises(InvalidQuery, match="at least 20"):
        train_from_logs(config, "recommend", publish=False)  # no logged list at all
    boot = history_rows(config, depths=(2,), val_depth=1, work=tmp_path)
    assert boot.seq is not None
    manifest = train_from_logs(config, "recommend", bootstrap=boot, force=True)
    training = manifest["training"]
    assert training["data"] == "logs+history"
    assert training["logged"] == {"train_lists": 0, "val_lists": 0, "dropped_without_seq": 0}
    assert training["history"]["val_lists"] == len(boot.val.with_positive().groups)
    version = manifest["version"]
    assert registry.current_version(config.rankers_path, "recommend") == version
    model, _ = registry.load_version(config.rankers_path, "recommend", version, RECOMMEND_FEATURES)
    assert model.seq is not None and model.seq.dim == boot.seq.dim
    with pytest.raises(InvalidQuery, match="recommend ranker only"):
        train_from_logs(config, "search", bootstrap=boot)


def test_logged_lists_served_without_a_sequence_model_stay_out_of_a_bootstrap_with_one(
        config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    """Lists served before any sequence model logged seq = seq_z = 0 on every row, which no bootstrap row has:
    joined, the MLP learns that value as "a logged list, clicked" (see train_from_logs). They stay out; the
    lists served by the published model, whose seq features were logged, join."""
    hist = _histories(config, encoder)
    _store(config.events_url, hist, time.time() - 86400.0)
    engine = Engine(config, encoder=encoder, log_impressions=True)
    col = [RECOMMEND_FEATURES.index("seq"), RECOMMEND_FEATURES.index("seq_z")]

    def serve_and_click(tag: str) -> list[float]:
        """Ten shoppers each click the first item of their list; the logged lists' largest |seq| values."""
        seq = []
        for i in range(10):
            recs = engine.recommend(f"h{i:02d}", k=5)
            rows = [r.features for r in recs.recommendations if r.features is not None]
            seq.append(max((abs(f[RECOMMEND_FEATURES[c]]) for f in rows for c in col), default=-1.0))
            engine.ingest([{"event_id": f"{tag}-{i}", "user_id": f"h{i:02d}", "type": "click",
                            "item_id": recs.recommendations[0].id, "request_id": recs.request_id, "position": 1}])
        assert engine.impressions is not None
        engine.impressions.flush()
        return seq

    serve_and_click("blend")  # no ranker yet: the blend, its deferred features with seq 0
    boot = history_rows(config, depths=(2,), val_depth=1, work=tmp_path)
    assert boot.seq is not None
    first = train_from_logs(config, "recommend", bootstrap=boot, force=True)["training"]["logged"]
    assert first == {"train_lists": 0, "val_lists": 0, "dropped_without_seq": 10}

    assert engine.rankers.get("recommend") is not None
    served = serve_and_click("model")  # the published model and its sequence model
    assert min(served) > 0, "the model's lists carry seq features"
    second = train_from_logs(config, "recommend", bootstrap=boot, force=True)["training"]["logged"]
    assert second["dropped_without_seq"] == 10 and second["train_lists"] + second["val_lists"] == 10


def test_a_feature_the_histories_hold_constant_is_held_until_the_logs_outnumber_them(
        config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    """Histories of purchases alone give every bootstrap row the same item_ctr (no clicks, no views), so only
    the logged rows could teach it, and a few lists teach noise (see train_from_logs). The logged rows carry the
    bootstrap's value and the model's bounds hold it there at serving, until the logs hold as many lists as
    the bootstrap."""
    hist = _histories(config, encoder)
    store = open_event_store(config.events_url)
    t0 = time.time() - 86400.0
    try:
        store.add_many([Event(f"{u}-{j}", u, EventType.PURCHASE, t0 + 60.0 * j, item)
                        for u, items in hist.items() for j, item in enumerate(items)])
    finally:
        store.close()
    boot = history_rows(config, depths=(2,), val_depth=1, work=tmp_path)
    ctr = RECOMMEND_FEATURES.index("item_ctr")
    assert np.ptp(np.concatenate([boot.train.X[:, ctr], boot.val.X[:, ctr]])) == 0
    engine = Engine(config, encoder=encoder, log_impressions=True)

    def serve_and_click(tag: str, shoppers: int) -> None:
        for i in range(shoppers):
            recs = engine.recommend(f"h{i:02d}", k=5)
            engine.ingest([{"event_id": f"{tag}-{i}", "user_id": f"h{i:02d}", "type": "click",
                            "item_id": recs.recommendations[0].id, "request_id": recs.request_id, "position": 1}])
        assert engine.impressions is not None
        engine.impressions.flush()

    train_from_logs(config, "recommend", bootstrap=boot, force=True)  # a model with its sequence model serves
    assert engine.rankers.get("recommend") is not None
    serve_and_click("few", 10)
    manifest = train_from_logs(config, "recommend", bootstrap=boot, force=True)
    logged = manifest["training"]["logged"]
    assert logged["train_lists"] + logged["val_lists"] == 10
    held = logged["held_at_history_value"]
    assert held["item_ctr"] == pytest.approx(float(boot.val.X[0, ctr]), abs=1e-6)
    assert "position" not in held  # it varies in logged rows alone by design
    model, _ = registry.load_version(config.rankers_path, "recommend", manifest["version"], RECOMMEND_FEATURES)
    X = np.asarray(boot.val.X[:20], np.float32).copy()
    before = model.score(X)
    X[:, ctr] = np.linspace(0.0, 0.5, len(X))  # clicked items' rates, as the logs would serve them
    assert np.array_equal(model.score(X), before)

    serve_and_click("many", SHOPPERS)  # now more logged lists than the bootstrap's
    assert SHOPPERS + 10 >= len(boot.train.with_positive().groups)
    logged = train_from_logs(config, "recommend", bootstrap=boot, force=True)["training"]["logged"]
    assert "held_at_history_value" not in logged


def test_train_ranker_from_the_histories_on_the_command_line(config: EngineConfig, encoder: Encoder,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`vitrine train ranker --surface recommend --data history`: a shop with histories and no logged list yet
    gets a ranker (the logs alone need 20 clicked lists), published with its sequence model."""
    _store(config.events_url, _histories(config, encoder), time.time() - 86400.0)
    for name, value in (("EVENTS_URL", config.events_url), ("MODELS_DIR", str(config.models_path))):
        monkeypatch.setenv(f"VITRINE_{name}", value)
    base = ["--index-dir", str(config.index_dir), "train", "ranker"]
    assert main(base + ["--surface", "recommend", "--data", "logs"]) == 2  # no logged list: refused
    capsys.readouterr()
    assert main(base + ["--surface", "recommend", "--data", "history", "--force"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["training"]["data"] == "logs+history" and manifest["training"]["history"]["train_lists"] > 0
    assert registry.current_version(config.rankers_path, "recommend") == manifest["version"]
    model, _ = registry.load_version(config.rankers_path, "recommend", manifest["version"], RECOMMEND_FEATURES)
    assert model.seq is not None
    assert main(base + ["--surface", "search", "--data", "history"]) == 2
    assert "data" in capsys.readouterr().err
