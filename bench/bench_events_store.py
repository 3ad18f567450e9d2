"""Event store benchmark: in-process ``add_many`` throughput, batches of 100, durable (WAL, synchronous=FULL).

A fresh store in ``bench/out/events-bench/``; synthetic events over the demo catalog's items (with their
categories, so category affinity is updated too) and 5,000 users, mixed types (60% view, 20% click,
7% add_to_cart, 2% remove_from_cart, 5% purchase, 4% search, 2% rating). For each writer-thread count:
validation + ``add_many`` per batch (what an HTTP request does, minus HTTP), events/s and batch
latency; then the same batches again, which are all duplicates (a client retrying).

Usage: .venv/bin/python bench/bench_events_store.py [--events 50000] [--batch 100] [--threads 1,4] [--record]
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import threading
import time
from typing import Any

from common import DEMO_CATALOG, OUT, header, load_avg, read_rows, record, stats_ms, table

from engine.events import open_event_store, validate_many  # noqa: E402

TARGET = 5000.0
MIX = [("view", 60), ("click", 20), ("add_to_cart", 7), ("remove_from_cart", 2), ("purchase", 5),
       ("search", 4), ("rating", 2)]


def make_events(n: int, items: list[str], seed: int, tag: str) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    types = [t for t, w in MIX for _ in range(w)]
    now = time.time()
    out = []
    for i in range(n):
        t = rng.choice(types)
        e: dict[str, Any] = {"event_id": f"{tag}-{i}", "user_id": f"u{rng.randrange(5000)}", "type": t,
                             "timestamp": now - rng.uniform(0, 30 * 86400)}
        if t == "search":
            e["query"] = rng.choice(["pla filament", "safety glasses", "nitrile gloves", "multimeter"])
        else:
            e["item_id"] = rng.choice(items)
        if t == "rating":
            e["value"] = rng.randint(1, 5)
        out.append(e)
    return out


def run(url: str, batches: list[list[dict[str, Any]]], threads: int,
        categories: dict[str, str | None]) -> tuple[float, list[float], int]:
    """(seconds, per-batch seconds, events accepted) with ``threads`` writers sharing one store object."""
    store = open_event_store(url)
    latencies: list[float] = []
    accepted = [0]
    lock = threading.Lock()

    def work(mine: list[list[dict[str, Any]]]) -> None:
        for batch in mine:
            t0 = time.perf_counter()
            events, rejected = validate_many(batch, now=time.time())
            assert not rejected, rejected[:3]
            result = store.add_many(events, categories=categories)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                accepted[0] += len(result.accepted)

    workers = [threading.Thread(target=work, args=(batches[i::threads],)) for i in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - t0
    store.close()
    return seconds, latencies, accepted[0]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", default="1,4")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    load_at_start = load_avg()
    catalog = read_rows(DEMO_CATALOG)
    categories = {r["id"]: r.get("category") or None for r in catalog}
    items = list(categories)
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        folder = OUT / "events-bench"
        shutil.rmtree(folder, ignore_errors=True)
        url = f"sqlite:///{folder / 'events.db'}"
        events = make_events(args.events, items, seed=threads, tag=f"t{threads}")
        batches = [events[i:i + args.batch] for i in range(0, len(events), args.batch)]
        seconds, lat, accepted = run(url, batches, threads, categories)
        assert accepted == len(events), (accepted, len(events))
        s = stats_ms(lat)
        rows.append([f"new events, {threads} thread(s)", len(events), f"{len(events) / seconds:,.0f}",
                     f"{s['p50']:.1f}", f"{s['p99']:.1f}"])
        seconds, lat, accepted = run(url, batches, threads, categories)
        assert accepted == 0
        s = stats_ms(lat)
        rows.append([f"same again (all duplicates), {threads} thread(s)", len(events),
                     f"{len(events) / seconds:,.0f}", f"{s['p50']:.1f}", f"{s['p99']:.1f}"])
        print(f"{threads} thread(s) done", file=sys.stderr)
    body = "\n\n".join([
        "## Event store: add_many, in process",
        header("bench_events_store.py", argv, load_at_start),
        f"Batches of {args.batch}, each validated then stored in one transaction that is on disk "
        "(WAL, synchronous=FULL) before add_many returns; features updated in the same transaction. "
        f"Target for HTTP ingest: >= {TARGET:,.0f} events/s.",
        table(["run", "events", "events/s", "batch p50 ms", "batch p99 ms"], rows),
    ])
    print(body)
    if args.record:
        record("bench_events_store", body)


if __name__ == "__main__":
    main(sys.argv[1:])
