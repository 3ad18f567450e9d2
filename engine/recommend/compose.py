"""One shopper's recommendations from the served snapshot and the live models.

History -> three sources over catalog rows: content (the shopper's interest profile against the item
vectors: exact for small catalogs, FAISS candidates above ``EXACT_LIMIT``), co-occurrence (recency
weights ``HISTORY_DECAY ** age`` over the recent items) and trending; then ``Blender`` merges them,
excludes purchased / out-of-stock / given items, applies filters and MMR, and explains each pick.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from engine.ranking.features import (RECOMMEND_FEATURES, RecCandidates, brand_key, item_age_days, item_rates,
                                     pack_floats, recommend_features, unpack_floats)
from engine.recommend.blend import Blender
from engine.recommend.content import InterestProfile, event_weight
from engine.recommend.live import LiveModels
from engine.recommend.strategies import CATEGORY_WINDOW, WEIGHTS, strategy_rows
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
    strategy: str = "blend",
    seq: SeqScorer | None = None,
) -> Composed:
    """The ``k`` best items for a shopper with this ``history`` (oldest first), blended and explained.

    ``scorer`` (a learned ranker: feature matrix -> scores) re-ranks the blend's best ``blender.mmr_pool``
    candidates, whose features :func:`_pool_features` computes now; ``features``: the recommendations' feature
    values are wanted (for the impression log): attached when a scorer computed them, else deferred to
    ``Composed.later``, so that logging costs the request only a few array slices. ``strategy``: one of
    :data:`engine.recommend.strategies.STRATEGIES` (its source weights and rows replace the blender's).
    ``seq``: the published ranker's sequence model (``SeqModel.scores``), for the ``seq`` features (0 without)."""
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
    with live.current() as models:
        cooc, cooc_because = models.cooccurrence.scores_dense(recent, rows, n)
        popular = models.trending_dense(snap.catalog)
    parts = {"content": content, "cooccurrence": cooc, "popular": popular}
    if strategy != "blend":
        blender = Blender(WEIGHTS[strategy], mmr_lambda=blender.mmr_lambda, mmr_pool=blender.mmr_pool,
                          exclude_purchased=blender.exclude_purchased, exclude_seen=blender.exclude_seen)
        only = strategy_rows(strategy, popular=popular, category_rows=snap.category_rows,
                             history_categories=[snap.catalog[snap.catalog.row(t.item_id)].category_path
                                                 for t in known[-CATEGORY_WINDOW:]])
        if only is not None:
            filter_mask = only if filter_mask is None else filter_mask & only
    X: dict[int, np.ndarray] = {}  # row -> features, when the scorer needed them now
    kept: dict[str, Any] = {}  # what the features need, when only the impression log wants them (later)

    def rerank(pool: np.ndarray, total: np.ndarray, z: Mapping[str, np.ndarray]) -> np.ndarray | None:
        inputs = {"pool": pool, "raw": {s: x[pool] for s, x in parts.items()}, "z": {s: x[pool] for s, x in z.items()},
                  "blend": total[pool]}
        if scorer is None:  # the impression log's features, later (their live inputs: once the shown are known)
            kept.update(inputs)
            return None
        feats = _pool_features(snap, live, known, seq=seq, **inputs)
        X.update(zip(pool.tolist(), feats))
        return np.asarray(scorer(feats), np.float64)

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
        rerank=rerank if scorer is not None or features else None,
    )
    out = []
    for rec in picks:
        p = snap.catalog[rec.row]
        row = rec.because_row
        out.append(Recommended(
            p.id, p.title, p.category_path, p.brand, p.price, round(rec.score, 6), rec.reason, rec.reason_source,
            snap.catalog[row].id if row is not None and row >= 0 else None,
            {s: round(v, 6) for s, v in rec.parts.items()},
            _named(X[rec.row]) if features and rec.row in X else None,
        ))
    later = None
    if features and kept:
        shown = tuple(rec.row for rec in picks)
        later = RecDeferred(snap, live, tuple(known), kept["pool"], kept["raw"], kept["z"], kept["blend"], shown, seq,
                            shown_live_inputs(snap, live, known, kept["pool"], shown))
    return Composed(out, later)


Scorer = Callable[[np.ndarray], np.ndarray]
# (history vectors, history ids, candidate vectors, candidate ids) -> (m,) next-item scores (SeqModel.scores)
SeqScorer = Callable[[np.ndarray, Sequence[str], np.ndarray, Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class RecDeferred:
    """The shown recommendations' ranker features, computed when called: by the impression log's flusher in
    this process, or, from :meth:`spec`, by the impression writer process (:meth:`from_spec`, on its own
    snapshot and live models)."""

    snap: Snapshot
    live: LiveModels
    known: tuple[Touch, ...]  # the shopper's history the list was made from, oldest first
    pool: np.ndarray  # the re-ranked candidates' rows, blend order
    raw: Mapping[str, np.ndarray]
    z: Mapping[str, np.ndarray]
    blend: np.ndarray
    shown: tuple[int, ...]  # rows, in the shown order
    seq: SeqScorer | None = None
    # What the features read from the live models, taken when the list was served (:func:`shown_live_inputs`:
    # the shown rows only, NaN for the other candidates);
    # None (a spec written before them): read when called
    inputs: Mapping[str, np.ndarray] | None = None

    def __call__(self) -> list[dict[str, float]]:
        feats = _pool_features(self.snap, self.live, self.known, self.pool, self.raw, self.z, self.blend, seq=self.seq,
                               inputs=self.inputs)
        at = {r: i for i, r in enumerate(self.pool.tolist())}
        return [dict(zip(RECOMMEND_FEATURES, feats[at[r]].tolist())) for r in self.shown]

    def spec(self) -> dict[str, Any]:
        """What another process needs to compute the same features (JSON; item ids, not rows). ``seq``: a
        sequence model scored them: the published ranker's, the only one a deferred list uses (a list
        ranked by a model has its features computed on the request path)."""
        ids = self.snap.catalog.ids
        return {"kind": "recommend",
                "history": [[t.item_id, t.type, t.timestamp] for t in self.known],
                "pool": [ids[int(r)] for r in self.pool.tolist()],
                "raw": {s: pack_floats(x) for s, x in self.raw.items()},
                "z": {s: pack_floats(x) for s, x in self.z.items()}, "blend": pack_floats(self.blend),
                "shown": [ids[r] for r in self.shown], "seq": self.seq is not None,
                **({} if self.inputs is None else {"inputs": {k: pack_floats(x) for k, x in self.inputs.items()}})}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], snap: Snapshot, live: LiveModels,
                  seq: SeqScorer | None) -> "RecDeferred":
        """The deferred features of :meth:`spec` on ``snap`` (NotFound: an item no longer in the catalog)."""
        row = snap.catalog.row
        known = tuple(Touch(str(i), str(t), None if ts is None else float(ts)) for i, t, ts in spec["history"])
        return cls(snap, live, known, np.array([row(i) for i in spec["pool"]], np.int64),
                   {s: unpack_floats(x) for s, x in spec["raw"].items()},
                   {s: unpack_floats(x) for s, x in spec["z"].items()}, unpack_floats(spec["blend"]),
                   tuple(row(i) for i in spec["shown"]), seq if spec.get("seq") else None,
                   _inputs(spec["inputs"], len(spec["pool"])) if "inputs" in spec else None)


@dataclass(frozen=True)
class Composed:
    """The recommendations, and (when features were asked for and no scorer computed them) ``later``, which
    computes their ranker features when called: the impression log's flusher does, off the request path."""

    recommendations: list[Recommended]
    later: Callable[[], list[dict[str, float]]] | None = None


LIVE_INPUTS = ("cooc_last", "cooc_prev", "category_next", "follows_last", "views", "clicks", "purchases", "age_days")


def _inputs(packed: Mapping[str, str], n: int) -> dict[str, np.ndarray]:
    """A spec's packed live inputs; one that a spec from before it existed lacks is unknown (NaN)."""
    return {k: unpack_floats(packed[k]) if k in packed else np.full(n, np.nan) for k in LIVE_INPUTS}


def live_inputs(snap: Snapshot, live: LiveModels, known: Sequence[Touch], pool: np.ndarray,
                now: float | None = None) -> dict[str, np.ndarray]:
    """What the ranker features of ``pool`` read from the live models (``LIVE_INPUTS``, one value per
    candidate), as last refreshed. A list whose features are computed later (the impression log) takes
    them when it is served: read at flush time, they would hold the shopper's own click on the list (its
    item's click count, the pair last item -> clicked item), which is the label the ranker learns.
    ``age_days``: :func:`engine.ranking.features.item_age_days` at ``now`` (default: the clock)."""
    catalog = snap.catalog
    last = known[-1].item_id if known else None
    prev = known[-2].item_id if len(known) > 1 else None
    ids = [catalog.ids[r] for r in pool.tolist()]
    cats = [catalog[r].category_path for r in pool.tolist()]
    last_cat = catalog[catalog.row(last)].category_path if last is not None else ""
    with live.held() as models:
        cooc_last = models.cooccurrence.scores_of(last, ids) if last is not None else np.zeros(len(ids))
        cooc_prev = models.cooccurrence.scores_of(prev, ids) if prev is not None else np.zeros(len(ids))
        category_next = models.category_transitions(catalog).log_prob(last_cat, cats)
        follows = models.follows(last, ids) if last is not None else np.zeros(len(ids))
        views, clicks, purchases = models.item_counts(ids)
        first_seen = models.first_seen(ids)
    created = np.full(len(ids), np.nan) if snap.created is None else snap.created[pool]
    return {"cooc_last": cooc_last, "cooc_prev": cooc_prev,
            "category_next": np.asarray(category_next, np.float64), "follows_last": np.asarray(follows, np.float64),
            "views": views, "clicks": clicks, "purchases": purchases,
            "age_days": item_age_days(created, first_seen, time.time() if now is None else now)}


def shown_live_inputs(snap: Snapshot, live: LiveModels, known: Sequence[Touch], pool: np.ndarray,
                      shown: Sequence[int]) -> dict[str, np.ndarray]:
    """:func:`live_inputs` aligned with ``pool`` but taken for the ``shown`` rows only (NaN for the others):
    the impression log keeps the features of the shown items, none of which reads another item's live
    inputs, so taking them for 10 items instead of 100 saves request time (``bench/bench_ranker.py``: 0.38
    to 0.13 ms p50 on a store of the Scientific histories)."""
    at = {r: i for i, r in enumerate(pool.tolist())}
    idx = np.array([at[r] for r in shown if r in at], np.int64)
    got = live_inputs(snap, live, known, pool[idx])
    out = {k: np.full(len(pool), np.nan) for k in LIVE_INPUTS}
    for k in LIVE_INPUTS:
        out[k][idx] = got[k]
    return out


def _pool_features(snap: Snapshot, live: LiveModels, known: Sequence[Touch], pool: np.ndarray,
                   raw: Mapping[str, np.ndarray], z: Mapping[str, np.ndarray], blend: np.ndarray,
                   seq: SeqScorer | None = None, inputs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """The ranker features of the blend's candidate ``pool`` (rows in blend order, with their raw and z-scored
    source scores and blend scores); ``inputs``: what they read from the live models (:func:`live_inputs`),
    taken when the list was served (else read now); ``seq`` scores the candidates as the history's next
    item."""
    catalog = snap.catalog
    hist = [catalog.row(t.item_id) for t in known]
    ids = [catalog.ids[r] for r in pool.tolist()]
    prods = [catalog[r] for r in pool.tolist()]
    hprods = [catalog[r] for r in hist]
    cats = [p.category_path for p in prods]
    got = live_inputs(snap, live, known, pool) if inputs is None else inputs
    ctr, conversion = item_rates(got["views"], got["clicks"], got["purchases"])
    vectors = np.asarray(snap.vectors)
    hist_rows = np.asarray(hist, np.int64)
    seq_scores = None if seq is None else seq(vectors[hist_rows], [catalog.ids[r] for r in hist], vectors[pool], ids)
    return recommend_features(RecCandidates(
        raw={s: np.asarray(x, np.float64) for s, x in raw.items()},
        z={s: np.asarray(x, np.float64) for s, x in z.items()},
        blend=np.asarray(blend, np.float64),
        vectors=vectors[pool], categories=cats,
        brands=[brand_key(p.brand) for p in prods], prices=np.asarray(snap.price[pool], np.float64),
        cooc_last=got["cooc_last"], cooc_prev=got["cooc_prev"], follows_last=got["follows_last"],
        category_next=got["category_next"], ctr=ctr, conversion=conversion, age_days=got["age_days"],
        hist_vectors=vectors[hist_rows],
        hist_categories=[p.category_path for p in hprods], hist_brands=[brand_key(p.brand) for p in hprods],
        hist_prices=np.asarray(snap.price[hist], np.float64), seq=seq_scores,
    ))


def _named(x: np.ndarray) -> dict[str, float]:
    return dict(zip(RECOMMEND_FEATURES, x.tolist()))


def _without(mask: np.ndarray | None, rows: list[int], n: int) -> np.ndarray | None:
    if not rows:
        return mask
    out = np.ones(n, bool) if mask is None else mask.copy()
    out[rows] = False
    return out
