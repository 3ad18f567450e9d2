"""One shopper's recommendations from the served snapshot and the live models.

History -> three sources over catalog rows: content (the shopper's interest profile against the item
vectors: exact for small catalogs, FAISS candidates above ``EXACT_LIMIT``), co-occurrence (recency
weights ``HISTORY_DECAY ** age`` over the recent items) and trending; then ``Blender`` merges them,
excludes purchased / out-of-stock / given items, applies filters and MMR, and explains each pick.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from engine.ranking.features import RECOMMEND_FEATURES, RecCandidates, brand_key, item_rates, recommend_features
from engine.recommend.blend import Blender, Rerank
from engine.recommend.content import InterestProfile, event_weight
from engine.recommend.live import LiveModels
from engine.snapshot import Snapshot

HISTORY_DECAY = 0.85  # tuned on Scientific validation (see engine/recommend/cooccurrence.py)
HISTORY_LIMIT = 50
EXACT_LIMIT = 20000
CONTENT_CANDIDATES = 300
BETA = 5.0


@dataclass(frozen=True)
class Recommended:
    """One recommended item, with the source that put it there and the reason shown to the shopper."""

    id: str
    title: str
    category: str
    brand: str
    price: float | None
    score: float
    reason: str
    source: str
    because_item: str | None
    score_parts: dict[str, float]
    # The learned ranker's features of this item in this list (see engine.ranking.features), when asked for.
    features: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "category": self.category, "brand": self.brand,
                "price": self.price, "score": self.score, "reason": self.reason, "source": self.source,
                "because_item": self.because_item, "score_parts": self.score_parts}


@dataclass(frozen=True)
class Touch:
    """One past event of the shopper on a catalog item, oldest first."""

    item_id: str
    type: str
    timestamp: float | None = None


def profile_from(history: Sequence[Touch], snap: Snapshot, profile: InterestProfile | None = None) -> InterestProfile:
    """Fold ``history`` (oldest first) into ``profile`` (a new one if None): O(1) per event."""
    profile = profile if profile is not None else InterestProfile(snap.vectors.shape[1])
    for t in history:
        if t.item_id in snap.catalog:
            row = snap.catalog.row(t.item_id)
            profile.add(np.asarray(snap.vectors[row]), event_weight(t.type), item=t.item_id, timestamp=t.timestamp)
    return profile


def recommend(
    snap: Snapshot,
    live: LiveModels,
    history: Sequence[Touch],
    *,
    k: int,
    blender: Blender,
    profile: InterestProfile | None = None,
    filter_mask: np.ndarray | None = None,
    exclude: Sequence[str] = (),
    scorer: Scorer | None = None,
    features: bool = False,
) -> list[Recommended]:
    """The ``k`` best items for a shopper with this ``history`` (oldest first), blended and explained.

    ``scorer`` (a learned ranker: feature matrix -> scores) re-ranks the blend's best ``blender.mmr_pool``
    candidates; ``features``: attach each recommendation's feature values (for the impression log). Either
    computes the candidates' features with :func:`engine.ranking.features.recommend_features`, from inputs
    gathered here."""
    n = len(snap)
    rows = snap.catalog.id_map
    known = [t for t in history if t.item_id in snap.catalog][-HISTORY_LIMIT:]
    profile = profile if profile is not None else profile_from(known, snap)
    content = np.zeros(n, np.float32)
    content_because = np.full(n, -1, np.int64)
    if len(profile.mass):
        if n <= EXACT_LIMIT:
            content, best = profile.score(np.asarray(snap.vectors), BETA)
            content_because = profile.because_rows(best, rows)
        else:
            cand, scores, best = profile.search_explained(snap.vector_index, CONTENT_CANDIDATES, beta=BETA,
                                                          allowed=filter_mask)
            content[cand] = scores
            content_because[cand] = profile.because_rows(best, rows)
    recent = [(t.item_id, HISTORY_DECAY ** age) for age, t in enumerate(reversed(known))]
    purchased = [snap.catalog.row(t.item_id) for t in known if t.type == "purchase"]
    given = [snap.catalog.row(i) for i in exclude if i in snap.catalog]
    X: dict[int, np.ndarray] = {}
    with live.current() as models:
        cooc, cooc_because = models.cooccurrence.scores_dense(recent, rows, n)
        popular = models.trending_dense(snap.catalog)
        parts = {"content": content, "cooccurrence": cooc, "popular": popular}
        rerank = None
        if scorer is not None or features:
            rerank = _reranker(snap, models, known, parts, scorer, X)
    picks = blender.recommend(
        parts,
        k=k,
        purchased=purchased,
        seen=[snap.catalog.row(t.item_id) for t in known],
        in_stock=snap.in_stock,
        filter_mask=_without(filter_mask, given, n),
        item_vectors=snap.vectors if blender.mmr_lambda < 1.0 else None,
        because={"content": content_because, "cooccurrence": cooc_because},
        title_of=lambda r: snap.catalog[r].title,
        category_of=lambda r: snap.catalog[r].category_path,
        rerank=rerank,
    )
    out = []
    for rec in picks:
        p = snap.catalog[rec.row]
        row = rec.because_row
        out.append(Recommended(
            p.id, p.title, p.category_path, p.brand, p.price, round(rec.score, 6), rec.reason, rec.reason_source,
            snap.catalog[row].id if row is not None and row >= 0 else None,
            {s: round(v, 6) for s, v in rec.parts.items()},
            _named(X.get(rec.row)) if features else None,
        ))
    return out


Scorer = Callable[[np.ndarray], np.ndarray]


def _reranker(snap: Snapshot, models: LiveModels, known: Sequence[Touch], parts: dict[str, np.ndarray],
              scorer: Scorer | None, out: dict[int, np.ndarray]) -> Rerank:
    """The blender's ``rerank`` hook: the pool's features (kept in ``out`` by row) and the scorer's scores.
    The co-occurrence and category models are read now, while the caller holds them; item counts and
    transitions are single dictionary reads at re-rank time (atomic, at most an event behind)."""
    catalog = snap.catalog
    hist = [catalog.row(t.item_id) for t in known]
    last = known[-1].item_id if known else None
    prev = known[-2].item_id if len(known) > 1 else None
    cooc_last = models.cooccurrence.scores([(last, 1.0)]) if last is not None else {}
    cooc_prev = models.cooccurrence.scores([(prev, 1.0)]) if prev is not None else {}
    transitions = models.category_transitions(catalog)
    follows = models.follows
    counts = models.item_counts

    def rerank(pool: np.ndarray, total: np.ndarray, z: Mapping[str, np.ndarray]) -> np.ndarray | None:
        ids = [catalog.ids[r] for r in pool.tolist()]
        views, clicks, purchases = counts(ids)
        ctr, conversion = item_rates(views, clicks, purchases)
        prods = [catalog[r] for r in pool.tolist()]
        hprods = [catalog[r] for r in hist]
        cats = [p.category_path for p in prods]
        c = RecCandidates(
            raw={s: np.asarray(x[pool], np.float64) for s, x in parts.items()},
            z={s: np.asarray(x[pool], np.float64) for s, x in z.items()},
            blend=np.asarray(total[pool], np.float64),
            vectors=np.asarray(snap.vectors)[pool], categories=cats,
            brands=[brand_key(p.brand) for p in prods], prices=np.asarray(snap.price[pool], np.float64),
            cooc_last=np.array([cooc_last.get(i, (0.0, None))[0] for i in ids], np.float64),
            cooc_prev=np.array([cooc_prev.get(i, (0.0, None))[0] for i in ids], np.float64),
            follows_last=follows(last, ids) if last is not None else np.zeros(len(ids)),
            category_next=transitions.log_prob(hprods[-1].category_path if hprods else "", cats),
            ctr=ctr, conversion=conversion,
            hist_vectors=np.asarray(snap.vectors)[np.asarray(hist, np.int64)],
            hist_categories=[p.category_path for p in hprods], hist_brands=[brand_key(p.brand) for p in hprods],
            hist_prices=np.asarray(snap.price[hist], np.float64),
        )
        X = recommend_features(c)
        for i, r in enumerate(pool.tolist()):
            out[r] = X[i]
        return None if scorer is None else np.asarray(scorer(X), np.float64)

    return rerank


def _named(x: np.ndarray | None) -> dict[str, float] | None:
    return None if x is None else dict(zip(RECOMMEND_FEATURES, x.tolist()))


def _without(mask: np.ndarray | None, rows: list[int], n: int) -> np.ndarray | None:
    if not rows:
        return mask
    out = np.ones(n, bool) if mask is None else mask.copy()
    out[rows] = False
    return out
