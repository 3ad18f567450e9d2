"""Ray builds: embedding throughput per worker core, a local build beside `vitrine build --ray` on this machine.

The same texts (the first ``--items`` products of the demo catalog, real titles/categories/brands/descriptions)
are built with a cold embedding cache in a fresh index dir each time (``pipeline.build``, as `vitrine build`):

- locally, with the ONNX encoder on 1 and on 2 intra-op threads (a local build uses every core: 2 here);
- over a local Ray instance started with 1 and then 2 CPUs (``ray.init(num_cpus=...)``, ``--ray auto``): one
  encoder actor on the node, with as many intra-op threads as the node has CPUs.

Reported per run: embedding texts/s (the manifest's ``items_per_second``: encoding time only, encoders
already loaded), that per core, the Ray start-up (connect + actors + their encoders), the whole build time
and the largest difference of the vectors to the local build's (must be <= 1e-6). The machine is shared
and has 2 cores: the driver and the Ray processes compete with the workers for them, so the per-core
figure of a Ray worker here is a floor for a dedicated node.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_ray_build.py [--items 2000] [--rounds 2] [--record]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import DEMO_CATALOG, OUT, engine_config, header, load_avg, models_dir, record, table

from engine import pipeline  # noqa: E402  (common puts the repository on sys.path)
from engine.embedding.factory import build_encoder  # noqa: E402
from engine.index import versions  # noqa: E402


def run_build(label: str, catalog: Path, *, threads: int | None = None, ray_cpus: int | None = None) -> dict[str, Any]:
    """One cold-cache build in ``bench/out/ray-build/<label>``; ``ray_cpus``: over a local Ray of that many CPUs."""
    index = OUT / "ray-build" / label
    shutil.rmtree(index, ignore_errors=True)
    config = engine_config(index)
    t0 = time.perf_counter()
    if ray_cpus is None:
        encoder = build_encoder(config.encoder, cache_dir=config.models_path, threads=threads,
                                max_seq_length=config.max_seq_length)
        result = pipeline.build(config, catalog, encoder=encoder, ray="off")
    else:
        import ray

        ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
        try:
            t0 = time.perf_counter()  # the Ray instance's own start is not the build's
            result = pipeline.build(config, catalog, ray="auto")
        finally:
            ray.shutdown()
    seconds = time.perf_counter() - t0
    emb = result.manifest["embedding"]
    cores = ray_cpus if ray_cpus is not None else threads or 1
    vectors = np.load(versions.current_dir(index) / "vectors.npy")
    print(f"  {label}: {emb['items_per_second']:.1f} texts/s embedding, build {seconds:.1f}s", file=sys.stderr)
    return {"label": label, "cores": cores, "rate": float(emb["items_per_second"]), "seconds": seconds,
            "embedded": int(result.manifest["counts"]["embedded"]),
            "startup": float(emb.get("ray", {}).get("startup_seconds", 0.0)), "vectors": vectors}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=2000, help="demo catalog products built (default 2000)")
    ap.add_argument("--rounds", type=int, default=2, help="builds of each kind, interleaved (default 2; median)")
    ap.add_argument("--record", action="store_true", help="write the section of bench/RESULTS.md")
    args = ap.parse_args(argv)
    load_at_start = load_avg()
    catalog = OUT / "ray-build" / f"catalog-{args.items}.jsonl"
    catalog.parent.mkdir(parents=True, exist_ok=True)
    with DEMO_CATALOG.open(encoding="utf-8") as src:
        catalog.write_text("".join(line for _, line in zip(range(args.items), src)), encoding="utf-8")
    build_encoder(engine_config(OUT / "ray-build" / "x").encoder, cache_dir=models_dir())  # export once, untimed

    plans: list[tuple[str, dict[str, int]]] = [
        ("local-1-thread", {"threads": 1}), ("local-2-threads", {"threads": 2}),
        ("ray-1-cpu", {"ray_cpus": 1}), ("ray-2-cpus", {"ray_cpus": 2}),
    ]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in plans}
    for round_no in range(args.rounds):  # interleaved, so that a burst of load hits every kind alike
        print(f"round {round_no + 1}/{args.rounds}", file=sys.stderr)
        for label, kw in plans:
            runs[label].append(run_build(label, catalog, **kw))
    reference = runs["local-2-threads"][0]["vectors"]
    rows = []
    for label, _ in plans:
        rs = runs[label]
        rates = sorted(r["rate"] for r in rs)
        rate = float(np.median(rates))
        diff = max(float(np.abs(r["vectors"] - reference).max()) for r in rs)
        spread = f"{rates[0]:.1f}-{rates[-1]:.1f}" if len(rates) > 1 else "-"
        startup = f"{np.median([r['startup'] for r in rs]):.1f} s" if label.startswith("ray") else "-"
        rows.append([label, rs[0]["cores"], rs[0]["embedded"], rate, spread, rate / rs[0]["cores"], startup,
                     f"{np.median([r['seconds'] for r in rs]):.1f} s", f"{diff:.1e}"])
    body = "\n".join([
        "## Ray builds: embedding throughput per worker core (`vitrine build --ray`)",
        "",
        header("bench_ray_build.py", argv, load_at_start),
        f"- texts: the first {args.items} products of the demo catalog (`data/demo/catalog.jsonl`), cold embedding "
        f"cache, fp32 ONNX encoder (steps of 256 texts, batches of 64); {args.rounds} builds of each kind, "
        "interleaved; texts/s is their median (range beside it)",
        "- local: `pipeline.build` with the encoder on N intra-op threads (a plain `vitrine build` uses every core, "
        "here 2); Ray: `ray.init(num_cpus=N)` then `--ray auto`, one encoder actor with N threads; texts/s counts "
        "encoding only (encoders loaded); Ray start-up is the build's own (actor placement and its encoder's load; "
        "starting a Ray instance adds about 6-8 s here and is left out, a cluster runs already)",
        "",
        table(["build", "worker cores", "texts embedded", "texts/s", "range", "texts/s per core", "Ray start-up",
               "whole build", "max abs diff to local 2 threads"], rows),
        "",
        "The vectors of every build are identical to the local build's (the last column; the bound is 1e-6). "
        "On this shared 2-core machine the Ray driver, raylet and GCS and other people's work share the cores "
        "with the worker: when the load average is above the core count (see above), a second thread adds "
        "little or nothing, so the figure to plan a cluster with is the 1-core rows' texts/s per core, a floor "
        "for a dedicated core: a cluster embeds about that times its worker cores, after the start-up "
        "(seconds, once per build).",
    ])
    print(body)
    print(json.dumps({label: [round(r["rate"], 1) for r in rs] for label, rs in runs.items()}), file=sys.stderr)
    if args.record:
        record("bench_ray_build", body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
