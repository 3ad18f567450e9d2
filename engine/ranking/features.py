"""The learned ranker's features: one function per surface, the same at training and at serving.

They live in this low layer because the serving paths that gather their inputs (``engine.recommend``,
``engine.search``) sit below ``engine.learn``, which trains and serves the models over them.

Both surfaces re-rank a candidate list (the blend's best ``N`` for recommendations, the fused pool for
search). The caller gathers per-candidate inputs (raw source scores, vectors, categories, prices, item
statistics) into a :class:`RecCandidates` or :class:`SearchCandidates`, and :func:`recommend_features` /
:func:`search_features` turn them into a ``(candidates, features)`` float32 matrix whose columns are
``RECOMMEND_FEATURES`` / ``SEARCH_FEATURES``. The serving paths (``engine.recommend.compose``, search), the offline
bootstrap (``engine.evaluation.ranker_eval``) and the impression log all go through these two functions, so a
model never sees a feature computed another way than the one it was trained on.

Position (de-biasing). ``position`` is a feature: ``log2(1 + position) - 1`` for logged rows (0 at the
first slot), 0 for offline rows (no display position) and 0 at serving (every candidate scored as if shown
first). The model thus learns the position effect from logged lists without ranking by it.
"""
from __future__ import annotations

import base64
import functools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from engine.catalog import CATEGORY_SEP
from engine.ranking.scores import zscore

RECOMMEND_FEATURES = (
    "content", "cooccurrence", "popular",  # each source's raw score (log1p for the counts)
    "z_content", "z_cooccurrence", "z_popular",  # z-scored over the eligible rows, as the blend sees them
    "blend", "blend_rank",  # the blend's score and log2(1 + rank) among the candidates
    "sim_last", "sim_max_recent", "sim_mean",  # cosine to the last item, best of the last 5, mean over history
    "cooc_last", "cooc_prev",  # co-occurrence with the last item alone, and with the one before (log1p)
    "follows_last",  # log1p(how often a shopper's next item after the last item was this one)
    "same_category_last", "same_parent_last", "category_share",  # leaf / parent category equal to the last
    # item's; share of the history in the leaf
    "category_next",  # log P(next item's leaf | last item's leaf), from the shoppers' consecutive items
    "same_brand_last", "brand_share",  # brand equal to the last item's; share of the history with it
    "price_ratio", "price_known",  # log(price / the shopper's median price); 1 when both are known
    "history_len",  # log1p(items in the history)
    "item_ctr", "item_conversion",  # smoothed click and purchase rates of the item (event log)
    "seq", "seq_z",  # the sequence model's next-item score (engine.learn.sequence; 0 without one), and its
    # z-score within the candidates
    "position",
)

SEARCH_FEATURES = (
    "bm25", "vector", "fused", "fused_rank",  # retrieval scores and log2(1 + rank) in the fused order
    "bm25_z", "vector_z", "bm25_rank", "vector_rank",  # z-score and log2(1 + rank) within the candidates
    "bm25_title", "bm25_description", "bm25_brand", "bm25_category",  # per-field BM25 (global idf)
    "cover_title", "cover_all",  # idf share of the query's terms found in the title / anywhere
    "bigrams_title", "missing_title",  # share of the query's adjacent term pairs adjacent in the title; terms absent
    "title_vector", "title_vector_z",  # cosine of the query to the title embedded alone, and its z-score within
    # the candidates (0 for a version without title vectors)
    "title_trigrams",  # Jaccard of the query's and the title's character trigrams (spelling variants, plurals)
    "exact_title", "phrase_in_title", "brand_in_query", "category_in_query",
    "query_terms", "title_terms",  # log1p of the token counts
    "personal",  # the shopper's affinity (0 without a shopper)
    "price_ratio", "price_known",
    "item_ctr", "item_conversion", "popular",
    "position",
)

# Item rates: (events + prior) / (exposure + PRIOR_N), so that an item seen once is not 100%.
PRIOR_N = 20.0
BM25_K1 = 1.2
BM25_B = 0.75


def position_feature(position: int | None) -> float:
    """``log2(1 + position) - 1`` for a 1-based display position; 0 when there is none (offline, serving)."""
    return 0.0 if position is None or position < 1 else math.log2(1.0 + position) - 1.0


def brand_key(brand: str | None) -> str:
    """A brand as compared between items: lower case, single spaces ("" unknown)."""
    return " ".join((brand or "").lower().split())


def parent_category(path: str) -> str:
    """The category path without its leaf ("" for a top-level or unknown category)."""
    head, sep, _ = path.rpartition(CATEGORY_SEP)
    return head if sep else ""


def item_rates(views: np.ndarray, clicks: np.ndarray, purchases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed click rate ``(clicks + 1) / (views + clicks + PRIOR_N)`` and purchase rate
    ``(purchases + 0.2) / (views + clicks + PRIOR_N)`` from an item's event counts."""
    exposure = np.asarray(views, np.float64) + np.asarray(clicks, np.float64) + PRIOR_N
    return (np.asarray(clicks) + 1.0) / exposure, (np.asarray(purchases) + 0.2) / exposure


@dataclass
class RecCandidates:
    """Per-candidate inputs of one recommendation list (``m`` candidates, ``h`` history items)."""

    raw: dict[str, np.ndarray]  # source -> (m,) raw score: content, cooccurrence, popular
    z: dict[str, np.ndarray]  # source -> (m,) z-score over the eligible rows
    blend: np.ndarray  # (m,) the blend's score
    vectors: np.ndarray  # (m, d) unit item vectors
    categories: Sequence[str]  # (m,) category path ("" unknown)
    brands: Sequence[str]  # (m,) normalized brand ("" unknown)
    prices: np.ndarray  # (m,) NaN unknown
    cooc_last: np.ndarray  # (m,) co-occurrence with the last history item alone
    cooc_prev: np.ndarray  # (m,) ... with the history item before it (zeros without one)
    follows_last: np.ndarray  # (m,) times a shopper's next item after the last history item was this one
    category_next: np.ndarray  # (m,) log P(candidate's leaf | last item's leaf)
    ctr: np.ndarray  # (m,) item_rates
    conversion: np.ndarray
    hist_vectors: np.ndarray  # (h, d), oldest first
    hist_categories: Sequence[str]
    hist_brands: Sequence[str]
    hist_prices: np.ndarray  # (h,)
    positions: Sequence[int | None] | None = None  # display positions (logged rows only)
    seq: np.ndarray | None = None  # (m,) the sequence model's next-item scores; None: no sequence model


def recommend_features(c: RecCandidates) -> np.ndarray:
    """``(m, len(RECOMMEND_FEATURES))`` float32 for one shopper's candidates (columns in that order)."""
    m = len(c.blend)
    out = np.zeros((m, len(RECOMMEND_FEATURES)), np.float64)
    col = {name: i for i, name in enumerate(RECOMMEND_FEATURES)}
    out[:, col["content"]] = c.raw["content"]
    out[:, col["cooccurrence"]] = np.log1p(np.maximum(c.raw["cooccurrence"], 0))
    out[:, col["popular"]] = np.log1p(np.maximum(c.raw["popular"], 0))
    for s in ("content", "cooccurrence", "popular"):
        out[:, col[f"z_{s}"]] = c.z[s]
    out[:, col["blend"]] = c.blend
    rank = np.empty(m, np.float64)
    rank[np.lexsort((np.arange(m), -np.asarray(c.blend, np.float64)))] = np.arange(1, m + 1)
    out[:, col["blend_rank"]] = np.log2(1.0 + rank)
    h = len(c.hist_vectors)
    out[:, col["history_len"]] = math.log1p(h)
    if h:
        sims = np.asarray(c.vectors, np.float32) @ np.asarray(c.hist_vectors, np.float32).T  # (m, h)
        out[:, col["sim_last"]] = sims[:, -1]
        out[:, col["sim_max_recent"]] = sims[:, -5:].max(axis=1)
        out[:, col["sim_mean"]] = sims.mean(axis=1)
        last = c.hist_categories[-1]
        cats = np.asarray(c.categories, object)
        if last:
            out[:, col["same_category_last"]] = cats == last
            parent = parent_category(last)
            out[:, col["same_parent_last"]] = [bool(parent) and parent_category(x) == parent for x in c.categories]
        counts: dict[str, int] = {}
        for x in c.hist_categories:
            if x:
                counts[x] = counts.get(x, 0) + 1
        out[:, col["category_share"]] = [counts.get(x, 0) / h for x in c.categories]
        last_brand = c.hist_brands[-1]
        if last_brand:
            out[:, col["same_brand_last"]] = [b == last_brand for b in c.brands]
        brand_counts: dict[str, int] = {}
        for x in c.hist_brands:
            if x:
                brand_counts[x] = brand_counts.get(x, 0) + 1
        out[:, col["brand_share"]] = [brand_counts.get(b, 0) / h if b else 0.0 for b in c.brands]
        known = np.asarray(c.hist_prices, np.float64)
        known = known[np.isfinite(known) & (known > 0)]
        if len(known):
            p = np.asarray(c.prices, np.float64)
            ok = np.isfinite(p) & (p > 0)
            out[ok, col["price_ratio"]] = np.log(p[ok] / float(np.median(known)))
            out[ok, col["price_known"]] = 1.0
    out[:, col["cooc_last"]] = np.log1p(np.maximum(c.cooc_last, 0))
    out[:, col["cooc_prev"]] = np.log1p(np.maximum(c.cooc_prev, 0))
    out[:, col["follows_last"]] = np.log1p(np.maximum(c.follows_last, 0))
    out[:, col["category_next"]] = c.category_next
    out[:, col["item_ctr"]] = c.ctr
    out[:, col["item_conversion"]] = c.conversion
    if c.seq is not None and m:
        seq = np.asarray(c.seq, np.float64)
        out[:, col["seq"]] = seq
        out[:, col["seq_z"]] = (seq - seq.mean()) / seq.std() if seq.std() > 1e-12 else 0.0
    if c.positions is not None:
        out[:, col["position"]] = [position_feature(p) for p in c.positions]
    return out.astype(np.float32)


@dataclass
class FieldStats:
    """Global statistics for per-field BM25: the keyword index's idf per term, average field lengths."""

    idf: dict[str, float]
    avg_len: dict[str, float]  # field -> mean token count over the catalog


@dataclass
class SearchCandidates:
    """Per-candidate inputs of one search list (``m`` candidates, or the ``subset`` of them) and its query."""

    query_tokens: Sequence[str]  # the keyword index's tokens of the query (stemmed, stop words out)
    query_text: str  # normalized (lower case, single spaces)
    bm25: np.ndarray
    vector: np.ndarray
    fused: np.ndarray
    fields: Mapping[str, Sequence[Sequence[str]]]  # title/description/brand/category -> per candidate tokens
    titles: Sequence[str]  # normalized titles
    brands: Sequence[str]  # normalized brands ("" unknown)
    category_leaves: Sequence[str]  # normalized leaf categories
    stats: FieldStats
    personal: np.ndarray | None = None  # (m,) affinity, None without a shopper
    prices: np.ndarray | None = None
    usual_price: float | None = None  # the shopper's median price
    ctr: np.ndarray | None = None
    conversion: np.ndarray | None = None
    popular: np.ndarray | None = None
    positions: Sequence[int | None] | None = None
    # (m,) cosine of the query to each candidate's title vector, over the whole list like ``bm25``; None: the
    # version has no title vectors
    title_vector: np.ndarray | None = None
    # Which candidates to compute rows for (indices into bm25 / vector / fused, which cover the whole list
    # for the list-relative features); every other per-candidate field then holds those candidates only.
    subset: np.ndarray | None = None


SEARCH_FIELDS = ("title", "description", "brand", "category")


def char_trigrams(text: str) -> set[str]:
    """The character trigrams of `` text `` (normalized text, padded with one space each side)."""
    padded = f" {text} "
    return {padded[i:i + 3] for i in range(len(padded) - 2)} if text else set()


@functools.lru_cache(maxsize=65536)
def trigram_count(text: str) -> int:
    """``len(char_trigrams(text))``, cached: the candidates of a shop's searches repeat."""
    return len(char_trigrams(text))


def field_bm25(query: Sequence[str], docs: Sequence[Sequence[str]], idf: dict[str, float], avg_len: float) -> np.ndarray:
    """BM25 (k1 1.2, b 0.75) of each token list in ``docs`` for the ``query`` tokens, with global ``idf``."""
    out = np.zeros(len(docs), np.float64)
    terms = [t for t in dict.fromkeys(query) if t in idf]
    if not terms:
        return out
    avg = max(avg_len, 1e-9)
    for i, doc in enumerate(docs):
        if not doc:
            continue
        tf: dict[str, int] = {}
        for t in doc:
            tf[t] = tf.get(t, 0) + 1
        norm = BM25_K1 * (1 - BM25_B + BM25_B * len(doc) / avg)
        out[i] = sum(idf[t] * tf[t] * (BM25_K1 + 1) / (tf[t] + norm) for t in terms if t in tf)
    return out


def search_features(c: SearchCandidates) -> np.ndarray:
    """``(rows, len(SEARCH_FEATURES))`` float32 for one query's candidates (columns in that order): every
    candidate, or the ``c.subset`` ones (their rows, in that order; list-relative features are still over
    the whole candidate list)."""
    m = len(c.fused)
    sel = np.arange(m) if c.subset is None else np.asarray(c.subset, np.int64)
    out = np.zeros((len(sel), len(SEARCH_FEATURES)), np.float64)
    col = {name: i for i, name in enumerate(SEARCH_FEATURES)}
    out[:, col["bm25"]] = np.asarray(c.bm25, np.float64)[sel]
    out[:, col["vector"]] = np.asarray(c.vector, np.float64)[sel]
    out[:, col["fused"]] = np.asarray(c.fused, np.float64)[sel]
    rank = np.empty(m, np.float64)
    rank[np.lexsort((np.arange(m), -np.asarray(c.fused, np.float64)))] = np.arange(1, m + 1)
    out[:, col["fused_rank"]] = np.log2(1.0 + rank)[sel]
    for name, values in (("bm25", c.bm25), ("vector", c.vector)):
        v = np.asarray(values, np.float64)
        out[:, col[f"{name}_z"]] = zscore(v)[sel]
        r = np.empty(m, np.float64)
        r[np.lexsort((np.arange(m), -v))] = np.arange(1, m + 1)
        out[:, col[f"{name}_rank"]] = np.log2(1.0 + r)[sel]
    if c.title_vector is not None:
        tv = np.asarray(c.title_vector, np.float64)
        out[:, col["title_vector"]] = tv[sel]
        out[:, col["title_vector_z"]] = zscore(tv)[sel]
    m = len(sel)  # the per-item features below: the selected candidates only
    idf = c.stats.idf
    terms = [t for t in dict.fromkeys(c.query_tokens)]
    total_idf = sum(idf.get(t, 0.0) for t in terms)
    for f in SEARCH_FIELDS:
        out[:, col[f"bm25_{f}"]] = field_bm25(terms, c.fields[f], idf, c.stats.avg_len.get(f, 1.0))
    if total_idf > 0:
        for i in range(m):
            in_title = set(c.fields["title"][i])
            anywhere = in_title.union(*(set(c.fields[f][i]) for f in SEARCH_FIELDS if f != "title"))
            out[i, col["cover_title"]] = sum(idf.get(t, 0.0) for t in terms if t in in_title) / total_idf
            out[i, col["cover_all"]] = sum(idf.get(t, 0.0) for t in terms if t in anywhere) / total_idf
    qb = set(zip(c.query_tokens[:-1], c.query_tokens[1:]))
    for i in range(m):
        title_tokens = list(c.fields["title"][i])
        present = set(title_tokens)
        out[i, col["missing_title"]] = sum(1 for t in terms if t not in present)
        if qb:
            tb = set(zip(title_tokens[:-1], title_tokens[1:]))
            out[i, col["bigrams_title"]] = len(qb & tb) / len(qb)
    q = c.query_text
    padded = f" {q} "
    q_tri = char_trigrams(q)
    for i in range(m):
        title = c.titles[i]
        padded_title = f" {title} "
        if q_tri:  # |Q & T| / |Q | T|: a 3-character substring of the padded title is one of its trigrams
            both = sum(1 for g in q_tri if g in padded_title)
            out[i, col["title_trigrams"]] = both / (len(q_tri) + trigram_count(title) - both)
        out[i, col["exact_title"]] = float(bool(q) and title == q)
        out[i, col["phrase_in_title"]] = float(bool(q) and padded in padded_title)
        brand = c.brands[i]
        out[i, col["brand_in_query"]] = float(bool(brand) and f" {brand} " in padded)
        leaf = c.category_leaves[i]
        out[i, col["category_in_query"]] = float(bool(leaf) and f" {leaf} " in padded)
        out[i, col["title_terms"]] = math.log1p(len(c.fields["title"][i]))
    out[:, col["query_terms"]] = math.log1p(len(terms))
    if c.personal is not None:
        out[:, col["personal"]] = c.personal
    if c.prices is not None and c.usual_price is not None and c.usual_price > 0:
        p = np.asarray(c.prices, np.float64)
        ok = np.isfinite(p) & (p > 0)
        out[ok, col["price_ratio"]] = np.log(p[ok] / c.usual_price)
        out[ok, col["price_known"]] = 1.0
    for name, given in (("item_ctr", c.ctr), ("item_conversion", c.conversion), ("popular", c.popular)):
        if given is not None:
            out[:, col[name]] = given
    if c.positions is not None:
        out[:, col["position"]] = [position_feature(p) for p in c.positions]
    return out.astype(np.float32)


def pack_floats(x: np.ndarray | Sequence[float]) -> str:
    """Float64 values as base64 text: exact, and far cheaper to write than a JSON list of numbers (the
    impression log's deferred-feature specs carry a few hundred per list)."""
    return base64.b64encode(np.ascontiguousarray(x, np.float64).tobytes()).decode("ascii")


def unpack_floats(text: str) -> np.ndarray:
    """:func:`pack_floats` back; ValueError on anything else."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as e:
        raise ValueError(f"not packed floats: {e}") from e
    if len(raw) % 8:
        raise ValueError("not packed floats: the length is not a multiple of 8 bytes")
    return np.frombuffer(raw, np.float64).copy()
