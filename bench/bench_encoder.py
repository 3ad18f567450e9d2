"""Encoder benchmark: per-query latency (1 thread) and batch throughput (2 threads), torch vs ONNX fp32.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_encoder.py [--queries 300] [--items 2000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.embedding.onnx_encoder import OnnxEncoder, export_onnx  # noqa: E402
from engine.embedding.st import SentenceTransformerEncoder  # noqa: E402

DATA = Path("/work/shared/data")


def load_queries(n: int) -> list[str]:
    """Distinct CrowdFlower queries, topped up with distinct 3-word item-title prefixes if too few."""
    qs = list(dict.fromkeys(pd.read_csv(DATA / "crowdflower_search_relevance/train.csv.gz")["query"].astype(str)))
    if len(qs) < n:
        seen = set(qs)
        for text in pd.read_csv(DATA / "amazon_scientific_unisrec/items.csv.gz")["text"].astype(str):
            q = " ".join(text.split()[:3]).lower()
            if q not in seen:
                seen.add(q)
                qs.append(q)
            if len(qs) >= n:
                break
    return qs[:n]


def latency(encode: Callable[[list[str]], np.ndarray], queries: list[str]) -> tuple[float, float]:
    """p50/p99 milliseconds of encoding each query alone."""
    for q in queries[:20]:
        encode([q])
    times = []
    for q in queries:
        t0 = time.perf_counter()
        encode([q])
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def throughput(encode: Callable[[list[str]], np.ndarray], texts: list[str]) -> tuple[float, np.ndarray]:
    encode(texts[:64])
    t0 = time.perf_counter()
    vecs = encode(texts)
    return len(texts) / (time.perf_counter() - t0), vecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--cache-dir", type=Path, default=Path(__file__).parent / "out" / "models")
    args = ap.parse_args()

    import torch

    queries = load_queries(args.queries)
    items = pd.read_csv(DATA / "amazon_scientific_unisrec/items.csv.gz")["text"].astype(str).tolist()[:args.items]
    print(f"{len(queries)} distinct queries, {len(items)} item texts, torch {torch.__version__}")

    exports = {}
    for label, optimize in (("onnx fp32", False), ("onnx fp32 fused", True)):
        t0 = time.perf_counter()
        exports[label] = export_onnx(args.cache_dir / f"minilm-onnx-fp32{'-fused' if optimize else ''}",
                                     optimize=optimize)
        print(f"export {label}: {time.perf_counter() - t0:.1f}s (cached if ~0s)")

    torch_enc = SentenceTransformerEncoder(threads=1)
    rows: list[tuple[str, float, float, float, float]] = []
    lat = {"torch fp32": latency(torch_enc.encode, queries)}
    for label, d in exports.items():
        lat[label] = latency(OnnxEncoder(d, threads=1).encode, queries)

    torch.set_num_threads(2)
    ref_q = torch_enc.encode(queries)
    rate, ref_items = throughput(lambda t: torch_enc.encode(t, batch_size=64), items)
    rows.append(("torch fp32", *lat["torch fp32"], rate, 1.0))
    for label, d in exports.items():
        enc = OnnxEncoder(d, threads=2)
        rate, vecs = throughput(lambda t: enc.encode(t, batch_size=64), items)
        cos = min(float((vecs * ref_items).sum(axis=1).min()), float((enc.encode(queries) * ref_q).sum(axis=1).min()))
        rows.append((label, *lat[label], rate, cos))

    print(f"\n{'encoder':<18}{'p50 ms (1t)':>12}{'p99 ms (1t)':>12}{'items/s (2t, b64)':>19}{'min cos vs torch':>18}")
    for label, p50, p99, rate, cos in rows:
        print(f"{label:<18}{p50:>12.2f}{p99:>12.2f}{rate:>19.1f}{cos:>18.7f}")


if __name__ == "__main__":
    main()
