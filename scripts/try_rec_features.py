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
- ``trans``: directed transition features beyond ``follows_last`` (see :meth:`Trial.trans`).
- ``hist``: co-occurrence with every history item, and the parent category's share (:meth:`Trial.hist`).
- ``hop2``: two steps through the co-occurrence graph from the last item (:meth:`Trial.hop2`).
- ``catnext``: the leaf-to-leaf transition probability from the last 5 items, not the last alone.
- ``cfg:hidden=128x64,lr=5e-4``: the MLP with other TrainConfig settings.
- ``pool:200``: the ranker over the blend's best 200 (lists rebuilt, about 4 minutes more).
- ``posthoc``: the trained models combined after training (:meth:`Trial.posthoc`).
- ``probes``: recency proxies and the blend's recall at 100 over its weights, no model (:meth:`Trial.probes`).
- ``scale:pop|counts|zero``: the count features made comparable across the fits (:meth:`Trial.scale`).
- ``cache:PATH``: pickle the eval's lists there (about 700 MB) on the first run and reuse them after.

    HF_HUB_OFFLINE=1 VITRINE_DATA_DIR=../shared/data .venv/bin/python scripts/try_rec_features.py ease seq-avg depths:3,4,5,6,7,8,9
    HF_HUB_OFFLINE=1 VITRINE_DATA_DIR=../shared/data .venv/bin/python scripts/try_rec_features.py cache:/tmp/rec.pkl trans hist

The runs of 2026-12-05 and 2026-12-06 are in `bench/TRIED.md` ("The recommendation ranker on Scientific").
About 8 minutes for the eval, 2 to 4 a variant, 10 for ``seq-avg`` and 12 for ``depths``, on 2 cores.
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

    def score(self, label: str, rows: ranker_eval.RankerRows, **config: Any) -> None:
        """Train the three seeds' MLPs on ``rows`` and print validation and test R@10 / N@10; ``config``:
        TrainConfig fields other than the served ones."""
        out, facts = ranker_eval.train_and_score(rows, seeds=ranker_eval.SEEDS, lambdamart=False, **config)
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

    def trans(self) -> None:
        """Directed transition features beyond ``follows_last``, from each list's own fit sequences: the
        next items after the second-to-last history item (``follows_prev``), the items just before the last
        one (``precedes_last``), two steps after the last one (``skip_last``), the transitions out of every
        history item, 0.5 per step back (``follows_hist``), and ``cooc_last`` over the square root of both
        items' counts (``cooc_cos``)."""
        n = self.data.n_items
        col = {f: j for j, f in enumerate(RECOMMEND_FEATURES)}
        import scipy.sparse as sp

        def mats(seqs: list[np.ndarray]) -> tuple[Any, Any, np.ndarray]:
            def pairs(k: int) -> Any:
                p = [np.stack([s[:-k], s[k:]], axis=1) for s in seqs if len(s) > k]
                a = np.concatenate(p) if p else np.empty((0, 2), np.int64)
                m = sp.csr_matrix((np.ones(len(a)), (a[:, 0], a[:, 1])), shape=(n, n))
                m.sum_duplicates()
                return m
            return pairs(1), pairs(2), np.bincount(np.concatenate(seqs), minlength=n).astype(np.float64)

        cache: dict[int, Any] = {}
        extra = []
        for i, seqs in enumerate(self.fits):
            if id(seqs) not in cache:
                cache[id(seqs)] = mats(seqs)
            nxt, skip, cnt = cache[id(seqs)]
            nxt_t = nxt.T.tocsr()
            p = self.P[i]
            X = p["lists"].X
            off = np.concatenate([[0], np.cumsum(p["lists"].groups)])
            cols = np.zeros((len(X), 5), np.float64)
            for u, (h, r) in enumerate(zip(p["hists"], p["lists"].rows)):
                h = h[-ranker_eval.HISTORY_LIMIT:]
                if not len(h):
                    continue
                last = int(h[-1])
                sl = slice(off[u], off[u + 1])
                if len(h) > 1:
                    cols[sl, 0] = np.log1p(nxt[int(h[-2])].toarray().ravel()[r])
                cols[sl, 1] = np.log1p(nxt_t[last].toarray().ravel()[r])
                cols[sl, 2] = np.log1p(skip[last].toarray().ravel()[r])
                w = 0.5 ** np.arange(len(h))[::-1]
                cols[sl, 3] = np.log1p((sp.csr_matrix(w[None, :]) @ nxt[h]).toarray().ravel()[r])
                co = np.expm1(X[sl, col["cooc_last"]].astype(np.float64))
                cols[sl, 4] = co / np.sqrt(np.maximum(cnt[r], 1.0) * max(cnt[last], 1.0))
            extra.append(cols)
        names = ("follows_prev", "precedes_last", "skip_last", "follows_hist", "cooc_cos")
        self.run("trans (all five)", extra, names)
        self.run("trans (follows_prev, follows_hist)", [e[:, [0, 3]] for e in extra], (names[0], names[3]))
        self.run("trans (cooc_cos)", [e[:, [4]] for e in extra], (names[4],))

    def co_columns(self, k: int, fn: Any) -> list[np.ndarray]:
        """``k`` more columns for every list: ``fn(sim, history, candidate rows)`` -> (candidates, k), with
        ``sim`` the co-occurrence similarity fit like the list's other feature models (0 without history)."""
        cache: dict[int, Any] = {}
        extra = []
        for i, seqs in enumerate(self.fits):
            if id(seqs) not in cache:
                cache[id(seqs)] = R.CoSource(self.data, seqs).similarity(self.got["co_p"]).tocsr()
            p = self.P[i]
            off = np.concatenate([[0], np.cumsum(p["lists"].groups)])
            cols = np.zeros((len(p["lists"].X), k), np.float64)
            for u, (h, r) in enumerate(zip(p["hists"], p["lists"].rows)):
                h = h[-ranker_eval.HISTORY_LIMIT:]
                if len(h):
                    cols[off[u]:off[u + 1]] = fn(cache[id(seqs)], h, r)
            extra.append(cols)
        return extra

    def hist(self) -> None:
        """What a shopper's items share with the candidate beyond the last two: the best co-occurrence of
        the candidate with any history item (``cooc_max``), how many history items co-occur with it at all
        (``cooc_support``, log1p), and the share of the history in the candidate's parent category
        (``parent_share``)."""
        from engine.ranking.features import parent_category

        cats = np.asarray(self.data.categories or [""] * self.data.n_items, object)
        parents = np.asarray([parent_category(c) for c in cats], object)

        def f(sim: Any, h: np.ndarray, r: np.ndarray) -> np.ndarray:
            S = sim[h][:, r].toarray()
            hp = parents[h]
            return np.stack([np.log1p(np.maximum(S.max(axis=0), 0)), np.log1p((S > 0).sum(axis=0)),
                             [(hp == x).mean() if x else 0.0 for x in parents[r]]], 1)

        extra = self.co_columns(3, f)
        names = ("cooc_max", "cooc_support", "parent_share")
        self.run("hist (all three)", extra, names)
        self.run("hist (cooc_max, cooc_support)", [e[:, :2] for e in extra], names[:2])

    def hop2(self) -> None:
        """Two steps through the co-occurrence graph from the last item: the candidate's co-occurrence with
        the last item's co-occurring items (``cooc2_last``: ``S[last] @ S``, log1p, and its z-score), and its
        cosine to the mean vector of those items weighted by their co-occurrence (``cooc_vec_last``)."""
        V = np.asarray(self.data.vectors, np.float32)

        def f(sim: Any, h: np.ndarray, r: np.ndarray) -> np.ndarray:
            row = sim[int(h[-1])]
            two = np.log1p(np.maximum((row @ sim).toarray().ravel()[r], 0))
            ctx = np.asarray(row @ V).ravel()
            nrm = float(np.linalg.norm(ctx))
            return np.stack([two, zs(two), V[r] @ (ctx / nrm) if nrm > 0 else np.zeros(len(r))], 1)

        extra = self.co_columns(3, f)
        self.run("hop2 (cooc2_last, its z-score, cooc_vec_last)", extra, ("cooc2_last", "cooc2_last_z", "cooc_vec_last"))

    def catnext(self) -> None:
        """``category_next`` from the whole recent history, not the last item alone: log of the sum over the
        last 5 items, 0.5 a step back, of P(candidate's leaf | that item's leaf) (``category_next_hist``)."""
        from engine.recommend.categories import CategoryTransitions

        cats = np.asarray(self.data.categories or [""] * self.data.n_items, object)
        cache: dict[int, Any] = {}
        extra = []
        for i, seqs in enumerate(self.fits):
            if id(seqs) not in cache:
                t = CategoryTransitions()
                t.add_sequences([[cats[r] for r in s.tolist()] for s in seqs])
                cache[id(seqs)] = t
            tr = cache[id(seqs)]
            p = self.P[i]
            off = np.concatenate([[0], np.cumsum(p["lists"].groups)])
            cols = np.zeros((len(p["lists"].X), 1), np.float64)
            for u, (h, r) in enumerate(zip(p["hists"], p["lists"].rows)):
                h = h[-5:]
                if not len(h):
                    continue
                cand = cats[r].tolist()
                w = 0.5 ** np.arange(len(h))[::-1]
                prob = sum(wi * np.exp(tr.log_prob(str(cats[x]), cand)) for wi, x in zip(w, h))
                cols[off[u]:off[u + 1], 0] = np.log(np.asarray(prob) / w.sum() + 1e-6)
            extra.append(cols)
        self.run("catnext (category_next_hist)", extra, ("category_next_hist",))

    def config(self, spec: str) -> None:
        """The MLP trained with other settings: ``hidden=128x64,lr=5e-4,...`` (TrainConfig fields)."""
        kw: dict[str, Any] = {}
        for part in spec.split(","):
            k, _, v = part.partition("=")
            kw[k] = tuple(int(x) for x in v.split("x")) if k == "hidden" else (int(v) if k in ("batch_size", "patience", "max_epochs") else float(v))
        L = [p["lists"] for p in self.P]
        joined = ranker_eval.Lists.concat([x.with_positive() for x in L[:-2]])
        self.score(f"config {spec}", ranker_eval.RankerRows(joined, L[-2], L[-1], tuple(RECOMMEND_FEATURES), {}), **kw)

    def pool(self, n: int) -> None:
        """The ranker over the blend's best ``n`` candidates instead of ``ranker_eval.POOL`` (lists rebuilt)."""
        g = self.got
        rows = R.ranker_rows(g["data"], g["train"], g["val"], g["test"], g["co_p"], g["ct_p"], g["weights"], pool=n)
        self.score(f"pool {n} ({len(rows.train.groups)} training lists)", rows)

    def posthoc(self) -> None:
        """The served recipe's merged MLPs and LambdaMART, trained once, then combined after training: the
        logit minus ``lam * blend_rank``; only the blend's best ``k`` re-ordered; the weighted sum of the two
        models' z-scores within each list."""
        L = [p["lists"] for p in self.P]
        rows = ranker_eval.RankerRows(ranker_eval.Lists.concat([x.with_positive() for x in L[:-2]]), L[-2], L[-1],
                                      tuple(RECOMMEND_FEATURES), {})
        out, _ = ranker_eval.train_and_score(rows, seeds=ranker_eval.SEEDS, lambdamart=True)
        val, test = self.got["val"].targets, self.got["test"].targets
        rank = RECOMMEND_FEATURES.index("blend_rank")

        def show(label: str, fn: Any) -> None:
            mv = self.metrics(rows.val, fn(rows.val, *[x[0] for x in (out["merged"], out["lambdamart"])]), val)
            mt = self.metrics(rows.test, fn(rows.test, *[x[1] for x in (out["merged"], out["lambdamart"])]), test)
            print(label, json.dumps({"validation": [mv["R@10"], mv["N@10"]], "test": [mt["R@10"], mt["N@10"]]}), flush=True)

        def z_in_lists(lists: ranker_eval.Lists, s: np.ndarray) -> np.ndarray:
            off = np.concatenate([[0], np.cumsum(lists.groups)])
            return np.concatenate([zs(s[off[u]:off[u + 1]]) for u in range(len(lists.groups))])

        show("merged MLPs", lambda li, m, lm: m)
        show("LambdaMART", lambda li, m, lm: lm)
        for a in (0.3, 0.5, 0.7):
            show(f"z-sum, MLP weight {a}", lambda li, m, lm, a=a: a * z_in_lists(li, m) + (1 - a) * z_in_lists(li, lm))
        for lam in (0.05, 0.1, 0.2, 0.4):
            show(f"logit - {lam} blend_rank", lambda li, m, lm, lam=lam: m - lam * li.X[:, rank])
        for k in (20, 30, 50, 70):
            show(f"only the blend's best {k} re-ordered", lambda li, m, lm, k=k: np.where(
                li.X[:, rank] <= np.log2(1 + k) + 1e-9, m, -1e9 - li.X[:, rank]))

    def probes(self) -> None:
        """Full rankings by one score, no model. Recency proxies (Scientific has no timestamps): popularity
        decayed by each occurrence's distance from the end of its history, and an item's mean relative
        place in the histories (an age proxy). And the blend's R@100 over its weights (a better pool?)."""
        n = self.data.n_items
        for ph in (self.got["val"], self.got["test"]):
            def show(label: str, s: np.ndarray, ph: Any = ph) -> None:
                m = R.loo_metrics(R.target_ranks(np.tile(s.astype(np.float32), (ph.n_users, 1)), ph.targets, ph.excluded),
                                  ks=(10, 100))
                print(f"{ph.name}: {label}: R@10 {m['R@10']} N@10 {m['N@10']} R@100 {m['R@100']}", flush=True)

            counts = np.bincount(np.concatenate(self.train), minlength=n).astype(np.float64)
            show("counts", counts)
            for d in (0.5, 0.7, 0.9):
                w = np.zeros(n)
                for q in self.train:
                    np.add.at(w, q, d ** (len(q) - 1 - np.arange(len(q))))
                show(f"decayed {d} a step from the end", w)
            place, seen = np.zeros(n), np.zeros(n)
            for q in self.train:
                np.add.at(place, q, np.arange(len(q)) / max(len(q) - 1, 1))
                np.add.at(seen, q, 1)
            show("mean relative place", np.where(seen > 0, place / np.maximum(seen, 1), 0.5) + 1e-6 * counts)
        val, co_p, ct_p = self.got["val"], self.got["co_p"], self.got["ct_p"]
        z_co = R._zscores(R.CoSource(self.data, self.train).scores(co_p, val), val.excluded)
        z_ct = R._zscores(R.content_scores(self.data, val, ct_p), val.excluded)
        counts32 = np.bincount(np.concatenate(self.train), minlength=n).astype(np.float32)
        z_pop = R._zscores(np.tile(counts32, (val.n_users, 1)), val.excluded)
        for wc in (0.5, 1.0, 2.0, 3.0):
            for wp in (0.0, 0.1, 0.3, 0.5, 0.7, 1.0, 1.5):
                s = z_co + np.float32(wc) * z_ct + np.float32(wp) * z_pop
                m = R.loo_metrics(R.target_ranks(s, val.targets, val.excluded), ks=(10, 100, 200))
                print(f"validation: blend content {wc} popular {wp}: R@10 {m['R@10']} N@10 {m['N@10']} "
                      f"R@100 {m['R@100']} R@200 {m['R@200']}", flush=True)

    def scale(self, mode: str) -> None:
        """The count features made comparable across fits: each training depth's feature models are fit on
        fewer events (each user's items but the last ``d``) than validation's and test's (but the last two),
        so raw counts are smaller in training than where the model is scored. ``mode`` ``pop``: ``popular``
        rescaled to the test fit's total; ``counts``: every log1p count column rescaled; ``zero``: those
        columns set to 0 (left out by the trainer: only their z-scores and ranks remain)."""
        cols = ["popular"] if mode == "pop" else ["popular", "cooccurrence", "cooc_last", "cooc_prev", "follows_last"]
        idx = [RECOMMEND_FEATURES.index(c) for c in cols]
        total = [float(sum(len(h) for h in fit)) for fit in self.fits]
        print("events per fit:", [int(t) for t in total], flush=True)
        L = []
        for i, p in enumerate(self.P):
            lst = p["lists"]
            X = lst.X.copy()
            for j in idx:
                X[:, j] = 0.0 if mode == "zero" else np.log1p(np.expm1(X[:, j].astype(np.float64)) * total[-1] / total[i])
            L.append(ranker_eval.Lists(X, lst.y, lst.groups, lst.rows))
        joined = ranker_eval.Lists.concat([x.with_positive() for x in L[:-2]])
        self.score(f"scale:{mode}", ranker_eval.RankerRows(joined, L[-2], L[-1], tuple(RECOMMEND_FEATURES), {}))

    def depths(self, depths: tuple[int, ...]) -> None:
        g = self.got
        rows = R.ranker_rows(g["data"], g["train"], g["val"], g["test"], g["co_p"], g["ct_p"], g["weights"], depths=depths)
        self.score(f"depths {list(depths)} ({len(rows.train.groups)} training lists)", rows)


def main(argv: list[str]) -> int:
    t0 = time.time()
    cache = next((Path(v.partition(":")[2]) for v in argv if v.startswith("cache:")), None)
    argv = [v for v in argv if not v.startswith("cache:")]
    if cache is not None and cache.exists():
        import pickle
        got = pickle.loads(cache.read_bytes())
    else:
        got = capture_eval()
        if cache is not None:
            import pickle
            cache.write_bytes(pickle.dumps(got, protocol=pickle.HIGHEST_PROTOCOL))
    trial = Trial(got)
    trial.run("baseline (the eval's lists again)")
    for v in argv:
        name, _, arg = v.partition(":")
        if name == "ease":
            trial.ease(float(arg or 100))
        elif name == "seq-avg":
            trial.seq_avg()
        elif name == "hop2":
            trial.hop2()
        elif name == "probes":
            trial.probes()
        elif name == "pool":
            trial.pool(int(arg))
        elif name == "posthoc":
            trial.posthoc()
        elif name == "catnext":
            trial.catnext()
        elif name == "cfg":
            trial.config(arg)
        elif name == "hist":
            trial.hist()
        elif name == "trans":
            trial.trans()
        elif name == "scale":
            trial.scale(arg or "pop")
        elif name == "depths":
            trial.depths(tuple(int(x) for x in arg.split(",")))
        else:
            raise SystemExit(f"unknown variant {v!r}")
        print(f"({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
