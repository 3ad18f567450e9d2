"""The blender: merges the candidate sources into one ranked, filtered, diversified list with reasons.

Score. Each source gives one raw score per catalog row. Over the rows still eligible for this shopper,
each source is z-scored (``(x - mean) / std``; a source that is constant, e.g. no co-occurrence
evidence at all for a new shopper, contributes 0), and the blend is ``sum_s weight_s * z_s``. The z-score
makes the weights comparable whatever the scale of a source (cosine kernels, counts, decayed counts).
Ties are broken by catalog row, lowest first.

Weights. ``BlendWeights()`` holds the values tuned by ``vitrine eval recommend --dataset scientific`` on
its validation targets (coordinate search, jointly with the sources' scoring parameters whose defaults are
set to the same tuned values; see ``engine.evaluation.recommend_eval``): co-occurrence 1.0, content 1.0,
popularity 0.5. On MovieLens 100K the same search gives 1.0 / 0.2 / 0.1 (titles and genres say less about
a film than a product's text does about the product): the weights are data-dependent, re-tune per shop.

Exclusions and filters. Rows that are out of stock (``in_stock`` False), outside ``filter_mask`` (category
and price, from ``Snapshot.filter_mask``), purchased (when ``exclude_purchased``, default on) or merely
seen (when ``exclude_seen``) are never recommended.

Diversity. With ``mmr_lambda < 1`` the final list is picked greedily from the best ``mmr_pool`` rows by
maximal marginal relevance: ``lambda * rel(i) - (1 - lambda) * max_{s chosen} cos(v_i, v_s)``, where
``rel`` is the blended score min-max scaled to [0, 1] over the pool. ``mmr_lambda = 1`` (default) is the
plain ranking.

Reasons. Each recommendation names the source that contributed most to it (``weight * z``) among those
with evidence for it: content -> "because you viewed <title>" (the history item anchoring the closest
interest), co-occurrence -> "often bought after <title>" (the history item contributing most), popularity
-> "trending in <category>".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from engine.ranking.scores import zscore

SOURCES = ("content", "cooccurrence", "popular")

# (pool rows in blend order, blend scores over all rows, source -> z-scores) -> scores for the pool, or None
Rerank = Callable[[np.ndarray, np.ndarray, Mapping[str, np.ndarray]], "np.ndarray | None"]


@dataclass(frozen=True)
class BlendWeights:
    """Weight of each z-scored source (tuned on Scientific validation, see the module docstring)."""

    content: float = 1.0
    cooccurrence: float = 1.0
    popular: float = 0.5

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def eligible_mask(
    n: int,
    *,
    exclude_rows: Iterable[int] = (),
    in_stock: np.ndarray | None = None,
    filter_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Bool ``(n,)``: rows that may be recommended (in stock, passing the filters, not excluded)."""
    m = np.ones(n, bool) if filter_mask is None else np.asarray(filter_mask, bool).copy()
    if in_stock is not None:
        m &= np.asarray(in_stock, bool)
    rows = np.fromiter((int(r) for r in exclude_rows), np.int64)
    m[rows[(rows >= 0) & (rows < n)]] = False
    return m


@dataclass
class Recommendation:
    row: int
    score: float
    parts: dict[str, float]  # weight * z-score of each source
    reason: str
    reason_source: str
    because_row: int | None = None  # the history item named in the reason
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "score": round(self.score, 6), "parts": {k: round(v, 6) for k, v in self.parts.items()},
                "reason": self.reason, "reason_source": self.reason_source, "because_row": self.because_row}


class Blender:
    def __init__(
        self,
        weights: BlendWeights | None = None,
        *,
        mmr_lambda: float = 1.0,
        mmr_pool: int = 100,
        exclude_purchased: bool = True,
        exclude_seen: bool = False,
    ) -> None:
        if not 0.0 <= mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {mmr_lambda}")
        self.weights = weights or BlendWeights()
        self.mmr_lambda = float(mmr_lambda)
        self.mmr_pool = int(mmr_pool)
        self.exclude_purchased = exclude_purchased
        self.exclude_seen = exclude_seen

    def combine(self, parts: Mapping[str, np.ndarray], eligible: np.ndarray | None = None) -> np.ndarray:
        """Blended scores, same shape as each part (``(n,)`` or ``(users, n)``); ineligible rows are -inf."""
        w = self._weights_for(parts)
        first = next(iter(parts.values()))
        total = np.zeros(np.shape(first), np.float64)
        for name, x in parts.items():
            if w[name]:
                total += w[name] * zscore(x, eligible)
        if eligible is not None:
            total = np.where(np.broadcast_to(eligible, total.shape), total, -np.inf)
        return total

    def recommend(
        self,
        parts: Mapping[str, np.ndarray],
        *,
        k: int = 10,
        purchased: Iterable[int] = (),
        seen: Iterable[int] = (),
        in_stock: np.ndarray | None = None,
        filter_mask: np.ndarray | None = None,
        item_vectors: np.ndarray | None = None,
        because: Mapping[str, np.ndarray] | None = None,
        title_of: Callable[[int], str] = str,
        category_of: Callable[[int], str] = lambda row: "",
        rerank: Rerank | None = None,
    ) -> list[Recommendation]:
        """Top ``k`` for one shopper. ``parts``: source -> ``(n,)`` raw scores over catalog rows;
        ``because``: source -> ``(n,)`` history row behind each score (-1 none), for the reasons.

        ``rerank(pool, total, z)``: called with the best ``max(mmr_pool, k)`` rows in blend order, the blend
        scores and each source's z-scores (unweighted); when it returns scores for the pool, the pool is
        re-ordered by them (ties keep the blend order) and they are the recommendations' scores."""
        n = len(next(iter(parts.values())))
        excluded = list(purchased) if self.exclude_purchased else []
        if self.exclude_seen:
            excluded += list(seen)
        ok = eligible_mask(n, exclude_rows=excluded, in_stock=in_stock, filter_mask=filter_mask)
        w = self._weights_for(parts)
        z = {s: w[s] * zscore(x, ok) for s, x in parts.items() if w[s]}
        total = np.where(ok, sum(z.values()) if z else np.zeros(n), -np.inf)
        rows = np.flatnonzero(ok)
        if not len(rows) or k <= 0:
            return []
        m = max(self.mmr_pool, k)
        if len(rows) > m:  # only the best m can be picked: select them in O(n), sort those
            top = total[rows]
            cut = np.partition(top, len(top) - m)[len(top) - m]
            rows = rows[top >= cut]  # ties at the cut all kept, so the order below is exact
        order = rows[np.lexsort((rows, -total[rows]))]
        if rerank is not None:
            unweighted = {s: zscore(x, ok) if not w[s] else z[s] / w[s] for s, x in parts.items()}
            learned = rerank(order, total, unweighted)
            if learned is not None:
                total = np.full(n, -np.inf)
                total[order] = learned
                order = order[np.lexsort((np.arange(len(order)), -np.asarray(learned, np.float64)))]
        if self.mmr_lambda < 1.0 and item_vectors is not None:
            chosen = self._mmr(order[: max(self.mmr_pool, k)], total, item_vectors, k)
        else:
            chosen = order[:k].tolist()
        return [self._explain(int(r), float(total[r]), parts, z, because or {}, title_of, category_of) for r in chosen]

    def _weights_for(self, parts: Mapping[str, np.ndarray]) -> dict[str, float]:
        w = self.weights.as_dict()
        unknown = set(parts) - set(w)
        if unknown:
            raise ValueError(f"unknown source(s) {sorted(unknown)}; expected {', '.join(SOURCES)}")
        if not parts:
            raise ValueError("no source scores given")
        return w

    def _mmr(self, pool: np.ndarray, total: np.ndarray, vectors: np.ndarray, k: int) -> list[int]:
        rel = total[pool]
        span = rel.max() - rel.min()
        rel = (rel - rel.min()) / span if span > 0 else np.ones(len(pool))
        vecs = np.asarray(vectors[pool], np.float32)
        max_sim = np.full(len(pool), -np.inf)
        taken = np.zeros(len(pool), bool)
        picked: list[int] = []
        for _ in range(min(k, len(pool))):
            penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
            mmr = np.where(taken, -np.inf, self.mmr_lambda * rel - (1.0 - self.mmr_lambda) * penalty)
            i = int(np.argmax(mmr))  # first maximum: pool is in (score desc, row asc) order
            taken[i] = True
            picked.append(int(pool[i]))
            max_sim = np.maximum(max_sim, vecs @ vecs[i])
        return picked

    def _explain(
        self,
        row: int,
        score: float,
        parts: Mapping[str, np.ndarray],
        z: Mapping[str, np.ndarray],
        because: Mapping[str, np.ndarray],
        title_of: Callable[[int], str],
        category_of: Callable[[int], str],
    ) -> Recommendation:
        contrib = {s: float(z[s][row]) for s in z}
        best, best_v = "popular", -np.inf
        for s, v in contrib.items():
            has_evidence = float(parts[s][row]) > 0 and (s == "popular" or int(because.get(s, _NONE)[row]) >= 0)
            if has_evidence and v > best_v:
                best, best_v = s, v
        if best in ("content", "cooccurrence"):
            h = int(because[best][row])
            text = ("because you viewed " if best == "content" else "often bought after ") + title_of(h)
            return Recommendation(row, score, contrib, text, best, h)
        cat = category_of(row)
        return Recommendation(row, score, contrib, f"trending in {cat}" if cat else "trending now", "popular")


class _NoBecause:
    def __getitem__(self, row: int) -> int:
        return -1


_NONE: Any = _NoBecause()
