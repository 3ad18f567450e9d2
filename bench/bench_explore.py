"""What exploration adds to a recommendation and a search request (issue 10: "exploration settings and what
they cost").

In process, on the demo index, impression logging off: 300 real Scientific histories (each shopper's last 5
items, as an anonymous session's ``recent`` list) are asked ``Engine.recommend(k=10)`` with exploration off,
with ``epsilon:0.1`` (the top 10 slots drawn from the best 50) and with ``epsilon:0.1,cold_share=0.1`` (which
also asks the "new" strategy for untouched items), alternating request by request so all see the same load;
then CrowdFlower queries are searched with ``explore_search`` off and ``softmax:0.5``. The event store holds
the demo's real shoppers (``make demo-events``) when present, else nothing.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_explore.py [--record]
"""
from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

import common
from engine.service import Engine

SETTINGS = {"off": "0", "epsilon:0.1": "epsilon:0.1", "epsilon:0.1 + cold_share 0.1": "epsilon:0.1,cold_share=0.1"}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--users", type=int, default=300)
    args = ap.parse_args(argv)
    load0 = common.load_avg()
    index = common.ensure_index("demo")
    config = common.engine_config(index).replace(events_url=f"sqlite:///{common.OUT / 'explore-bench.db'}")
    engines = {name: Engine(config.replace(explore_recommend=v, explore_search=v if name == "off" else "softmax:0.5"))
               for name, v in SETTINGS.items()}
    inter = pd.read_csv(config.data_dir / "amazon_scientific_unisrec" / "interactions.csv.gz")
    inter = inter.sort_values(["user_index", "seq_pos"])
    sessions = [g.tolist()[-5:] for _, g in inter.groupby("user_index")["item_id"]][: args.users + 20]
    for e in engines.values():  # warm up
        for s in sessions[:20]:
            e.recommend(None, recent=s, k=10)
    times: dict[str, list[float]] = {f"recommend: {n}": [] for n in engines}
    for s in sessions[20:]:
        for name, e in engines.items():
            t = time.perf_counter()
            e.recommend(None, recent=s, k=10)
            times[f"recommend: {name}"].append(time.perf_counter() - t)
    queries = pd.read_csv(config.data_dir / "crowdflower_search_relevance" / "train.csv.gz")["query"].unique().tolist()
    pair = {"search: off": engines["off"], "search: softmax:0.5": engines["epsilon:0.1"]}
    for q in queries[:20]:
        for e in pair.values():
            e.search(q)
    for q in queries[20:20 + args.users]:
        for name, e in pair.items():
            t = time.perf_counter()
            e.search(q)
            times.setdefault(name, []).append(time.perf_counter() - t)
    rows = []
    for name, ts in times.items():
        st = common.stats_ms(ts)
        rows.append([name, st["p50"], st["p99"], st["mean"]])
    body = "\n".join([
        "### Exploration: cost per request (in process)",
        "",
        common.header("bench_explore.py", argv, load0),
        "",
        common.table(["request: exploration", "p50 ms", "p99 ms", "mean ms"], rows),
        "",
        f"Exploring adds {rows[1][1] - rows[0][1]:+.2f} ms to recommendation p50 (the best 50 instead of 10, and the "
        f"draw), {rows[2][1] - rows[0][1]:+.2f} ms with a cold share (a second list, the \"new\" strategy's), and "
        f"{rows[4][1] - rows[3][1]:+.2f} ms to search p50 ({args.users} CrowdFlower queries, each new to both).",
    ])
    print(body)
    if args.record:
        common.record("explore", body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
