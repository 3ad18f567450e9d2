"""The outlier rewrite of the int8 encoder's recipe: an fp32 MiniLM graph in, an fp32 graph out that computes
the same vectors (to float rounding) but whose weight MatMuls see activations a per-tensor uint8 scale can
hold, and runs fewer nodes. ``engine.embedding.int8`` quantizes the result.

First the graph is fused (``fused``): each attention block becomes one onnxruntime ``Attention`` node (its Q, K
and V projections one weight matrix, quantized as ``QAttention``). A short query's int8 time was half weight
MatMuls and half the ~250 small nodes around them (reshapes, transposes, shape arithmetic of the attention
heads); fusing them took one CrowdFlower query from 1.12 to 0.95 ms (fp32 2.21 ms). The other fusions are left
out where they measured slower here: ``SkipLayerNormalization`` (builds 1.9x fp32 instead of 2.3x) and
``BiasGelu`` (onnxruntime's own ``Gelu``, with the bias added inside the quantized MatMul, is faster in batches).

Why: the inputs of the weight MatMuls have a few huge dimensions. After each attention block's LayerNorm,
dimension 99 reaches 28 to 30 where the median dimension's maximum is about 2, and each GELU output has one
at 14 to 25. A batch's uint8 scale is set by them (and by padding rows, whose LayerNorm outputs reach 7
where real tokens' stay under 5), so every other dimension gets a few levels. Three exact rewrites:

1. Every LayerNorm that feeds weight MatMuls gets a copy for them whose gamma and beta are divided by a
   per-dimension scale ``s`` (the dimensions whose calibrated maximum is over ``LAYERNORM_CAP`` x the median
   dimension's brought down to it); those MatMuls' weight rows are multiplied by ``s``. SmoothQuant (Xiao
   et al. 2023), folded into the LayerNorm's parameters.
2. The copy's output is multiplied by the attention mask: padding rows, which the attention mask already
   hides from every real token and the pooling leaves out, no longer widen a batch's range.
3. A MatMul fed by a GELU output (no LayerNorm to fold into) has its outlier dimensions (over
   ``GELU_SPLIT_RATIO`` x the median maximum, at most ``GELU_SPLIT_MAX``) taken out of the quantized
   product: ``MatMul(X * mask, W) + MatMul(Gather(X, idx), W[idx])``, the second in fp32 (LLM.int8(),
   Dettmers et al. 2022).

The maxima come from ``calibrate`` over ``CALIBRATION_TEXTS`` (200 Amazon Scientific item texts of the demo
catalog, packaged). The cap and the split were chosen on Amazon Q&A texts, not on the CrowdFlower texts the
agreement target is measured on (README, "The int8 encoder").
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from engine.embedding.base import DIM

NUM_HEADS = 12  # all-MiniLM-L6-v2's attention heads
# onnxruntime.transformers fusions applied before the rewrite (``fused``): the attention blocks, and each GELU's
# erf subgraph as one ``Gelu`` node (its bias stays an Add, which onnxruntime folds into the quantized MatMul).
FUSION = {"attention": True, "gelu": True, "bias_gelu": False, "layer_norm": True, "skip_layer_norm": False,
          "bias_skip_layer_norm": False, "embed_layer_norm": False}
LAYERNORM_CAP = 2.0
GELU_SPLIT_RATIO = 2.0
GELU_SPLIT_MAX = 32
CALIBRATION_TEXTS = Path(__file__).with_name("int8_calibration.txt.gz")
_GELU_MARK = "intermediate_act_fn"  # the GELU output's name in our export (``act_fn`` of BertIntermediate)


def calibration_texts() -> list[str]:
    with gzip.open(CALIBRATION_TEXTS, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


_WEIGHT_OPS = ("MatMul", "Attention")  # ops whose second input is a weight matrix (rows: input dimensions)


def _weight_matmuls(graph: Any) -> list[Any]:
    """The MatMuls and fused ``Attention`` nodes (their QKV projection) whose weights are initializers."""
    weights = {i.name for i in graph.initializer}
    return [n for n in graph.node if n.op_type in _WEIGHT_OPS and n.input[1] in weights]


def calibrate(model: Any, tokenizer_path: Path, texts: list[str], max_seq_length: int = 256) -> dict[str, np.ndarray]:
    """Per-dimension maximum |value| over the real (unmasked) tokens of ``texts`` of every weight MatMul's input."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from engine.embedding.onnx_encoder import _load_tokenizer, _sorted_batches

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    acts = list(dict.fromkeys(n.input[0] for n in _weight_matmuls(probe.graph)))
    for a in acts:
        probe.graph.output.append(helper.make_tensor_value_info(a, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    tok = _load_tokenizer(tokenizer_path, max_seq_length)
    maxima: dict[str, np.ndarray] = {}
    for _, batch in _sorted_batches(tok.encode_batch(texts), 32):
        real = batch["attention_mask"].reshape(-1) > 0
        for a, out in zip(acts, session.run(acts, {k: v for k, v in batch.items() if k in wanted})):
            m = np.abs(out.reshape(-1, out.shape[-1])[real]).max(axis=0)
            maxima[a] = m if a not in maxima else np.maximum(maxima[a], m)
    return maxima


def _outliers(v: np.ndarray, ratio: float, k: int) -> list[int]:
    med = float(np.median(v))
    return sorted(int(j) for j in np.argsort(-v)[:k] if v[j] > ratio * med)


def rewrite(model: Any, maxima: dict[str, np.ndarray]) -> tuple[Any, list[str], dict[str, int]]:
    """Rewrite ``model`` in place (see the module doc); return it, the names of the nodes to leave fp32 when
    quantizing, and counts of what was rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    if "attention_mask" not in {i.name for i in g.input}:
        raise ValueError("the graph has no attention_mask input")
    W = {i.name: i for i in g.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "vitrine_pad_axes"))
    nodes = [helper.make_node("Cast", ["attention_mask"], ["vitrine_pad_f"], name="vitrine_pad_cast",
                              to=onnx.TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["vitrine_pad_f", "vitrine_pad_axes"], ["vitrine_pad_mask"],
                              name="vitrine_pad_unsqueeze")]
    keep_fp32: list[str] = []
    counts = {"layernorms_smoothed": 0, "gelu_matmuls_split": 0, "gelu_dims_split": 0}
    new_weights: dict[str, np.ndarray] = {}
    for n in g.node:
        nodes.append(n)
        if n.op_type == "LayerNormalization":
            y = n.output[0]
            mms = [c for c in consumers.get(y, []) if c.op_type in _WEIGHT_OPS and c.input[1] in W]
            if not mms or y not in maxima:
                continue
            v = maxima[y]
            cap = LAYERNORM_CAP * float(np.median(v))
            s = np.where(v > cap, v / cap, 1.0).astype(np.float32)
            b = "vitrine_" + y.replace("/", "_")
            gamma, beta = numpy_helper.to_array(W[n.input[1]]), numpy_helper.to_array(W[n.input[2]])
            g.initializer.extend([numpy_helper.from_array((gamma / s).astype(np.float32), b + "_gamma"),
                                  numpy_helper.from_array((beta / s).astype(np.float32), b + "_beta")])
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            nodes += [helper.make_node("LayerNormalization", [n.input[0], b + "_gamma", b + "_beta"], [b + "_ln"],
                                       name=b + "_ln", **attrs),
                      helper.make_node("Mul", [b + "_ln", "vitrine_pad_mask"], [b + "_x"], name=b + "_pad")]
            for c in mms:
                new_weights[c.input[1]] = numpy_helper.to_array(W[c.input[1]]) * s[:, None]
                c.input[0] = b + "_x"
            counts["layernorms_smoothed"] += 1
        elif n.op_type == "MatMul" and n.input[1] in W and _GELU_MARK in n.input[0] and n.input[0] in maxima:
            idx = _outliers(maxima[n.input[0]], GELU_SPLIT_RATIO, GELU_SPLIT_MAX)
            if not idx:
                continue
            nodes.pop()
            x, b = n.input[0], "vitrine_" + n.name.replace("/", "_")
            w = numpy_helper.to_array(W[n.input[1]])
            mask = np.ones(w.shape[0], np.float32)
            mask[idx] = 0.0
            g.initializer.extend([numpy_helper.from_array(mask, b + "_mask"),
                                  numpy_helper.from_array(np.array(idx, np.int64), b + "_idx"),
                                  numpy_helper.from_array(w[idx, :].astype(np.float32), b + "_w_out")])
            nodes += [helper.make_node("Mul", [x, b + "_mask"], [b + "_xm"], name=b + "_mask"),
                      helper.make_node("Gather", [x, b + "_idx"], [b + "_xo"], name=b + "_gather", axis=-1),
                      helper.make_node("MatMul", [b + "_xm", n.input[1]], [b + "_y"], name=n.name),
                      helper.make_node("MatMul", [b + "_xo", b + "_w_out"], [b + "_y_out"], name=b + "_matmul_out"),
                      helper.make_node("Add", [b + "_y", b + "_y_out"], [n.output[0]], name=b + "_add")]
            keep_fp32 += [b + "_gather", b + "_matmul_out"]
            counts["gelu_matmuls_split"] += 1
            counts["gelu_dims_split"] += len(idx)
    for name, w in new_weights.items():
        W[name].CopyFrom(numpy_helper.from_array(w.astype(np.float32), name))
    del g.node[:]
    g.node.extend(nodes)
    return model, keep_fp32, counts


def fused(fp32_model: Path) -> Any:
    """``fp32_model`` through onnxruntime's BERT fusion as ``FUSION`` says: each layer's attention becomes one
    ``Attention`` node (Q, K and V as one weight matrix; no reshape, transpose and mask plumbing); the norms stay
    plain ``LayerNormalization`` nodes (the fused ``SkipLayerNormalization`` ran slower here, and ``rewrite``
    folds its smoothing into LayerNormalization copies), the GELUs without their bias. Raises ``RuntimeError``
    when an attention block is left unfused (an onnxruntime whose patterns no longer match our export)."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    from engine.embedding.onnx_encoder import bert_optimized

    options = FusionOptions("bert")
    for name, on in FUSION.items():
        setattr(options, f"enable_{name}", on)
    optimized = bert_optimized(fp32_model, NUM_HEADS, DIM, options)
    optimized.topological_sort()
    model = optimized.model
    if not any(o.domain == "com.microsoft" for o in model.opset_import):  # the contrib ops' domain
        model.opset_import.add(domain="com.microsoft", version=1)
    ops = [n.op_type for n in model.graph.node]
    if "Softmax" in ops or "Attention" not in ops:
        raise RuntimeError(f"BERT fusion left {ops.count('Softmax')} attention blocks unfused; refusing it")
    return model


def rewritten(fp32_model: Path, tokenizer_path: Path) -> tuple[Any, list[str], dict[str, int]]:
    """``fp32_model`` fused (``fused``), calibrated on ``calibration_texts()`` and rewritten (``rewrite``)."""
    model = fused(fp32_model)
    return rewrite(model, calibrate(model, tokenizer_path, calibration_texts()))
