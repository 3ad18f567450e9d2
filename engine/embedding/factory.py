"""Build an encoder by kind, and measure whether two encoders' vectors are interchangeable."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.embedding.base import Encoder
from engine.embedding.onnx_encoder import PROBE_TEXTS, OnnxEncoder, export_onnx
from engine.types import EncoderKind

log = logging.getLogger(__name__)

ONNX_DIRNAME = "minilm-onnx-fp32"
INT8_DIRNAME = "minilm-onnx-int8"
KINDS = tuple(k.value for k in EncoderKind)

__all__ = ["INT8_DIRNAME", "KINDS", "ONNX_DIRNAME", "PROBE_TEXTS", "build_encoder", "check_compatible"]


def build_encoder(kind: EncoderKind | str, *, cache_dir: Path, threads: int | None = None, max_seq_length: int = 256) -> Encoder:
    """``"onnx"``: export once into ``cache_dir/minilm-onnx-fp32`` then load it (``threads`` default 1);
    ``"onnx-int8"``: that export, quantized once into ``cache_dir/minilm-onnx-int8`` (``threads`` default 1);
    ``"torch"``: sentence-transformers (``threads`` default: torch's own setting)."""
    try:
        kind = EncoderKind(kind)
    except ValueError:
        raise ValueError(f"unknown encoder kind {kind!r}; expected one of {', '.join(KINDS)}") from None
    if kind is EncoderKind.ONNX:
        model_dir = export_onnx(Path(cache_dir) / ONNX_DIRNAME)
        return OnnxEncoder(model_dir, threads=threads if threads is not None else 1, max_seq_length=max_seq_length)
    if kind is EncoderKind.ONNX_INT8:
        from engine.embedding.int8 import OnnxInt8Encoder, quantize_onnx

        int8_dir = quantize_onnx(export_onnx(Path(cache_dir) / ONNX_DIRNAME), Path(cache_dir) / INT8_DIRNAME)
        return OnnxInt8Encoder(int8_dir, threads=threads if threads is not None else 1, max_seq_length=max_seq_length)
    from engine.embedding.st import SentenceTransformerEncoder

    return SentenceTransformerEncoder(max_seq_length=max_seq_length, threads=threads)


def check_compatible(a: Encoder, b: Encoder, probe: Sequence[str] | None = None) -> float:
    """Minimum cosine between ``a``'s and ``b``'s vectors over the probe texts (-1.0 if dims differ)."""
    texts = list(PROBE_TEXTS if probe is None else probe)
    if a.dim != b.dim:
        return -1.0
    va = a.encode(texts).astype(np.float64)
    vb = b.encode(texts).astype(np.float64)
    cos = (va * vb).sum(axis=1) / np.maximum(np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1), 1e-12)
    worst = float(cos.min()) if len(cos) else 1.0
    log.info("compatibility %s vs %s: min cosine %.6f over %d probes", a.name, b.name, worst, len(texts))
    return worst
