"""int8 encoder variants that keep the activations' outlier dimensions out of the 8-bit range (`bench/TRIED.md`,
"The int8 encoder", "Outlier dimensions kept in fp32"). The exploration behind the shipped recipe
(``engine/embedding/int8_rewrite.py``; its format 2 is ``mask noemb smooth 2 2 32`` here), kept for the next try.

- ``split R K``: LLM.int8() style. Each weight MatMul whose input has dimensions over R x the median maximum
  (at most K) becomes ``MatMul(X * mask, W)`` (quantized) + ``MatMul(Gather(X, outliers), W[outliers])`` (fp32).
- ``smooth R GR GK``: each LayerNorm feeding weight MatMuls is duplicated with gamma and beta divided by a
  per-dimension scale that caps its outliers at R x the median maximum, and those MatMuls' weight rows are
  multiplied by it (free at run time); with GR > 0, the GELU-fed MatMuls also get the fp32 split (GR, GK).
- Modifiers for the variants after them: ``mask`` (the LayerNorm copies multiplied by the attention mask, so
  padding rows no longer widen a batch's range), ``gcap C`` (the GELU-fed MatMuls' other dimensions smoothed
  to C x the median maximum through the split's ``Mul``), ``keep A,B`` (weight MatMuls whose names hold A or B
  left fp32), ``noemb`` (the embedding tables left fp32).

Calibrated as the engine does (``engine.embedding.int8_rewrite.calibrate``, 200 demo-catalog texts). Prints, for fp32, the
shipped int8 and each variant: mean cosine to fp32 of the 261 CrowdFlower queries and its 9,913 products,
top-10 overlap of exact vector search, the same on the Amazon Q&A selection set, build throughput (1,500 Scientific texts, 2 and 1 threads) and query
time (100 queries one at a time):

    VITRINE_DATA_DIR=../shared/data .venv/bin/python scripts/try_int8_outliers.py split 4 8 smooth 4 4 8

It needs the published eval versions (``vitrine eval search`` and ``vitrine eval recommend`` build them) and
the ONNX exports under ``indexes/models`` (the int8 one: any ``onnx-int8`` use makes it). On 2026-12-05 (an
Intel Xeon with VNNI, about 6 minutes a variant) ``split 4 8`` printed overlap 0.9475 at 1.73x the fp32 build
and ``smooth 4 4 8`` 0.9395 at 2.32x, 0.51x the query time, the int8 recipe of the time 0.902; then ``mask
smooth 2 4 8`` 0.9536 at 2.26x, 0.49x (Q&A selection set 0.9350), then ``mask noemb smooth 2 2 32`` (shipped as
format 2). The variants here are built on the unfused graph; the shipped recipe (format 3) first fuses each
attention block into one ``Attention`` node (``engine.embedding.int8_rewrite.fused``), which leaves the
agreement as it was (its ``int8`` row: CrowdFlower overlap 0.9571, Q&A 0.9438) and takes the query time from
0.53x to 0.43x (builds 2.38x and 2.55x; 2026-12-06).
``dir NAME=PATH`` adds an int8 export built elsewhere (e.g. the engine's, ``indexes/models/minilm-onnx-int8``)
as a variant.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from engine.embedding.int8_rewrite import _outliers, calibration_texts  # noqa: E402
from engine.embedding.int8_rewrite import calibrate as calibrate_model  # noqa: E402
from engine.embedding.onnx_encoder import OnnxEncoder  # noqa: E402
from engine.evaluation.search_eval import load_crowdflower  # noqa: E402

DATA = Path(os.environ.get("VITRINE_DATA_DIR", ROOT.parent / "shared" / "data"))
FPD = ROOT / "indexes/models/minilm-onnx-fp32"
FP, I8 = FPD, ROOT / "indexes/models/minilm-onnx-int8"
OUT = ROOT / "bench/out/int8-outliers"


@functools.lru_cache(maxsize=1)
def calibrate():
    """The shipped recipe's calibration (the same 200 demo-catalog texts)."""
    return calibrate_model(onnx.load(str(FPD / "model.onnx")), FPD / "tokenizer.json", calibration_texts())


GCAP = [0.0]  # after ``gcap C``: the GELU-fed MatMuls' other dimensions smoothed to C x the median maximum
NOEMB = [False]  # after ``noemb``: the embedding tables (Gather) stay fp32
MASK = [False]  # after ``mask``: the LayerNorm copies that feed weight MatMuls are multiplied by the attention mask
KEEP: list[str] = []  # substrings of weight MatMul names left fp32 in every variant built after ``keep``


def quantize(m, g, nodes, out, exclude):
    """The graph with ``nodes``, quantized as the recipe of format 2 did (``exclude`` left fp32, and the weight
    MatMuls whose names hold a ``KEEP`` substring), into ``out``."""
    exclude = exclude + [n.name for n in nodes if n.op_type == "MatMul" and any(k in n.name for k in KEEP)]
    del g.node[:]
    g.node.extend(nodes)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(FPD, out, ignore=shutil.ignore_patterns("model.onnx*"), dirs_exist_ok=True)
    onnx.save(m, str(out / "work-fp32.onnx"))
    quantize_dynamic(str(out / "work-fp32.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=False, op_types_to_quantize=["MatMul"] if NOEMB[0] else ["MatMul", "Gather"],
                     nodes_to_exclude=exclude)
    (out / "work-fp32.onnx").unlink()


def split(g, W, n, idx, shared, exclude, scale=None):
    """The nodes that replace weight MatMul ``n``: ``MatMul(X * mask, W)`` (quantized later) plus
    ``MatMul(Gather(X, idx), W[idx])`` in fp32 (``exclude``d), added; the ``Mul`` and ``Gather`` once per input
    ``X`` (``shared``). With ``scale``, the mask divides the other dimensions by it and ``W``'s rows are
    multiplied by it (SmoothQuant on the same ``Mul``; only for an input with one consumer)."""
    x = n.input[0]
    w = numpy_helper.to_array(W[n.input[1]])
    b = n.name.replace("/", "_")
    nodes = []
    if scale is not None:
        W[n.input[1]].CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32), n.input[1]))
    if x not in shared:
        a_ = x.replace("/", "_")
        mask = np.ones(w.shape[0], np.float32) if scale is None else (1.0 / scale).astype(np.float32)
        mask[idx] = 0
        g.initializer.extend([numpy_helper.from_array(mask, a_ + "_omask"),
                              numpy_helper.from_array(np.array(idx, np.int64), a_ + "_oidx")])
        nodes += [helper.make_node("Mul", [x, a_ + "_omask"], [a_ + "_xm"], name=a_ + "_omul"),
                  helper.make_node("Gather", [x, a_ + "_oidx"], [a_ + "_xo"], name=a_ + "_ogather", axis=-1)]
        exclude.append(a_ + "_ogather")
        shared[x] = (a_ + "_xm", a_ + "_xo")
    xm, xo = shared[x]
    g.initializer.append(numpy_helper.from_array(w[idx, :].astype(np.float32), b + "_ow"))
    exclude.append(b + "_omatmul")
    return nodes + [helper.make_node("MatMul", [xm, n.input[1]], [b + "_y1"], name=n.name),
                    helper.make_node("MatMul", [xo, b + "_ow"], [b + "_y2"], name=b + "_omatmul"),
                    helper.make_node("Add", [b + "_y1", b + "_y2"], [n.output[0]], name=b + "_oadd")]


def build_split(ratio, maxk, out):
    mx = calibrate()
    m = onnx.load(str(FPD / "model.onnx"))
    g = m.graph
    W = {i.name: i for i in g.initializer}
    new_nodes, exclude, shared, nsplit = [], [], {}, 0
    for n in g.node:
        if n.op_type == "MatMul" and n.input[1] in W and mx.get(n.input[0]) is not None:
            idx = _outliers(mx[n.input[0]], ratio, maxk)
            if idx:
                nsplit += 1
                new_nodes += split(g, W, n, idx, shared, exclude)
                continue
        new_nodes.append(n)
    quantize(m, g, new_nodes, out, exclude)
    print(out.name, "split", nsplit, "matmuls", flush=True)
    return out


def build_smooth(ratio, out, split_gelu, GR=8.0, GK=2):
    mx = calibrate()
    m = onnx.load(str(FPD / "model.onnx"))
    g = m.graph
    W = {i.name: i for i in g.initializer}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    new_nodes, exclude, shared, nsm, nsp = [], [], {}, 0, 0
    replaced_w = {}
    if MASK[0]:
        # Padding rows are garbage the attention mask hides from every real token, but they widen a batch's
        # uint8 range (their LayerNorm outputs reach 7 where real tokens' stay under 5): zeroed before the
        # weight MatMuls, they change no real token's output.
        g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "pad_axes"))
        new_nodes += [helper.make_node("Cast", ["attention_mask"], ["pad_maskf"], name="pad_cast", to=onnx.TensorProto.FLOAT),
                      helper.make_node("Unsqueeze", ["pad_maskf", "pad_axes"], ["pad_mask3"], name="pad_unsq")]
    for n in g.node:
        if n.op_type == "LayerNormalization":
            y = n.output[0]
            mms = [c for c in consumers.get(y, []) if c.op_type == "MatMul" and c.input[1] in W]
            v = mx.get(y)
            new_nodes.append(n)
            if mms and v is not None:
                cap = ratio * float(np.median(v))
                s = np.where(v > cap, v / cap, 1.0).astype(np.float32)
                if (s > 1).any() or MASK[0]:
                    nsm += 1
                    gam = numpy_helper.to_array(W[n.input[1]])
                    bet = numpy_helper.to_array(W[n.input[2]])
                    b = y.replace("/", "_")
                    g.initializer.extend([numpy_helper.from_array(gam / s, b + "_sg"), numpy_helper.from_array(bet / s, b + "_sb")])
                    new_nodes.append(helper.make_node("LayerNormalization", [n.input[0], b + "_sg", b + "_sb"], [b + "_sm"],
                                                      name=b + "_smln",
                                                      **{a.name: helper.get_attribute_value(a) for a in n.attribute}))
                    src = b + "_sm"
                    if MASK[0]:
                        new_nodes.append(helper.make_node("Mul", [src, "pad_mask3"], [b + "_smm"], name=b + "_padmul"))
                        exclude.append(b + "_padmul")
                        src = b + "_smm"
                    for c in mms:
                        replaced_w[c.input[1]] = numpy_helper.to_array(W[c.input[1]]) * s[:, None]
                        c.input[0] = src
            continue
        if (split_gelu and n.op_type == "MatMul" and n.input[1] in W and "intermediate_act_fn" in n.input[0]
                and mx.get(n.input[0]) is not None):
            v = mx[n.input[0]]
            idx = _outliers(v, GR, GK)
            sc = None
            if GCAP[0] > 0:
                cap = GCAP[0] * float(np.median(v))
                sc = np.where(v > cap, v / cap, 1.0).astype(np.float32)
            if idx:
                nsp += 1
                new_nodes += split(g, W, n, idx, shared, exclude, sc)
                continue
        new_nodes.append(n)
    for name, w in replaced_w.items():
        W[name].CopyFrom(numpy_helper.from_array(w.astype(np.float32), name))
    quantize(m, g, new_nodes, out, exclude)
    print(out.name, "smoothed LNs", nsm, "gelu splits", nsp, flush=True)


def main(argv: list[str]) -> None:
    variants = {"fp32": FP, "int8": I8}
    i = 0
    while i < len(argv):
        kind = argv[i]
        if kind == "noemb":
            NOEMB[0] = True
            i += 1
        elif kind == "gcap":
            GCAP[0] = float(argv[i + 1])
            i += 2
        elif kind == "mask":
            MASK[0] = True
            i += 1
        elif kind == "keep":
            KEEP[:] = [k for k in argv[i + 1].split(",") if k]
            i += 2
        elif kind == "dir":  # an int8 export built elsewhere: NAME=PATH
            name, path = argv[i + 1].split("=", 1)
            variants[name] = Path(path)
            i += 2
        elif kind == "split":
            r, k = float(argv[i + 1]), int(argv[i + 2])
            name = f"split-{r:g}-{k}" + "".join("-keep-" + k_.strip("/").replace("/", "-") for k_ in KEEP)
            variants[name] = build_split(r, k, OUT / name)
            i += 3
        elif kind == "smooth":
            r, gr, gk = float(argv[i + 1]), float(argv[i + 2]), int(argv[i + 3])
            name = f"smooth-{r:g}" + (f"-gelu-{gr:g}-{gk}" if gr > 0 else "") + ("-mask" if MASK[0] else "") + ("-noemb" if NOEMB[0] else "") + (f"-gcap-{GCAP[0]:g}" if GCAP[0] else "") + "".join(
                "-keep-" + k.strip("/").replace("/", "-") for k in KEEP)
            build_smooth(r, OUT / name, gr > 0, gr, gk)
            variants[name] = OUT / name
            i += 4
        else:
            raise SystemExit(f"unknown variant {kind!r}: dir NAME=PATH | noemb | gcap C | mask | keep NAMES | split R K | smooth R GR GK (GR 0: no GELU split)")
    products, queries = load_crowdflower(DATA)
    ptexts = [f"{p['title']}. {p.get('description','')}" for p in products]
    qtexts = [q for q, _, _ in queries]
    enc = {k: OnnxEncoder(v, threads=2) for k, v in variants.items()}
    vec = {}
    for k, e in enc.items():
        t = time.time(); vec[k] = (e.encode(qtexts), e.encode(ptexts)); print(k, "encoded in", round(time.time() - t, 1), flush=True)
    fq, fp = vec["fp32"]
    top = lambda q, p: np.argsort(-(q @ p.T), axis=1)[:, :10]
    ft = top(fq, fp)
    for k, (q, p) in vec.items():
        cq = (q * fq).sum(1); cp = (p * fp).sum(1)
        t = top(q, p)
        ov = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(t, ft)])
        print(f"{k}: cos q {cq.mean():.4f} p {cp.mean():.4f} min {min(cq.min(), cp.min()):.4f} overlap {ov:.4f}")
    # The selection set (the caps were chosen here, not on CrowdFlower): 1,002 Amazon Q&A questions over the
    # 9,011 answers of the Appliances set.
    import pandas as pd
    qa = pd.read_csv(DATA / "amazon_qa/qa_appliances.csv.gz")
    qa_q, qa_a = qa.question.astype(str).tolist()[::9], qa.answer.astype(str).tolist()
    qvec = {k: (e.encode(qa_q), e.encode(qa_a)) for k, e in enc.items()}
    qt = top(*qvec["fp32"])
    for k, (q, p) in qvec.items():
        ov = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top(q, p), qt)])
        print(f"{k}: Amazon Q&A selection set, cos q {(q * qvec['fp32'][0]).sum(1).mean():.4f} "
              f"a {(p * qvec['fp32'][1]).sum(1).mean():.4f} top-10 overlap {ov:.4f}", flush=True)
    sci = [json.loads(l) for l in open(ROOT / "indexes/eval/scientific/current/items.jsonl")][:1500]
    stexts = [f"{r.get('title','')}. {r.get('description','')}" for r in sci]
    for threads in (2, 1):
        encs = {k: OnnxEncoder(v, threads=threads) for k, v in variants.items()}
        res = {k: [] for k in encs}
        for r in range(2):
            for k, e in encs.items():
                t = time.perf_counter(); e.encode(stexts); res[k].append(len(stexts) / (time.perf_counter() - t))
        print(f"build {threads} thr:", {k: round(float(np.median(v)), 1) for k, v in res.items()}, {k: round(float(np.median(v) / np.median(res['fp32'])), 2) for k, v in res.items()}, flush=True)
    encs = {k: OnnxEncoder(v, threads=1) for k, v in variants.items()}
    res = {k: [] for k in encs}
    for r in range(3):
        for k, e in encs.items():
            ts = []
            for q in qtexts[:100]:
                t = time.perf_counter(); e.encode([q]); ts.append(time.perf_counter() - t)
            res[k].append(np.median(ts) * 1000)
    print("query ms:", {k: round(float(np.median(v)), 3) for k, v in res.items()}, {k: round(float(np.median(v) / np.median(res['fp32'])), 2) for k, v in res.items()})


if __name__ == "__main__":
    main(sys.argv[1:])
