"""Build ``data/demo/events.csv.gz``: the histories of 2,000 real shoppers of the UniSRec "Scientific" data.

The demo's shopper mode lets a person browse as one of these shoppers, and their histories feed the
demo's co-occurrence ("often bought together") and trending. The shoppers are the 2,000 with the longest
histories (ties by user id), every event of theirs kept, in ``seq_pos`` order. The source gives order
only, no time: a history of n events ends at ``END - (crc32(user) mod 1 day)`` with one event every
``min(1 day, 60 days / n)`` before that, so histories spread over the two months before 2026-11-27 and
the admin page's events-per-day chart has something to show. These times
are made up (README and ``data/demo/SOURCE.md`` say so). Type ``purchase``: the source lists reviewed
items, as the evaluation reads them. Deterministic: the same source gives the same bytes.

Usage: ``python scripts/make_demo_events.py [SRC] [--out PATH] [--shoppers N]``.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import zlib
from collections import defaultdict
from pathlib import Path

DEFAULT_SRC = "../shared/data/amazon_scientific_unisrec/interactions.csv.gz"
DEFAULT_OUT = "data/demo/events.csv.gz"
END = 1795737600  # 2026-11-27T00:00:00Z
DAY = 86400


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="?", default=DEFAULT_SRC)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--shoppers", type=int, default=2000)
    args = ap.parse_args()
    history: dict[str, list[tuple[int, str]]] = defaultdict(list)
    with gzip.open(args.src, "rt", newline="") as f:
        for row in csv.DictReader(f):
            history[row["user_id"]].append((int(row["seq_pos"]), row["item_id"]))
    chosen = sorted(history, key=lambda u: (-len(history[u]), u))[: args.shoppers]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["event_id", "user_id", "type", "item_id", "timestamp"])
    rows = 0
    for user in sorted(chosen):
        events = sorted(history[user])
        last = END - zlib.crc32(user.encode()) % DAY
        step = min(DAY, 60 * DAY // len(events))
        for n, (pos, item) in enumerate(events):
            w.writerow([f"sci-{user}-{pos}", user, "purchase", item, last - (len(events) - 1 - n) * step])
            rows += 1
    out = Path(args.out)
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue().encode())
    print(f"{out}: {len(chosen)} shoppers, {rows} events, {out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
