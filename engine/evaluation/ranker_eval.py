"""The learned ranker on public data: training lists bootstrapped from Scientific and CrowdFlower.

Scientific (``vitrine eval recommend --dataset scientific`` and ``vitrine train ranker --surface recommend
--data scientific``). The ranker re-ranks the tuned blend's best ``POOL`` candidates; one list per user:

- train lists: target = each user's third-to-last item, history = everything before it; the co-occurrence
  and popularity models behind the features are fit on each user's items but the last *three*, so no
  feature has seen a training target (the blend's own models, fit on all but the last two, would);
- validation lists (early stopping, model choice): target = the second-to-last item, with the eval's models;
- test (reported only): target = the last item. Re-ranked candidates keep ranks 1..POOL; the rest keep
  the blend's order after them, so R@50 and N@50 stay comparable.

Labels: 1 for the target among the candidates, 0 for the blend's other candidates; lists whose target is
not among the candidates are left out of training (they carry no preference).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from engine.learn.model import merge_mlps
from engine.learn.train import list_rows, offsets
from engine.ranking.features import RecCandidates, item_rates, recommend_features
from engine.ranking.scores import zscore
from engine.recommend.categories import CategoryTransitions
from engine.recommend.blend import BlendWeights

POOL = 100
TRAIN_DEPTHS = (3, 4, 5, 6)
SEEDS = (0, 1, 2)
HISTORY_LIMIT = 50


@dataclass
class Lists:
    """Feature rows of many lists: ``X`` (rows, F), labels, rows per list, the candidates' catalog rows."""

    X: np.ndarray
    y: np.ndarray
    groups: list[int]
    rows: list[np.ndarray]  # per user: the candidates' catalog rows, blend order

    def with_positive(self) -> "Lists":
        """Only the lists holding a positive (training)."""
        off = offsets(self.groups)
        keep = [i for i in range(len(self.groups)) if self.y[off[i]:off[i + 1]].max(initial=0) > 0]
        idx = list_rows(self.groups, keep)
        return Lists(self.X[idx], self.y[idx], [self.groups[i] for i in keep], [self.rows[i] for i in keep])

    @staticmethod
    def concat(parts: Sequence["Lists"]) -> "Lists":
        """The lists of ``parts`` one after the other (training lists of several depths)."""
        return Lists(np.concatenate([x.X for x in parts]), np.concatenate([x.y for x in parts]),
                     [g for x in parts for g in x.groups], [r for x in parts for r in x.rows])


def recommend_lists(
    *,
    hists: Sequence[np.ndarray],
    targets: np.ndarray,
    excluded: np.ndarray,
    raw: Mapping[str, np.ndarray],
    weights: BlendWeights,
    vectors: np.ndarray,
    categories: Sequence[str],
    brands: Sequence[str],
    cooc_last: Callable[[int], np.ndarray],
    counts: np.ndarray,
    transitions: CategoryTransitions,
    follows: Callable[[int], np.ndarray],
    pool: int = POOL,
    seq_scores: np.ndarray | None = None,
) -> Lists:
    """Candidates and features for every user: ``raw`` source -> (users, n) raw scores; ``cooc_last(row)``
    -> (n,) co-occurrence of every row with that single item; ``counts`` (n,) training interactions;
    ``seq_scores`` (users, n): the sequence model's next-item scores (None: the ``seq`` features are 0)."""
    n = vectors.shape[0]
    cats = np.asarray(categories, object)
    brand = np.asarray(brands, object)
    prices = np.full(n, np.nan)
    ctr, conv = item_rates(np.zeros(n), np.zeros(n), counts)
    w = weights.as_dict()
    X, y, groups, rows_out = [], [], [], []
    for u, hist in enumerate(hists):
        ok = ~excluded[u]
        z = {s: zscore(raw[s][u], ok) for s in ("content", "cooccurrence", "popular")}
        blend = sum(w[s] * z[s] for s in z)
        blend = np.where(ok, blend, -np.inf)
        elig = np.flatnonzero(ok)
        top = elig[np.lexsort((elig, -blend[elig]))][:pool]
        h = hist[-HISTORY_LIMIT:]
        c = RecCandidates(
            raw={s: raw[s][u][top] for s in z}, z={s: z[s][top] for s in z}, blend=blend[top],
            vectors=vectors[top], categories=cats[top].tolist(), brands=brand[top].tolist(), prices=prices[top],
            cooc_last=cooc_last(int(h[-1]))[top] if len(h) else np.zeros(len(top)),
            cooc_prev=cooc_last(int(h[-2]))[top] if len(h) > 1 else np.zeros(len(top)),
            follows_last=follows(int(h[-1]))[top] if len(h) else np.zeros(len(top)),
            category_next=transitions.log_prob(str(cats[h[-1]]) if len(h) else "", cats[top].tolist()),
            ctr=ctr[top], conversion=conv[top], hist_vectors=vectors[h], hist_categories=cats[h].tolist(), hist_brands=brand[h].tolist(),
            hist_prices=prices[h], seq=None if seq_scores is None else seq_scores[u][top],
        )
        X.append(recommend_features(c))
        y.append((top == targets[u]).astype(np.float32))
        groups.append(len(top))
        rows_out.append(top)
    return Lists(np.concatenate(X), np.concatenate(y), groups, rows_out)


def reranked_ranks(lists: Lists, scores: np.ndarray, targets: np.ndarray, blend_ranks: np.ndarray) -> np.ndarray:
    """1-based rank of each user's target after re-ranking its candidates by ``scores`` (a target outside
    the candidates keeps its blend rank, which is beyond them)."""
    off = np.concatenate([[0], np.cumsum(lists.groups)])
    out = blend_ranks.copy()
    for u, rows in enumerate(lists.rows):
        s = scores[off[u]:off[u + 1]]
        hit = np.flatnonzero(rows == targets[u])
        if len(hit):
            i = int(hit[0])
            out[u] = 1 + int((s > s[i]).sum()) + int(((s == s[i]) & (np.arange(len(s)) < i)).sum())
    return out


@dataclass
class RankerRows:
    """Train, validation and test lists of one data set, and what went into them."""

    train: Lists
    val: Lists
    test: Lists
    features: tuple[str, ...]
    info: dict[str, Any]
    seq: Any = None  # the SeqModel behind validation's and test's seq features (published with the MLP)


def train_and_score(rows: RankerRows, *, seeds: Sequence[int] = (0,), lambdamart: bool = True, **config: Any
                    ) -> tuple[dict[str, list[np.ndarray]], dict[str, Any]]:
    """Train the MLP (one per seed; ``config``: TrainConfig fields other than the defaults) and LambdaMART on
    ``rows.train`` (early-stopped on ``rows.val``); returns ``{"mlp": [val scores, test scores] of the first
    seed, "merged": [...] of the seeds' MLPs merged (two seeds or more), "lambdamart": [...]}`` and training
    facts (``merged_model``: that merged MLP)."""
    from engine.learn.train import TrainConfig, train_lambdamart, train_mlp

    tr = rows.train.with_positive()
    va = rows.val.with_positive()
    out: dict[str, list[np.ndarray]] = {}
    facts: dict[str, Any] = {"train_lists": len(tr.groups), "train_rows": int(len(tr.y)),
                             "val_lists": len(va.groups), "seeds": list(seeds)}
    t = time.time()
    per_seed = []
    for seed in seeds:
        res = train_mlp(tr.X, tr.y, tr.groups, va.X, va.y, va.groups, rows.features, TrainConfig(seed=seed, **config))
        per_seed.append(res)
        if "mlp" not in out:
            out["mlp"] = [res.model.score(rows.val.X), res.model.score(rows.test.X)]
    facts["mlp"] = [{"seed": s, "epochs": r.epochs, "best_epoch": r.best_epoch, "seconds": r.seconds,
                     "val_ndcg@10": r.history[r.best_epoch - 1]["val_ndcg@10"]} for s, r in zip(seeds, per_seed)]
    facts["mlp_models"] = per_seed
    if len(per_seed) > 1:  # the seeds' MLPs merged into one scoring their mean logit
        merged = merge_mlps([r.model for r in per_seed])
        out["merged"] = [merged.score(rows.val.X), merged.score(rows.test.X)]
        facts["merged_model"] = merged
    facts["mlp_seconds"] = round(time.time() - t, 1)
    if lambdamart:
        t = time.time()
        booster = train_lambdamart(tr.X, tr.y, tr.groups, va.X, va.y, va.groups)
        out["lambdamart"] = [np.asarray(booster.predict(rows.val.X), np.float64),
                             np.asarray(booster.predict(rows.test.X), np.float64)]
        facts["lambdamart"] = {"trees": int(booster.best_iteration or booster.num_trees()),
                               "seconds": round(time.time() - t, 1)}
    return out, facts



def train_bootstrap(config: Any, surface: str, data: str, *, seed: int = 0, publish: bool = True,
                    data_dir: Any = None) -> dict[str, Any]:
    """`vitrine train ranker --data scientific`: the MLP trained on the Scientific bootstrap lists (the served
    blend's parameters), its validation and test figures beside the blend's, published unless ``publish``
    is False. Returns the manifest."""
    from pathlib import Path

    from engine.errors import InvalidQuery
    from engine.evaluation import recommend_eval as R
    from engine.learn import registry
    from engine.recommend.blend import Blender

    if (surface, data) == ("search", "crowdflower"):
        return _train_crowdflower(config, seed=seed, publish=publish, data_dir=data_dir)
    if (surface, data) != ("recommend", "scientific"):
        raise InvalidQuery("data", f"{data} does not bootstrap the {surface} ranker "
                                   "(scientific: recommend, crowdflower: search)")
    rec = R.load_scientific(config, Path(data_dir or config.data_dir))
    train, _, val, test = R.split(rec)
    co_p, ct_p = R.served_params()
    weights = BlendWeights()
    rows = R.ranker_rows(rec, train, val, test, co_p, ct_p, weights)
    seeds = tuple(seed + i for i in range(len(SEEDS)))  # merged into one MLP (validation: see the README)
    scores, facts = train_and_score(rows, seeds=seeds, lambdamart=False)
    model = facts["merged_model"]
    co = R.CoSource(rec, train)
    metrics: dict[str, Any] = {}
    for i, phase in enumerate((val, test)):
        raw = {"cooccurrence": co.scores(co_p, phase), "content": R.content_scores(rec, phase, ct_p),
               "popular": R.popularity_scores(rec, train, None, phase, None)}
        blend = R.target_ranks(Blender(weights).combine(raw, ~phase.excluded), phase.targets, phase.excluded)
        lists = rows.val if i == 0 else rows.test
        metrics[phase.name] = {"blend": R.loo_metrics(blend),
                               "mlp": R.loo_metrics(reranked_ranks(lists, scores["merged"][i], phase.targets, blend))}
    model.seq = rows.seq
    manifest: dict[str, Any] = {
        "training": {"data": "scientific", "span": "each user's items but the last two (targets at depths "
                     f"{list(TRAIN_DEPTHS)} from the end)", "lists": facts["train_lists"], "rows": facts["train_rows"],
                     "val_lists": facts["val_lists"], "seeds": list(seeds), "ensemble": len(seeds),
                     "members": facts["mlp"]},
        "metrics": metrics,
    }
    if publish:
        manifest["version"] = registry.publish(config.rankers_path, surface, model, manifest)
    return manifest


def _train_crowdflower(config: Any, *, seed: int, publish: bool, data_dir: Any) -> dict[str, Any]:
    """`vitrine train ranker --surface search --data crowdflower`: the search MLP trained on the CrowdFlower
    tune half (a fifth of it for early stopping), its report-half nDCG@10 beside the served fusion's."""
    from engine.evaluation import search_eval as S
    from engine.learn import registry
    from engine.ranking.fusion import fuse

    snap, data = S.crowdflower_queries(config, data_dir)
    keep: dict[str, Any] = {}
    scores = S.ranker_scores(snap, data, config.fusion, config.hybrid_weight, seed=seed, keep=keep)
    report = [d for d in data if not d.tune]
    metrics = {"report_ndcg@10": {
        "mlp": S.mean_ndcg(report, lambda d: scores["learned ranker (MLP)"][d.query]),
        "lambdamart": S.mean_ndcg(report, lambda d: scores["LambdaMART"][d.query]),
        "served_fusion": S.mean_ndcg(report, lambda d: fuse(d.bm25, d.vector, config.hybrid_weight, config.fusion))}}
    res = keep["mlp"]
    manifest: dict[str, Any] = {
        "training": {"data": "crowdflower", "span": "tune half (even crc32 queries), a fifth of it for early stopping",
                     "lists": keep["fit_lists"], "rows": keep["fit_rows"], "val_lists": keep["stop_lists"],
                     "labels": "gain / 3 (median_relevance - 1)", "seed": seed, "ensemble": S.SEARCH_ENSEMBLE,
                     "epochs": res.epochs,
                     "best_epoch": res.best_epoch},
        "metrics": metrics,
    }
    if publish:
        manifest["version"] = registry.publish(config.rankers_path, "search", res.model, manifest)
    return manifest
