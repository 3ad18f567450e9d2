"""Build benchmark: full build throughput, then an incremental rebuild after editing 1% of the titles.

For each size, in a fresh index dir ``bench/out/index-<size>``: ``pipeline.build(config, catalog,
full=True)`` (every item embedded, encoder as configured), then a normal build of the same catalog
with 1% of the titles changed (only those items are re-embedded; the rest comes from the embedding
cache). The index dirs are left in place for ``bench_search.py``.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_build.py [--sizes demo,100k] [--record]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (OUT, ROOT, SIZES, catalog_path, engine_config, header, index_dir, load_avg, parse_sizes, read_rows,
                    record, table, write_rows)

from engine import pipeline  # noqa: E402  (common puts the repository on sys.path)
from engine.config import EngineConfig  # noqa: E402

EDIT_EVERY = 100  # 1% of the items get a new title
TARGET_SPEEDUP = 20.0


@dataclass
class BuildRun:
    seconds: float
    stages: dict[str, float]  # wall seconds per pipeline stage
    manifest: dict[str, Any]

    @property
    def items(self) -> int:
        return int(self.manifest["counts"]["items"])

    @property
    def embedded(self) -> int:
        return int(self.manifest["counts"]["embedded"])


def timed_build(config: EngineConfig, catalog: Path, *, full: bool, label: str) -> BuildRun:
    """One ``pipeline.build``, with the wall time of each stage taken from its progress events."""
    marks: dict[str, float] = {}
    last_note = time.time()

    def progress(event: dict[str, Any]) -> None:
        nonlocal last_note
        marks.setdefault(event["stage"], time.perf_counter())
        if event["stage"] == "embed" and event.get("items_per_s") and time.time() - last_note > 30:
            last_note = time.time()
            print(f"  {label}: embedded {event['done']}/{event['total']} ({event['items_per_s']:.0f} items/s, "
                  f"ETA {event['eta_s']:.0f}s)", file=sys.stderr)

    t0 = time.perf_counter()
    result = pipeline.build(config, catalog, full=full, progress=progress)
    end = time.perf_counter()
    stages = {
        "read catalog + load encoder": marks["embed"] - t0,
        "embed": marks["index"] - marks["embed"],
        "FAISS + BM25 + write": marks["publish"] - marks["index"],
        "publish + prune": end - marks["publish"],
    }
    return BuildRun(end - t0, stages, result.manifest)


def edited_catalog(size: str, source: Path) -> tuple[Path, int]:
    """A copy of ``source`` with the title of every ``EDIT_EVERY``-th item changed; (path, edited count)."""
    rows = read_rows(source)
    edited = 0
    for i, row in enumerate(rows):
        if i % EDIT_EVERY == EDIT_EVERY // 2:
            row["title"] = f"{row['title']} (new edition)"
            edited += 1
    path = OUT / "catalogs" / f"catalog-{size}-edited.jsonl"
    write_rows(rows, path)
    return path, edited


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="demo,100k", help=f"comma-separated, from: {', '.join(SIZES)}")
    ap.add_argument("--record", action="store_true", help="replace the bench_build section of bench/RESULTS.md")
    args = ap.parse_args()
    sizes = parse_sizes(args.sizes)
    load_at_start = load_avg()
    print(f"load average at start: {load_at_start}", file=sys.stderr)

    results: dict[str, tuple[BuildRun, BuildRun, int]] = {}
    embed_rate: float | None = None
    for size in sizes:
        index = index_dir(size)
        shutil.rmtree(index, ignore_errors=True)
        catalog = catalog_path(size)
        config = engine_config(index)
        n = len(read_rows(catalog))
        if embed_rate:
            print(f"[{size}] {n} items: expect ~{n / embed_rate / 60:.1f} min of embedding at the demo's "
                  f"{embed_rate:.0f} items/s", file=sys.stderr)
        print(f"[{size}] full build of {catalog.relative_to(ROOT)} into {index} "
              f"(encoder {config.encoder}, load {load_avg()})", file=sys.stderr)
        full = timed_build(config, catalog, full=True, label=size)
        embed_rate = embed_rate or full.manifest["embedding"]["items_per_second"]
        edited_path, edited = edited_catalog(size, catalog)
        print(f"[{size}] full {full.seconds:.1f}s; incremental build after editing {edited} titles "
              f"(load {load_avg()})", file=sys.stderr)
        incr = timed_build(config, edited_path, full=False, label=f"{size} incremental")
        results[size] = (full, incr, edited)

    summary = []
    stage_rows = []
    index_rows = []
    for size, (full, incr, edited) in results.items():
        speedup = full.seconds / incr.seconds
        summary.append([
            size, f"{full.items:,}", full.seconds, full.stages["embed"], full.manifest["embedding"]["items_per_second"],
            full.items / full.seconds, incr.seconds, f"{incr.embedded:,} ({edited:,} edited)", f"{speedup:.1f}x",
            "yes" if speedup >= TARGET_SPEEDUP else "**no**",
        ])
        for label, run in (("full", full), ("1% edited", incr)):
            stage_rows.append([size, label, *run.stages.values(), run.seconds])
        ix = full.manifest["index"]
        index_rows.append([size, ix["spec"], ix["kind"], ix["nprobe"] or "-", ix["recall_at_10"],
                           ix["recall_queries"] or "-"])
    encoder = next(iter(results.values()))[0].manifest["embedding"]["encoder"]
    body = "\n\n".join([
        "## Build (`bench/bench_build.py`)",
        header("bench_build.py", sys.argv[1:], load_at_start),
        f"Full build = `pipeline.build(config, catalog, full=True)` in a fresh index dir, encoder `{encoder}` "
        "(default settings). Incremental = a normal build of the same catalog with the title of 1 item in "
        f"{EDIT_EVERY} changed (only those are re-embedded; target speed-up >= {TARGET_SPEEDUP:.0f}x). "
        "Times are wall-clock seconds.",
        table(["size", "items", "full build s", "embed s", "embedding items/s (pipeline)", "items/s overall",
               "1% rebuild s", "re-embedded", "speed-up", f">= {TARGET_SPEEDUP:.0f}x"], summary),
        "Stages (wall seconds, from the pipeline's progress events):",
        table(["size", "build", *next(iter(results.values()))[0].stages, "total"], stage_rows),
        "Vector index (from the manifest of the full build; IVF above `approx_threshold` = 20,000 items):",
        table(["size", "spec", "kind", "nprobe", "recall@10 vs exact", "probe queries"], index_rows),
        "The 100k catalog is synthetic (see `bench/common.py`): demo item `i % 4385`, from the second "
        "copy on with a variant word, a pack size and another item's brand, so all texts differ; it has no "
        "descriptions, like the demo. Real catalogs are more varied and their texts longer (slower to embed).",
    ])
    print(body)
    if args.record:
        record("bench_build", body)


if __name__ == "__main__":
    main()
