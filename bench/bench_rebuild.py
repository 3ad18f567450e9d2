"""Incremental rebuild benchmark: a 1% edit rebuilt with the previous IVF centroids, and the same edit
with k-means run again (``ivf_retrain_share`` 0), on copies of one built index.

Needs the index dir of ``bench_build.py`` for the size (``bench/out/index-<size>``, built if missing).
Steps, each on a fresh copy of that dir: a first 1% edit (seeds the manifest's centroid record when the
copy predates it), then a second, different 1% edit, timed twice: reusing the centroids, and retraining.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_rebuild.py [--sizes 100k] [--record]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from common import (OUT, catalog_path, engine_config, ensure_index, header, load_avg, parse_sizes, read_rows, record,
                    table, write_rows)

from engine import pipeline  # noqa: E402  (common puts the repository on sys.path)

EDIT_EVERY = 100


def edited(size: str, rows: list[dict[str, Any]], offset: int, tag: str) -> Path:
    out = [dict(r) for r in rows]
    for i in range(offset, len(out), EDIT_EVERY):
        out[i]["title"] = f"{out[i]['title']} {tag}"
    path = OUT / "catalogs" / f"catalog-{size}-{tag}.jsonl"
    write_rows(out, path)
    return path


def timed(config: Any, catalog: Path) -> dict[str, Any]:
    stages: dict[str, float] = {}
    last = [time.perf_counter(), "start"]

    def progress(event: dict[str, Any]) -> None:
        now = time.perf_counter()
        if event["stage"] != last[1]:
            stages[str(last[1])] = stages.get(str(last[1]), 0.0) + now - float(last[0])
            last[0], last[1] = now, event["stage"]

    t0 = time.perf_counter()
    result = pipeline.build(config, catalog, progress=progress)
    total = time.perf_counter() - t0
    stages[str(last[1])] = stages.get(str(last[1]), 0.0) + time.perf_counter() - float(last[0])
    return {"total": total, "stages": stages, "index": result.manifest["index"],
            "embedded": result.manifest["counts"]["embedded"]}


def run(size: str) -> list[list[Any]]:
    source = ensure_index(size)
    rows = read_rows(catalog_path(size))
    first, second = edited(size, rows, 3, "rev-a"), edited(size, rows, 7, "rev-b")
    out = []
    for label, share in (("reuse centroids", 0.2), ("retrain (k-means)", 0.0)):
        work = OUT / f"rebuild-{size}"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(source, work, symlinks=True)
        config = engine_config(work).replace(ivf_retrain_share=share)
        timed(config, first)
        r = timed(config, second)
        ix = r["index"]
        print(f"[{size}] {label}: {r['total']:.1f} s, index stage {r['stages'].get('index', 0):.1f} s, "
              f"{ix['quantizer']}, recall@10 {ix['recall_at_10']} at nprobe {ix['nprobe']} (load {load_avg()})",
              file=sys.stderr)
        out.append([size, f"{len(rows):,}", label, r["embedded"], r["stages"].get("embed", 0.0),
                    r["stages"].get("index", 0.0), r["total"], ix["quantizer"], ix["recall_at_10"], ix["nprobe"]])
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100k")
    ap.add_argument("--record", action="store_true", help="replace the bench_rebuild section of bench/RESULTS.md")
    args = ap.parse_args()
    load_at_start = load_avg()
    rows = [row for size in parse_sizes(args.sizes) for row in run(size)]
    body = "\n\n".join([
        "## Incremental rebuild: IVF centroids reused or retrained (`bench/bench_rebuild.py`)",
        header("bench_rebuild.py", sys.argv[1:], load_at_start),
        f"The same 1% title edit (every {EDIT_EVERY}th item, after another 1% edit) rebuilt on a copy of the "
        "built index, once reusing the previous version's IVF centroids and once with k-means run again "
        "(`ivf_retrain_share` 0). Wall seconds; 'index' is FAISS (train or not, add, recall check) + BM25 + "
        "writing the version:",
        table(["size", "items", "build", "re-embedded", "embed s", "index s", "total s", "centroids",
               "recall@10", "nprobe"], rows),
    ])
    print(body)
    if args.record:
        record("bench_rebuild", body)


if __name__ == "__main__":
    main()
