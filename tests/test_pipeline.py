"""Build, incremental rebuild, publish, rollback, pruning and crash safety of the index versions."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import pipeline
from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.errors import BuildInProgress, CatalogError, NotFound
from engine.index import versions
from engine.service import Engine
from tests.conftest import DEMO_CATALOG, FIXTURE_CATALOG, ROOT


def edited_catalog(tmp_path: Path, changes: dict[str, str], name: str = "catalog.jsonl") -> Path:
    """The fixture catalog with some titles replaced."""
    out = tmp_path / name
    with FIXTURE_CATALOG.open(encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
        for line in src:
            row = json.loads(line)
            row["title"] = changes.get(row["id"], row["title"])
            dst.write(json.dumps(row) + "\n")
    return out


def test_manifest_records_the_build(index_dir: Path) -> None:
    manifest = versions.read_manifest(versions.current_dir(index_dir))
    assert manifest["model"] == "all-MiniLM-L6-v2" and manifest["dims"] == 384
    assert manifest["counts"]["items"] == 31
    assert manifest["index"]["spec"] == "Flat" and manifest["index"]["recall_at_10"] == 1.0
    assert manifest["catalog"]["content_hash"] and manifest["catalog"]["file_sha256"]
    assert manifest["embedding"]["family"] == "all-MiniLM-L6-v2/fp32"
    version_dir = versions.current_dir(index_dir)
    for name in ("items.jsonl", "vectors.npy", "vectors.faiss", "bm25"):
        assert (version_dir / name).exists()
    assert not list(version_dir.rglob("*.pkl")) and not list(version_dir.rglob("*.pickle"))


def test_incremental_rebuild_embeds_only_changed_items(config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    changed = edited_catalog(tmp_path, {"goggles": "Safety Goggles, Anti-Fog, Tinted Lens"})
    result = pipeline.build(config, changed, encoder=encoder)
    assert result.manifest["counts"]["embedded"] == 1
    assert result.manifest["counts"]["from_cache"] == 30
    full = pipeline.build(config, changed, full=True, encoder=encoder)
    assert full.manifest["counts"]["embedded"] == 31


def test_title_vectors_are_the_titles_embedded_alone(config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    import numpy as np

    snap = Engine(config, encoder=encoder).snapshot()
    assert snap.title_vectors is not None and snap.title_vectors.dtype == np.float16
    titles = [p.title for p in snap.catalog]
    expected = encoder.encode(titles)
    assert np.abs(np.asarray(snap.title_vectors, np.float32) - expected).max() < 1e-3  # float16
    # ... and not the full texts' vectors: a title alone embeds differently from title + description.
    assert (np.asarray(snap.title_vectors, np.float32) * snap.vectors).sum(axis=1).mean() < 0.95
    row = snap.catalog.row("goggles")
    q = encoder.encode(["safety goggles"])[0]
    assert snap.title_scores(q, np.array([row]))[0] == pytest.approx(float(expected[row] @ q), abs=2e-3)
    # An edited title is embedded again (once for the text, once for the title); the rest come from the cache.
    changed = edited_catalog(tmp_path, {"goggles": "Safety Goggles, Anti-Fog, Tinted Lens"})
    result = pipeline.build(config, changed, encoder=encoder)
    assert result.manifest["counts"]["embedded"] == 1
    assert result.manifest["embedding"]["title_vectors"]["embedded"] == 1
    # Without them (``title_vectors = false``): no file, and the title features are 0.
    plain = pipeline.build(config.replace(title_vectors=False), FIXTURE_CATALOG, encoder=encoder)
    assert not (plain.path / "title_vectors.npy").exists() and plain.manifest["embedding"]["title_vectors"] is None
    assert Engine(config, encoder=encoder).snapshot().title_scores(q, np.array([row])) is None


def test_new_version_is_served_and_rollback_restores(config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    engine = Engine(config, encoder=encoder)
    first = engine.snapshot().version
    changed = edited_catalog(tmp_path, {"magnet-neodymium": "Quartz Crystal Oscillator 16MHz"})
    second = pipeline.build(config, changed, encoder=encoder).version
    assert engine.snapshot().version == second
    assert engine.item("magnet-neodymium").title == "Quartz Crystal Oscillator 16MHz"
    assert pipeline.rollback(config) == (second, first)
    assert engine.snapshot().version == first
    assert engine.item("magnet-neodymium").title.startswith("Neodymium")
    with pytest.raises(NotFound):
        pipeline.rollback(config)


def test_rollback_walks_back_the_served_history(config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    """Issue 8: A -> build B -> rollback (A) -> build C -> rollback serves A, not B (the newest older folder)."""
    a = versions.current_version(config.index_dir)
    b = pipeline.build(config, edited_catalog(tmp_path, {"calipers": "Calipers B"}, "b.jsonl"), encoder=encoder).version
    assert pipeline.rollback(config) == (b, a)
    c = pipeline.build(config, edited_catalog(tmp_path, {"calipers": "Calipers C"}, "c.jsonl"), encoder=encoder).version
    assert versions.served_history(config.index_dir)[-2:] == [a, c]
    assert pipeline.rollback(config) == (c, a)
    assert versions.current_version(config.index_dir) == a
    assert b in versions.list_versions(config.index_dir)  # kept on disk, but no longer in the history
    with pytest.raises(NotFound):
        pipeline.rollback(config)


def test_rollback_waits_for_no_build(config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    pipeline.build(config, edited_catalog(tmp_path, {"calipers": "Calipers B"}), encoder=encoder)
    before = versions.current_version(config.index_dir)
    with pipeline.build_lock(config.index_dir):
        with pytest.raises(BuildInProgress):
            pipeline.rollback(config)
    assert versions.current_version(config.index_dir) == before


def test_keeps_the_last_versions(config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    made = [versions.current_version(config.index_dir)]
    for i in range(4):
        made.append(pipeline.build(config, edited_catalog(tmp_path, {"calipers": f"Calipers v{i}"}), encoder=encoder).version)
    assert versions.list_versions(config.index_dir) == made[-3:]
    assert versions.current_version(config.index_dir) == made[-1]


def test_one_build_at_a_time(config: EngineConfig, encoder: Encoder) -> None:
    with pipeline.build_lock(config.index_dir):
        with pytest.raises(BuildInProgress):
            pipeline.build(config, FIXTURE_CATALOG, encoder=encoder)


def test_catalog_without_valid_rows_is_refused(config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,title\n,no id\nx,\n", encoding="utf-8")
    before = versions.current_version(config.index_dir)
    with pytest.raises(CatalogError):
        pipeline.build(config, bad, encoder=encoder)
    assert versions.current_version(config.index_dir) == before


def test_builds_from_csv(config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    csv_file = tmp_path / "c.csv"
    csv_file.write_text(
        'id,title,category,price,in_stock\nA1,"<b>Red</b> PLA filament",3D > Filament,19.5,yes\n'
        "A2,Nitrile gloves,Safety > Gloves,9,no\n",
        encoding="utf-8",
    )
    result = pipeline.build(config, csv_file, encoder=encoder)
    engine = Engine(config, encoder=encoder)
    assert engine.item("A1").title == "Red PLA filament"
    assert engine.item("A2").in_stock is False and result.manifest["counts"]["items"] == 2


def test_leftover_staging_folder_is_ignored_then_removed(config: EngineConfig, encoder: Encoder) -> None:
    staging = config.index_dir / f"{versions.STAGING_PREFIX}v20990101-000000-000000-deadbeef"
    (staging / "bm25").mkdir(parents=True)
    (staging / "manifest.json").write_text("{ half written", encoding="utf-8")
    assert staging.name not in versions.list_versions(config.index_dir)
    Engine(config, encoder=encoder).search("gloves")  # still serves the published version
    pipeline.build(config, FIXTURE_CATALOG, encoder=encoder)
    assert not staging.exists()


def test_build_killed_half_way_leaves_the_previous_version_serving(config: EngineConfig, encoder: Encoder) -> None:
    before = versions.current_version(config.index_dir)
    job = config.index_dir / "kill-job.json"
    env = dict(os.environ, VITRINE_INDEX_DIR=str(config.index_dir), VITRINE_MODELS_DIR=str(config.models_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "build", "--catalog", str(DEMO_CATALOG), "--quiet", "--job-file", str(job)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            state = json.loads(job.read_text()) if job.exists() else {}
            if state.get("stage") == "embed" and state.get("done", 0) > 0:
                break
            assert proc.poll() is None, "the build ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the build never reached the embedding stage")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert versions.current_version(config.index_dir) == before
    engine = Engine(config, encoder=encoder)
    assert engine.search("pla filament").hits
    # The lock died with the process: the next build runs, and reuses what the killed one embedded.
    result = pipeline.build(config, FIXTURE_CATALOG, encoder=encoder)
    assert versions.current_version(config.index_dir) == result.version
    shutil.rmtree(config.index_dir / "cache", ignore_errors=True)


def test_incremental_builds_reuse_ivf_centroids_until_the_catalog_drifts(config: EngineConfig, encoder: Encoder,
                                                                         tmp_path: Path) -> None:
    # 600 bytes/item: at 1,400 items the 128 IVF centroids alone cost 140 bytes an item (500 fits nothing)
    config = config.replace(approx_threshold=1000, index_bytes_per_item=600)
    with DEMO_CATALOG.open(encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(1400), fh)]
    catalog = tmp_path / "catalog.jsonl"

    def build(items: list[dict]) -> dict:
        catalog.write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
        return pipeline.build(config, catalog, encoder=encoder).manifest["index"]

    first = build(rows)
    assert first["kind"] == "ivf" and first["quantizer"] == "trained"
    v1 = versions.current_version(config.index_dir)
    assert first["centroids"] == {"trained_in": v1, "changed_since_training": 0}
    rows[5]["title"] += " (2027 edition)"
    second = build(rows)
    assert second["quantizer"] == "reused" and second["recall_at_10"] >= config.target_recall
    assert second["centroids"] == {"trained_in": v1, "changed_since_training": 1}
    third = build(rows[:1100])  # 300 items gone: 301 changed since training > 20% of 1,100
    assert third["quantizer"] == "trained"
    assert third["centroids"] == {"trained_in": versions.current_version(config.index_dir), "changed_since_training": 0}
