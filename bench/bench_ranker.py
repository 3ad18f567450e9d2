"""What the learned ranker adds to a recommendation and a search request (issue 9: at most 2 ms on p50 at N = 100).

In process, on the demo index: 300 real Scientific histories (each shopper's last 5 items, as an anonymous
session's ``recent`` list) are asked ``Engine.recommend`` with no ranker and with a published MLP ranker
(64-32 hidden, with the sequence model of the ``seq`` features; search: 160-80, five merged 32-16 MLPs:
the served shapes) re-ranking the blend's best 100, alternating request by request so both
see the same machine load. Then CrowdFlower queries are searched with no search ranker and with one
re-ranking the fused best 100, alternating the same way, at steady state: after the background thread
that a version's first search with features starts has prepared every item's text for them
(``engine.ranking.fields``). Impression logging is off in both (it is measured by bench_search.py). The same
queries are then searched personalized, each from one Scientific shopper on a store of their histories,
without and with the search ranker (the shopper's affinity, its parts and usual price are features there).

Last, what a logged recommendation list that no model ranks takes on the request path for its deferred
features' live inputs (``engine.recommend.compose``): the live models read for the shown 10 (served) against
all 100 candidates (as before 2026-12-05; both now with ``CooccurrenceModel.scores_of``), over the same sessions, on a store holding every Scientific
history as purchases (the live models then hold real co-occurrence, transition and count data).

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
from engine.recommend.compose import Touch, live_inputs, shown_live_inputs
from engine.config import EngineConfig
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
    capture, personal = capture_costs(config, inter, sessions, queries[20:20 + args.users])
    times.update(personal)
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
        f"both engines; target: at most 2 ms each), and {rows[5][1] - rows[4][1]:.2f} ms to a personalized "
        "search's (the same queries, each from one of the Scientific shoppers, on a store of their histories: "
        "the affinity, its parts and the usual price are features there).",
        "",
        "A logged list that no model ranks takes its deferred features' live inputs on the request path (the leak fix, "
        "README \"The learning loop\"); on a store of the 8,442 Scientific histories, the same sessions:",
        "",
        common.table(["live inputs taken for", "p50 ms", "p99 ms", "mean ms"],
                     [[name, st["p50"], st["p99"], st["mean"]] for name, st in capture.items()]),
    ])
    print(body)
    if args.record:
        common.record("ranker", body)
    return 0


def capture_costs(config: EngineConfig, inter: pd.DataFrame, sessions: list[list[str]], queries: list[str]
                  ) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """p50 / p99 / mean ms of the live-input capture, the shown 10 against all 100 candidates, alternating;
    and the times of personalized searches (``queries``, each from one shopper) without and with the search
    ranker, alternating, on the same store."""
    from engine.events import open_event_store
    from engine.events.importer import import_events

    db = common.OUT / "ranker-capture.db"
    for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        f.unlink(missing_ok=True)
    csv_path = common.OUT / "ranker-capture.csv"
    inter.assign(user_id="sci-" + inter["user_index"].astype(str), type="purchase")[
        ["user_id", "item_id", "type", "seq_pos"]].to_csv(csv_path, index=False)
    store = open_event_store(f"sqlite:///{db}")
    try:
        now = time.time()
        import_events(store, csv_path, batch_size=5000, now=now, synthetic_base=now - 86400.0)
    finally:
        store.close()
    csv_path.unlink()
    engine = Engine(config.replace(ranker_dir=common.OUT / "rankers-none", events_url=f"sqlite:///{db}"))
    snap = engine.snapshot()
    live = engine.shoppers.live
    engine.refresh_live()
    out: dict[str, list[float]] = {"the shown 10 (served)": [], "all 100 candidates (before)": []}
    for i, s in enumerate([*sessions[:20], *sessions]):  # the first 20: warm-up (the category transitions)
        known = [Touch(x, "view") for x in s if x in snap.catalog]
        pool = np.array([snap.catalog.row(r.id) for r in
                         engine.shoppers.recommend(None, recent=s, k=100).recommendations], np.int64)
        shown = pool[:10].tolist()
        for name in sorted(out, reverse=bool(i % 2)):  # alternating which goes first
            t = time.perf_counter()
            shown_live_inputs(snap, live, known, pool, shown) if name.startswith("the shown") else \
                live_inputs(snap, live, known, pool)
            if i >= 20:
                out[name].append(time.perf_counter() - t)
    learned = Engine(config.replace(events_url=f"sqlite:///{db}"))
    users = ["sci-" + str(u) for u in inter["user_index"].unique()[: len(queries)]]
    searched: dict[str, list[float]] = {"personalized search: fused order": [], "personalized search: ranker": []}
    for q, u in zip(queries[:20], users):  # warm up
        engine.search(q, user=u)
        learned.search(q, user=u)
    assert FieldTokens.of(learned.snapshot()).prepared.wait(300)
    for q, u in zip(queries, users):
        for name, e in (("personalized search: fused order", engine), ("personalized search: ranker", learned)):
            t = time.perf_counter()
            found = e.search(q, user=u)
            searched[name].append(time.perf_counter() - t)
        assert found.hits and found.hits[0].personal is not None, "personalized"
    return {k: common.stats_ms(v) for k, v in out.items()}, searched


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
