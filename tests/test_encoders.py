"""Encoders: contract, ONNX/torch parity, export idempotence, semantic sanity."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.embedding.base import DIM
from engine.embedding.factory import PROBE_TEXTS, build_encoder, check_compatible
from engine.embedding.onnx_encoder import OnnxEncoder, export_onnx
from engine.embedding.st import SentenceTransformerEncoder

LONG = " ".join(f"word{i} spectrometer calibration" for i in range(300))  # far beyond 256 tokens
TEXTS = ["pla filament", "3D printer PLA filament 1.75mm", "nitrile gloves", "", "Ünïcödé 東京 🚀", LONG,
         "Borosilicate glass beaker 600 ml, low form, graduated", "usb c cable 2m"]


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tmp_path_factory.mktemp("models") / "minilm-onnx-fp32")


@pytest.fixture(scope="session")
def onnx_enc(onnx_dir: Path) -> OnnxEncoder:
    return OnnxEncoder(onnx_dir, threads=1)


@pytest.fixture(scope="session")
def torch_enc() -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder()


@pytest.fixture(params=["onnx", "torch"])
def enc(request: pytest.FixtureRequest, onnx_enc: OnnxEncoder, torch_enc: SentenceTransformerEncoder):
    return onnx_enc if request.param == "onnx" else torch_enc


def test_contract(enc) -> None:
    v = enc.encode(TEXTS)
    assert enc.dim == DIM
    assert enc.family == "all-MiniLM-L6-v2/fp32"
    assert v.shape == (len(TEXTS), DIM) and v.dtype == np.float32 and v.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_names(onnx_enc: OnnxEncoder, torch_enc: SentenceTransformerEncoder) -> None:
    assert onnx_enc.name == "all-MiniLM-L6-v2/onnx-fp32"
    assert torch_enc.name == "all-MiniLM-L6-v2/torch-fp32"


def test_empty_input(enc) -> None:
    v = enc.encode([])
    assert v.shape == (0, DIM) and v.dtype == np.float32


def test_batch_equals_one_by_one(enc) -> None:
    batched = enc.encode(TEXTS, batch_size=3)
    single = np.vstack([enc.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_onnx_matches_torch(onnx_enc: OnnxEncoder, torch_enc: SentenceTransformerEncoder) -> None:
    assert check_compatible(onnx_enc, torch_enc, TEXTS + list(PROBE_TEXTS)) >= 0.9999


def test_truncation_matches(onnx_enc: OnnxEncoder, torch_enc: SentenceTransformerEncoder) -> None:
    # Text beyond 256 tokens: only the first 256 count, so an extra tail changes nothing.
    a = onnx_enc.encode([LONG, LONG + " completely different tail about gardening tools"])
    np.testing.assert_allclose(a[0], a[1], atol=1e-6)
    assert float(a[0] @ torch_enc.encode([LONG])[0]) >= 0.9999


def test_export_metadata(onnx_dir: Path) -> None:
    meta = json.loads((onnx_dir / "export.json").read_text())
    assert len(meta["source_sha256"]) == 64
    assert meta["max_abs_diff_vs_torch"] < 1e-4
    assert {"torch_version", "onnx_version", "onnxruntime_version"} <= meta.keys()
    assert not [p for p in onnx_dir.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_export_idempotent(onnx_dir: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in onnx_dir.iterdir()}
    assert export_onnx(onnx_dir) == onnx_dir
    assert {p.name: p.stat().st_mtime_ns for p in onnx_dir.iterdir()} == before


def test_build_encoder_reuses_export(onnx_dir: Path) -> None:
    enc = build_encoder("onnx", cache_dir=onnx_dir.parent, threads=1)
    assert isinstance(enc, OnnxEncoder) and enc.model_dir == onnx_dir
    with pytest.raises(ValueError):
        build_encoder("tensorflow", cache_dir=onnx_dir.parent)


def test_semantic_sanity(enc) -> None:
    q, pla, gloves = enc.encode(["pla filament", "3D printer PLA filament 1.75mm", "nitrile gloves"])
    assert float(q @ pla) > float(q @ gloves)


def test_probe_set() -> None:
    assert 40 <= len(PROBE_TEXTS) <= 60 and max(len(t) for t in PROBE_TEXTS) > 1000


@pytest.mark.slow
def test_fused_export(tmp_path: Path, onnx_enc: OnnxEncoder) -> None:
    d = export_onnx(tmp_path / "fused", optimize=True)
    meta = json.loads((d / "export.json").read_text())
    assert meta["optimize"] is True and meta["max_abs_diff_vs_torch"] < 1e-4
    assert check_compatible(OnnxEncoder(d), onnx_enc) >= 0.9999  # plain graph == torch, tested above
