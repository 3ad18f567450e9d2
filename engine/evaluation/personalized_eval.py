"""`vitrine eval personalized-search --dataset scientific`: does the shopper's profile help search?

In the style of Ai et al. (SIGIR 2017): for each shopper of the Scientific histories, the query is the
category path of the held-out item (its category words below the root, never its title or brand: the
queries are derived, not logged) and the history is everything before it. The held-out item is ranked
by the served hybrid search, without and with the shopper's profile; MRR and NDCG@10 of that item.
The ranking covers the hybrid candidates (top 200 by BM25 plus top 200 by FAISS); an item outside them
counts as not found. The strength p is tuned on the second-to-last item (validation) and reported on
the last (test), with the validation item in the test history.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import EngineConfig
from engine.recommend.compose import BETA, HISTORY_DECAY
from engine.recommend.cooccurrence import CooccurrenceModel
from engine.catalog import category_segments
from engine.ranking.fusion import fuse
from engine.recommend.content import InterestProfile
from engine.recommend.personal import COOC_WEIGHT, personal_score, personalized
from engine.search import keyword_part, scored_candidates

STRENGTHS = [0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]
COOC_WEIGHTS = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]


@dataclass
class Case:
    """One query: the hybrid candidates' fused scores, the profile affinity and the target's position."""

    fused: np.ndarray
    content: np.ndarray
    cooccurrence: np.ndarray
    target: int  # index into the candidates, -1 when the target is not among them

    def rank(self, p: float, c: float = COOC_WEIGHT) -> int | None:
        if self.target < 0:
            return None
        s = personalized(self.fused, personal_score(self.content, self.cooccurrence, c), p)
        # Ties count against the target (strictly better or equal, earlier position).
        return int((s > s[self.target]).sum() + (s[: self.target] == s[self.target]).sum()) + 1


def metrics(cases: list[Case], p: float, cw: float = COOC_WEIGHT) -> dict[str, float]:
    mrr = ndcg = 0.0
    for c in cases:
        r = c.rank(p, cw)
        if r is not None:
            mrr += 1.0 / r
            ndcg += 1.0 / math.log2(r + 1) if r <= 10 else 0.0
    n = max(len(cases), 1)
    return {"MRR": round(mrr / n, 4), "NDCG@10": round(ndcg / n, 4)}


@dataclass
class PersonalizedReport:
    n_users: int
    strength: float
    valid: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    grid: list[dict[str, Any]] = field(default_factory=list)
    cooccurrence_weight: float = COOC_WEIGHT

    def gain(self) -> float:
        off = self.test["off"]["MRR"]
        return (self.test["on"]["MRR"] - off) / off if off else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": "scientific",
            "queries": "derived, not logged: the category path of the held-out item (words below the root)",
            "protocol": "tune personalize strength on the second-to-last item, report on the last",
            "users": self.n_users, "tuned_personalize": self.strength,
            "tuned_cooccurrence_weight": self.cooccurrence_weight,
            "valid": self.valid, "test": self.test, "mrr_gain_on_vs_off": round(self.gain(), 4),
        }

    def lines(self) -> list[str]:
        return [
            "personalized search on Scientific (Ai et al. SIGIR 2017 style); queries are DERIVED, not logged:",
            "  the category path of the held-out item; history = everything before it",
            f"users: {self.n_users}; tuned on validation: personalize {self.strength}, "
            f"co-occurrence weight {self.cooccurrence_weight} (personal = z(content) + w * z(co-occurrence))",
            "",
            f"{'':<18} {'MRR':>8} {'NDCG@10':>8}",
            *(f"{split + ' ' + mode:<18} {d[mode]['MRR']:>8.4f} {d[mode]['NDCG@10']:>8.4f}"
              for split, d in (("valid", self.valid), ("test", self.test)) for mode in ("off", "on")),
            "",
            f"test MRR: on beats off by {100 * self.gain():+.1f}%",
        ]


def category_query(path: str) -> str:
    parts = category_segments(path)
    return " ".join(parts[1:] if len(parts) > 1 else parts)


def run_personalized_eval(config: EngineConfig, dataset: str = "scientific", data_dir: Path | None = None,
                          *, max_users: int | None = None) -> PersonalizedReport:
    from engine.evaluation.recommend_eval import load_scientific
    from engine.recommend.content import event_weight
    from engine.service import Engine

    if dataset != "scientific":
        raise ValueError(f"unknown dataset {dataset!r}; expected 'scientific'")
    data = load_scientific(config, data_dir or config.data_dir)
    engine = Engine(config.replace(index_dir=config.index_dir / "eval" / "scientific", models_dir=config.models_path))
    snap = engine.snapshot()
    rows_of = np.array([snap.catalog.row(i) for i in data.item_ids], np.int64)  # eval row -> snapshot row
    seqs = [s for s in data.seqs if len(s) >= 3][: max_users or None]
    cooc = CooccurrenceModel()  # fitted on every shopper's items but the last two, as in eval recommend
    cooc.add_sequences([[int(rows_of[r]) for r in s[:-2]] for s in data.seqs])
    keys = {r: r for r in range(len(snap))}
    phases: dict[str, list[Case]] = {"valid": [], "test": []}
    for seq in seqs:
        for phase, cut in (("valid", len(seq) - 2), ("test", len(seq) - 1)):
            target = int(rows_of[seq[cut]])
            query = category_query(snap.catalog[target].category_path)
            profile = InterestProfile(snap.vectors.shape[1])
            for r in rows_of[seq[:cut]]:
                profile.add(np.asarray(snap.vectors[r]), event_weight("purchase"), item=int(r))
            qvec = engine.embed_query(query)
            cand, bm25, vec = scored_candidates(snap, keyword_part(snap, query, engine.config.candidate_pool, None),
                                                qvec, None)  # as the served search
            fused = fuse(bm25, vec, engine.config.hybrid_weight, engine.config.fusion)
            affinity, _ = profile.score(np.asarray(snap.vectors[cand]), BETA)
            recent = [(int(r), HISTORY_DECAY ** age) for age, r in enumerate(reversed(rows_of[seq[:cut]]))]
            co, _ = cooc.scores_dense(recent, keys, len(snap))
            hit = np.flatnonzero(cand == target)
            phases[phase].append(Case(fused, affinity.astype(np.float64), co[cand].astype(np.float64),
                                      int(hit[0]) if len(hit) else -1))
    grid = [{"personalize": p, "cooccurrence_weight": c, **metrics(phases["valid"], p, c)}
            for p in STRENGTHS for c in COOC_WEIGHTS]
    best = max(grid, key=lambda g: (g["MRR"] + g["NDCG@10"], -g["personalize"]))
    p, c = float(best["personalize"]), float(best["cooccurrence_weight"])
    return PersonalizedReport(
        len(seqs), p,
        {"off": metrics(phases["valid"], 0.0), "on": metrics(phases["valid"], p, c)},
        {"off": metrics(phases["test"], 0.0), "on": metrics(phases["test"], p, c)},
        grid, c,
    )
