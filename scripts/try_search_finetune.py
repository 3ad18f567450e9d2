"""A tried and not kept experiment (`bench/TRIED.md`, "The search ranker on CrowdFlower"): does fine-tuning
MiniLM's top layers on the CrowdFlower tune half's graded judgements rank held-out queries better by the
vector score alone?

5-fold cross-validation over the tune queries only (even ``zlib.crc32``; the fold is ``(crc32 // 2) % 5``,
as the ranker's early-stopping fifth). Per fold: copy MiniLM's top ``--layers``, train them on the other
four folds with a ListNet loss (softmax of 2 x gain against the cosines / temperature, one query per step,
AdamW with a 10-step warm-up and a linear decay), and print the held-out fold's mean nDCG@10 of the
cosine, untuned and tuned. ``--side query`` trains the query's layers only (item vectors stay MiniLM's).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/try_search_finetune.py --epochs 2 --train-tokens 128

printed 0.8979 untuned against 0.8993 tuned, the same in two runs on 2026-12-04 (about 40 minutes on 2
cores; the frozen layers' output of the 9,913 products takes 6 of them).
"""
from __future__ import annotations

import argparse
import copy
import random
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import torch
    from sentence_transformers import SentenceTransformer

    from engine.catalog import Product
    from engine.embedding.st import default_model_path, quiet_transformers
    from engine.evaluation.metrics import ndcg_at_k
    from engine.evaluation.search_eval import load_crowdflower
    from engine.item_text import embedding_text
    from engine.qa.finetune import _run, _states

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--train-tokens", type=int, default=128, help="products are cut to this many word pieces while training")
    ap.add_argument("--side", choices=("both", "query"), default="both")
    args = ap.parse_args()
    torch.set_num_threads(2)
    products, queries = load_crowdflower(Path(args.data_dir))
    texts = [embedding_text(Product(p["id"], p["title"], p["description"])) for p in products]  # as the eval index
    tune = [(q, r, g) for q, r, g in queries if zlib.crc32(q.encode("utf-8")) % 2 == 0]
    with quiet_transformers():
        model = SentenceTransformer(str(default_model_path()), device="cpu").eval()
    started = time.time()
    hq = _states(model, [q for q, _, _ in queries], args.layers)
    hp = _states(model, texts, args.layers)
    print(f"frozen layers' output of {len(hq) + len(hp)} texts: {time.time() - started:.0f} s", flush=True)
    qrow = {q: i for i, (q, _, _) in enumerate(queries)}
    bert = model[0].auto_model
    first = len(bert.encoder.layer) - args.layers

    def encode(stack: object, states: list) -> np.ndarray:
        stack.eval()  # type: ignore[attr-defined]
        with torch.no_grad():
            return torch.cat([_run(stack, states[b:b + 128]) for b in range(0, len(states), 128)]).numpy()

    def ndcg(stack: object, qs: list, items: np.ndarray | None) -> float:
        vals = []
        for q, rows, gains in qs:
            qv = encode(stack, [hq[qrow[q]]])[0]
            pv = items[rows] if items is not None else encode(stack, [hp[i] for i in rows])
            s = pv @ qv
            order = np.lexsort((np.arange(len(s)), -s))
            vals.append(ndcg_at_k([gains[i] for i in order], list(gains), 10))
        return float(np.mean(vals))

    frozen_items = encode(torch.nn.ModuleList(copy.deepcopy(m) for m in bert.encoder.layer[first:]), hp) \
        if args.side == "query" else None
    folds: list[list] = [[] for _ in range(5)]
    for entry in tune:
        folds[(zlib.crc32(entry[0].encode("utf-8")) // 2) % 5].append(entry)
    base, tuned = [], []
    for f in range(5):
        held, train = folds[f], [e for k in range(5) if k != f for e in folds[k]]
        torch.manual_seed(0)
        rng = random.Random(0)
        stack = torch.nn.ModuleList(copy.deepcopy(m) for m in bert.encoder.layer[first:])
        base.append(ndcg(stack, held, frozen_items))
        opt = torch.optim.AdamW(stack.parameters(), lr=args.lr, weight_decay=0.01)
        total, step = args.epochs * len(train), 0
        for _ in range(args.epochs):
            stack.train()
            order = list(train)
            rng.shuffle(order)
            for q, rows, gains in order:
                qv = _run(stack, [hq[qrow[q]]])[0]
                pv = torch.from_numpy(frozen_items[rows]) if frozen_items is not None else \
                    _run(stack, [hp[i][:args.train_tokens] for i in rows])
                target = torch.softmax(torch.tensor(gains, dtype=torch.float32) * 2.0, 0)
                loss = -(target * torch.log_softmax(pv @ qv / args.temperature, 0)).sum()
                for group in opt.param_groups:
                    group["lr"] = args.lr * min(1.0, (step + 1) / 10) * (1 - step / total)
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                step += 1
        tuned.append(ndcg(stack, held, frozen_items))
        print(f"fold {f}: {len(held)} held-out queries, nDCG@10 untuned {base[-1]:.4f}, tuned {tuned[-1]:.4f}", flush=True)
    print(f"5-fold mean nDCG@10 of the cosine: untuned {np.mean(base):.4f}, tuned {np.mean(tuned):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
