"""A shopper's content profile: interest vectors built from item embeddings, updated in O(1) per event.

Update rule. Every event on an item with unit vector ``v`` first decays the whole profile, then adds the
item with its event weight ``w`` (``event_weights[type]``: purchase > add_to_cart > click > view):

    decay = position_decay * 2 ** (-(t - t_last) / half_life_s)     (either factor may be switched off)
    p     <- decay * p + w * v

With ``max_interests = 1`` that is the whole profile: one vector, scored by its cosine with each item.
With ``max_interests = K > 1`` the profile keeps up to K interest vectors ``c_k`` (each a decayed
weighted sum, with its decayed mass ``m_k``). The new item joins the interest whose direction is
closest if that cosine is at least ``merge_threshold``; otherwise it opens a new interest, and when K
are open the lightest one (least recent / least weighted) is dropped. Either way the cost is O(K * dim),
independent of the history length. Until an interest is dropped, the sum of the interest vectors is
exactly the single profile ``p``.

Scoring. ``score(j) = sum_k m_k * exp(beta * (cos(c_k, v_j) - 1))``: a soft maximum over interests, so an
item close to any one interest scores high even when the interests point in different directions (the
single averaged vector would point between them). ``beta`` sets the sharpness.

Defaults are the values tuned in the blend on Scientific validation (``vitrine eval recommend``):
8 interests, ``merge_threshold`` 1.0 (only the same item merges: one interest per recent item),
``position_decay`` 0.35, ``beta`` 5. Several interests measurably beat one averaged vector there
(test R@10 0.119 vs 0.108 for the content source alone) and on MovieLens 100K (0.045 vs 0.038).
The event-type weights are not tuned: neither evaluation data set has more than one event type.

Shapes: ``centers`` (K, dim) float32, ``mass`` (K,) float64, ``anchors`` K item keys (the item that last
joined each interest, used for the reason "because you viewed <title>").
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from engine.events.features import DEFAULT_WEIGHTS as EVENT_WEIGHTS

if TYPE_CHECKING:
    from engine.index.vector import VectorIndex

# The engine's one event-weight table (purchase > add_to_cart > click > view), shared with the event
# store's popularity features.
DEFAULT_EVENT_WEIGHTS: Mapping[str, float] = EVENT_WEIGHTS


def event_weight(event_type: str, weights: Mapping[str, float] | None = None) -> float:
    """Weight of one event type (unknown types weigh 0)."""
    return float((DEFAULT_EVENT_WEIGHTS if weights is None else weights).get(event_type, 0.0))


class InterestProfile:
    """Interest vectors of one shopper; see the module docstring for the update and score rules."""

    def __init__(
        self,
        dim: int,
        *,
        max_interests: int = 8,
        merge_threshold: float = 1.0,
        position_decay: float = 0.35,
        half_life_s: float | None = None,
    ) -> None:
        if max_interests < 1:
            raise ValueError(f"max_interests must be >= 1, got {max_interests}")
        if not 0.0 < position_decay <= 1.0:
            raise ValueError(f"position_decay must be in (0, 1], got {position_decay}")
        if half_life_s is not None and not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s}")
        self.dim = int(dim)
        self.max_interests = int(max_interests)
        self.merge_threshold = float(merge_threshold)
        self.position_decay = float(position_decay)
        self.half_life_s = half_life_s
        self.centers = np.zeros((0, self.dim), np.float32)
        self.mass = np.zeros(0, np.float64)
        self.anchors: list[Hashable] = []
        self.sizes: list[int] = []  # events merged into each interest
        self.last_t: float | None = None
        self.n_events = 0

    def decay_factor(self, timestamp: float | None) -> float:
        """Factor applied to the profile before an event at ``timestamp`` (time part only if both are known)."""
        f = self.position_decay
        if self.half_life_s is not None and timestamp is not None and self.last_t is not None:
            f *= 2.0 ** (-max(timestamp - self.last_t, 0.0) / self.half_life_s)
        return f

    def add(self, vector: np.ndarray, weight: float = 1.0, *, item: Hashable = None,
            timestamp: float | None = None) -> None:
        """One event: decay, then add ``weight * vector`` to the nearest interest (or a new one). O(K * dim)."""
        v = np.asarray(vector, np.float32).reshape(self.dim)
        f = self.decay_factor(timestamp)
        if self.n_events and f != 1.0:
            self.centers *= np.float32(f)
            self.mass *= f
        if timestamp is not None:
            self.last_t = timestamp if self.last_t is None else max(self.last_t, timestamp)
        self.n_events += 1
        if weight <= 0:
            return
        k = len(self.mass)
        if k:
            norms = np.linalg.norm(self.centers, axis=1)
            sims = (self.centers @ v) / np.maximum(norms, 1e-12)
            best = int(np.argmax(sims))
            if sims[best] >= self.merge_threshold - 1e-6 or self.max_interests == 1:
                self.centers[best] += np.float32(weight) * v
                self.mass[best] += weight
                self.anchors[best] = item
                self.sizes[best] += 1
                return
            if k >= self.max_interests:
                drop = int(np.argmin(self.mass))
                keep = np.arange(k) != drop
                self.centers, self.mass = self.centers[keep], self.mass[keep]
                del self.anchors[drop]
                del self.sizes[drop]
        self.centers = np.vstack([self.centers, np.float32(weight) * v[None, :]])
        self.mass = np.append(self.mass, float(weight))
        self.anchors.append(item)
        self.sizes.append(1)

    def vector(self) -> np.ndarray:
        """The single profile ``p`` (sum of the interests), unit length (zeros while empty), ``(dim,)``."""
        p = self.centers.sum(axis=0) if len(self.mass) else np.zeros(self.dim, np.float32)
        n = float(np.linalg.norm(p))
        return (p / n).astype(np.float32) if n > 0 else p.astype(np.float32)

    def unit_centers(self) -> np.ndarray:
        """Interest directions, ``(K, dim)`` unit rows."""
        n = np.linalg.norm(self.centers, axis=1, keepdims=True)
        unit: np.ndarray = (self.centers / np.maximum(n, 1e-12)).astype(np.float32)
        return unit

    def score(self, item_vectors: np.ndarray, beta: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores against every row of ``item_vectors`` (n, dim): ``(n,)`` float32 scores and ``(n,)``
        the index of the interest contributing most (-1 for an empty profile)."""
        n = len(item_vectors)
        if not len(self.mass):
            return np.zeros(n, np.float32), np.full(n, -1, np.int64)
        parts = self.unit_centers() @ np.asarray(item_vectors, np.float32).T  # (K, n)
        parts = np.exp(np.float32(beta) * (parts - 1.0)) * self.mass.astype(np.float32)[:, None]
        return parts.sum(axis=0, dtype=np.float32), parts.argmax(axis=0).astype(np.int64)

    def because_rows(self, best: np.ndarray, rows: Mapping[Any, int]) -> np.ndarray:
        """For ``best`` (the interest index per item, from :meth:`score`), the catalog row of that interest's
        anchor item, ``-1`` where unknown: the blender's ``because["content"]``."""
        anchor = np.array([rows.get(a, -1) for a in self.anchors] + [-1], np.int64)
        return anchor[np.where(best >= 0, best, len(self.anchors))]

    def search(self, vector_index: "VectorIndex", k: int, *, beta: float = 5.0,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows through a FAISS :class:`engine.index.vector.VectorIndex`: the nearest ``k`` of each
        interest, re-scored exactly. Returns (rows, scores), best first, ties by row."""
        rows, scores, _ = self.search_explained(vector_index, k, beta=beta, allowed=allowed)
        return rows, scores

    def search_explained(self, vector_index: "VectorIndex", k: int, *, beta: float = 5.0,
                         allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`search`, plus for each row the interest contributing most (as :meth:`score` gives it)."""
        if not len(self.mass):
            return np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.int64)
        hits = vector_index.search(self.unit_centers(), k, allowed=allowed)
        rows = np.unique(hits.rows[hits.rows >= 0])
        vecs = vector_index.rows_vectors(rows)  # exact rows for Flat, decoded from the codes when compressed
        scores, best = self.score(vecs, beta)
        order = np.lexsort((rows, -scores))[:k]
        return rows[order], scores[order], best[order]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (no pickle): vectors as lists."""
        return dict(self._header(), centers=self.centers.tolist())

    def _header(self) -> dict[str, Any]:
        """Everything but the centers."""
        return {
            "dim": self.dim, "max_interests": self.max_interests, "merge_threshold": self.merge_threshold,
            "position_decay": self.position_decay, "half_life_s": self.half_life_s,
            "mass": self.mass.tolist(), "anchors": list(self.anchors),
            "sizes": list(self.sizes), "last_t": self.last_t, "n_events": self.n_events,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InterestProfile":
        p = cls(int(d["dim"]), max_interests=int(d["max_interests"]), merge_threshold=float(d["merge_threshold"]),
                position_decay=float(d["position_decay"]), half_life_s=d["half_life_s"])
        p.centers = np.array(d["centers"], np.float32).reshape(-1, p.dim)
        p.mass = np.array(d["mass"], np.float64)
        p.anchors = list(d["anchors"])
        p.sizes = [int(x) for x in d["sizes"]]
        p.last_t = d["last_t"]
        p.n_events = int(d["n_events"])
        return p


# An interest whose center is (to this relative tolerance) its mass times its anchor item's vector is
# stored by reference: with the default merge_threshold 1.0 that is every interest.
BY_ANCHOR_RTOL = 1e-4
# item keys -> (found: (K,) bool, vectors: (K, dim) float32, rows where not found are arbitrary)
VectorsOf = Callable[[Sequence[Hashable]], "tuple[np.ndarray, np.ndarray]"]


def encode_profile(p: InterestProfile, vectors_of: VectorsOf | None = None) -> bytes:
    """Compact storage form: a JSON header line, then the centers not stored by reference as raw
    little-endian float32.

    With ``vectors_of`` (anchor items -> their unit vectors), an interest equal to ``mass * vector`` is
    stored as its anchor alone (a few bytes instead of ``4 * dim``); :func:`decode_profile` then needs
    the same look-up and rebuilds it from the item's vector as served at that time."""
    by_ref = np.zeros(len(p.mass), bool)
    if vectors_of is not None and len(p.mass):
        found, vecs = vectors_of(p.anchors)
        err = np.abs(p.centers - p.mass.astype(np.float32)[:, None] * vecs).max(axis=1)
        by_ref = found & (err <= BY_ANCHOR_RTOL * np.maximum(p.mass, 1e-12))
    header = p._header()
    header["by_anchor"] = np.flatnonzero(by_ref).tolist()
    return json.dumps(header).encode() + b"\n" + np.ascontiguousarray(p.centers[~by_ref], "<f4").tobytes()


def decode_profile(data: bytes, vectors_of: VectorsOf | None = None) -> InterestProfile:
    """Inverse of :func:`encode_profile`. An interest stored by reference whose anchor item is no longer
    served is dropped."""
    header, _, raw = data.partition(b"\n")
    d = json.loads(header)
    dim = int(d["dim"])
    mass = np.array(d["mass"], np.float64)
    by_ref = np.zeros(len(mass), bool)
    by_ref[d.pop("by_anchor", [])] = True
    centers = np.empty((len(mass), dim), np.float32)
    centers[~by_ref] = np.frombuffer(raw, "<f4").reshape(-1, dim)
    keep = np.ones(len(mass), bool)
    if by_ref.any():
        if vectors_of is None:
            raise ValueError("this profile stores interests by anchor item: decoding needs vectors_of")
        found, vecs = vectors_of([a for a, r in zip(d["anchors"], by_ref) if r])
        centers[by_ref] = mass[by_ref].astype(np.float32)[:, None] * vecs
        keep[np.flatnonzero(by_ref)[~found]] = False
    d["centers"] = centers[keep]
    d["mass"] = mass[keep]
    for key in ("anchors", "sizes"):
        d[key] = [x for x, kept in zip(d[key], keep) if kept]
    return InterestProfile.from_dict(d)


def score_profiles(
    profiles: Sequence[InterestProfile],
    item_vectors: np.ndarray,
    beta: float = 5.0,
    chunk: int = 512,
    item_gram: np.ndarray | None = None,
) -> np.ndarray:
    """``InterestProfile.score`` for many profiles at once: ``(len(profiles), n)`` float32, row by row equal
    (to float32 rounding) to each profile's own scores, computed ``chunk`` profiles at a time.

    ``item_gram``: optional ``item_vectors @ item_vectors.T`` (n, n). When the anchors are catalog rows,
    an interest made of a single item then reads its cosines from that row instead of a matrix product."""
    V = np.ascontiguousarray(item_vectors, np.float32)
    out = np.zeros((len(profiles), len(V)), np.float32)
    for start in range(0, len(profiles), chunk):
        group = profiles[start:start + chunk]
        full = [i for i, p in enumerate(group) if len(p.mass)]
        if not full:
            continue
        sizes = np.array([len(group[i].mass) for i in full], np.int64)
        mass = np.concatenate([group[i].mass for i in full]).astype(np.float32)
        parts = np.empty((int(sizes.sum()), len(V)), np.float32)
        single, rows, multi = [], [], []
        j = 0
        for i in full:
            p = group[i]
            for k in range(len(p.mass)):
                a = p.anchors[k]
                if item_gram is not None and p.sizes[k] == 1 and isinstance(a, (int, np.integer)):
                    single.append(j)
                    rows.append(int(a))
                else:
                    multi.append((j, p, k))
                j += 1
        if single and item_gram is not None:
            parts[single] = item_gram[rows]
        if multi:
            centers = np.vstack([p.unit_centers()[k] for _, p, k in multi])
            parts[[j for j, _, _ in multi]] = centers @ V.T
        # float32 from here on, in place: this is the hot loop of the evaluation
        parts -= 1.0
        parts *= np.float32(beta)
        np.exp(parts, out=parts)
        owner = sp.csr_matrix((mass, (np.repeat(np.arange(len(full)), sizes), np.arange(len(mass)))),
                              shape=(len(full), len(mass)))
        out[start + np.array(full)] = owner @ parts  # sum over each profile's interests, weighted by mass
    return out
