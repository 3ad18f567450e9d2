"""Issue 9: learned rankers are published like index versions and hot-reloaded by the server.

Real files and real models (small numpy MLPs); nothing of engine.learn is mocked.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from engine.config import EngineConfig
from engine.errors import NotFound
from engine.index import versions as index_versions
from engine.learn import registry
from engine.ranking.features import RECOMMEND_FEATURES, SEARCH_FEATURES
from engine.learn.model import MlpRanker, ModelError
from engine.learn.serve import Rankers

FEATURES = {"recommend": RECOMMEND_FEATURES, "search": SEARCH_FEATURES}
NAME_RE = re.compile(r"^recommend-\d{8}T\d{6}Z-[0-9a-f]{6}$")


def make_model(seed: int, features: Sequence[str] = RECOMMEND_FEATURES, hidden: int = 4) -> MlpRanker:
    rng = np.random.default_rng(seed)
    width = len(features)
    return MlpRanker(
        tuple(features), rng.normal(size=width).astype(np.float32),
        rng.uniform(0.5, 2.0, size=width).astype(np.float32),
        [(rng.normal(size=(width, hidden)).astype(np.float32), rng.normal(size=hidden).astype(np.float32)),
         (rng.normal(size=(hidden, 1)).astype(np.float32), np.zeros(1, np.float32))])


def manifest(rows: int = 100) -> dict[str, Any]:
    return {"training": {"span": ["2024-01-01T00:00:00Z", "2024-01-31T00:00:00Z"], "rows": rows, "lists": 10,
                         "data": "impressions"},
            "metrics": {"ndcg@10": 0.5}}


def X(features: Sequence[str] = RECOMMEND_FEATURES) -> np.ndarray:
    return np.random.default_rng(7).normal(size=(9, len(features))).astype(np.float32)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return tmp_path / "rankers"


def test_publish_writes_a_loadable_version_with_its_manifest(root: Path) -> None:
    model = make_model(1)
    v = registry.publish(root, "recommend", model, manifest())
    assert NAME_RE.match(v)
    assert registry.current_version(root, "recommend") == v
    assert registry.current_version(root, "search") is None
    folder = root / "recommend" / v
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "weights.npz"]
    assert v.endswith(registry.read_manifest(root, "recommend", v)["sha256"][:6])
    m = registry.read_manifest(root, "recommend", v)
    assert m["features"] == list(RECOMMEND_FEATURES)
    assert m["surface"] == "recommend" and m["version"] == v
    assert m["training"]["rows"] == 100 and m["metrics"] == {"ndcg@10": 0.5}
    assert m["created_at"].startswith(v.split("-")[1][:4])
    loaded, _ = registry.load_version(root, "recommend", v, RECOMMEND_FEATURES)
    np.testing.assert_array_equal(loaded.score(X()), model.score(X()))
    [entry] = registry.list_versions(root, "recommend")
    assert entry["version"] == v and entry["current"] is True and entry["sha256"] == m["sha256"]
    assert json.loads((root / "recommend" / "history.json").read_text()) == {"served": [v]}
    assert not [p for p in (root / "recommend").iterdir() if p.name.startswith(".staging-")]


def test_keep_three_and_rollback(root: Path) -> None:
    vs = [registry.publish(root, "recommend", make_model(i), manifest()) for i in range(4)]
    assert len(set(vs)) == 4
    assert [e["version"] for e in registry.list_versions(root, "recommend")] == vs[1:]
    assert not (root / "recommend" / vs[0]).exists()

    assert registry.rollback(root, "recommend") == vs[2]
    assert registry.current_version(root, "recommend") == vs[2]
    assert registry.rollback(root, "recommend") == vs[1]
    with pytest.raises(NotFound, match="no earlier recommend ranker"):
        registry.rollback(root, "recommend")  # vs[0] was pruned
    assert registry.current_version(root, "recommend") == vs[1]

    # A new version after rollbacks: kept are it, the one served before it (the rollback target), and the
    # newest other one.
    v5 = registry.publish(root, "recommend", make_model(5), manifest())
    assert [e["version"] for e in registry.list_versions(root, "recommend")] == [vs[1], vs[3], v5]
    assert registry.rollback(root, "recommend") == vs[1]


def test_same_weights_twice_get_two_versions(root: Path) -> None:
    model = make_model(1)
    a = registry.publish(root, "recommend", model, manifest())
    b = registry.publish(root, "recommend", model, manifest(rows=200))
    assert a != b and a[-6:] == b[-6:]
    assert [e["version"] for e in registry.list_versions(root, "recommend")] == [a, b]
    assert registry.read_manifest(root, "recommend", b)["training"]["rows"] == 200


def test_concurrent_publishers_do_not_interleave(root: Path) -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(3):
                registry.publish(root, "recommend", make_model(seed * 10 + i), manifest())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    listed = registry.list_versions(root, "recommend")
    assert len(listed) == 3
    history = registry.served_history(root, "recommend")  # the pruned ones drop out
    assert history[-1] == registry.current_version(root, "recommend")
    assert [e["version"] for e in listed] == history


def test_bad_input_is_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="unknown ranker surface 'items'"):
        registry.publish(root, "items", make_model(1), manifest())
    with pytest.raises(ValueError, match="unknown ranker surface"):
        registry.current_version(root, "items")
    with pytest.raises(ValueError, match="set by publish"):
        registry.publish(root, "recommend", make_model(1), {**manifest(), "sha256": "0" * 64})
    broken = make_model(1)
    broken.layers[0][0][0, 0] = np.nan
    with pytest.raises(ModelError, match="non-finite"):
        registry.publish(root, "recommend", broken, manifest())
    with pytest.raises(ValueError, match="not a recommend ranker version name"):
        registry.read_manifest(root, "recommend", "../../etc")
    with pytest.raises(NotFound):
        registry.read_manifest(root, "recommend", "recommend-20240101T000000Z-abcdef")
    with pytest.raises(NotFound):
        registry.rollback(root, "recommend")
    assert registry.current_version(root, "recommend") is None
    assert registry.list_versions(root, "recommend") == []
    with pytest.raises(ValueError, match="unknown ranker surface"):
        Rankers(root, features={"items": RECOMMEND_FEATURES})


def test_with_nothing_published_get_is_none(root: Path) -> None:
    rankers = Rankers(root, features=FEATURES, check_s=0)
    assert rankers.get("recommend") is None and rankers.get("search") is None
    assert rankers.last_error("recommend") is None
    with pytest.raises(ValueError, match="unknown ranker surface"):
        rankers.get("items")


def test_a_newly_published_model_hot_reloads(root: Path) -> None:
    rankers = Rankers(root, features=FEATURES, check_s=0)
    assert rankers.get("recommend") is None
    m1, m2 = make_model(1), make_model(2)
    v1 = registry.publish(root, "recommend", m1, manifest())
    got = rankers.get("recommend")
    assert got is not None and got.version == v1 and got.manifest["version"] == v1
    np.testing.assert_array_equal(got.model.score(X()), m1.score(X()))
    assert rankers.get("recommend") is got  # unchanged pointer: the same object
    v2 = registry.publish(root, "recommend", m2, manifest())
    got = rankers.get("recommend")
    assert got is not None and got.version == v2
    np.testing.assert_array_equal(got.model.score(X()), m2.score(X()))
    assert rankers.get("search") is None  # surfaces are separate
    registry.rollback(root, "recommend")
    got = rankers.get("recommend")
    assert got is not None and got.version == v1
    os.unlink(root / "recommend" / "current")  # no pointer: the blend serves again
    assert rankers.get("recommend") is None


def test_the_pointer_is_checked_at_most_every_check_s(root: Path) -> None:
    now = [100.0]
    rankers = Rankers(root, features=FEATURES, check_s=5.0, clock=lambda: now[0])
    assert rankers.get("recommend") is None
    v1 = registry.publish(root, "recommend", make_model(1), manifest())
    now[0] += 4.9
    assert rankers.get("recommend") is None
    now[0] += 0.2
    got = rankers.get("recommend")
    assert got is not None and got.version == v1


def _truncate(folder: Path) -> None:
    path = folder / "weights.npz"
    path.write_bytes(path.read_bytes()[:100])


def _garble_with_matching_sha(folder: Path) -> None:
    import hashlib

    garbage = b"PK\x03\x04 not an archive" * 10
    (folder / "weights.npz").write_bytes(garbage)
    m = json.loads((folder / "manifest.json").read_text())
    m["sha256"] = hashlib.sha256(garbage).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(m))


def _bad_manifest(folder: Path) -> None:
    (folder / "manifest.json").write_text("{not json")


@pytest.mark.parametrize("damage, message", [
    (_truncate, "does not match the manifest's sha256"),
    (_garble_with_matching_sha, "not a readable weights archive"),
    (_bad_manifest, "manifest.json is not valid JSON"),
])
def test_a_corrupt_model_is_refused_and_the_previous_keeps_serving(
        root: Path, caplog: pytest.LogCaptureFixture, damage: Any, message: str) -> None:
    rankers = Rankers(root, features=FEATURES, check_s=0)
    v1 = registry.publish(root, "recommend", make_model(1), manifest())
    assert rankers.get("recommend") is not None
    v2 = registry.publish(root, "recommend", make_model(2), manifest())
    damage(root / "recommend" / v2)
    with caplog.at_level(logging.WARNING, logger="engine.learn.serve"):
        got = rankers.get("recommend")
        again = rankers.get("recommend")
    assert got is not None and got.version == v1 and again is got
    error = rankers.last_error("recommend")
    assert error is not None and error.startswith(f"recommend ranker {v2} refused: ") and message in error
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # not retried while the pointer stays
    assert f"still serving {v1}" in warnings[0].getMessage()
    # The pointer moves on (a rollback to the served version, then a good publish): the error clears.
    registry.rollback(root, "recommend")
    assert rankers.get("recommend") is got and rankers.last_error("recommend") is None
    v3 = registry.publish(root, "recommend", make_model(3), manifest())
    got = rankers.get("recommend")
    assert got is not None and got.version == v3 and rankers.last_error("recommend") is None


def test_a_corrupt_first_model_leaves_the_blend(root: Path) -> None:
    v1 = registry.publish(root, "recommend", make_model(1), manifest())
    _truncate(root / "recommend" / v1)
    rankers = Rankers(root, features=FEATURES, check_s=0)
    assert rankers.get("recommend") is None
    assert "corrupt or replaced" in (rankers.last_error("recommend") or "")
    with pytest.raises(ModelError, match="sha256"):
        registry.load_version(root, "recommend", v1)


def test_a_model_for_other_features_is_refused(root: Path) -> None:
    rankers = Rankers(root, features=FEATURES, check_s=0)
    v1 = registry.publish(root, "recommend", make_model(1), manifest())
    assert rankers.get("recommend") is not None
    registry.publish(root, "recommend", make_model(2, features=SEARCH_FEATURES), manifest())
    got = rankers.get("recommend")
    assert got is not None and got.version == v1
    assert "are not this engine's" in (rankers.last_error("recommend") or "")


def test_ranker_dir_setting_and_index_versions_ignore_it(tmp_path: Path) -> None:
    index_dir = tmp_path / "indexes"
    config = EngineConfig(index_dir=index_dir)
    assert config.ranker_dir is None and config.rankers_path == index_dir / "rankers"
    loaded = EngineConfig.load(env={"VITRINE_RANKER_DIR": str(tmp_path / "elsewhere")})
    assert loaded.ranker_dir == tmp_path / "elsewhere" and loaded.rankers_path == tmp_path / "elsewhere"
    assert EngineConfig.load(env={"VITRINE_RANKER_DIR": ""}).ranker_dir is None
    registry.publish(config.rankers_path, "recommend", make_model(1), manifest())
    assert index_versions.list_versions(index_dir) == []
    assert index_versions.current_version(index_dir) is None


def test_training_bounds_clip_served_values_and_travel_with_the_model(root: Path) -> None:
    from dataclasses import replace

    from engine.learn.model import merge_mlps

    plain = make_model(2)
    width = len(RECOMMEND_FEATURES)
    lo, hi = np.full(width, -1.0, np.float32), np.full(width, 1.0, np.float32)
    bounded = replace(plain, lo=lo, hi=hi)
    x = X()
    inside = np.clip(x, -0.5, 0.5)
    np.testing.assert_array_equal(bounded.score(inside), plain.score(inside))  # in range: unchanged
    far = x.copy()
    far[:, 3] = 1e6  # a feature far outside what training saw
    np.testing.assert_array_equal(bounded.score(far), plain.score(np.clip(far, -1.0, 1.0)))
    assert not np.allclose(plain.score(far), bounded.score(far))
    v = registry.publish(root, "recommend", bounded, manifest())
    loaded, _ = registry.load_version(root, "recommend", v, RECOMMEND_FEATURES)
    np.testing.assert_array_equal(loaded.lo, lo)
    np.testing.assert_array_equal(loaded.score(far), bounded.score(far))
    assert merge_mlps([bounded, replace(make_model(3), mean=bounded.mean, scale=bounded.scale, lo=lo, hi=hi)]).lo is lo
    with pytest.raises(ValueError, match="bounds"):
        merge_mlps([bounded, plain])
    for bad in (replace(plain, lo=lo), replace(plain, lo=hi, hi=lo), replace(plain, lo=lo[:3], hi=hi[:3])):
        with pytest.raises(ModelError, match="bounds"):
            bad.check()
