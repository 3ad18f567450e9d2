"""Bootstrap lists for the recommendation ranker from the shop's own histories, made by the serving path.

A shop that turns the learned ranker on has shoppers' histories long before it has logged lists with
outcomes. Each history gives next-item lists: for a depth ``d``, the target is the shopper's ``d``-th item
from the end and the history is everything before it. Unlike the public bootstraps
(:mod:`engine.evaluation.ranker_eval`, whose features come from the eval's own models), these lists are
built by the server's own code: for each depth, the event store's item events are copied without every
shopper's last ``d`` items (so no feature model has seen a target), an :class:`engine.service.Engine`
opens that copy over the served index, and each shopper's recommendations (the blend's best ``pool``, in
its order) come with the features the server computes for them (``Shoppers.recommend(features=True)``),
the ``seq`` ones from a sequence model fit on the same truncated histories. Training and serving thus see
features made by one path from the same kind of stores. (The offline replica of the Scientific eval
scales the raw sources differently from the live models: content by about 5x, co-occurrence and
popularity by about 2x; a ranker trained on it served 13% below the blend in ``vitrine simulate``.)

Labels: 1 for the target, 0 for the other candidates. The training lists are the depths ``depths``; the
validation lists (early stopping, the publish check) are depth ``val_depth``, whose sequence model is the
one returned (and published with the ranker).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.config import EngineConfig
from engine.errors import InvalidQuery
from engine.evaluation.ranker_eval import Lists

DEPTHS = (2, 3, 4, 5)
VAL_DEPTH = 1
POOL = 100
HISTORY_TYPES = frozenset({"view", "click", "add_to_cart", "purchase"})
MIN_SHOPPERS = 20  # shoppers with an item at the validation depth needed


@dataclass
class HistoryRows:
    train: Lists
    val: Lists
    seq: Any  # the SeqModel behind the validation lists' seq features (published with the ranker)
    info: dict[str, Any] = field(default_factory=dict)


def shopper_sequences(config: EngineConfig, known: set[str]) -> dict[str, list[tuple[list[Any], str]]]:
    """Per shopper, their item events in order (timestamp, then storage order), grouped into items: a list
    of (events, item id), a repeat of the item just before joining its group. Items not in ``known`` are
    left out."""
    from engine.events import open_event_store

    events: dict[str, list[Any]] = {}
    store = open_event_store(config.events_url)
    try:
        after = 0
        while True:
            page = store.events_after(after, limit=20000)
            if not page:
                break
            for e in page:
                if e.item_id is not None and e.item_id in known and e.type.value in HISTORY_TYPES:
                    events.setdefault(e.user_id, []).append(e)
            after = int(page[-1].seq or after)
    finally:
        store.close()
    out: dict[str, list[tuple[list[Any], str]]] = {}
    for user, evs in events.items():
        groups: list[tuple[list[Any], str]] = []
        for e in sorted(evs, key=lambda e: (e.timestamp, e.seq or 0)):
            if groups and groups[-1][1] == e.item_id:
                groups[-1][0].append(e)
            else:
                groups.append(([e], str(e.item_id)))
        out[user] = groups
    return out


def history_rows(config: EngineConfig, *, depths: Sequence[int] = DEPTHS, val_depth: int = VAL_DEPTH,
                 pool: int = POOL, seq: bool = True, work: Path | None = None) -> HistoryRows:
    """The bootstrap lists of the event store's histories over the served index (see the module docstring).
    ``seq``: fit a sequence model per depth for the ``seq`` features (else they are 0). ``work``: where the
    truncated stores go (a temporary folder, removed, by default)."""
    from engine.catalog import load_catalog_jsonl
    from engine.index import versions
    from engine.learn.sequence import SeqConfig, train_seq
    from engine.ranking.features import RECOMMEND_FEATURES

    t0 = time.time()
    if versions.current_version(config.index_dir) is None:
        raise InvalidQuery("index_dir", f"no published version in {config.index_dir}; build the index first")
    vdir = versions.current_dir(config.index_dir)
    catalog = load_catalog_jsonl(vdir / "items.jsonl")
    ids = list(catalog.ids)
    row = {x: i for i, x in enumerate(ids)}
    vectors = np.load(vdir / "vectors.npy", allow_pickle=False).astype(np.float32)
    shoppers = shopper_sequences(config, set(ids))
    eligible = sum(len(g) > val_depth for g in shoppers.values())
    if eligible < MIN_SHOPPERS:
        raise InvalidQuery("data", f"{eligible} shoppers have more than {val_depth} items of the served catalog in "
                                   f"the event store; at least {MIN_SHOPPERS} are needed")
    tmp = Path(tempfile.mkdtemp(prefix="vitrine-history-", dir=work))
    lists: dict[int, Lists] = {}
    seq_models: dict[int, Any] = {}
    info: dict[str, Any] = {"pool": pool, "train_depths": list(depths), "val_depth": val_depth, "depths": {}}
    try:
        for d in [*depths, val_depth]:
            t = time.time()
            kept = {u: g[:-d] for u, g in shoppers.items() if len(g) > d}
            targets = {u: g[-d][1] for u, g in shoppers.items() if len(g) > d}
            model = None
            if seq:
                fit = [np.array([row[i] for _, i in g], np.int64) for g in kept.values()]
                model = train_seq(fit, vectors, ids, SeqConfig())
                seq_models[d] = model
            lists[d] = _depth_lists(config, tmp / f"depth-{d}.db", kept, targets, model, pool, RECOMMEND_FEATURES)
            info["depths"][str(d)] = {"lists": len(lists[d].groups),
                                      "with_target": len(lists[d].with_positive().groups),
                                      "seconds": round(time.time() - t, 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    train = Lists.concat([lists[d] for d in depths])
    info["seconds"] = round(time.time() - t0, 1)
    info["shoppers"] = len(shoppers)
    return HistoryRows(train, lists[val_depth], seq_models.get(val_depth), info)


def _depth_lists(config: EngineConfig, path: Path, kept: dict[str, list[tuple[list[Any], str]]],
                 targets: dict[str, str], model: Any, pool: int, features: Sequence[str]) -> Lists:
    """Copy ``kept`` (each shopper's events before their target) into a new store at ``path``, open an
    Engine on it, and ask each shopper's ``pool`` recommendations with their features."""
    from dataclasses import replace as dc_replace

    from engine.events import open_event_store
    from engine.service import Engine

    store = open_event_store(f"sqlite:///{path}")
    try:
        batch: list[Any] = []
        for items in kept.values():
            for evs, _ in items:
                batch.extend(dc_replace(e, seq=None) for e in evs)
                if len(batch) >= 5000:
                    store.add_many(batch)
                    batch = []
        if batch:
            store.add_many(batch)
    finally:
        store.close()
    cfg = config.replace(events_url=f"sqlite:///{path}", log_impressions=False, limits_path=path.with_suffix(".limits"),
                         max_k=max(config.max_k, pool))
    engine = Engine(cfg)
    X: list[np.ndarray] = []
    y: list[np.ndarray] = []
    groups: list[int] = []
    rows: list[np.ndarray] = []
    row = engine.snapshot().catalog.row
    try:
        for user in sorted(kept):
            recs = engine.shoppers.recommend(user, k=pool, features=True, seq=None if model is None else model.scores)
            got = recs.later() if recs.later is not None else None
            if not recs.recommendations or not got:
                continue
            X.append(np.array([[f.get(n, 0.0) or 0.0 for n in features] for f in got], np.float32))
            y.append(np.array([r.id == targets[user] for r in recs.recommendations], np.float32))
            groups.append(len(got))
            rows.append(np.array([row(r.id) for r in recs.recommendations], np.int64))
    finally:
        engine.shoppers.events.close()
    width = len(features)
    return Lists(np.concatenate(X) if X else np.zeros((0, width), np.float32),
                 np.concatenate(y) if y else np.zeros(0, np.float32), groups, rows)
