"""`vitrine build --ray`: a real build sharded over a local 2-CPU Ray cluster gives a local build's vectors.

The module starts its own Ray instance (``ray.init(num_cpus=2)``) and always stops it (``ray.shutdown``); the
Ray build runs as the `vitrine` command in a subprocess that joins that cluster by its address, the local
build runs here with a cold embedding cache in another index directory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import ray

from tests.conftest import DEMO_CATALOG, ROOT, free_port, make_config
from engine import pipeline
from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.index import versions
from engine.ray_build import RayEncoderPool, shard_size, wanted
from engine.service import Engine

ITEMS = 500  # demo catalog rows: ~500 texts to embed, so two shards of one encoder step (256) each
QUERIES = ("glass beaker", "nitrile gloves", "ph meter", "soldering iron", "3d printer filament", "microscope")


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray cluster of 2 CPUs for this module; stopped afterwards, failures included."""
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    try:
        yield str(ctx.address_info["gcs_address"])
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ray-catalog") / "catalog.jsonl"
    with DEMO_CATALOG.open(encoding="utf-8") as src:
        path.write_text("".join(line for _, line in zip(range(ITEMS), src)), encoding="utf-8")
    return path


def current_vectors(index_dir: Path) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    current = versions.current_dir(index_dir)
    ids = [json.loads(line)["id"] for line in (current / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    return ids, np.load(current / "vectors.npy"), versions.read_manifest(current)


def test_ray_build_matches_local_build(ray_address: str, small_catalog: Path, tmp_path: Path,
                                       models_dir: Path, encoder: Encoder) -> None:
    ray_dir, local_dir = tmp_path / "ray" / "indexes", tmp_path / "local" / "indexes"
    env = dict(os.environ, VITRINE_MODELS_DIR=str(models_dir))
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--index-dir", str(ray_dir), "build", "--catalog", str(small_catalog),
         "--ray", ray_address],
        # ~10 s on a quiet machine; once 300 s ran out beside a heavy job (load 5, 2 items/s), so 600
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ray " in out.stderr and "embed " in out.stderr  # the progress lines: encoders starting, then shards

    local = pipeline.build(make_config(local_dir, models_dir), small_catalog, encoder=encoder)  # cold cache
    ray_ids, ray_vectors, manifest = current_vectors(ray_dir)
    local_ids, local_vectors, local_manifest = current_vectors(local_dir)
    assert ray_ids == local_ids and ray_vectors.shape == local_vectors.shape == (ITEMS, encoder.dim)
    assert float(np.abs(ray_vectors - local_vectors).max()) <= 1e-6

    info = manifest["embedding"]["ray"]
    assert info["workers"] == 1 and info["cpus"] == 2 and info["shards"] == 2, info
    assert manifest["counts"]["embedded"] == local_manifest["counts"]["embedded"] > 0
    assert manifest["embedding"]["family"] == local.manifest["embedding"]["family"]
    assert "ray" not in local.manifest["embedding"]

    # The published versions serve the same results.
    engines = [Engine(make_config(d, models_dir), encoder=encoder) for d in (ray_dir, local_dir)]
    for query in QUERIES:
        a, b = (e.search(query, k=10) for e in engines)
        assert [h.id for h in a.hits] == [h.id for h in b.hits], query
        assert np.allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-6), query

    # The driver wrote the Ray vectors into the same embedding cache a local build reads: nothing to embed.
    again = pipeline.build(make_config(ray_dir, models_dir), small_catalog, encoder=encoder, ray="off")
    assert again.manifest["counts"]["embedded"] == 0
    assert np.array_equal(np.load(again.path / "vectors.npy"), ray_vectors)


def test_unreachable_cluster_fails_fast_and_publishes_nothing(small_catalog: Path, tmp_path: Path,
                                                              models_dir: Path) -> None:
    index = tmp_path / "indexes"
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--index-dir", str(index), "build", "--catalog", str(small_catalog),
         "--quiet", "--ray", f"127.0.0.1:{free_port()}"],
        cwd=ROOT, env=dict(os.environ, VITRINE_MODELS_DIR=str(models_dir)), capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1 and "cannot reach a Ray cluster" in out.stderr, out.stderr[-2000:]
    assert versions.current_version(index) is None


def test_ray_pool_reuses_this_process_connection(ray_address: str, models_dir: Path, encoder: Encoder) -> None:
    """In-process (``ray`` already initialised): shards come back whole, in any order, as a local encode."""
    texts = [f"lab item number {i} " + "with a longer description " * (i % 7) for i in range(300)]
    config: EngineConfig = make_config(models_dir.parent / "unused", models_dir)
    with RayEncoderPool("auto", kind=config.encoder.value, models_path=models_dir,
                        max_seq_length=config.max_seq_length) as pool:
        got = np.zeros((len(texts), encoder.dim), dtype=np.float32)
        seen = []
        for offset, vecs in pool.encode(texts, step=128, batch_size=32):
            got[offset:offset + len(vecs)] = vecs
            seen.append((offset, len(vecs)))
        assert pool.describe()[0]["family"] == encoder.family
    assert ray.is_initialized()  # the module's connection stays open
    assert sorted(seen) == [(0, 256), (256, 44)]  # shards of two steps of 128
    expected = np.vstack([encoder.encode(texts[i:i + 128], batch_size=32) for i in range(0, len(texts), 128)])
    assert float(np.abs(got - expected).max()) <= 1e-6


def test_shards_are_whole_encoder_steps() -> None:
    assert shard_size(100_000, 4, 256) == 2048  # capped at SHARD_TEXTS
    assert shard_size(500, 1, 256) == 256  # two shards for one worker
    assert shard_size(3000, 2, 256) == 768  # about two shards per worker
    assert shard_size(10, 8, 256) == 256  # at least one step
    assert all(shard_size(n, w, 256) % 256 == 0 for n in (1, 999, 5000, 10**6) for w in (1, 3, 16))
    assert wanted(None) is None and wanted("off") is None and wanted(" ") is None
    assert wanted("auto") == "auto" and wanted("10.0.0.5:6379") == "10.0.0.5:6379"
