"""Hybrid search over one snapshot: BM25 and vector candidates, fused, filtered, paged, with facets.

Candidates are the top ``pool`` rows of each side within the filter; every candidate gets both
raw scores (BM25 from the full score array; the cosine from the vector search for its rows, and from the
decoded vectors for the keyword side's), then ``engine.ranking.fusion.fuse`` orders them. The keyword
side needs no query vector (:func:`keyword_part`), so on a large catalog the server computes it while the
query is encoded.

Facets (:func:`facets`) describe the query's candidate rows without the category and price filters
(the in-stock filter still applies), so that a shopper can switch category or widen the price range:

- ``category``: counts of those rows within the price filter, one level below the selected
  ``category`` filter (its children). Without a category filter, at the first depth where the rows'
  categories differ (the children of their longest common path; that path itself when they all share
  it). Uncategorised rows are not counted. Sorted by count, descending, then path; at most
  ``MAX_FACET_CATEGORIES``;
- ``price``: ``{"min", "max"}`` over those rows that have a price, ignoring the price filter
  (``None`` when none has one).

With neither a category nor a price filter, those rows are the search's own candidates; otherwise
one more candidates pass (same query vector, same BM25 score array) finds them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from engine.catalog import CATEGORY_SEP, category_key
from engine.filters import Filters
from engine.ranking.features import (SEARCH_FEATURES, SearchCandidates, pack_floats, search_features,
                                     unpack_floats)
from engine.ranking.fields import FieldTokens, norm, query_terms
from engine.ranking.fusion import fuse
from engine.recommend.personal import PARTS, ShopperAffinity, personalized
from engine.snapshot import Snapshot
from engine.types import Fusion


@dataclass(frozen=True)
class Hit:
    id: str
    title: str
    category: str
    brand: str
    price: float | None
    in_stock: bool | None
    score: float
    bm25: float
    vector: float
    personal: float | None = None
    # The learned ranker's features of this hit in this list (engine.ranking.features), when asked for.
    features: dict[str, float] | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "category": self.category,
            "brand": self.brand,
            "price": self.price,
            "in_stock": self.in_stock,
            "score": round(self.score, 6),
            "score_parts": {"bm25": round(self.bm25, 6), "vector": round(self.vector, 6)}
            | ({} if self.personal is None else {"personal": round(self.personal, 6)}),
        }


# Large catalogs: the top BM25 rows are found above a threshold estimated from a strided sample (see
# :func:`top_positive`); below SAMPLE * MIN_STRIDE rows the plain pass is as fast.
SAMPLE, MIN_STRIDE, MARGIN = 8192, 8, 4


def top_positive(scores: np.ndarray, pool: int) -> np.ndarray:
    """Rows of the ``pool`` highest scores above 0 (all of them when fewer), in no particular order; among
    rows tied at the cut, which are kept is unspecified.

    On a large array the plain pass (every row above 0, then a partition of them) costs milliseconds when a
    common term matches a third of a million rows. So a threshold ``t`` is taken from a strided sample of
    the scores, at the rank where about ``MARGIN x pool`` rows of the whole array should lie above it; the
    rows at or above ``t`` are then partitioned. The result is exact: when at least ``pool`` rows reach
    ``t``, the ``pool`` highest are all among them; when fewer do (an unlucky sample), the plain pass runs."""
    rows = None
    stride = len(scores) // SAMPLE
    if stride >= MIN_STRIDE:
        sample = scores[::stride]
        want = min(len(sample), MARGIN * pool // stride + 1)
        if int(np.count_nonzero(sample > 0)) > want:
            t = np.partition(sample, len(sample) - want)[len(sample) - want]
            above = np.flatnonzero(scores >= t)
            rows = above if len(above) >= pool else None
    if rows is None:
        rows = np.flatnonzero(scores > 0)
    if len(rows) > pool:
        rows = rows[np.argpartition(-scores[rows], pool - 1)[:pool]]
    return rows


@dataclass(frozen=True)
class KeywordPart:
    """The keyword half of a query's candidates, which needs no query vector: every row's BM25 score, the
    rows of the ``pool`` best within the mask and their vectors (decoded from the index). The server
    computes it while the query is encoded."""

    bm25_all: np.ndarray
    positive: np.ndarray
    vectors: np.ndarray
    pool: int


def keyword_part(snap: Snapshot, query: str, pool: int, mask: np.ndarray | None) -> KeywordPart:
    """BM25 of every row for ``query``, its top ``pool`` rows above 0 within ``mask``, and their vectors."""
    bm25_all = snap.keyword.scores(query)
    positive = np.sort(_top_keyword_rows(bm25_all, pool, mask))
    return KeywordPart(bm25_all, positive, snap.vector_index.rows_vectors(positive), pool)


def _top_keyword_rows(bm25_all: np.ndarray, pool: int, mask: np.ndarray | None) -> np.ndarray:
    return top_positive(bm25_all if mask is None else np.where(mask, bm25_all, 0.0), pool)


def scored_candidates(snap: Snapshot, keyword: KeywordPart, qvec: np.ndarray,
                      mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, bm25, cosine)`` of the candidates: the union of the keyword part's rows and the top ``pool``
    vector rows within ``mask``, sorted. A vector row's cosine is the index search's own score, a keyword
    row's its decoded vector's inner product with ``qvec``: the same quantity (the search scores the
    decoded vectors too), so no row is decoded twice."""
    hits = snap.vector_index.search(qvec[None, :], keyword.pool, allowed=mask)
    found = hits.rows[0] >= 0
    vec_rows, vec_scores = hits.rows[0][found], hits.scores[0][found]
    rows = np.union1d(keyword.positive, vec_rows).astype(np.int64)
    vec = np.empty(len(rows), np.float32)
    vec[np.searchsorted(rows, vec_rows)] = vec_scores
    vec[np.searchsorted(rows, keyword.positive)] = keyword.vectors @ np.asarray(qvec, np.float32)
    return rows, keyword.bm25_all[rows], vec


def candidates(
    snap: Snapshot, bm25_all: np.ndarray, qvec: np.ndarray, pool: int, mask: np.ndarray | None
) -> np.ndarray:
    """Union of the top ``pool`` BM25 rows (score > 0) and top ``pool`` vector rows, within ``mask``."""
    positive = _top_keyword_rows(bm25_all, pool, mask)
    hits = snap.vector_index.search(qvec[None, :], pool, allowed=mask)
    vec_rows = hits.rows[0][hits.rows[0] >= 0]
    return np.union1d(positive, vec_rows).astype(np.int64)


@dataclass(frozen=True)
class Ranked:
    """One page of hits, every candidate row of the query (within the filters) and the BM25 score array."""

    hits: list[Hit]
    rows: np.ndarray
    bm25_all: np.ndarray
    # With ``defer_features``: the hits' ranker features, computed when called (by the impression log's
    # flusher, off the request path).
    later: Callable[[], list[dict[str, float]]] | None = None


def ranked_search(
    snap: Snapshot,
    query: str,
    qvec: np.ndarray,
    *,
    k: int,
    offset: int,
    mask: np.ndarray | None,
    pool: int,
    weight: float,
    fusion: Fusion,
    affinity: ShopperAffinity | None = None,
    personalize: float = 0.0,
    scorer: Callable[[np.ndarray], np.ndarray] | None = None,
    features: bool = False,
    rerank_top: int = 100,
    item_rates: ItemRates | None = None,
    defer_features: bool = False,
    keyword: KeywordPart | None = None,
    usual_price: float | None = None,
) -> Ranked:
    """``affinity`` scores the shopper's affinity to candidate rows (its parts are ranker features); with
    ``personalize`` p in (0, 1] the order is :func:`engine.recommend.personal.personalized` over the candidates
    (p = 0: off).

    ``scorer`` (a learned ranker: feature matrix -> scores) re-orders the best ``rerank_top`` candidates of
    that order; ``features``: attach each hit's ranker features (for the impression log). Both compute the
    features of those candidates with :func:`search_inputs` and :func:`engine.ranking.features.search_features`.
    ``item_rates(ids)`` gives the items' click rate, purchase rate, trending score and age in days for the features.
    ``defer_features`` (without a scorer): ``Ranked.later`` computes the hits' features when called instead.
    ``keyword``: :func:`keyword_part` of this query, ``mask`` and pool, when already computed.
    ``usual_price``: the shopper's (:func:`engine.ranking.features.usual_price`), for the price features."""
    pool = max(pool, offset + k)
    if keyword is None or keyword.pool != pool:
        keyword = keyword_part(snap, query, pool, mask)
    bm25_all = keyword.bm25_all
    rows, bm25, vec = scored_candidates(snap, keyword, qvec, mask)
    if len(rows) == 0:
        return Ranked([], rows, bm25_all)
    fused = fuse(bm25, vec, weight, fusion)
    personal = parts = None
    if affinity is not None and personalize > 0:
        parts = affinity.parts(rows)  # the affinity's parts, features of the ranker
        personal = affinity.score(parts)
        fused = personalized(fused, personal, personalize)
    order = np.lexsort((rows, -fused))
    X: dict[int, np.ndarray] = {}
    deferred = defer_features and scorer is None
    top = order[:rerank_top]  # the best candidates the features cover (the same for the deferred ones)
    title = snap.title_scores(qvec, rows[top]) if scorer is not None or features or deferred else None
    if scorer is not None or features:
        # Logging alone needs the shown items' features only (their text features cost most); a scorer, all.
        shown = None if scorer is not None else np.arange(len(top))[offset:offset + k]
        their_parts = None if parts is None else parts[top if shown is None else top[shown]]
        feats = search_features(search_inputs(snap, query, rows[top], bm25[top], vec[top], fused[top],
                                              None if personal is None else personal[top], item_rates, shown,
                                              title, usual_price=usual_price, parts=their_parts))
        if features:
            X = {int(i): feats[j] for j, i in enumerate(top if shown is None else top[shown])}
        if scorer is not None:
            learned = np.asarray(scorer(feats), np.float64)
            order = np.concatenate([top[np.lexsort((np.arange(len(top)), -learned))], order[rerank_top:]])
    later = None
    if deferred:  # no scorer: ``order`` and so ``top`` are as above
        shown_idx = np.arange(len(top))[offset:offset + k]
        # The shown items' statistics as they are now: read when the log computes the rest, they would hold
        # the shopper's own click on this list (the label).
        rates = None if item_rates is None else item_rates([snap.catalog.ids[int(r)] for r in rows[top][shown_idx]])
        later = SearchDeferred(snap, query, rows[top], bm25[top], vec[top], fused[top],
                               None if personal is None else personal[top], shown_idx, item_rates, title, rates,
                               usual_price, None if parts is None else parts[top[shown_idx]])
    return Ranked([
        _hit(snap, int(rows[i]), float(fused[i]), float(bm25[i]), float(vec[i]),
             None if personal is None else float(personal[i]), _named(X.get(int(i))) if features else None)
        for i in order[offset : offset + k]
    ], rows, bm25_all, later)


# ids -> their click rate, purchase rate, log1p(trending) and age in days (engine.ranking.features.item_age_days)
ItemRates = Callable[[list[str]], "tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]"]
Rates = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SearchDeferred:
    """The shown hits' ranker features of one search, computed when called: by the impression log's
    flusher in this process, or, from :meth:`spec`, by the impression writer process
    (:meth:`from_spec` there, on its own snapshot and item statistics)."""

    snap: Snapshot
    query: str
    rows: np.ndarray  # the ranking's best candidates, in its order (the list-relative features' list)
    bm25: np.ndarray
    vec: np.ndarray
    fused: np.ndarray
    personal: np.ndarray | None
    shown: np.ndarray  # indexes into ``rows``: the hits shown, in order
    item_rates: ItemRates | None = None
    title: np.ndarray | None = None  # the query's cosine to the rows' title vectors (None without them)
    # The shown items' click rate, purchase rate, trending and age when the list was served (None: read when
    # called, from ``item_rates``)
    rates: Rates | None = None
    usual_price: float | None = None  # the shopper's usual price when the list was served
    parts: np.ndarray | None = None  # the shown items' ShopperAffinity.parts when the list was served

    def __call__(self) -> list[dict[str, float]]:
        feats = search_features(search_inputs(self.snap, self.query, self.rows, self.bm25, self.vec, self.fused,
                                              self.personal, self.item_rates, self.shown, self.title, self.rates,
                                              self.usual_price, self.parts))
        return [dict(zip(SEARCH_FEATURES, x.tolist())) for x in feats]

    def spec(self) -> dict[str, Any]:
        """What another process needs to compute the same features (JSON; item ids, not rows)."""
        ids = self.snap.catalog.ids
        return {"kind": "search", "query": self.query,
                "ids": [ids[int(r)] for r in self.rows], "bm25": pack_floats(self.bm25), "vec": pack_floats(self.vec),
                "fused": pack_floats(self.fused), "personal": None if self.personal is None else pack_floats(self.personal),
                "shown": [int(i) for i in self.shown], "title": None if self.title is None else pack_floats(self.title),
                "rates": None if self.rates is None else [pack_floats(x) for x in self.rates],
                "usual_price": self.usual_price,
                "parts": None if self.parts is None else pack_floats(self.parts.ravel())}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], snap: Snapshot, item_rates: ItemRates | None) -> "SearchDeferred":
        """The deferred features of :meth:`spec` on ``snap`` (NotFound: an item no longer in the catalog)."""
        rows = np.array([snap.catalog.row(i) for i in spec["ids"]], np.int64)
        personal, title, rates, parts = spec.get("personal"), spec.get("title"), spec.get("rates"), spec.get("parts")
        got: Rates | None = None
        if rates is not None:  # a spec from before the age was logged has three: the age is unknown (NaN)
            r = [unpack_floats(x) for x in rates] + [np.full(len(spec["shown"]), np.nan)]
            got = (r[0], r[1], r[2], r[3])
        return cls(snap, str(spec["query"]), rows, unpack_floats(spec["bm25"]), unpack_floats(spec["vec"]),
                   unpack_floats(spec["fused"]), None if personal is None else unpack_floats(personal),
                   np.asarray(spec["shown"], np.int64), item_rates, None if title is None else unpack_floats(title),
                   got,
                   None if spec.get("usual_price") is None else float(spec["usual_price"]),
                   None if parts is None else unpack_floats(parts).reshape(len(spec["shown"]), len(PARTS)))


def search_inputs(snap: Snapshot, query: str, rows: np.ndarray, bm25: np.ndarray, vec: np.ndarray, fused: np.ndarray,
                  personal: np.ndarray | None, item_rates: ItemRates | None = None,
                  subset: np.ndarray | None = None, title: np.ndarray | None = None,
                  rates: Rates | None = None,
                  usual_price: float | None = None, parts: np.ndarray | None = None) -> SearchCandidates:
    """What :func:`engine.ranking.features.search_features` needs for these candidate ``rows`` of ``query``
    (for the ``subset`` of them only, when given: see ``SearchCandidates.subset``). ``title``: the query's
    cosine to every candidate's title vector (:meth:`Snapshot.title_scores`; None without them). ``rates``:
    the (subset's) items' click rate, purchase rate, trending and age, taken earlier (else from ``item_rates``).
    ``usual_price``: the shopper's usual price (None: no shopper, and the price features stay 0). ``parts``:
    the (subset's) :meth:`ShopperAffinity.parts` (None: no shopper, and those features stay 0)."""
    ft = FieldTokens.of(snap)
    if subset is not None:
        rows = rows[subset]
        personal = None if personal is None else personal[subset]
    ctr = conversion = popular = age_days = None
    if rates is not None:
        ctr, conversion, popular, age_days = rates
    elif item_rates is not None:
        ids = snap.catalog.ids
        ctr, conversion, popular, age_days = item_rates([ids[int(r)] for r in rows])
    texts, vocab = ft.texts(rows.tolist())
    return SearchCandidates(
        query_tokens=query_terms(query), query_text=norm(query), bm25=np.asarray(bm25, np.float64),
        vector=np.asarray(vec, np.float64), fused=np.asarray(fused, np.float64), texts=texts, vocab=vocab,
        stats=ft.stats, personal=None if personal is None else np.asarray(personal, np.float64),
        ctr=ctr, conversion=conversion, popular=popular, age_days=age_days, subset=subset, affinity_parts=parts,
        prices=None if usual_price is None else np.asarray(snap.price[rows], np.float64), usual_price=usual_price,
        title_vector=None if title is None else np.asarray(title, np.float64))


def _named(x: np.ndarray | None) -> dict[str, float] | None:
    return None if x is None else dict(zip(SEARCH_FEATURES, x.tolist()))


MAX_FACET_CATEGORIES = 20


def facets(
    snap: Snapshot,
    bm25_all: np.ndarray,
    qvec: np.ndarray,
    pool: int,
    rows: np.ndarray,
    filters: Filters,
) -> dict[str, Any]:
    """``{"category": [{"path", "name", "count"}], "price": {"min", "max"}}`` (see the module docstring).

    ``rows`` are the search's candidates under the given filters (from :func:`ranked_search`, with the
    same ``pool``); ``bm25_all`` and ``qvec`` are the query's, reused for the pass without the category
    and price filters when one of them is set."""
    if filters.narrows_category_or_price:
        rows = candidates(snap, bm25_all, qvec, pool, snap.filter_mask(filters.stock_only()))
    prices = snap.price[rows]  # float32: find the rows, report their catalog (float64) prices
    priced = ~np.isnan(prices)
    price: dict[str, float | None] = {"min": None, "max": None}
    if priced.any():
        lo, hi = prices[priced].min(), prices[priced].max()
        price = {"min": min(_prices(snap, rows[prices == lo])), "max": max(_prices(snap, rows[prices == hi]))}
    counted = rows
    if filters.min_price is not None or filters.max_price is not None:  # as Snapshot.filter_mask: no price, no match
        within = priced.copy()
        if filters.min_price is not None:
            within &= prices >= filters.min_price
        if filters.max_price is not None:
            within &= prices <= filters.max_price
        counted = rows[within]
    # Count category codes, then name them in the order each first appears among the rows (what a Counter
    # over the rows' paths would give; it decides which spelling of a path differing only in case is shown).
    codes, first, counts = np.unique(snap.category_code[counted], return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    paths = Counter({snap.category_paths[int(codes[i])]: int(counts[i]) for i in order})
    return {"category": _category_facet(paths, filters.category), "price": price}


def _prices(snap: Snapshot, rows: np.ndarray) -> list[float]:
    return [p for p in (snap.catalog[int(r)].price for r in rows) if p is not None]


def _category_facet(paths: Counter[tuple[str, ...]], selected: str | None) -> list[dict[str, Any]]:
    """Facet entries from the candidates' category paths (with their multiplicities); see the module docstring."""
    lower = {path: tuple(s.lower() for s in path) for path in paths if path}
    if selected is not None:
        within = tuple(category_key(selected).split(CATEGORY_SEP))
        depth = len(within) + 1
        chosen = [path for path, low in lower.items() if low[: depth - 1] == within]
    else:
        chosen = list(lower)
        if not chosen:
            return []
        first = lower[chosen[0]]
        common = min(len(low) for low in lower.values())
        for low in lower.values():
            while common and low[:common] != first[:common]:
                common -= 1
        depth = common + 1 if any(len(low) > common for low in lower.values()) else common
    counts: dict[tuple[str, ...], list[Any]] = {}  # lower-cased path -> [path as first seen, count]
    for path in chosen:
        if len(path) >= depth:
            slot = counts.setdefault(lower[path][:depth], [path[:depth], 0])
            slot[1] += paths[path]
    ranked = sorted(counts.values(), key=lambda e: (-e[1], CATEGORY_SEP.join(e[0])))[:MAX_FACET_CATEGORIES]
    return [{"path": CATEGORY_SEP.join(path), "name": path[-1], "count": n} for path, n in ranked]


def _hit(snap: Snapshot, row: int, score: float, bm25: float, vector: float, personal: float | None = None,
         features: dict[str, float] | None = None) -> Hit:
    p = snap.catalog[row]
    return Hit(p.id, p.title, p.category_path, p.brand, p.price, p.in_stock, score, bm25, vector, personal, features)


def similar_items(snap: Snapshot, row: int, *, k: int, same_category: bool) -> list[Hit]:
    """Nearest neighbours of ``row``'s vector, without itself and items sharing its exact title
    (or an earlier neighbour's exact title)."""
    mask = None
    if same_category and snap.catalog[row].category:
        mask = snap.filter_mask(Filters(category=snap.catalog[row].category_path))
    qvec = np.asarray(snap.vectors[row], np.float32)
    seen = {snap.title_keys[row]}
    out: list[Hit] = []
    want = k + 10
    while True:
        hits = snap.vector_index.search(qvec[None, :], want, allowed=mask)
        out, seen = [], {snap.title_keys[row]}
        for r, s in zip(hits.rows[0], hits.scores[0]):
            if r < 0 or r == row or snap.title_keys[r] in seen:
                continue
            seen.add(snap.title_keys[r])
            out.append(_hit(snap, int(r), float(s), 0.0, float(s)))
            if len(out) == k:
                return out
        if want >= len(snap) or hits.rows[0][-1] < 0:
            return out
        want = min(want * 4, len(snap))
