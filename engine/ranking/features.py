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
import math
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

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
    "item_age",  # log1p(whole days since the item was listed, or else first seen; 0 unknown)
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
    "profile_sim", "cooc_recent", "category_share",  # its parts: the interest profile's score, log1p(co-occurrence
    # with the recent items), the history's share in the item's leaf category (0 without a shopper)
    "price_ratio", "price_known",
    "item_ctr", "item_conversion", "popular",
    "item_age",
    "position",
)

# Item rates: (events + prior) / (exposure + PRIOR_N), so that an item seen once is not 100%.
PRIOR_N = 20.0
BM25_K1 = 1.2
BM25_B = 0.75


DAY_S = 86400.0


def item_age_days(created: np.ndarray, first_seen: np.ndarray, now: float) -> np.ndarray:
    """Whole days since each item was listed (``created``, the catalog's ``created_at`` as epoch seconds) or,
    where the catalog has no date, since its first event (``first_seen``); NaN where neither is known. A date
    in the future counts as 0 days."""
    created = np.asarray(created, np.float64)
    since = np.where(np.isfinite(created), created, np.asarray(first_seen, np.float64))
    with np.errstate(invalid="ignore"):
        return np.floor(np.maximum(now - since, 0.0) / DAY_S)


def _age_column(out: np.ndarray, col: dict[str, int], age_days: np.ndarray | None) -> None:
    """``item_age`` = log1p(days), 0 where unknown (NaN) as for an item listed today: an item without a date
    and without any event is most likely new. (A separate "age known" flag was tried: on logged lists it
    stands for "has had an event", which a model over-learns; see ``tests/test_ranker.py``.)"""
    if age_days is None:
        return
    days = np.asarray(age_days, np.float64)
    ok = np.isfinite(days)
    out[ok, col["item_age"]] = np.log1p(np.maximum(days[ok], 0.0))


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
    age_days: np.ndarray | None = None  # (m,) item_age_days (NaN unknown); None: no ages (offline rows)


def usual_price(hist_prices: np.ndarray | Sequence[float]) -> float | None:
    """The shopper's usual price: the median of the known (finite, positive) prices of their history items
    (one per event), or None without any. ``price_ratio`` is a candidate's log price over it, on both
    surfaces."""
    known = np.asarray(hist_prices, np.float64)
    known = known[np.isfinite(known) & (known > 0)]
    return float(np.median(known)) if len(known) else None


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
        usual = usual_price(c.hist_prices)
        if usual is not None:
            p = np.asarray(c.prices, np.float64)
            ok = np.isfinite(p) & (p > 0)
            out[ok, col["price_ratio"]] = np.log(p[ok] / usual)
            out[ok, col["price_known"]] = 1.0
    out[:, col["cooc_last"]] = np.log1p(np.maximum(c.cooc_last, 0))
    out[:, col["cooc_prev"]] = np.log1p(np.maximum(c.cooc_prev, 0))
    out[:, col["follows_last"]] = np.log1p(np.maximum(c.follows_last, 0))
    out[:, col["category_next"]] = c.category_next
    out[:, col["item_ctr"]] = c.ctr
    out[:, col["item_conversion"]] = c.conversion
    _age_column(out, col, c.age_days)
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
    texts: Sequence["RowText"]  # per candidate: its text, prepared once per item (RowText.of)
    vocab: "TextVocab"  # the ids of the texts' terms and trigrams
    stats: FieldStats
    personal: np.ndarray | None = None  # (m,) affinity, None without a shopper
    # (subset's m, 3): the affinity's parts (engine.recommend.personal.PARTS), None without a shopper
    affinity_parts: np.ndarray | None = None
    prices: np.ndarray | None = None
    usual_price: float | None = None  # the shopper's usual price (:func:`usual_price`); None without a shopper
    ctr: np.ndarray | None = None
    conversion: np.ndarray | None = None
    popular: np.ndarray | None = None
    age_days: np.ndarray | None = None  # item_age_days (NaN unknown); None: no ages (offline rows)
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


# A term's count in each of the SEARCH_FIELDS, packed into one int, 15 bits each (capped at 32,767; int64), so that a
# search gathers its terms' counts over the candidates as one integer array.
COUNT_BITS = 15
COUNT_MAX = (1 << COUNT_BITS) - 1
_SHIFTS = np.arange(4, dtype=np.int64) * COUNT_BITS


def pack_counts(counts: Sequence[int]) -> int:
    """Four counts (one per field) as one int (see COUNT_BITS)."""
    return sum(min(int(c), COUNT_MAX) << (COUNT_BITS * j) for j, c in enumerate(counts))


def unpack_counts(packed: np.ndarray) -> np.ndarray:
    """:func:`pack_counts` back, over an int64 array: a last axis of 4 is added."""
    return (np.asarray(packed, np.int64)[..., None] >> _SHIFTS) & COUNT_MAX


class TextVocab:
    """Integer ids (below 2**30) for the terms and title trigrams of one version's prepared items
    (:class:`RowText`), so that a search matches its query against its candidates as integer arrays. Items'
    strings get ids as they are prepared; a query's string that no prepared item has gets none (-1): it
    cannot match."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, texts: Sequence[str]) -> list[int]:
        """The ids of ``texts``, new ones given as needed."""
        with self._lock:
            ids = self._ids
            if len(ids) + len(texts) >= 1 << 30:
                raise OverflowError("too many distinct terms and trigrams for one vocabulary")
            return [ids.setdefault(t, len(ids)) for t in texts]

    def get(self, text: str) -> int:
        return self._ids.get(text, -1)


def term_key(tid: int) -> int:
    """A term's key among an item's text keys (even; a trigram's is odd)."""
    return 2 * tid


def trigram_key(tid: int) -> int:
    return 2 * tid + 1


def bigram_key(a: int, b: int) -> int:
    """A pair of adjacent term ids."""
    return (a << 32) | b


@dataclass(frozen=True, slots=True)
class RowText:
    """One item's text as :func:`search_features` reads it, prepared once per item and version
    (``engine.ranking.fields`` keeps them), so that a search computes only what depends on its query."""

    keys: np.ndarray  # int64, distinct: the term_key of each term of its fields, then the trigram_key of each
    # character trigram of its normalized title
    counts: np.ndarray  # int64, per term (the first keys): its count in each of SEARCH_FIELDS (pack_counts)
    bigrams: np.ndarray  # int64, distinct: the bigram_key of each adjacent term pair of its title
    lens: int  # the token count of each of SEARCH_FIELDS (pack_counts)
    trigrams: int  # how many distinct character trigrams its title has
    padded_title: str  # the normalized title with one space each side
    brand: str  # brand_key ("" unknown)
    leaf: str  # the normalized leaf category ("" unknown)

    @classmethod
    def of(cls, tokens: Sequence[Sequence[str]], title: str, brand: str, leaf: str, vocab: TextVocab) -> "RowText":
        """From the per-field tokens (in SEARCH_FIELDS order) and the normalized title, brand and leaf."""
        tf: dict[str, int] = {}
        for j, field in enumerate(tokens):
            if len(field) > COUNT_MAX:  # counts could overflow into the next field's bits: count, then cap
                for t, n in Counter(field).items():
                    tf[t] = tf.get(t, 0) | (min(n, COUNT_MAX) << (COUNT_BITS * j))
                continue
            one = 1 << (COUNT_BITS * j)
            for t in field:
                tf[t] = tf.get(t, 0) + one
        term_ids = vocab.add(list(tf))
        id_of = dict(zip(tf, term_ids))
        title_tokens = list(tokens[0])
        pairs = {bigram_key(id_of[a], id_of[b]) for a, b in zip(title_tokens[:-1], title_tokens[1:])}
        trigrams = [trigram_key(t) for t in vocab.add(list(char_trigrams(title)))]
        keys = np.array([term_key(t) for t in term_ids] + trigrams, np.int64)
        return cls(keys, np.fromiter(tf.values(), np.int64, len(tf)), np.fromiter(pairs, np.int64, len(pairs)),
                   pack_counts([len(f) for f in tokens]), len(trigrams), f" {title} ", brand, leaf)


def _matches(texts: Sequence[RowText], vocab: TextVocab, terms: Sequence[str], q_tri: set[str],
             qb: set[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The query matched against every candidate's keys at once: each query term's packed counts in each
    candidate ``(m, len(terms))``, and per candidate the character trigrams and the adjacent term pairs it
    shares with the query."""
    m, k = len(texts), len(terms)
    wanted: dict[int, int] = {}  # query key -> the query term's column (terms); -1 (trigrams)
    for j, t in enumerate(terms):
        if (tid := vocab.get(t)) >= 0:
            wanted[term_key(tid)] = j
    for g in q_tri:
        if (tid := vocab.get(g)) >= 0:
            wanted[trigram_key(tid)] = -1
    pair_keys = [bigram_key(ia, ib) for ia, ib in ((vocab.get(a), vocab.get(b)) for a, b in qb) if ia >= 0 and ib >= 0]
    packed = np.zeros((m, k), np.int64)  # each query term's packed counts in each candidate
    both = np.zeros(m, np.float64)  # trigrams in common
    pairs = np.zeros(m, np.float64)  # adjacent pairs in common
    if wanted and m:
        qkeys = np.array(sorted(wanted), np.int64)
        lo, hi = int(qkeys[0]), int(qkeys[-1])
        table = np.zeros(hi - lo + 1, bool)  # the query's keys, over the span they cover
        table[qkeys - lo] = True
        sizes = np.fromiter((len(r.keys) for r in texts), np.int64, m)
        flat = np.concatenate([r.keys for r in texts])
        hit = np.flatnonzero((flat >= lo) & (flat <= hi))
        hit = hit[table[flat[hit] - lo]]
        owner = np.repeat(np.arange(m), sizes)[hit]
        key = flat[hit]
        term = (key & 1) == 0
        both = np.bincount(owner[~term], minlength=m).astype(np.float64)
        if term.any():  # terms come first in each candidate's keys: a term's offset there is its count's
            n_counts = np.fromiter((len(r.counts) for r in texts), np.int64, m)
            counts = np.concatenate([r.counts for r in texts])
            who = owner[term]
            at = hit[term] - (np.cumsum(sizes) - sizes)[who] + (np.cumsum(n_counts) - n_counts)[who]
            packed[who, [wanted[x] for x in key[term].tolist()]] = counts[at]
    if pair_keys and m:
        sizes = np.fromiter((len(r.bigrams) for r in texts), np.int64, m)
        flat = np.concatenate([r.bigrams for r in texts])
        if len(flat):
            owner = np.repeat(np.arange(m), sizes)
            pairs = np.bincount(owner[np.isin(flat, pair_keys)], minlength=m).astype(np.float64)
    return packed, both, pairs


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
    # The per-item features below: the selected candidates only. Each candidate's prepared text keys are
    # matched against the query's (its terms, character trigrams and adjacent term pairs) in one pass.
    texts = c.texts
    m = len(sel)
    idf = c.stats.idf
    terms = list(dict.fromkeys(c.query_tokens))
    k = len(terms)
    w = np.array([idf.get(t, 0.0) for t in terms], np.float64)
    q = c.query_text
    q_tri = char_trigrams(q)
    qb = set(zip(c.query_tokens[:-1], c.query_tokens[1:]))
    packed, both, pairs = _matches(texts, c.vocab, terms, q_tri, qb)
    tf = unpack_counts(packed).astype(np.float64)  # (m, k, fields)
    lens = unpack_counts(np.fromiter((r.lens for r in texts), np.int64, m)).astype(np.float64)  # (m, fields)
    known = np.array([t in idf for t in terms], bool)
    avg = np.array([max(c.stats.avg_len.get(f, 1.0), 1e-9) for f in SEARCH_FIELDS], np.float64)
    norm = BM25_K1 * (1 - BM25_B + BM25_B * lens / avg)  # (m, fields): BM25 per field, global idf
    found = tf[:, known, :]
    bm25 = (w[known][None, :, None] * found * (BM25_K1 + 1) / (found + norm[:, None, :])).sum(axis=1)
    for j, f in enumerate(SEARCH_FIELDS):
        out[:, col[f"bm25_{f}"]] = bm25[:, j]
    in_title = tf[:, :, 0] > 0  # (m, k)
    total_idf = float(w.sum())
    if total_idf > 0:  # the idf share of the query's terms found in the title, and anywhere
        out[:, col["cover_title"]] = in_title.astype(np.float64) @ w / total_idf
        out[:, col["cover_all"]] = (tf > 0).any(axis=2).astype(np.float64) @ w / total_idf
    out[:, col["missing_title"]] = k - in_title.sum(axis=1)
    if qb:  # the share of the query's adjacent term pairs that are adjacent in the title
        out[:, col["bigrams_title"]] = pairs / len(qb)
    if q_tri:  # Jaccard |Q & T| / |Q | T| of the character trigram sets
        tri_sizes = np.fromiter((r.trigrams for r in texts), np.float64, m)
        out[:, col["title_trigrams"]] = both / (len(q_tri) + tri_sizes - both)
    if q:
        padded = f" {q} "
        out[:, col["exact_title"]] = [r.padded_title == padded for r in texts]
        out[:, col["phrase_in_title"]] = [padded in r.padded_title for r in texts]
        out[:, col["brand_in_query"]] = [bool(r.brand) and f" {r.brand} " in padded for r in texts]
        out[:, col["category_in_query"]] = [bool(r.leaf) and f" {r.leaf} " in padded for r in texts]
    out[:, col["title_terms"]] = np.log1p(lens[:, 0])
    out[:, col["query_terms"]] = math.log1p(k)
    if c.personal is not None:
        out[:, col["personal"]] = c.personal
    if c.affinity_parts is not None:
        parts = np.asarray(c.affinity_parts, np.float64)
        out[:, col["profile_sim"]] = parts[:, 0]
        out[:, col["cooc_recent"]] = np.log1p(np.maximum(parts[:, 1], 0.0))
        out[:, col["category_share"]] = parts[:, 2]
    if c.prices is not None and c.usual_price is not None and c.usual_price > 0:
        p = np.asarray(c.prices, np.float64)
        ok = np.isfinite(p) & (p > 0)
        out[ok, col["price_ratio"]] = np.log(p[ok] / c.usual_price)
        out[ok, col["price_known"]] = 1.0
    for name, given in (("item_ctr", c.ctr), ("item_conversion", c.conversion), ("popular", c.popular)):
        if given is not None:
            out[:, col[name]] = given
    _age_column(out, col, c.age_days)
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
