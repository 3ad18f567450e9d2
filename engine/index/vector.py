"""FAISS vector index: which index a version gets, building it, and serving searches from it.

Vectors are L2-normalised, so inner product is cosine. Rows (int64) are catalog positions.

Owns the index choice (:func:`build_vector_index`): exact ``Flat`` up to ``approx_threshold`` items;
above it, with a memory budget (``index_bytes_per_item``), a search over Flat, IVF-Flat, IVF-SQ8, IVF-PQ
(with and without an SQ8 refine stage) and HNSW (flat or SQ8): the candidates whose bytes per item fit
the budget are built, tuned (nprobe / efSearch / refine k_factor) until recall@10 against exact search
reaches ``target_recall`` on held-out queries, timed, and the fastest one meeting the target wins.
A compressed index serves scoring and filtered scans from its own codes (``reconstruct``), so no fp32
copy of the vectors is kept in memory for it (see :class:`VectorIndex`).
Thread-safety: ``search`` may be called from many threads at once (FAISS search is read-only).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from engine.errors import ConfigError
from engine.types import SearchHits

log = logging.getLogger(__name__)

# Below this share of the catalog an ``allowed`` filter is answered by an exact scan of the allowed
# rows (cheaper than FAISS with a selector, and exact even for IVF).
SMALL_FILTER_SHARE = 0.05
# A compressed index decodes the rows it scans one by one: past this many rows FAISS with a selector wins.
MAX_DECODED_SCAN = 4096
# Map flat codes and IVF lists instead of reading them (IO_FLAG_MMAP_IFC covers IndexFlat too).
MMAP_FLAGS = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)
# Held-out queries for recall and speed; the default memory budget of a chosen index (bytes per item).
RECALL_QUERIES = 500
QPS_QUERIES = 200
DEFAULT_BYTES_PER_ITEM = 500.0
HNSW_M = 32


class IndexChoiceError(ConfigError):
    """No candidate index meets ``target_recall`` within ``index_bytes_per_item`` (the message says the best)."""


def set_search_threads(n: int) -> None:
    """OpenMP threads per FAISS call in this process (the server sets ``faiss_threads``; builds keep all)."""
    faiss.omp_set_num_threads(max(1, int(n)))


def set_blas_threads(n: int) -> None:
    """numpy's BLAS threads in this process (every ``Engine`` sets ``blas_threads``; builds keep all).
    Only the BLAS libraries loaded by now are limited (numpy's is, from its import)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=max(1, int(n)), user_api="blas")


@dataclass(frozen=True)
class IndexInfo:
    """How the index was built and how good it is: recorded in the manifest."""

    spec: str
    kind: str  # "exact" | "ivf" | "hnsw"
    nlist: int
    nprobe: int
    recall_at_10: float
    recall_queries: int
    # IVF only: "trained" (k-means on these vectors) or "reused" (the previous version's centroids)
    quantizer: str = "none"
    ef_search: int = 0  # HNSW only
    k_factor: int = 0  # refine stage only: candidates re-scored per result
    bytes_per_item: float = 0.0  # the serialized index over the item count: all a server keeps per item
    qps: float = 0.0  # one thread, one query at a time, on the recall queries
    target_recall: float = 0.0
    budget_bytes_per_item: float | None = None
    # True when a server scores and scans from the index's own codes (no fp32 vector array loaded)
    serves_from_codes: bool = False
    candidates: tuple[dict[str, Any], ...] = ()  # every candidate the chooser looked at, with its figures

    def to_dict(self) -> dict[str, Any]:
        out = self.__dict__.copy()
        out["candidates"] = [dict(c) for c in self.candidates]
        return out


def choose_spec(n_items: int, approx_threshold: int) -> str:
    """``Flat`` up to ``approx_threshold`` items, else ``IVF<nlist>,Flat`` with nlist ~ 4*sqrt(n) (power of 2)."""
    if n_items <= approx_threshold:
        return "Flat"
    return f"IVF{ivf_nlist(n_items)},Flat"


def ivf_nlist(n_items: int) -> int:
    """IVF lists for ``n_items``: about 4*sqrt(n), a power of 2 in 64..65536."""
    nlist = 2 ** round(math.log2(4 * math.sqrt(max(n_items, 1))))
    return int(min(max(nlist, 64), 65536))


def candidate_specs(n_items: int, dim: int) -> list[str]:
    """The FAISS factory strings the chooser considers for ``n_items`` vectors of ``dim``."""
    nlist = ivf_nlist(n_items)
    pq = [m for m in (dim // 8, dim // 4) if m > 0 and dim % m == 0]
    specs = ["Flat", f"IVF{nlist},Flat", f"IVF{nlist},SQ8"]
    specs += [f"IVF{nlist},PQ{m}" for m in pq]
    specs += [f"IVF{nlist},PQ{m},Refine(SQ8)" for m in pq[:1]]
    specs += [f"HNSW{HNSW_M}", f"HNSW{HNSW_M},SQ8"]
    return specs


def estimate_bytes_per_item(spec: str, n_items: int, dim: int) -> float:
    """Bytes per item a server holds for ``spec`` (codes, ids, direct map, graph, shared tables spread
    over the items), before building it; :func:`index_bytes_per_item` measures the built index."""
    n = max(n_items, 1)
    parts = spec.split(",")
    code = {"Flat": 4.0 * dim, "SQ8": float(dim), "SQfp16": 2.0 * dim}
    if parts[0] == "Flat":
        return 4.0 * dim
    if parts[0].startswith("HNSW"):
        m = int(parts[0][4:])
        enc = parts[1] if len(parts) > 1 else "Flat"
        # level 0 keeps 2M int32 neighbours, upper levels about M/(M-1) of M more; plus levels and offsets
        return code[enc] + 4.0 * (2 * m + m / max(m - 1, 1)) + 12.0
    nlist = int(parts[0][3:])
    shared = 4.0 * nlist * dim / n
    enc = parts[1]
    if enc.startswith("PQ"):
        m = int(enc[2:])
        size = m + 4.0 * 256 * dim / n
    else:
        size = code[enc] + 8.0 * dim / n
    refine = parts[2] if len(parts) > 2 else None
    if refine is not None:  # Refine(SQ8): an SQ8 copy, which also serves reconstruct (no direct map)
        return size + 8.0 + shared + dim + 8.0 * dim / n
    return size + 8.0 + 8.0 + shared  # ids + direct map (for reconstruct)


def index_bytes_per_item(index: faiss.Index) -> float:
    """The serialized size of ``index`` over its items (what a server maps or loads for it)."""
    return float(len(faiss.serialize_index(index))) / max(int(index.ntotal), 1)


def kind_of(spec: str) -> str:
    return "exact" if spec == "Flat" else "hnsw" if spec.startswith("HNSW") else "ivf"


def search_params(index: faiss.Index, *, nprobe: int = 0, ef_search: int = 0, k_factor: int = 0,
                  sel: Any = None) -> tuple[Any, list[Any]]:
    """FAISS search parameters for ``index`` (None for a plain Flat search), and the objects that must
    stay alive while they are used (SWIG keeps raw pointers)."""
    keep: list[Any] = []
    inner = faiss.downcast_index(index.base_index) if isinstance(index, faiss.IndexRefine) else index
    if isinstance(inner, faiss.IndexIVF):
        p: Any = faiss.SearchParametersIVF(nprobe=min(max(nprobe, 1), int(inner.nlist)))  # type: ignore[call-arg]
    elif isinstance(inner, faiss.IndexHNSW):
        p = getattr(faiss, "SearchParametersHNSW")(efSearch=min(max(ef_search, 16), 4096))
    elif sel is not None:
        p = faiss.SearchParameters()
    else:
        p = None
    if p is not None and sel is not None:
        p.sel = sel
    if isinstance(index, faiss.IndexRefine):
        keep.append(p)
        outer = faiss.IndexRefineSearchParameters(k_factor=float(max(k_factor, 1)))  # type: ignore[call-arg]
        outer.base_index_params = p
        if sel is not None:
            outer.sel = sel
        p = outer
    keep.append(sel)
    return p, keep


@dataclass
class _Probe:
    """Held-out queries with their exact top 10 (the query's own row, when it is an item, left out)."""

    queries: np.ndarray
    truth: np.ndarray
    own: np.ndarray | None  # (nq,) rows of the items used as queries, or None for outside queries

    def recall(self, index: faiss.Index, params: Any) -> float:
        _, got = index.search(self.queries, 11 if self.own is not None else 10, params=params)
        return recall_at_k(self.truth, self.top10(got))

    def top10(self, rows: np.ndarray) -> np.ndarray:
        if self.own is None:
            return rows[:, :10]
        out = np.full((len(rows), 10), -1, np.int64)
        for i, (r, own) in enumerate(zip(rows, self.own)):
            kept = r[r != own][:10]
            out[i, : len(kept)] = kept
        return out


def _probe(vectors: np.ndarray, queries: np.ndarray | None, seed: int) -> _Probe:
    """Exact truth for up to :data:`RECALL_QUERIES` held-out queries: ``queries`` when given (e.g. real
    query texts, encoded), else a random sample of the items, each excluding itself from its answer."""
    n, dim = vectors.shape
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    if queries is not None:
        q = np.ascontiguousarray(queries[:RECALL_QUERIES], dtype=np.float32)
        _, truth = exact.search(q, 10)
        return _Probe(q, truth, None)
    rng = np.random.default_rng(seed)
    own = np.sort(rng.choice(n, size=min(RECALL_QUERIES, n), replace=False)).astype(np.int64)
    q = np.ascontiguousarray(vectors[own])
    probe = _Probe(q, np.empty((0, 10), np.int64), own)
    _, got = exact.search(q, 11)
    probe.truth = probe.top10(got)
    return probe


def _tune(index: faiss.Index, spec: str, probe: _Probe, target: float,
          start_nprobe: int = 1) -> tuple[float, dict[str, int]]:
    """The cheapest search setting reaching ``target`` recall@10 (or the best reached): its recall and
    ``{"nprobe", "ef_search", "k_factor"}``. Stops early when recall stops improving."""
    kind = kind_of(spec)
    if kind == "exact":
        return probe.recall(index, None), {"nprobe": 0, "ef_search": 0, "k_factor": 0}
    refine = isinstance(index, faiss.IndexRefine)
    settings: list[dict[str, int]]
    if kind == "hnsw":
        settings = [{"ef_search": ef} for ef in (16, 32, 64, 128, 256, 512, 1024)]
    else:
        nlist = int(faiss.extract_index_ivf(index).nlist)
        probes, p = [], max(1, min(start_nprobe, nlist))
        while True:
            probes.append(p)
            if p >= nlist:
                break
            p = min(p * 2, nlist)
        factors = (2, 4, 8, 16) if refine else (0,)
        settings = [{"nprobe": p, "k_factor": f} for p in probes for f in factors]
    best: tuple[float, dict[str, int]] = (-1.0, {})
    previous = -1.0
    for i, s in enumerate(settings):
        params, keep = search_params(index, **s)
        recall = probe.recall(index, params)
        del keep
        if recall > best[0]:
            best = (recall, s)
        if recall >= target:
            best = (recall, s)
            break
        last_of_step = not refine or s.get("k_factor") == 16
        if last_of_step:
            if i > 4 and recall - previous < 0.002:
                break  # a plateau: the codes, not the search, limit recall
            previous = recall
    recall, s = best
    return recall, {"nprobe": s.get("nprobe", 0), "ef_search": s.get("ef_search", 0), "k_factor": s.get("k_factor", 0)}


def _qps(index: faiss.Index, probe: _Probe, setting: dict[str, int]) -> float:
    """Queries per second, one thread, one query per call (as a server request runs it)."""
    params, keep = search_params(index, **setting)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        q = probe.queries[:QPS_QUERIES]
        index.search(q[:5], 10, params=params)
        t0 = time.perf_counter()
        for i in range(len(q)):
            index.search(q[i : i + 1], 10, params=params)
        took = time.perf_counter() - t0
    finally:
        faiss.omp_set_num_threads(threads)
    del keep
    return len(q) / max(took, 1e-9)


def _coarse(vectors: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """IVF coarse centroids (k-means, inner product) on a sample of about 40 points per list."""
    n, dim = vectors.shape
    rng = np.random.default_rng(seed)
    sample = vectors if n <= 40 * nlist else vectors[np.sort(rng.choice(n, 40 * nlist, replace=False))]
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    ivf.train(np.ascontiguousarray(sample))
    return ivf.quantizer.reconstruct_n(0, nlist)  # type: ignore[no-any-return]


def _build(spec: str, vectors: np.ndarray, seed: int, centroids: np.ndarray | None = None,
           assign: np.ndarray | None = None) -> faiss.Index:
    """Build ``spec`` over ``vectors``; IVF specs take ``centroids`` (and their list of each vector,
    ``assign``) when given instead of running k-means. IVF gets a direct map (``reconstruct``)."""
    n, dim = vectors.shape
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index) if kind_of(spec) == "ivf" else None
    if ivf is not None:
        _no_polysemous(ivf)
        ivf.cp.seed = seed
        if centroids is not None and len(centroids) == ivf.nlist:
            ivf.quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    if kind_of(spec) == "hnsw":
        hnsw: Any = faiss.downcast_index(index)
        hnsw.hnsw.efConstruction = 40
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        limit = max(65_536, 40 * (ivf.nlist if ivf is not None else 0))
        sample = vectors if n <= limit else vectors[np.sort(rng.choice(n, limit, replace=False))]
        _train(index, np.ascontiguousarray(sample))
    if ivf is not None and assign is not None and ivf.quantizer.ntotal == len(centroids if centroids is not None else []):
        step = 65_536
        for s in range(0, n, step):
            chunk = np.ascontiguousarray(vectors[s : s + step], dtype=np.float32)
            lists = np.ascontiguousarray(assign[s : s + step], dtype=np.int64)
            ivf.add_core(len(chunk), faiss.swig_ptr(chunk), None, faiss.swig_ptr(lists))
        if isinstance(index, faiss.IndexRefine):
            index.refine_index.add(vectors)
            index.ntotal = n
        else:
            index.ntotal = ivf.ntotal
    else:
        index.add(vectors)
    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()
    return index


def _train(index: faiss.Index, sample: np.ndarray) -> None:
    """``index.train`` on one OpenMP thread when the coarse centroids are already there: PQ/SQ training runs
    many tiny parallel loops, whose threads spin-wait on a busy machine (an IVF256,PQ48 at 3,000 items:
    26.9 s on 2 threads beside other work, 2.2 s on 1)."""
    try:
        ivf = faiss.extract_index_ivf(index)
        encoder_only = ivf.quantizer.ntotal == ivf.nlist
    except RuntimeError:
        encoder_only = True  # not IVF: HNSW-SQ / SQ training
    threads = faiss.omp_get_max_threads()
    if encoder_only:
        faiss.omp_set_num_threads(1)
    try:
        index.train(sample)
    finally:
        faiss.omp_set_num_threads(threads)


def _no_polysemous(ivf: Any) -> None:
    """IVF-PQ from the factory trains polysemous codes by default (160 s at 8k items): not used here."""
    pq: Any = faiss.downcast_index(ivf)
    if isinstance(pq, faiss.IndexIVFPQ):
        pq.do_polysemous_training = False  # type: ignore[attr-defined]


def build_vector_index(
    vectors: np.ndarray,
    *,
    approx_threshold: int = 20000,
    nprobe: int = 16,
    target_recall: float = 0.95,
    spec: str | None = None,
    seed: int = 1234,
    reuse: faiss.Index | None = None,
    bytes_per_item: float | None = None,
    reuse_spec: str | None = None,
    queries: np.ndarray | None = None,
    say: Callable[[str], None] | None = None,
) -> tuple[faiss.Index, IndexInfo]:
    """Build the index for ``vectors`` (float32, shape (n, dim), unit rows).

    - ``spec`` given: that index, tuned (nprobe / efSearch / k_factor) to ``target_recall``.
    - up to ``approx_threshold`` items: exact ``Flat`` (fast to build, exact; at most 30 MB at 20k x 384).
    - above it with ``bytes_per_item`` (a budget): :func:`choose_index`, unless ``reuse`` (the previous
      version's IVF index of spec ``reuse_spec``) still fits the budget and reaches the target with its
      coarse centroids, without k-means (6.2 of the 6.5 s at 100k items), which keeps that spec.
    - above it without a budget: ``IVF<nlist>,Flat`` (:func:`choose_spec`), nprobe doubled from ``nprobe``.

    Recall@10 is measured against exact search on up to 500 held-out queries (``queries``, or catalog
    vectors used as queries, each leaving itself out of both answers).
    """
    n, dim = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if spec is None and n > approx_threshold and bytes_per_item is not None:
        if reuse is not None and reuse_spec and kind_of(reuse_spec) == "ivf" and \
                estimate_bytes_per_item(reuse_spec, n, dim) <= bytes_per_item:
            index = _with_centroids_of(reuse, reuse_spec, dim)
            if index is not None:
                index, info = _finish(index, reuse_spec, vectors, queries, target_recall, seed, nprobe, "reused")
                if info.recall_at_10 >= target_recall and info.bytes_per_item <= bytes_per_item:
                    return index, replace(info, budget_bytes_per_item=bytes_per_item)
                log.info("reused centroids of %s miss the target (%.4f); choosing again", reuse_spec, info.recall_at_10)
        return choose_index(vectors, target_recall=target_recall, bytes_per_item=bytes_per_item, seed=seed,
                            queries=queries, say=say)
    spec = spec or choose_spec(n, approx_threshold)
    if spec == "Flat":
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, IndexInfo("Flat", "exact", 0, 0, 1.0, 0, bytes_per_item=4.0 * dim,
                                target_recall=target_recall, budget_bytes_per_item=bytes_per_item)
    reused = _with_centroids_of(reuse, spec, dim) if reuse is not None else None
    if reused is None:
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        if kind_of(spec) == "ivf":
            faiss.extract_index_ivf(index).cp.seed = seed
            _no_polysemous(faiss.extract_index_ivf(index))
        _train(index, vectors) if not index.is_trained else None
    else:
        index = reused
    return _finish(index, spec, vectors, queries, target_recall, seed, nprobe,
                   "reused" if reused is not None else "trained")


def _finish(index: faiss.Index, spec: str, vectors: np.ndarray, queries: np.ndarray | None, target: float,
            seed: int, nprobe: int, quantizer: str) -> tuple[faiss.Index, IndexInfo]:
    """Train what is left, add ``vectors``, tune to ``target`` and describe the result."""
    if not index.is_trained:
        _train(index, vectors)
    index.add(vectors)
    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()
    probe = _probe(vectors, queries, seed)
    recall, s = _tune(index, spec, probe, target, start_nprobe=nprobe)
    kind = kind_of(spec)
    nlist = int(faiss.extract_index_ivf(index).nlist) if kind == "ivf" else 0
    log.info("%s (%s centroids): recall@10 %.4f at %s", spec, quantizer, recall, s)
    return index, IndexInfo(spec, kind, nlist, s["nprobe"], round(recall, 4), len(probe.queries),
                            quantizer if kind == "ivf" else "none", s["ef_search"], s["k_factor"],
                            round(index_bytes_per_item(index), 1), round(_qps(index, probe, s), 1), target,
                            serves_from_codes=True)


def choose_index(vectors: np.ndarray, *, target_recall: float, bytes_per_item: float, seed: int = 1234,
                 queries: np.ndarray | None = None, specs: list[str] | None = None,
                 say: Callable[[str], None] | None = None) -> tuple[faiss.Index, IndexInfo]:
    """Build every candidate of :func:`candidate_specs` (or ``specs``) whose estimated bytes per item fit
    ``bytes_per_item``, tune each to ``target_recall`` on held-out queries, time it (one thread) and keep
    the fastest one that meets the target with its measured size within the budget.

    IVF candidates share one k-means and one assignment of the vectors to lists. Raises
    :class:`IndexChoiceError` when none qualifies. ``info.candidates`` lists every candidate's figures.
    """
    n, dim = vectors.shape
    tell = say or (lambda line: None)
    probe = _probe(vectors, queries, seed)
    nlist = ivf_nlist(n)
    centroids: np.ndarray | None = None
    assign: np.ndarray | None = None
    rows: list[dict[str, Any]] = []
    best: tuple[faiss.Index, IndexInfo] | None = None
    for spec in specs or candidate_specs(n, dim):
        estimate = estimate_bytes_per_item(spec, n, dim)
        row: dict[str, Any] = {"spec": spec, "estimated_bytes_per_item": round(estimate, 1)}
        if estimate > bytes_per_item:
            rows.append(dict(row, skipped="over index_bytes_per_item"))
            tell(f"{spec}: skipped, about {estimate:.0f} bytes/item > {bytes_per_item:g}")
            continue
        t0 = time.perf_counter()
        if kind_of(spec) == "ivf" and centroids is None:
            centroids = _coarse(vectors, nlist, seed)
            coarse = faiss.IndexFlatIP(dim)
            coarse.add(centroids)
            assign = np.concatenate([coarse.search(vectors[s : s + 65_536], 1)[1].ravel()
                                     for s in range(0, n, 65_536)])
            del coarse
        index = _build(spec, vectors, seed, centroids, assign)
        build_s = time.perf_counter() - t0
        recall, s = _tune(index, spec, probe, target_recall)
        size = index_bytes_per_item(index)
        qps = _qps(index, probe, s)
        meets = recall >= target_recall and size <= bytes_per_item
        row.update(bytes_per_item=round(size, 1), recall_at_10=round(recall, 4), qps=round(qps, 1),
                   build_seconds=round(build_s, 2), meets_target=meets, **s)
        rows.append(row)
        tell(f"{spec}: {size:.0f} bytes/item, recall@10 {recall:.4f} at {s}, {qps:.0f} QPS, built in {build_s:.1f}s")
        kind = kind_of(spec)
        info = IndexInfo(spec, kind, nlist if kind == "ivf" else 0, s["nprobe"], round(recall, 4), len(probe.queries),
                         "trained" if kind == "ivf" else "none", s["ef_search"], s["k_factor"], round(size, 1),
                         round(qps, 1), target_recall, bytes_per_item, serves_from_codes=kind != "exact")
        if meets and (best is None or qps > best[1].qps):
            best = (index, info)
        del index
    if best is None:
        tried = [r for r in rows if "recall_at_10" in r]
        top = max(tried, key=lambda r: r["recall_at_10"], default=None)
        detail = (f"; the best within the budget was {top['spec']} at recall@10 {top['recall_at_10']:.4f}, "
                  f"{top['bytes_per_item']:.0f} bytes/item" if top else "; no candidate fits the budget "
                  f"(the smallest needs about {min(r['estimated_bytes_per_item'] for r in rows):.0f} bytes/item)")
        raise IndexChoiceError(
            f"index_bytes_per_item: no vector index reaches target_recall {target_recall} within "
            f"index_bytes_per_item {bytes_per_item:g} at {n} items{detail}; raise index_bytes_per_item "
            "or lower target_recall")
    index, info = best
    log.info("chose %s: recall@10 %.4f, %.0f bytes/item, %.0f QPS", info.spec, info.recall_at_10,
             info.bytes_per_item, info.qps)
    return index, replace(info, candidates=tuple(rows))


def _with_centroids_of(old: faiss.Index, spec: str, dim: int) -> faiss.Index | None:
    """An empty ``spec`` index on ``old``'s coarse centroids (only its codes, if any, left to train);
    None when they do not fit (not IVF, other list count, dimension or metric)."""
    if kind_of(spec) != "ivf":
        return None
    try:
        ivf = faiss.extract_index_ivf(old)
    except RuntimeError:
        return None
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    new = faiss.extract_index_ivf(index)
    if ivf.d != dim or new.nlist != ivf.nlist or ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    new.quantizer.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))
    _no_polysemous(new)
    return index


def recall_at_k(truth: np.ndarray, got: np.ndarray) -> float:
    """Mean share of each row of ``truth`` found in the same row of ``got`` (both (nq, k) row ids)."""
    hits = sum(len(set(t[t >= 0]) & set(g[g >= 0])) for t, g in zip(truth, got))
    total = int((truth >= 0).sum())
    return hits / total if total else 1.0


class VectorIndex:
    """A loaded FAISS index, plus, for an exact index, the fp32 vectors it was built from (memory-mapped).

    ``vectors`` is None for a compressed index (IVF-SQ8, IVF-PQ, HNSW-SQ8...): scores and filtered scans
    then come from the index's own codes (:meth:`rows_vectors`), so serving it costs the index's bytes
    per item and nothing more. The search settings (``nprobe``, ``ef_search``, ``k_factor``) are the ones
    the build tuned to its recall target (recorded in the manifest)."""

    def __init__(self, index: faiss.Index, vectors: np.ndarray | None, nprobe: int = 0, *,
                 ef_search: int = 0, k_factor: int = 0) -> None:
        self.index = index
        self.vectors = vectors
        self.dim = int(index.d)
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.k_factor = k_factor
        self._tuned = not isinstance(index, faiss.IndexFlat)
        self._plain: Any = None
        self._keep: list[Any] = []
        if self._tuned:
            self._plain, self._keep = search_params(index, nprobe=nprobe, ef_search=ef_search, k_factor=k_factor)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None) -> SearchHits:
        """Top ``k`` rows by inner product for each query row; ``allowed`` is a bool mask over rows."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        n = len(self)
        k_eff = min(k, n)
        if allowed is not None:
            count = int(allowed.sum())
            if count == 0 or k_eff == 0:
                return _pad(np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32), k)
            small = max(k_eff, SMALL_FILTER_SHARE * n)
            if self.vectors is None:
                small = max(k_eff, min(small, MAX_DECODED_SCAN))
            if count <= small:
                return self._scan(queries, k, np.flatnonzero(allowed))
            # The selector keeps only a raw pointer: ``bits`` must stay alive until the search returns.
            bits = np.packbits(allowed, bitorder="little")
            sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
            # A filter drops most of what nprobe lists / efSearch visit: widen them by 1/share, so that
            # about as many allowed rows are looked at as an unfiltered search looks at rows.
            widen = n / count
            params, keep = search_params(self.index, nprobe=math.ceil(self.nprobe * widen),
                                         ef_search=math.ceil(self.ef_search * widen), k_factor=self.k_factor, sel=sel)
            scores, rows = self.index.search(queries, k_eff, params=params)
            del bits, keep
        else:
            scores, rows = self.index.search(queries, k_eff, params=self._plain)
        scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
        return _pad(rows.astype(np.int64), scores, k)

    def rows_vectors(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) float32 vectors of ``rows``: exact for Flat, decoded from the codes otherwise."""
        rows = np.asarray(rows, np.int64)
        if self.vectors is not None:
            gathered: np.ndarray = np.asarray(self.vectors)[rows]  # plain-array gather: indexing a memmap is slower
            return gathered
        if not len(rows):
            return np.empty((0, self.dim), np.float32)
        return np.asarray(self.index.reconstruct_batch(rows), np.float32)

    def _scan(self, queries: np.ndarray, k: int, rows: np.ndarray) -> SearchHits:
        sims = queries @ self.rows_vectors(rows).T  # (nq, len(rows))
        top = min(k, len(rows))
        part = np.argpartition(-sims, top - 1, axis=1)[:, :top]
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        best = np.take_along_axis(part, order, axis=1)
        return _pad(rows[best], np.take_along_axis(part_scores, order, axis=1).astype(np.float32), k)

    def score(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Inner products of one query vector with the given rows (exact for Flat, from the codes otherwise)."""
        return self.rows_vectors(rows) @ query.astype(np.float32)

    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, vectors: np.ndarray | None, nprobe: int, *, ef_search: int = 0,
             k_factor: int = 0) -> "VectorIndex":
        """Memory-mapped, read-only: the server's workers share one copy through the page cache, and a
        100k IVF index loads in 0.01 s instead of 0.5 s (version files never change once published)."""
        try:
            index = faiss.read_index(str(path), MMAP_FLAGS)
        except RuntimeError:  # an index type FAISS cannot map
            index = faiss.read_index(str(path))
        return cls(index, vectors, nprobe, ef_search=ef_search, k_factor=k_factor)


def _pad(rows: np.ndarray, scores: np.ndarray, k: int) -> SearchHits:
    nq, have = rows.shape
    if have >= k:
        return SearchHits(rows[:, :k], scores[:, :k])
    out_r = np.full((nq, k), -1, np.int64)
    out_s = np.full((nq, k), -np.inf, np.float32)
    out_r[:, :have], out_s[:, :have] = rows, scores
    return SearchHits(out_r, out_s)
