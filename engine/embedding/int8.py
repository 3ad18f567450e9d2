"""all-MiniLM-L6-v2 with int8 weights: onnxruntime dynamic quantization of our own fp32 ONNX export.

Owns ``quantize_onnx`` (fp32 export in, int8 export out, once, atomically, into the models cache
folder beside the fp32 export, with an ``export.json`` recording provenance, the recipe and the
agreement with fp32 measured on ``PROBE_TEXTS``) and ``OnnxInt8Encoder``. Nothing is quantized at
import: the first ``build_encoder("onnx-int8", ...)`` does it (about 10 s, calibration included).

Recipe: the fp32 graph is first fused (one ``Attention`` node per layer) and rewritten so that the
activations' outlier dimensions and padding rows no longer set the uint8 ranges
(``engine.embedding.int8_rewrite``: a smoothed, padding-masked copy of each LayerNorm that feeds weight
MatMuls, and the GELU-fed MatMuls' outlier dimensions in fp32; exact in fp32). Then the weights of the
transformer's 36 projections (18 MatMuls, and Q, K and V of 6 ``QAttention`` nodes) are int8, per output
channel (symmetric); their activations are quantized to uint8 per tensor at run time.
The embedding tables, the attention score products (activation x activation), LayerNorm, GELU, softmax and
the pooling stay fp32; the model file shrinks from 90 MB to about 59 MB.
Per-channel weights raised the mean cosine to fp32 from 0.952 to 0.993, the rewrite and the fp32
embedding tables to 0.999; the other variants measured are listed in the README ("The int8 encoder").

The vectors are close to fp32 but not interchangeable with them (minimum cosine on the probes about
0.994, far below ``check_compatible``'s tolerance), so they form their own ``family``: the embedding
cache keys on it (int8 vectors are never served for fp32 or the reverse) and a server refuses an index
built by the other family.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from engine.embedding.base import MODEL_NAME
from engine.embedding.int8_rewrite import (CALIBRATION_TEXTS, FUSION, GELU_SPLIT_MAX, GELU_SPLIT_RATIO,
                                           LAYERNORM_CAP, rewritten)
from engine.embedding.onnx_encoder import PROBE_TEXTS, OnnxEncoder, _sha256, replace_dir

log = logging.getLogger(__name__)

INT8_FORMAT = 3
# The recipe, recorded in export.json; a change of any of these re-quantizes.
RECIPE: dict[str, Any] = {
    "fusion": FUSION,
    "rewrite": {"layernorm_cap": LAYERNORM_CAP, "padding_masked": True, "gelu_split_ratio": GELU_SPLIT_RATIO,
                "gelu_split_max": GELU_SPLIT_MAX, "calibration": CALIBRATION_TEXTS.name,
                "calibration_sha256": hashlib.sha256(CALIBRATION_TEXTS.read_bytes()).hexdigest()},
    "method": "onnxruntime.quantization.quantize_dynamic",
    "weight_type": "QInt8",
    "activation_type": "QUInt8 (dynamic, per tensor)",
    "per_channel": True,
    "reduce_range": False,
    # The embedding tables stay fp32: onnxruntime quantizes a Gather's table per tensor, which cost a
    # quarter of the remaining disagreement (mean cosine 0.9985 -> 0.9989 on CrowdFlower without it).
    # "Attention": the fused attention blocks' QKV projections (``QAttention``, weights per output channel).
    "op_types_to_quantize": ["MatMul", "Attention"],
    "nodes_to_exclude": [],
}
# The vectors' family names the recipe: any change of it (the calibration texts included) makes a new family,
# so an index or embedding-cache entry of another recipe is never served with this one. Format 1 (no rewrite,
# top-10 overlap with fp32 0.90) had the family ".../int8"; format 2 (no fusion) ".../int8-52bc3cbf462b".
FAMILY_INT8 = f"{MODEL_NAME}/int8-" + hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]
# A fresh quantization whose minimum cosine to fp32 on the probe texts falls below this is refused
# (an onnxruntime change that broke the recipe must not ship silently).
MIN_PROBE_COSINE = 0.95


def _valid(out_dir: Path, source_sha: str) -> bool:
    meta_path = out_dir / "export.json"
    if not ((out_dir / "model.onnx").is_file() and (out_dir / "tokenizer.json").is_file() and meta_path.is_file()):
        return False
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("format") == INT8_FORMAT and meta.get("fp32_model_sha256") == source_sha
            and meta.get("recipe") == RECIPE)


def probe_agreement(a: OnnxEncoder, b: OnnxEncoder) -> tuple[float, float]:
    """``(min, mean)`` cosine between ``a``'s and ``b``'s vectors of ``PROBE_TEXTS``."""
    texts = list(PROBE_TEXTS)
    cos = (a.encode(texts).astype(np.float64) * b.encode(texts).astype(np.float64)).sum(axis=1)
    return float(cos.min()), float(cos.mean())


def quantize_onnx(fp32_dir: Path, out_dir: Path) -> Path:
    """Quantize ``fp32_dir/model.onnx`` (an ``export_onnx`` folder) into ``out_dir`` once; return ``out_dir``.

    Idempotent: an existing int8 export of the same fp32 graph (sha256) and recipe is reused. Atomic:
    built in a temporary sibling folder and renamed into place. Raises ``RuntimeError`` when the result
    agrees with fp32 below ``MIN_PROBE_COSINE`` on the probe texts.
    """
    fp32_dir, out_dir = Path(fp32_dir), Path(out_dir)
    sha = _sha256(fp32_dir / "model.onnx")
    if _valid(out_dir, sha):
        log.debug("int8 export in %s is current", out_dir)
        return out_dir

    t0 = time.perf_counter()
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        ort_log = logging.getLogger()  # quantize_dynamic warns through the root logger ("pre-processing")
        level = ort_log.level
        ort_log.setLevel(logging.ERROR)
        try:
            model, keep_fp32, counts = rewritten(fp32_dir / "model.onnx", fp32_dir / "tokenizer.json")
            onnx.save(model, str(tmp / "rewritten-fp32.onnx"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(tmp / "rewritten-fp32.onnx"), str(tmp / "model.onnx"),
                                 weight_type=QuantType.QInt8, per_channel=bool(RECIPE["per_channel"]),
                                 reduce_range=bool(RECIPE["reduce_range"]),
                                 op_types_to_quantize=list(RECIPE["op_types_to_quantize"]),
                                 nodes_to_exclude=list(RECIPE["nodes_to_exclude"]) + keep_fp32,
                                 # shape inference knows no contrib op (Attention): their outputs are float
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            (tmp / "rewritten-fp32.onnx").unlink()
        finally:
            ort_log.setLevel(level)
        shutil.copyfile(fp32_dir / "tokenizer.json", tmp / "tokenizer.json")
        quantize_seconds = time.perf_counter() - t0
        worst, mean = probe_agreement(OnnxEncoder(fp32_dir, threads=1), OnnxEncoder(tmp, threads=1))
        if worst < MIN_PROBE_COSINE:
            raise RuntimeError(f"int8 quantization agrees with fp32 at min cosine {worst:.4f} < {MIN_PROBE_COSINE} "
                               f"on the probe texts; refusing it")
        model = onnx.load(str(tmp / "model.onnx"), load_external_data=False)
        fp32_meta_path = fp32_dir / "export.json"
        fp32_meta: dict[str, Any] = json.loads(fp32_meta_path.read_text()) if fp32_meta_path.is_file() else {}
        meta = {
            "format": INT8_FORMAT,
            "model": MODEL_NAME,
            "precision": "int8 weights, uint8 dynamic activations; GELU outlier dimensions fp32",
            "fp32_export": str(fp32_dir.resolve()),
            "fp32_model_sha256": sha,
            "source_sha256": fp32_meta.get("source_sha256"),
            "recipe": RECIPE,
            "rewritten": counts,
            "quantized_matmuls": sum(1 for n in model.graph.node if n.op_type == "MatMulInteger"),
            "quantized_attention": sum(1 for n in model.graph.node if n.op_type == "QAttention"),
            "fp32_matmuls_left": sum(1 for n in model.graph.node if n.op_type == "MatMul"),
            "model_bytes": (tmp / "model.onnx").stat().st_size,
            "fp32_model_bytes": (fp32_dir / "model.onnx").stat().st_size,
            "probe_texts": len(PROBE_TEXTS),
            "probe_min_cosine_vs_fp32": round(worst, 6),
            "probe_mean_cosine_vs_fp32": round(mean, 6),
            "onnx_version": onnx.__version__,
            "onnxruntime_version": onnxruntime.__version__,
            "quantize_seconds": round(quantize_seconds, 2),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
        replace_dir(tmp, out_dir, lambda: _valid(out_dir, sha))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("quantized %s to int8 in %s (%.1fs; probe cosine vs fp32 min %.4f, mean %.4f)",
             MODEL_NAME, out_dir, meta["quantize_seconds"], worst, mean)
    return out_dir


class OnnxInt8Encoder(OnnxEncoder):
    """all-MiniLM-L6-v2 on onnxruntime with int8 weights; its own vector family (see the module doc)."""

    name = f"{MODEL_NAME}/onnx-int8"
    family = FAMILY_INT8
