"""Try changes to the CrowdFlower search ranker by 5-fold cross-validation over the tune queries only.

The report half is never read. Fold ``k`` (``crc32(query) // 2 % 5``) is scored by the served recipe (five
merged 32-16 MLPs, ``engine.evaluation.search_eval.ranker_scores``' settings) trained on three other folds
and early-stopped on the next one; the figure is the mean nDCG@10 of the held-out folds, per seed. Variants:

- ``base``: the served features;
- ``qlevel``: five list-level features more, the same on every row of a query: the best vector score, the
  vector scores' spread, log1p of the best BM25 score, the rank correlation of BM25 and vector within the
  list, and the best title-vector score (so the MLP may weigh BM25 against the vector per query);
- ``bag``: the five members bagged, each trained on its own bootstrap sample of the training queries (drawn
  with replacement, as many as there are; seeded) and early-stopped on the same fold, their logits averaged,
  for members that differ by more than their seed.

    HF_HUB_OFFLINE=1 VITRINE_DATA_DIR=../shared/data .venv/bin/python scripts/try_search_cv.py base qlevel bag

About 2.5 minutes a variant on 2 cores; the run of 2026-12-06 is in `bench/TRIED.md` ("The search ranker on CrowdFlower").
"""
from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import EngineConfig  # noqa: E402
from engine.evaluation import search_eval as S  # noqa: E402
from engine.learn.train import TrainConfig, list_rows, offsets, train_mlp  # noqa: E402

SEEDS = (0, 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: list[str]) -> int:
    cfg = EngineConfig.load()
    snap, data = S.crowdflower_queries(cfg, None)
    tune = [d for d in data if d.tune]
    X, y, groups = S.ranker_lists(snap, tune, cfg.fusion, cfg.hybrid_weight)
    off = offsets(groups)
    folds = np.array([(zlib.crc32(d.query.encode("utf-8")) // 2) % 5 for d in tune])

    def qlevel() -> np.ndarray:
        out = []
        for d in tune:
            t = d.title if d.title is not None else np.zeros(len(d.vector))
            f = [d.vector.max(), d.vector.std(), np.log1p(d.bm25.max()), spearman(d.bm25, d.vector), t.max()]
            out.append(np.tile(np.array(f, np.float32), (len(d.vector), 1)))
        return np.concatenate(out)

    def cv(Xv: np.ndarray, bag: bool = False) -> list[float]:
        names = tuple(f"f{j}" for j in range(Xv.shape[1]))
        res = []
        for seed in SEEDS:
            vals = []
            for k in range(5):
                def part(ids: list[int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
                    idx = list_rows(groups, ids)
                    return Xv[idx], y[idx], [groups[i] for i in ids]

                train_ids = [i for i in range(len(tune)) if folds[i] not in (k, (k + 1) % 5)]
                sx, sy, sg = part([i for i in range(len(tune)) if folds[i] == (k + 1) % 5])
                if bag:
                    rng = np.random.default_rng([seed, k])
                    models = []
                    for m in range(S.SEARCH_ENSEMBLE):
                        bx, by, bg = part(rng.choice(train_ids, size=len(train_ids), replace=True).tolist())
                        models.append(train_mlp(bx, by / 3.0, bg, sx, sy / 3.0, sg, names,
                                                TrainConfig(hidden=(32, 16), seed=seed + m, batch_size=128)).model)
                else:
                    fx, fy, fg = part(train_ids)
                    models = [train_mlp(fx, fy / 3.0, fg, sx, sy / 3.0, sg, names,
                                        TrainConfig(hidden=(32, 16), seed=seed, batch_size=128,
                                                    ensemble=S.SEARCH_ENSEMBLE)).model]
                for i in np.flatnonzero(folds == k).tolist():
                    s = np.mean([mo.score(Xv[off[i]:off[i + 1]]) for mo in models], axis=0)
                    order = np.lexsort((np.arange(len(s)), -s))
                    vals.append(S.ndcg_at_k(tune[i].gains[order].tolist(), tune[i].gains.tolist(), S.K))
            res.append(round(float(np.mean(vals)), 4))
        return res

    for v in argv:
        if v == "base":
            res = cv(X)
        elif v == "qlevel":
            res = cv(np.hstack([X, qlevel()]))
        elif v == "bag":
            res = cv(X, bag=True)
        else:
            raise SystemExit(f"unknown variant {v!r}")
        print(f"{v}: held-out folds' nDCG@10 per seed {res}, mean {np.mean(res):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
