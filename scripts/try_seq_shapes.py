"""The sequence model's shape, chosen on validation (README, "The sequence model").

Fits ``engine.learn.sequence.train_seq`` on each Scientific shopper's items but the last two (the eval's
``train`` span) with each shape given as JSON changes to ``SeqConfig``, and prints R@10, N@10 and R@50 of the
model alone ranking all items for the second-to-last item (validation; the last item is never read):

    HF_HUB_OFFLINE=1 VITRINE_DATA_DIR=../shared/data .venv/bin/python scripts/try_seq_shapes.py \\
        '{"layers": 2}' '{"layers": 1}' '{"dim": 32}'

On 2026-12-04 it printed 0.0930 / 0.0568 for 2 layers and 0.1038 / 0.0650 for 1 (1 to 4 minutes a shape
on 2 cores); the README's table has the other shapes.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import EngineConfig  # noqa: E402
from engine.evaluation.recommend_eval import load_scientific, loo_metrics, split, target_ranks  # noqa: E402
from engine.learn.sequence import SeqConfig, score_matrix, train_seq  # noqa: E402


def main(specs: list[str]) -> None:
    config = EngineConfig.load()
    data = load_scientific(config, Path(config.data_dir))
    train, _, val, _ = split(data)
    for spec in specs or ["{}"]:
        t = time.time()
        model = train_seq(train, data.vectors, data.item_ids, SeqConfig(**json.loads(spec)))
        scores = score_matrix(model, val.hists, data.vectors, data.item_ids)
        m = loo_metrics(target_ranks(scores, val.targets, val.excluded))
        print(f"{spec}: validation R@10 {m['R@10']:.4f}  N@10 {m['N@10']:.4f}  R@50 {m['R@50']:.4f}  "
              f"(train loss {model.info['train_loss']}, {time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
