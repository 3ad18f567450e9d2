"""What the learned ranker adds to a recommendation and a search request (issue 9: at most 2 ms on p50 at N = 100).

In process, on the demo index: 300 real Scientific histories (each shopper's last 5 items, as an anonymous
session's ``recent`` list) are asked ``Engine.recommend`` with no ranker and with a published MLP ranker
(64-32 hidden, with the sequence model of the ``seq`` features; search: 160-80, five merged 32-16 MLPs:
the served shapes) re-ranking the blend's best 100, alternating request by request so both
see the same machine load. Then CrowdFlower queries are searched with no search ranker and with one
re-ranking the fused best 100, alternating the same way, at steady state: after the background thread
that a version's first search with features starts has prepared every item's text for them
(``engine.ranking.fields``). Impression logging is off in both (it is measured by bench_search.py).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_ranker.py [--record]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time

import numpy as np
import pandas as pd

import common
from engine.learn import registry
from engine.learn.model import MlpRanker
from engine.learn.sequence import SeqConfig, train_seq
from engine.ranking.features import RECOMMEND_FEATURES, SEARCH_FEATURES
from engine.ranking.fields import FieldTokens
from engine.service import Engine


def random_mlp(features: tuple[str, ...] = RECOMMEND_FEATURES, seed: int = 0,
               hidden: tuple[int, ...] = (64, 32)) -> MlpRanker:
    rng = np.random.default_rng(seed)
    dims = [len(features), *hidden, 1]
    layers = [(rng.normal(0, 0.1, (a, b)).astype(np.float32), np.zeros(b, np.float32)) for a, b in zip(dims[:-1], dims[1:])]
    F = len(features)
    return MlpRanker(features, np.zeros(F, np.float32), np.ones(F, np.float32), layers)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--users", type=int, default=300)
    args = ap.parse_args(argv)
    load0 = common.load_avg()
    index = common.ensure_index("demo")
    rankers = common.OUT / "rankers-bench"
    shutil.rmtree(rankers, ignore_errors=True)
    config = common.engine_config(index).replace(ranker_dir=rankers, events_url=f"sqlite:///{common.OUT / 'ranker-bench.db'}")
    plain = Engine(config.replace(ranker_dir=common.OUT / "rankers-none"))
    snap = plain.snapshot()
    recommend_model = random_mlp()
    # The served shape of the sequence model behind the seq features (untrained: its cost, not its quality).
    recommend_model.seq = train_seq([], np.asarray(snap.vectors), snap.catalog.ids, SeqConfig(epochs=0))
    registry.publish(rankers, "recommend", recommend_model, {"training": {"data": "bench"}})
    # The served search model's shape: five 32-16 MLPs merged (engine.evaluation.search_eval.SEARCH_ENSEMBLE).
    registry.publish(rankers, "search", random_mlp(SEARCH_FEATURES, hidden=(160, 80)), {"training": {"data": "bench"}})
    learned = Engine(config)
    inter = pd.read_csv(config.data_dir / "amazon_scientific_unisrec" / "interactions.csv.gz")
    inter = inter.sort_values(["user_index", "seq_pos"])
    sessions = [g.tolist()[-5:] for _, g in inter.groupby("user_index")["item_id"]][: args.users]
    for e in (plain, learned):  # warm up
        for s in sessions[:20]:
            e.recommend(None, recent=s, k=10)
    assert learned.rankers.get("recommend") is not None and plain.rankers.get("recommend") is None
    times: dict[str, list[float]] = {"recommend: blend": [], "recommend: ranker": []}
    for s in sessions:
        for name, e in (("recommend: blend", plain), ("recommend: ranker", learned)):
            t = time.perf_counter()
            e.recommend(None, recent=s, k=10)
            times[name].append(time.perf_counter() - t)
    queries = pd.read_csv(config.data_dir / "crowdflower_search_relevance" / "train.csv.gz")["query"].unique().tolist()
    for q in queries[:20]:
        plain.search(q)
        learned.search(q)
    # Steady state: the version's item texts all prepared by the background thread its first search started.
    assert FieldTokens.of(learned.snapshot()).prepared.wait(300)
    for q in queries[20:20 + args.users]:
        for name, e in (("search: fused order", plain), ("search: ranker", learned)):
            t = time.perf_counter()
            e.search(q)
            times.setdefault(name, []).append(time.perf_counter() - t)
    rows = []
    for name, ts in times.items():
        st = common.stats_ms(ts)
        rows.append([name, st["p50"], st["p99"], st["mean"]])
    added = rows[1][1] - rows[0][1]
    added_search = rows[3][1] - rows[2][1]
    body = "\n".join([
        "### Learned ranker: cost per recommendation request (in process)",
        "",
        common.header("bench_ranker.py", argv, load0),
        "",
        common.table(["request: policy", "p50 ms", "p99 ms", "mean ms"], rows),
        "",
        f"The ranker (features of the best 100 + the MLP in numpy) adds {added:.2f} ms to recommendation p50 and "
        f"{added_search:.2f} ms to search p50 (`Engine.search`, {args.users} CrowdFlower queries, each new to "
        "both engines; target: at most 2 ms each).",
    ])
    print(body)
    if args.record:
        common.record("ranker", body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
