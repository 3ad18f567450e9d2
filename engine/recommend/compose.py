"""One shopper's recommendations from the served snapshot and the live models.

History -> three sources over catalog rows: content (the shopper's interest profile against the item
vectors: exact for small catalogs, FAISS candidates above ``EXACT_LIMIT``), co-occurrence (recency
weights ``HISTORY_DECAY ** age`` over the recent items) and trending; then ``Blender`` merges them,
excludes purchased / out-of-stock / given items, applies filters and MMR, and explains each pick.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from engine.recommend.blend import Blender
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
) -> list[Recommended]:
    """The ``k`` best items for a shopper with this ``history`` (oldest first), blended and explained."""
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
    with live.current() as models:
        cooc, cooc_because = models.cooccurrence.scores_dense(recent, rows, n)
        popular = models.trending_dense(snap.catalog)
    purchased = [snap.catalog.row(t.item_id) for t in known if t.type == "purchase"]
    given = [snap.catalog.row(i) for i in exclude if i in snap.catalog]
    picks = blender.recommend(
        {"content": content, "cooccurrence": cooc, "popular": popular},
        k=k,
        purchased=purchased,
        seen=[snap.catalog.row(t.item_id) for t in known],
        in_stock=snap.in_stock,
        filter_mask=_without(filter_mask, given, n),
        item_vectors=snap.vectors if blender.mmr_lambda < 1.0 else None,
        because={"content": content_because, "cooccurrence": cooc_because},
        title_of=lambda r: snap.catalog[r].title,
        category_of=lambda r: snap.catalog[r].category_path,
    )
    out = []
    for rec in picks:
        p = snap.catalog[rec.row]
        row = rec.because_row
        out.append(Recommended(
            p.id, p.title, p.category_path, p.brand, p.price, round(rec.score, 6), rec.reason, rec.reason_source,
            snap.catalog[row].id if row is not None and row >= 0 else None,
            {s: round(v, 6) for s, v in rec.parts.items()},
        ))
    return out


def _without(mask: np.ndarray | None, rows: list[int], n: int) -> np.ndarray | None:
    if not rows:
        return mask
    out = np.ones(n, bool) if mask is None else mask.copy()
    out[rows] = False
    return out
