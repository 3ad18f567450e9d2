"""Peers, side by side in one run: the same catalog, queries and query vectors through Vitrine's search
path and through search libraries installed from the package registries (issue 13, part 6).

Systems (each measured in its own subprocess, 1 thread for every numeric library):
- **Vitrine**: ``engine.search.ranked_search`` on an ``engine.snapshot.Snapshot`` of the published version
  (BM25 top ``candidate_pool`` + FAISS top ``candidate_pool``, every candidate rescored on both sides, z-score
  fusion with the served ``hybrid_weight``: the server's defaults), top 10.
- **bm25s + FAISS + RRF** (a bare baseline): ``bm25s.BM25()`` (its defaults: ``bm25s.tokenize`` with English
  stop words, no stemmer) over the same texts, FAISS with the same vectors (``IndexFlatIP`` where Vitrine's
  version is exact; at 100k the very index type and ``nprobe`` Vitrine's build chose, read from its
  ``vectors.faiss``), reciprocal rank fusion (k = 60) of the top 100 of each side.
- **LanceDB hybrid**: a Lance table (row, text, vector) with LanceDB's native full-text index
  (``create_fts_index("text")``, not tantivy) and the same vectors; ``search(query_type="hybrid")`` with the
  query text and our query vector, its default reranker (RRF), ``limit(10)``. Exact vector scan where Vitrine's
  version is exact; at 100k an ``IVF_SQ`` index with the same number of partitions as Vitrine's IVF and LanceDB's
  default ``nprobes``. No embedding function: vectors are passed in.
- **txtai hybrid**: ``txtai.Embeddings(method="external", hybrid=True)``: its BM25 scoring index over the
  same texts and its FAISS backend (its default factory string) over the same vectors, handed to it by a
  ``transform`` that looks vectors up (index texts and queries), so no model is loaded or downloaded; its
  default hybrid fusion (convex combination of normalised scores).

The text every system indexes is Vitrine's BM25 text (``engine.item_text.keyword_text``: title twice,
brand, category words, description); the vectors are the version's ``vectors.npy`` (all-MiniLM-L6-v2);
the query vectors are encoded once with Vitrine's query encoder (``build_encoder(config.encoder)``) and the
same float32 arrays are handed to every system: encoding is excluded from every latency.

Catalogs ("sizes"):
- ``demo``: the published Amazon Scientific evaluation version ``indexes/eval/scientific/current``
  (4,385 items, the demo catalog with real MiniLM vectors; exact FAISS index);
- ``100k``: 100,000 items synthetic from real, as ``bench_index_1m.py`` makes them (the 14,298 real
  CrowdFlower + Scientific products, then title variants whose vectors are the real vector + Gaussian noise
  sigma 0.02), published once by the real ``pipeline.build`` (vectors looked up, no transformer) into
  ``bench/out/index-peers-100000`` and reused (``--rebuild`` to build again);
- quality: the published CrowdFlower evaluation version ``indexes/eval/crowdflower/current`` (9,913 products).

Per size and system: build (files under ``bench/out/peers/<size>/<system>/``, a subprocess of its own,
timed; Vitrine's build is its published version), then a fresh subprocess opens the index, runs 20 warm-up
queries, then ``--queries`` distinct shop queries (``bench_search.shop_queries``) once each, timing each
``search`` call alone (``time.perf_counter``); p50 / p99, and peak RSS (``VmHWM``, not ``ru_maxrss``: Linux
carries the parent's ``ru_maxrss`` over ``execve``) of that subprocess
after opening and querying.

Quality (CrowdFlower, 261 queries, gain = median_relevance - 1): every system retrieves from the whole
catalog, depth 100 (Vitrine ``k=100``, the baseline's RRF list, LanceDB and txtai ``limit 100``). *Judged-only*
nDCG@10 (Sakai's condensed list): the unjudged products of that ranking are dropped, the rest cut at 10, and
``engine.evaluation.metrics.ndcg_at_k`` scores it against the query's judged gains. The table also gives
nDCG@10 of the plain top 10 with unjudged products counted as gain 0, and how many of the top 10 are judged.

Usage: nice -n 10 env HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/bench_peers.py
           [--sizes demo,100k] [--queries 300] [--systems vitrine,bm25s-faiss,lancedb,txtai] [--record]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# LanceDB's compute pool on 1 thread too; its I/O pool keeps its default (LANCE_IO_THREADS=1 hangs create_table).
os.environ.setdefault("LANCE_CPU_THREADS", "1")
os.environ.setdefault("LANCE_LOG", "error")

import numpy as np  # noqa: E402

from common import OUT, ROOT, engine_config, header, load_avg, record, stats_ms, table  # noqa: E402

WARMUP = 20
TOP = 10
DEPTH = 100  # retrieval depth for quality; also the baseline's per-side list
RRF_K = 60
SYSTEMS = ("vitrine", "bm25s-faiss", "lancedb", "txtai")
NAMES = {"vitrine": "Vitrine", "bm25s-faiss": "bm25s + FAISS + RRF", "lancedb": "LanceDB hybrid", "txtai": "txtai hybrid"}
# Quality only: Vitrine with a lower vector weight than the served 0.9 (not what it serves; see the notes).
ALT_WEIGHT = 0.7
ALT = "vitrine-w0.7"
NAMES[ALT] = f"Vitrine, hybrid_weight {ALT_WEIGHT} (not served)"
PEERS_OUT = OUT / "peers"
DATA_DIR = Path(os.environ.get("VITRINE_DATA_DIR", "/work/shared/data"))
VERSIONS = {"demo": ROOT / "indexes" / "eval" / "scientific" / "current",
            "100k": OUT / "index-peers-100000",
            "crowdflower": ROOT / "indexes" / "eval" / "crowdflower" / "current"}
N_100K = 100_000

Search = Callable[[str, np.ndarray, int], Any]  # (query, query vector, k) -> the system's own answer
ToRows = Callable[[Any], list[int]]  # that answer -> catalog rows (outside the timing)


# -- datasets --------------------------------------------------------------------------------

def version_dir(size: str) -> Path:
    path = VERSIONS[size]
    if size == "100k":
        from engine.index import versions

        cur = versions.current_dir(path) if versions.current_version(path) else None
        if cur is None:
            raise SystemExit(f"no published version in {path}")
        return Path(cur).resolve()
    return path.resolve()


def build_100k(rebuild: bool) -> None:
    """Publish the 100k synthetic-from-real catalog into ``bench/out/index-peers-100000`` (once)."""
    from engine import pipeline
    from engine.catalog import read_catalog
    from engine.index import versions
    from engine.item_text import embedding_text

    from bench_index_1m import LookupEncoder, make_catalog

    index = VERSIONS["100k"]
    if versions.current_version(index) is not None and not rebuild:
        return
    t0 = time.time()
    path, vectors = make_catalog(N_100K, 0.02, seed=1234)
    catalog, _ = read_catalog(path)
    lookup = {embedding_text(p): i for i, p in enumerate(catalog)}
    del catalog
    print(f"[100k] building {index} (vectors looked up, no transformer)", file=sys.stderr)
    # The lookup encoder knows the item texts only: no title vectors (they only feed the learned search ranker).
    result = pipeline.build(engine_config(index).replace(title_vectors=False), path, full=True,
                            encoder=LookupEncoder(lookup, vectors))
    print("\n".join(result.summary_lines()), file=sys.stderr)
    print(f"[100k] built in {time.time() - t0:.0f} s", file=sys.stderr)


def texts_of(vdir: Path) -> list[str]:
    from engine.catalog import load_catalog_jsonl
    from engine.item_text import keyword_text

    return [keyword_text(p) for p in load_catalog_jsonl(vdir / "items.jsonl")]


def encode(queries: list[str], path: Path) -> np.ndarray:
    """Query vectors from Vitrine's query encoder, cached in ``path`` (keyed by the query list)."""
    if path.exists():
        cached = np.load(path, allow_pickle=False)
        if path.with_suffix(".json").exists() and json.loads(path.with_suffix(".json").read_text()) == queries:
            return np.asarray(cached, np.float32)
    from engine.embedding.factory import build_encoder

    config = engine_config(VERSIONS["demo"])
    enc = build_encoder(config.encoder, cache_dir=config.models_path, threads=1, max_seq_length=config.max_seq_length)
    vecs = np.asarray(enc.encode(queries), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    path.with_suffix(".json").write_text(json.dumps(queries))
    return vecs


# -- systems (run inside the worker subprocesses) ---------------------------------------------

def manifest_index(vdir: Path) -> dict[str, Any]:
    return dict(json.loads((vdir / "manifest.json").read_text())["index"])


def open_vitrine(vdir: Path, work: Path, weight: float | None = None) -> tuple[Search, ToRows]:
    """Vitrine's search path with the served settings (``weight``: another vector weight, for the note)."""
    from engine.index.vector import set_search_threads
    from engine.search import ranked_search
    from engine.snapshot import Snapshot

    set_search_threads(1)
    config = engine_config(vdir.parent)
    snap = Snapshot.load(vdir)
    pool, fusion = config.candidate_pool, config.fusion
    weight = config.hybrid_weight if weight is None else weight

    def search(q: str, qvec: np.ndarray, k: int) -> Any:
        return ranked_search(snap, q, qvec, k=k, offset=0, mask=None, pool=pool, weight=weight, fusion=fusion).hits

    return search, lambda hits: [snap.catalog.row(h.id) for h in hits]


def build_bm25s_faiss(vdir: Path, work: Path) -> None:
    import bm25s
    import faiss

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts_of(vdir), show_progress=False), show_progress=False)
    retriever.save(str(work / "bm25s"))
    ix = manifest_index(vdir)
    if ix["kind"] == "exact":
        vectors = np.load(vdir / "vectors.npy")
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors, np.float32))
        faiss.write_index(index, str(work / "vectors.faiss"))
    else:  # the very index Vitrine's build chose (type, training, codes)
        shutil.copyfile(vdir / "vectors.faiss", work / "vectors.faiss")


def open_bm25s_faiss(vdir: Path, work: Path) -> tuple[Search, ToRows]:
    import bm25s
    import faiss

    faiss.omp_set_num_threads(1)
    retriever = bm25s.BM25.load(str(work / "bm25s"), show_progress=False)
    index = faiss.read_index(str(work / "vectors.faiss"))
    ix = manifest_index(vdir)
    if ix["kind"] == "ivf":
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", int(ix["nprobe"]))
    elif ix["kind"] == "hnsw":
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", int(ix["ef_search"]))

    def search(q: str, qvec: np.ndarray, k: int) -> Any:
        tokens = bm25s.tokenize([q], show_progress=False, return_ids=False)
        tokens = [[t for t in tokens[0] if t in retriever.vocab_dict]]
        fused: dict[int, float] = {}
        if tokens[0]:
            docs, scores = retriever.retrieve(tokens, k=min(DEPTH, retriever.scores["num_docs"]), show_progress=False,
                                              n_threads=1)
            for rank, (d, s) in enumerate(zip(docs[0], scores[0])):
                if s > 0:
                    fused[int(d)] = 1.0 / (RRF_K + rank + 1)
        _, rows = index.search(qvec[None, :], DEPTH)
        for rank, r in enumerate(rows[0]):
            if r >= 0:
                fused[int(r)] = fused.get(int(r), 0.0) + 1.0 / (RRF_K + rank + 1)
        return sorted(fused, key=lambda r: (-fused[r], r))[:k]

    return search, list


def build_lancedb(vdir: Path, work: Path) -> None:
    import lancedb
    import pyarrow as pa

    texts = texts_of(vdir)
    vectors = np.ascontiguousarray(np.load(vdir / "vectors.npy"), np.float32)
    dim = vectors.shape[1]
    data = pa.table({"row": pa.array(np.arange(len(texts), dtype=np.int64)), "text": pa.array(texts),
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)})
    db = lancedb.connect(str(work / "db"))
    tbl = db.create_table("items", data, mode="overwrite")
    tbl.create_fts_index("text", use_tantivy=False, replace=True)
    ix = manifest_index(vdir)
    if ix["kind"] != "exact":
        tbl.create_index(metric="dot", vector_column_name="vector", index_type="IVF_SQ",
                         num_partitions=int(ix.get("nlist") or 256), replace=True)


def open_lancedb(vdir: Path, work: Path) -> tuple[Search, ToRows]:
    import lancedb

    tbl = lancedb.connect(str(work / "db")).open_table("items")
    metric = "dot"

    def search(q: str, qvec: np.ndarray, k: int) -> Any:
        hybrid: Any = tbl.search(query_type="hybrid", vector_column_name="vector", fts_columns="text")
        return (hybrid.vector(qvec).text(q).distance_type(metric).select(["row"]).limit(k).to_arrow())

    return search, lambda t: [int(r) for r in t.column("row").to_pylist()]


# txtai's ``transform`` (the function itself: txtai refuses to resolve one by name unless told to): vectors by text.
TXTAI_VECTORS: dict[str, np.ndarray] = {}


def txtai_transform(inputs: Sequence[Any]) -> np.ndarray:
    out = []
    for x in inputs:  # txtai hands texts, or (id, text, tags) tuples, or documents {"text": ...}
        data = x[1] if isinstance(x, tuple) else x
        out.append(TXTAI_VECTORS[str(data["text"] if isinstance(data, dict) else data)])
    return np.asarray(out, np.float32)


def _txtai_config() -> dict[str, Any]:
    return {"method": "external", "transform": txtai_transform, "hybrid": True, "content": False, "backend": "faiss"}


def build_txtai(vdir: Path, work: Path) -> None:
    from txtai import Embeddings

    texts = texts_of(vdir)
    vectors = np.asarray(np.load(vdir / "vectors.npy"), np.float32)
    TXTAI_VECTORS.update({t: vectors[i] for i, t in enumerate(texts)})
    emb = Embeddings(_txtai_config())
    emb.index([(i, t, None) for i, t in enumerate(texts)])
    emb.save(str(work / "txtai"))


def open_txtai(vdir: Path, work: Path) -> tuple[Search, ToRows]:
    from txtai import Embeddings

    emb = Embeddings()
    emb.load(str(work / "txtai"), config=_txtai_config())
    table_ = TXTAI_VECTORS

    def search(q: str, qvec: np.ndarray, k: int) -> Any:
        table_[q] = qvec  # the transform looks the query vector up instead of encoding
        return emb.search(q, k)

    return search, lambda res: [int(i) for i, _ in res]


BUILDERS: dict[str, Callable[[Path, Path], None]] = {"bm25s-faiss": build_bm25s_faiss, "lancedb": build_lancedb,
                                                     "txtai": build_txtai}
OPENERS: dict[str, Callable[[Path, Path], tuple[Search, ToRows]]] = {
    "vitrine": open_vitrine, "bm25s-faiss": open_bm25s_faiss, "lancedb": open_lancedb, "txtai": open_txtai,
    ALT: lambda vdir, work: open_vitrine(vdir, work, ALT_WEIGHT)}


def worker(system: str, size: str, mode: str, queries_file: Path, out_file: Path) -> None:
    """One subprocess: ``build`` the system's index for ``size``, or ``query`` it; JSON into ``out_file``."""
    import faiss

    faiss.omp_set_num_threads(1)
    vdir = version_dir(size)
    work = PEERS_OUT / size / system
    t0 = time.perf_counter()
    if mode == "build":
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        BUILDERS[system](vdir, work)
        result: dict[str, Any] = {"build_s": time.perf_counter() - t0}
    else:
        spec = json.loads(queries_file.read_text())
        qvecs = np.load(queries_file.with_suffix(".npy"))
        queries: list[str] = spec["queries"]
        search, to_rows = OPENERS[system](vdir, work)
        open_s = time.perf_counter() - t0
        k = int(spec["k"])
        for i in range(min(WARMUP, len(queries))):
            search(queries[-1 - i], qvecs[-1 - i], k)
        timed = len(queries) - (WARMUP if spec["warmup_from_end"] else 0)
        times, rows = [], []
        for q, v in zip(queries[:timed], qvecs[:timed]):
            t = time.perf_counter()
            answer = search(q, v, k)
            times.append(time.perf_counter() - t)
            rows.append(to_rows(answer)[:k])
        result = {"open_s": open_s, "latency": stats_ms(times), "queries": timed,
                  "peak_rss_mb": peak_rss_mb(),
                  "rows": rows if spec["keep_rows"] else []}
    out_file.write_text(json.dumps(result))


def peak_rss_mb() -> float:
    """This process's peak resident set: ``VmHWM`` (``ru_maxrss`` would carry over the parent's peak, as
    Linux keeps it across ``execve``); ``ru_maxrss`` where /proc is missing."""
    for line in Path("/proc/self/status").read_text().splitlines() if Path("/proc/self/status").exists() else []:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(system: str, size: str, mode: str, queries_file: Path | None = None) -> dict[str, Any]:
    out_file = PEERS_OUT / size / f"{system}-{mode}.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", system, "--worker-size", size,
           "--worker-mode", mode, "--worker-queries", str(queries_file or ""), "--worker-out", str(out_file)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not out_file.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{system} {mode} on {size} failed (rc {proc.returncode}): {' | '.join(tail)}")
    return dict(json.loads(out_file.read_text()))


# -- quality ---------------------------------------------------------------------------------

def crowdflower_judgements(vdir: Path) -> tuple[list[str], list[dict[int, float]]]:
    """The CrowdFlower queries and, per query, {catalog row of the published version: gain}."""
    from engine.catalog import load_catalog_jsonl
    from engine.evaluation.search_eval import load_crowdflower

    products, queries = load_crowdflower(DATA_DIR)
    row_of = {p.id: i for i, p in enumerate(load_catalog_jsonl(vdir / "items.jsonl"))}
    return [q for q, _, _ in queries], [{row_of[products[r]["id"]]: g for r, g in zip(rows, gains)}
                                         for _, rows, gains in queries]


def quality(rows: list[list[int]], judged: list[dict[int, float]]) -> dict[str, float]:
    from engine.evaluation.metrics import ndcg_at_k

    condensed, top_judged, plain, coverage = [], [], [], []
    for ranked, gains in zip(rows, judged):
        every = list(gains.values())
        condensed.append(ndcg_at_k([gains[r] for r in ranked if r in gains][:TOP], every, TOP))
        top_judged.append(ndcg_at_k([gains[r] for r in ranked[:TOP] if r in gains], every, TOP))
        plain.append(ndcg_at_k([gains.get(r, 0.0) for r in ranked[:TOP]], every, TOP))
        coverage.append(sum(r in gains for r in ranked[:TOP]))
    return {"judged_only": float(np.mean(condensed)), "top10_judged": float(np.mean(top_judged)),
            "plain": float(np.mean(plain)), "judged_at_10": float(np.mean(coverage))}


# -- main ------------------------------------------------------------------------------------

def write_queries(name: str, queries: list[str], k: int, keep_rows: bool, warmup_from_end: bool) -> Path:
    path = PEERS_OUT / f"queries-{name}.json"
    vecs = encode(queries, PEERS_OUT / f"qvecs-{name}.npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"queries": queries, "k": k, "keep_rows": keep_rows, "warmup_from_end": warmup_from_end}))
    np.save(path.with_suffix(".npy"), vecs)
    return path


def measure(systems: list[str], size: str, queries_file: Path, log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for system in systems:
        try:
            built = {"build_s": None} if system in ("vitrine", ALT) else run_worker(system, size, "build")
            res = run_worker(system, size, "query", queries_file)
            res["build_s"] = built["build_s"]
            out[system] = res
            log(f"[{size}] {NAMES[system]}: p50 {res['latency']['p50']:.2f} ms, p99 {res['latency']['p99']:.2f} ms, "
                f"peak RSS {res['peak_rss_mb']:.0f} MB (load {load_avg()})")
        except RuntimeError as e:
            out[system] = {"error": str(e)}
            log(f"[{size}] {NAMES[system]}: {e}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="demo,100k", help="comma-separated, from: demo, 100k")
    ap.add_argument("--queries", type=int, default=300, help="timed distinct shop queries per size (default 300)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from: {', '.join(SYSTEMS)}")
    ap.add_argument("--no-quality", action="store_true", help="skip the CrowdFlower quality runs")
    ap.add_argument("--rebuild", action="store_true", help="publish the 100k version again")
    ap.add_argument("--record", action="store_true", help="replace the bench_peers section of bench/RESULTS.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-size", help=argparse.SUPPRESS)
    ap.add_argument("--worker-mode", help=argparse.SUPPRESS)
    ap.add_argument("--worker-queries", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.worker_size, args.worker_mode, Path(args.worker_queries), Path(args.worker_out))
        return
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not sizes or set(sizes) - {"demo", "100k"} or not systems or set(systems) - set(SYSTEMS) or systems[0] != "vitrine":
        raise SystemExit("--sizes from demo,100k; --systems from " + ",".join(SYSTEMS) + ", starting with vitrine")
    load_at_start = load_avg()
    t_start = time.time()

    def log(msg: str) -> None:
        print(f"{time.time() - t_start:6.0f}s {msg}", file=sys.stderr, flush=True)

    from bench_search import shop_queries

    shop = shop_queries(args.queries + WARMUP)  # the last 20 are the warm-up queries
    shop_file = write_queries(f"shop-{args.queries}", shop, TOP, keep_rows=False, warmup_from_end=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    facts: dict[str, str] = {}
    for size in sizes:
        if size == "100k":
            build_100k(args.rebuild)
        vdir = version_dir(size)
        ix = manifest_index(vdir)
        n = sum(1 for _ in (vdir / "items.jsonl").open(encoding="utf-8"))
        facts[size] = (f"{n:,} items, Vitrine's vector index `{ix['spec']}`"
                       + (f" nprobe {ix['nprobe']} (recall@10 {ix['recall_at_10']} vs exact)" if ix.get("nprobe") else ""))
        log(f"[{size}] {facts[size]} ({vdir})")
        results[size] = measure(systems, size, shop_file, log)
    qual: dict[str, dict[str, Any]] = {}
    if not args.no_quality:
        cf_dir = version_dir("crowdflower")
        cf_queries, judged = crowdflower_judgements(cf_dir)
        # CrowdFlower: every query timed and kept; the warm-up re-asks the last 20 of them first.
        cf_file = write_queries("crowdflower", cf_queries, DEPTH, keep_rows=True, warmup_from_end=False)
        qual = measure(systems + ([ALT] if "vitrine" in systems else []), "crowdflower", cf_file, log)
        for res in qual.values():
            if "rows" in res:
                res["quality"] = quality(res.pop("rows"), judged)

    body = report(sizes, systems, results, qual, facts, args, load_at_start)
    print(body)
    if args.record:
        record("bench_peers", body)


def _ratio(x: float, base: float) -> str:
    return f"{x / base:.2f}x" if base > 0 else "-"


def report(sizes: list[str], systems: list[str], results: dict[str, dict[str, dict[str, Any]]],
           qual: dict[str, dict[str, Any]], facts: dict[str, str], args: argparse.Namespace, load_at_start: str) -> str:
    parts = ["## Peers, side by side (`bench/bench_peers.py`)", header("bench_peers.py", sys.argv[1:], load_at_start),
             "Library versions: " + ", ".join(f"{d} {_version(d)}" for d in ("bm25s", "faiss-cpu", "lancedb", "txtai")) + ".",
             f"In-process latency of one search call, query encoding excluded (the same precomputed MiniLM query "
             f"vectors for every system), top {TOP}, {args.queries} distinct shop queries once each after {WARMUP} "
             "warm-up queries, 1 thread, each system in a fresh subprocess; peak RSS = `VmHWM` (peak resident set) of that "
             "subprocess after opening its index and answering every query. Ratios are the system's figure over "
             "Vitrine's (above 1: slower than Vitrine). Build = the peer's own index build from the same texts and "
             "vectors (Vitrine's is its published version)."]
    verdicts: list[str] = []
    for size in sizes:
        res = results[size]
        base = res.get("vitrine", {}).get("latency")
        rows = []
        for s in systems:
            r = res[s]
            if "error" in r:
                rows.append([NAMES[s], "failed", "-", "-", "-", "-", "-", r["error"][:120]])
                continue
            lat = r["latency"]
            rows.append([NAMES[s], lat["p50"], lat["p99"], f"{r['peak_rss_mb']:,.0f}",
                         _ratio(lat["p50"], base["p50"]) if base else "-", _ratio(lat["p99"], base["p99"]) if base else "-",
                         "-" if r["build_s"] is None else f"{r['build_s']:.1f}", f"{r['open_s']:.2f}"])
        txtai_config = PEERS_OUT / size / "txtai" / "txtai" / "config.json"
        if "txtai" in systems and txtai_config.exists():
            settings = json.loads(txtai_config.read_text()).get("build", {}).get("settings", {})
            facts[size] += f"; txtai's FAISS index `{settings.get('components', '?')}` (its default)"
        parts += [f"### {size}: {facts[size]}",
                  table(["system", "p50 ms", "p99 ms", "peak RSS MB", "p50 / Vitrine", "p99 / Vitrine", "build s",
                         "open s"], rows)]
    if qual:
        qrows = []
        for s in [*systems, *([ALT] if ALT in qual else [])]:
            r = qual[s]
            if "error" in r:
                qrows.append([NAMES[s], "failed", "-", "-", "-", "-", "-"])
                continue
            q = r["quality"]
            qrows.append([NAMES[s], f"{q['judged_only']:.4f}", f"{q['top10_judged']:.4f}", f"{q['plain']:.4f}",
                          f"{q['judged_at_10']:.1f}",
                          r["latency"]["p50"], r["latency"]["p99"]])
        parts += ["### CrowdFlower quality: 9,913 products, 261 queries, full retrieval",
                  f"Each system ranks the whole catalog (depth {DEPTH}). Judged-only nDCG@10: unjudged products dropped "
                  "from that ranking, the rest cut at 10 (condensed list), gain = median_relevance - 1, ideal from "
                  "the query's judged gains (`engine.evaluation.metrics.ndcg_at_k`). Also: 'top 10, unjudged dropped' "
                  "(only the judged products of the plain top 10, possibly fewer than 10) and 'top 10, unjudged = 0' "
                  "(the plain top 10, unjudged products as gain 0). Latency here: the 261 queries at depth 100.",
                  table(["system", "nDCG@10 judged-only (condensed)", "top 10, unjudged dropped", "top 10, unjudged = 0",
                         "judged in top 10",
                         "p50 ms (k=100)", "p99 ms (k=100)"], qrows)]
    vq = qual.get("vitrine", {}).get("quality") if qual else None
    for s in systems[1:]:
        slower = []
        for size in sizes:
            v, p = results[size].get("vitrine", {}), results[size].get(s, {})
            if "latency" not in v or "latency" not in p:
                slower.append(f"{size}: not measured")
                continue
            for key in ("p50", "p99"):
                if v["latency"][key] > p["latency"][key]:
                    slower.append(f"{size} {key} {v['latency'][key]:.2f} vs {p['latency'][key]:.2f} ms")
        pq = qual.get(s, {}).get("quality") if qual else None
        q_ok = vq is not None and pq is not None and vq["judged_only"] >= pq["judged_only"]
        q_text = (f"quality {vq['judged_only']:.4f} vs {pq['judged_only']:.4f}" if vq and pq else "quality not measured")
        met = not slower and q_ok
        verdicts.append(f"- vs {NAMES[s]}: {'**met**' if met else '**not met**'} "
                        f"({'as fast or faster everywhere' if not slower else 'Vitrine slower: ' + '; '.join(slower)}; "
                        f"{q_text})")
    parts += ["Target: Vitrine at least as fast as every peer (p50 and p99, every size) at equal or better quality "
              "(judged-only nDCG@10):", "\n".join(verdicts)]
    notes = _notes(sizes, systems, results, qual)
    if notes:
        parts += ["Notes:", "\n".join(notes)]
    return "\n\n".join(parts)


def _notes(sizes: list[str], systems: list[str], results: dict[str, dict[str, dict[str, Any]]],
           qual: dict[str, dict[str, Any]]) -> list[str]:
    """Where Vitrine is behind a peer on a figure outside the target (memory, the top-10 quality variants): why,
    and what would close it."""
    notes, above = [], []
    for size in sizes:
        v = results[size].get("vitrine", {})
        leaner = [f"{NAMES[s]} {results[size][s]['peak_rss_mb']:,.0f} MB" for s in systems[1:]
                  if "peak_rss_mb" in results[size].get(s, {}) and "peak_rss_mb" in v
                  and results[size][s]["peak_rss_mb"] < v["peak_rss_mb"]]
        if leaner:
            above.append(f"at {size} {v['peak_rss_mb']:,.0f} MB vs {', '.join(leaner)}")
    if above:
        notes.append(
            f"- Memory (not part of the target): Vitrine's peak RSS is above a peer's ({'; '.join(above)}). Most of "
            "the difference is the catalog, which Vitrine's snapshot holds as Python `Product` objects (hits, filters "
            "and facets read their fields; loading the 100k catalog alone adds about 115 MB on this machine), while "
            "the peers here return row numbers and keep no product fields in memory. Closing it: a columnar catalog "
            "(fields in numpy/Arrow arrays, or read on demand from the memory-mapped items file) instead of one "
            "object per item.")
    vq = qual.get("vitrine", {}).get("quality") if qual else None
    if vq:
        behind = [s for s in systems[1:] if "quality" in qual.get(s, {})
                  and (qual[s]["quality"]["top10_judged"] > vq["top10_judged"] or qual[s]["quality"]["plain"] > vq["plain"])]
        if behind:
            alt = qual.get(ALT, {}).get("quality")
            best = {k: max(qual[s]["quality"][k] for s in behind) for k in ("top10_judged", "plain")}
            notes.append(
                f"- CrowdFlower, the plain top-10 variants: Vitrine ({vq['top10_judged']:.4f} unjudged dropped, "
                f"{vq['plain']:.4f} unjudged = 0) is behind {', '.join(NAMES[s] for s in behind)} (best "
                f"{best['top10_judged']:.4f} / {best['plain']:.4f}). It has fewer judged products in its top 10 "
                f"({vq['judged_at_10']:.1f} of 10): with vector weight 0.9 it brings up products that are close in "
                "meaning but were judged for other queries only, and these variants count them for nothing, while "
                "the condensed list (the target's measure) ranks the judged ones and Vitrine leads there."
                + (f" A lower vector weight closes it: `hybrid_weight` {ALT_WEIGHT} gives {alt['judged_only']:.4f} "
                   f"condensed, {alt['top10_judged']:.4f} / {alt['plain']:.4f} on the top-10 variants "
                   f"({alt['judged_at_10']:.1f} judged in the top 10), measured on all 261 queries here, whereas the "
                   "served 0.9 was tuned by `vitrine eval search` on re-ranking each query's judged list (even-crc32 "
                   "half); retuning it on full retrieval is the fix, if the top-10 variants matter."
                   if alt else ""))
    return notes


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
