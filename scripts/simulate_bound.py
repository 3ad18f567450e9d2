"""What re-ranking can gain in `vitrine simulate`, computed offline (README, "`vitrine simulate`": the bound).

An offline replica of the simulator's recommendation lists and click model, without servers:
- every Scientific user's items but the last 3 are their stored history; the last 3 (less any in the
  history) are their true next items, as in ``engine.evaluation.simulate``;
- the blend's best 100 candidates for each user with at least 3 stored items are built by the Scientific
  bootstrap (``ranker_rows``), its models fit on the stored histories only: training lists target each
  user's 3rd- to 6th-to-last *stored* item, validation the 2nd-to-last, and the "sim" lists hold the whole
  stored history (labels unused);
- a list's expected CTR is the click model's: ``sum over positions p <= 10 of (1/p) * (0.9 if the item is a
  true next item else 0.02) / 10``.

It prints the expected CTR of the blend's top 10 and of re-orderings of the same 100 candidates: an oracle
(true items first), the MLP trained on the bootstrap lists (one seed and three merged), the same trained
with every one of the next 3 items as a positive, and the blend's order or the MLP's score plus
``w * log1p(future popularity)``, where future popularity counts the *other* users whose true next items
hold the candidate: more than any log of clicks can know. About 4 minutes on 2 cores:

    HF_HUB_OFFLINE=1 VITRINE_DATA_DIR=../shared/data .venv/bin/python scripts/simulate_bound.py
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import EngineConfig  # noqa: E402
from engine.evaluation import ranker_eval as RE  # noqa: E402
from engine.evaluation import recommend_eval as R  # noqa: E402
from engine.recommend.blend import BlendWeights  # noqa: E402

HOLDOUT = 3
ETA = 1.0 / np.arange(1, 11)


def expected_ctr(order: np.ndarray, truth: set[int]) -> float:
    top = order[:10]
    rel = np.array([int(r) in truth for r in top], np.float64)
    return float((ETA[:len(top)] * (0.9 * rel + 0.02 * (1.0 - rel))).sum() / 10.0)


def main() -> None:
    t0 = time.time()
    config = EngineConfig.load()
    data = R.load_scientific(config, Path(config.data_dir))
    stored = [s[:-HOLDOUT] for s in data.seqs]
    truth = [set(s[-HOLDOUT:].tolist()) - set(h.tolist()) for s, h in zip(data.seqs, stored)]
    sdata = replace(data, seqs=stored)
    train, _, val, _ = R.split(sdata)
    users = [u for u in range(len(stored)) if len(stored[u]) >= 3]  # split()'s users, in order
    hists = [stored[u] for u in users]
    sim = R.Phase("sim", hists, np.array([min(truth[u]) if truth[u] else -1 for u in users], np.int64), None, None,
                  R.history_matrix(hists, data.n_items).toarray().astype(bool))
    co_p, ct_p = R.served_params()
    keep = RE.Lists.with_positive
    RE.Lists.with_positive = lambda self: self  # type: ignore[method-assign]  # every training list, to relabel
    try:
        rows = R.ranker_rows(sdata, train, val, sim, co_p, ct_p, BlendWeights())
    finally:
        RE.Lists.with_positive = keep  # type: ignore[method-assign]
    owners = [(u, d) for d in RE.TRAIN_DEPTHS for u in range(len(stored)) if len(stored[u]) >= d + 1]
    assert len(owners) == len(rows.train.groups)
    off = np.concatenate([[0], np.cumsum(rows.train.groups)])
    next3 = np.zeros(len(rows.train.y), np.float32)
    for i, (u, d) in enumerate(owners):
        s = stored[u]
        next3[off[i]:off[i + 1]] = np.isin(rows.train.rows[i], s[len(s) - d: len(s) - d + HOLDOUT])
    next1 = rows.train.y.copy()
    toff = np.concatenate([[0], np.cumsum(rows.test.groups)])
    shown = [i for i, u in enumerate(users) if truth[u]]
    base = np.mean([expected_ctr(rows.test.rows[i], truth[users[i]]) for i in shown])
    print(f"{len(shown)} users (at least 3 stored items and a true next item); rows in {time.time() - t0:.0f} s")
    print(f"blend top 10: expected CTR {100 * base:.3f}%")

    def report(name: str, scores: np.ndarray) -> None:
        ctr = np.mean([expected_ctr(rows.test.rows[i][np.lexsort((np.arange(toff[i + 1] - toff[i]),
                                                                     -scores[toff[i]:toff[i + 1]]))],
                                    truth[users[i]]) for i in shown])
        print(f"{name}: expected CTR {100 * ctr:.3f}% ({100 * (ctr / base - 1):+.1f}% against the blend)", flush=True)

    report("oracle (true items first among the 100)",
           np.concatenate([np.isin(r, list(truth[u])) * 10.0 - np.arange(len(r)) * 1e-3 for r, u in zip(rows.test.rows, users)]))
    scores: dict[str, np.ndarray] = {}
    for label, y in (("next item", next1), ("next 3 items", next3)):
        rows.train = RE.Lists(rows.train.X, y, rows.train.groups, rows.train.rows)
        out, _ = RE.train_and_score(rows, seeds=(0, 1, 2), lambdamart=False)
        report(f"MLP trained on the {label}, seed 0", out["mlp"][1])
        report(f"MLP trained on the {label}, 3 seeds merged", out["merged"][1])
        scores.setdefault("mlp", out["mlp"][1])
    future = Counter(i for t in truth for i in t)
    fp = np.concatenate([[future[int(r)] - (int(r) in truth[u]) for r in rows.test.rows[i]] for i, u in enumerate(users)])
    order = np.concatenate([-np.log2(1.0 + np.arange(len(r))) for r in rows.test.rows])
    for w in (0.1, 0.3, 1.0):
        report(f"blend order + {w} log1p(future popularity)", order + w * np.log1p(fp))
        report(f"MLP (next item, seed 0) + {w} log1p(future popularity)", scores["mlp"] + w * np.log1p(fp))
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
