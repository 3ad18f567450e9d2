"""Try changes to the Scientific recommendation ranker on the eval's own lists; choose on validation.

Runs ``vitrine eval recommend --dataset scientific`` once (its tuned blend, its ranker lists and its
figures: the baseline), then each variant asked for, printing validation and test R@10 / N@10 of the
first seed's MLP and of the three seeds' MLPs merged (the published model), and the seeds' validation N@10:

- ``ease[:LAMBDA]``: EASE (Steck 2019; item-item ridge regression in closed form, fit on the same training
  histories as each list's other feature models) as two more features: its score of the candidate from
  the history, and that score's z-score within the list. Also prints EASE alone (full ranking).
- ``seq-avg``: the ``seq`` and ``seq_z`` features from the mean score of three sequence models (seeds 0,
  1, 2) instead of one; 10 more sequence models to train, about 8 minutes.
- ``depths:3,4,...``: training lists at these depths instead of 3 to 6 (the eval rebuilds its lists).

    HF_HUB_OFFLINE=1 VITRINE_DATA_DIR=../shared/data .venv/bin/python scripts/try_rec_features.py ease seq-avg depths:3,4,5,6,7,8,9

The run of 2026-12-05 is in the README ("Quality and speed, measured", Recommendations). About 8 minutes
for the eval, 2 a variant, 10 for ``seq-avg`` and 12 for ``depths``, on 2 cores.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import EngineConfig  # noqa: E402
from engine.evaluation import ranker_eval  # noqa: E402
from engine.evaluation import recommend_eval as R  # noqa: E402
from engine.learn.sequence import SeqConfig, score_matrix, train_seq  # noqa: E402
from engine.ranking.features import RECOMMEND_FEATURES  # noqa: E402


def capture_eval() -> dict[str, Any]:
    """The eval, run as the command runs it, keeping its inputs to the ranker and every list it built."""
    got: dict[str, Any] = {"phases": []}
    rows_fn, lists_fn = R.ranker_rows, ranker_eval.recommend_lists

    def rows(data: Any, train: Any, val: Any, test: Any, co_p: Any, ct_p: Any, weights: Any, **kw: Any) -> Any:
        got.update(data=data, train=train, val=val, test=test, co_p=co_p, ct_p=ct_p, weights=weights)
        return rows_fn(data, train, val, test, co_p, ct_p, weights, **kw)

    def lists(**kw: Any) -> ranker_eval.Lists:
        out = lists_fn(**kw)
        got["phases"].append({"hists": kw["hists"], "targets": kw["targets"], "lists": out})
        return out

    R.ranker_rows, ranker_eval.recommend_lists = rows, lists  # type: ignore[assignment]
    try:
        report = R.run_recommend_eval(EngineConfig.load(), "scientific")
    finally:
        R.ranker_rows, ranker_eval.recommend_lists = rows_fn, lists_fn
    print("\n".join(report.lines()), flush=True)
    return got


def zs(v: Any) -> Any:
    s = v.std()
    return (v - v.mean()) / s if s > 1e-12 else v * 0


class Trial:
    def __init__(self, got: dict[str, Any]) -> None:
        self.got = got
        self.P = got["phases"]  # train depths..., validation, test
        self.data, self.train = got["data"], got["train"]
        depths = len(self.P) - 2
        self.fits = [self.P[i]["hists"] for i in range(depths)] + [self.train, self.train]

    def metrics(self, lists: ranker_eval.Lists, scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        return R.loo_metrics(ranker_eval.reranked_ranks(lists, scores, targets, np.full(len(targets), 10**6)))

    def run(self, label: str, extra: list[np.ndarray] | None = None, names: tuple[str, ...] = ()) -> None:
        L = []
        for i, p in enumerate(self.P):
            lst = p["lists"]
            X = lst.X if extra is None else np.hstack([lst.X, extra[i].astype(np.float32)])
            L.append(ranker_eval.Lists(X, lst.y, lst.groups, lst.rows))
        joined = ranker_eval.Lists.concat([x.with_positive() for x in L[:-2]])
        self.score(label, ranker_eval.RankerRows(joined, L[-2], L[-1], tuple(RECOMMEND_FEATURES) + names, {}))

    def score(self, label: str, rows: ranker_eval.RankerRows) -> None:
        """Train the three seeds' MLPs on ``rows`` and print validation and test R@10 / N@10."""
        out, facts = ranker_eval.train_and_score(rows, seeds=ranker_eval.SEEDS, lambdamart=False)
        val, test = self.got["val"].targets, self.got["test"].targets
        res: dict[str, Any] = {}
        for name, (sv, st) in out.items():
            mv, mt = self.metrics(rows.val, sv, val), self.metrics(rows.test, st, test)
            res[name] = {"validation": [mv["R@10"], mv["N@10"]], "test": [mt["R@10"], mt["N@10"]]}
        res["seeds_validation_N@10"] = [self.metrics(rows.val, r.model.score(rows.val.X), val)["N@10"]
                                        for r in facts["mlp_models"]]
        print(label, json.dumps(res), flush=True)

    def per_list(self, i: int, fn: Any) -> np.ndarray:
        p = self.P[i]
        return np.concatenate([fn(h, r) for h, r in zip(p["hists"], p["lists"].rows)])

    def ease(self, lam: float) -> None:
        n = self.data.n_items

        def fit(seqs: list[np.ndarray]) -> np.ndarray:
            X = R.history_matrix(seqs, n).astype(bool).astype(np.float64)
            G = (X.T @ X).toarray()
            G[np.diag_indices(n)] += lam
            inv = np.linalg.inv(G)
            B = -inv / np.diag(inv)
            B[np.diag_indices(n)] = 0
            out: np.ndarray = B.astype(np.float32)
            return out

        models: dict[int, np.ndarray] = {}
        for i, seqs in enumerate(self.fits):
            models.setdefault(id(seqs), fit(seqs))
        B = models[id(self.train)]
        for ph in (self.got["val"], self.got["test"]):
            S = np.asarray(R.history_matrix(ph.hists, n).astype(bool).astype(np.float32) @ B)
            m = R.loo_metrics(R.target_ranks(S, ph.targets, ph.excluded))
            print(f"EASE alone (lambda {lam:g}), {ph.name}: R@10 {m['R@10']} N@10 {m['N@10']}", flush=True)
        extra = []
        for i, seqs in enumerate(self.fits):
            Bi = models[id(seqs)]

            def f(h: np.ndarray, r: np.ndarray, Bi: np.ndarray = Bi) -> np.ndarray:
                s = Bi[np.unique(h)].sum(axis=0)[r].astype(np.float64)
                return np.stack([s, zs(s)], 1)

            extra.append(self.per_list(i, f))
        self.run(f"ease (lambda {lam:g})", extra, ("ease", "ease_z"))

    def seq_avg(self) -> None:
        col = {f: j for j, f in enumerate(RECOMMEND_FEATURES)}
        models: dict[tuple[int, int], Any] = {}
        extra = []
        for i, seqs in enumerate(self.fits):
            p = self.P[i]
            for seed in (1, 2):
                if (id(seqs), seed) not in models:
                    models[(id(seqs), seed)] = train_seq(seqs, self.data.vectors, self.data.item_ids, SeqConfig(seed=seed))
            mats = [score_matrix(models[(id(seqs), s)], p["hists"], self.data.vectors, self.data.item_ids) for s in (1, 2)]
            base = p["lists"].X[:, col["seq"]]
            off = np.concatenate([[0], np.cumsum(p["lists"].groups)])
            cols = np.empty((len(base), 2), np.float64)
            for u, r in enumerate(p["lists"].rows):
                s = (base[off[u]:off[u + 1]] + sum(m[u][r] for m in mats)) / 3.0
                cols[off[u]:off[u + 1], 0], cols[off[u]:off[u + 1], 1] = s, zs(s)
            extra.append(cols)
        saved = [p["lists"].X[:, [col["seq"], col["seq_z"]]].copy() for p in self.P]
        for p, c in zip(self.P, extra):
            p["lists"].X[:, col["seq"]], p["lists"].X[:, col["seq_z"]] = c[:, 0], c[:, 1]
        try:
            self.run("seq-avg (three sequence models' mean score)")
        finally:
            for p, c in zip(self.P, saved):
                p["lists"].X[:, col["seq"]], p["lists"].X[:, col["seq_z"]] = c[:, 0], c[:, 1]

    def depths(self, depths: tuple[int, ...]) -> None:
        g = self.got
        rows = R.ranker_rows(g["data"], g["train"], g["val"], g["test"], g["co_p"], g["ct_p"], g["weights"], depths=depths)
        self.score(f"depths {list(depths)} ({len(rows.train.groups)} training lists)", rows)


def main(argv: list[str]) -> int:
    t0 = time.time()
    trial = Trial(capture_eval())
    trial.run("baseline (the eval's lists again)")
    for v in argv:
        name, _, arg = v.partition(":")
        if name == "ease":
            trial.ease(float(arg or 100))
        elif name == "seq-avg":
            trial.seq_avg()
        elif name == "depths":
            trial.depths(tuple(int(x) for x in arg.split(",")))
        else:
            raise SystemExit(f"unknown variant {v!r}")
        print(f"({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
