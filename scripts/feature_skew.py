"""The recommendation ranker's features from the public bootstrap against the server's, on the same histories.

Why `vitrine train ranker --data history` builds its lists through the serving path (README, "From the
shop's own histories"). Every Scientific user's items but the last 3 are stored, as ``vitrine simulate``
stores them; then, for the first 200 users with at least 3 stored items:
- the public bootstrap's replica of the blend (``ranker_rows``, its models fit on the stored histories but
  each user's last two items, the lists holding each user's whole stored history) gives each candidate's
  features;
- an Engine over the same stored histories (the Scientific eval index, the live models) gives the server's
  features for the same user's best 100 (``Shoppers.recommend(features=True)``; no sequence model, so the
  ``seq`` columns are 0 there).
It prints the overlap of the two top 10s, and per feature the mean and standard deviation on each side
over the candidates both hold, their mean absolute difference and correlation. About 3 minutes:

    HF_HUB_OFFLINE=1 VITRINE_DATA_DIR=../shared/data .venv/bin/python scripts/feature_skew.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import EngineConfig  # noqa: E402
from engine.evaluation import recommend_eval as R  # noqa: E402
from engine.evaluation import simulate as S  # noqa: E402
from engine.ranking.features import RECOMMEND_FEATURES  # noqa: E402
from engine.recommend.blend import BlendWeights  # noqa: E402
from engine.service import Engine  # noqa: E402

HOLDOUT = 3
USERS = 200


def main() -> None:
    config = EngineConfig.load()
    data = R.load_scientific(config, Path(config.data_dir))
    eval_dir = (config.index_dir / "eval" / "scientific").resolve()
    stored = [s[:-HOLDOUT] for s in data.seqs]
    users = [f"sci-{u}" for u in range(len(stored))]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.db"
        S._import_histories(config, base, users, [[data.item_ids[r] for r in s.tolist()] for s in stored],
                            set(data.item_ids), now=time.time(), work=Path(tmp))
        sdata = replace(data, seqs=stored)
        train, _, val, _ = R.split(sdata)
        chosen = [u for u in range(len(stored)) if len(stored[u]) >= 3][:USERS]
        hists = [stored[u] for u in chosen]
        phase = R.Phase("stored", hists, np.zeros(len(chosen), np.int64), None, None,
                        R.history_matrix(hists, data.n_items).toarray().astype(bool))
        co_p, ct_p = R.served_params()
        rows = R.ranker_rows(sdata, train, val, phase, co_p, ct_p, BlendWeights(), depths=(3,), seq_config=None)
        engine = Engine(config.replace(index_dir=eval_dir, events_url=f"sqlite:///{base}",
                                       models_dir=config.models_path.resolve(), log_impressions=False))
        off = np.concatenate([[0], np.cumsum(rows.test.groups)])
        served, offline, overlap = [], [], []
        for i, u in enumerate(chosen):
            recs = engine.shoppers.recommend(users[u], k=100, features=True)
            got = recs.later() if recs.later is not None else []
            cand = [data.item_ids[r] for r in rows.test.rows[i]]
            ids = [r.id for r in recs.recommendations]
            overlap.append(len(set(ids[:10]) & set(cand[:10])) / 10)
            where = {x: j for j, x in enumerate(cand)}
            for x, f in zip(ids, got):
                if x in where:
                    served.append([f.get(n) or 0.0 for n in RECOMMEND_FEATURES])
                    offline.append(rows.test.X[off[i] + where[x]])
        engine.shoppers.events.close()
    a, b = np.array(served, np.float64), np.array(offline, np.float64)
    print(f"{len(chosen)} users; top-10 overlap of the server's blend and the bootstrap's replica: "
          f"{np.mean(overlap):.3f}; {len(a)} candidates in both")
    print(f"{'feature':20s} {'server mean':>12s} {'std':>8s} {'bootstrap mean':>15s} {'std':>8s} {'mean |diff|':>12s} {'corr':>6s}")
    for j, name in enumerate(RECOMMEND_FEATURES):
        x, y = a[:, j], b[:, j]
        corr = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
        print(f"{name:20s} {x.mean():12.4f} {x.std():8.4f} {y.mean():15.4f} {y.std():8.4f} "
              f"{np.abs(x - y).mean():12.4f} {corr:6.3f}")


if __name__ == "__main__":
    main()
