"""Durable ingest on PostgreSQL beside SQLite: in-process ``add_many``, the same batches on both stores.

The events, batches and writer threads of bench_events_store.py (synthetic events over the demo catalog's
items, with their categories, mixed types, 5,000 users; validation + ``add_many`` per batch), stored once in
a fresh SQLite file (WAL, synchronous=FULL) and once in a fresh PostgreSQL database (synchronous_commit on,
fsync on; every write transaction holds the store's advisory write lock), on the same machine and disk.
Then the same batches again (all duplicates: a client retrying). PostgreSQL is ``--pg-url``, else
``VITRINE_TEST_PG_URL``, else a throwaway server this script starts and stops (scripts/pg_throwaway.sh).

Usage: .venv/bin/python bench/bench_ingest_pg.py [--events 20000] [--batch 100] [--threads 1,4] [--record]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from bench_events_store import make_events, run
from common import DEMO_CATALOG, OUT, ROOT, header, load_avg, read_rows, record, stats_ms, table


@contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """A server URL: the one given, else a throwaway server for the duration."""
    if url:
        yield url
        return
    script = str(ROOT / "scripts" / "pg_throwaway.sh")
    out = subprocess.run([script, "start"], capture_output=True, text=True, check=True, timeout=120)
    values = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    try:
        yield values["VITRINE_TEST_PG_URL"]
    finally:
        subprocess.run([script, "stop", values["PG_THROWAWAY_DIR"]], timeout=120)


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", default="1,4")
    ap.add_argument("--pg-url", default=os.environ.get("VITRINE_TEST_PG_URL"))
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    load_at_start = load_avg()
    catalog = read_rows(DEMO_CATALOG)
    categories = {r["id"]: r.get("category") or None for r in catalog}
    items = list(categories)
    rows = []
    rates: dict[tuple[str, int], float] = {}
    with postgres(args.pg_url) as server:
        for threads in [int(t) for t in args.threads.split(",")]:
            events = make_events(args.events, items, seed=threads, tag=f"t{threads}")
            batches = [events[i:i + args.batch] for i in range(0, len(events), args.batch)]
            for backend in ("sqlite", "postgresql"):
                folder = OUT / "ingest-pg-bench"
                shutil.rmtree(folder, ignore_errors=True)
                with (fresh_database(server) if backend == "postgresql" else _nothing()) as pg:
                    url = pg if backend == "postgresql" else f"sqlite:///{folder / 'events.db'}"
                    seconds, lat, accepted = run(url, batches, threads, categories)
                    assert accepted == len(events), (accepted, len(events))
                    s = stats_ms(lat)
                    rates[backend, threads] = len(events) / seconds
                    rows.append([backend, f"new events, {threads} thread(s)", len(events),
                                 f"{len(events) / seconds:,.0f}", f"{s['p50']:.1f}", f"{s['p99']:.1f}"])
                    seconds, lat, accepted = run(url, batches, threads, categories)
                    assert accepted == 0
                    s = stats_ms(lat)
                    rows.append([backend, f"same again (all duplicates), {threads} thread(s)", len(events),
                                 f"{len(events) / seconds:,.0f}", f"{s['p50']:.1f}", f"{s['p99']:.1f}"])
                print(f"{backend}, {threads} thread(s) done", file=sys.stderr)
    ratios = ", ".join(f"{t} thread(s): {rates['postgresql', t] / rates['sqlite', t]:.2f}x"
                       for b, t in rates if b == "sqlite")
    body = "\n\n".join([
        "## Event store: durable ingest, PostgreSQL beside SQLite",
        header("bench_ingest_pg.py", argv, load_at_start),
        f"Batches of {args.batch}, the same ones on both stores, each validated then stored in one transaction "
        "that is durable before add_many returns (SQLite: WAL, synchronous=FULL; PostgreSQL 15 from Debian on "
        "127.0.0.1, a throwaway cluster on the same disk: fsync and synchronous_commit on), features updated in the "
        "same transaction; writer threads share one store object (group commit). "
        f"PostgreSQL / SQLite events/s on new events: {ratios}.",
        table(["store", "run", "events", "events/s", "batch p50 ms", "batch p99 ms"], rows),
    ])
    print(body)
    if args.record:
        record("bench_ingest_pg", body)


@contextmanager
def _nothing() -> Iterator[str]:
    yield ""


if __name__ == "__main__":
    main(sys.argv[1:])
