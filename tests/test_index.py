"""Vector and keyword indexes: one contract over the exact and the IVF backends, save/load, filters."""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from engine.embedding.base import Encoder
from engine.index.keyword import KeywordIndex
from engine.index.vector import VectorIndex, build_vector_index, choose_spec, recall_at_k
from tests.conftest import DEMO_CATALOG


@pytest.fixture(scope="module")
def demo_vectors(encoder: Encoder) -> np.ndarray:
    """Real MiniLM vectors of 1,500 demo product titles."""
    import json

    with DEMO_CATALOG.open(encoding="utf-8") as fh:
        titles = [json.loads(line)["title"] for _, line in zip(range(1500), fh)]
    return encoder.encode(titles)


@pytest.fixture(scope="module", params=["exact", "ivf"])
def vindex(request: pytest.FixtureRequest, demo_vectors: np.ndarray) -> VectorIndex:
    spec = "Flat" if request.param == "exact" else "IVF32,Flat"
    index, info = build_vector_index(demo_vectors, spec=spec, nprobe=4, target_recall=0.95)
    assert info.kind == request.param
    return VectorIndex(index, demo_vectors, info.nprobe)


def test_choose_spec_by_size() -> None:
    assert choose_spec(5000, 20000) == "Flat"
    assert choose_spec(100_000, 20000) == "IVF1024,Flat"
    assert choose_spec(1_000_000, 20000) == "IVF4096,Flat"


def test_ivf_meets_target_recall_on_real_vectors(demo_vectors: np.ndarray) -> None:
    index, info = build_vector_index(demo_vectors, spec="IVF32,Flat", nprobe=1, target_recall=0.95)
    assert info.recall_at_10 >= 0.95 and info.nprobe > 1  # nprobe 1 is not enough; it was raised
    exact = faiss.IndexFlatIP(demo_vectors.shape[1])
    exact.add(demo_vectors)
    queries = demo_vectors[::7] * 0.9 + demo_vectors[3::7][: len(demo_vectors[::7])].mean(0) * 0.1
    _, truth = exact.search(queries, 10)
    got = VectorIndex(index, demo_vectors, info.nprobe).search(queries, 10).rows
    assert recall_at_k(truth, got) >= 0.9


def test_self_is_nearest(vindex: VectorIndex, demo_vectors: np.ndarray) -> None:
    hits = vindex.search(demo_vectors[:20], 5)
    assert hits.rows.shape == (20, 5) and hits.scores.dtype == np.float32
    assert (hits.rows[:, 0] == np.arange(20)).mean() >= 0.95
    assert np.all(np.diff(hits.scores, axis=1) <= 1e-6)


def test_batch_equals_single_queries(vindex: VectorIndex, demo_vectors: np.ndarray) -> None:
    batch = vindex.search(demo_vectors[100:110], 8)
    for i in range(10):
        one = vindex.search(demo_vectors[100 + i], 8)
        assert list(one.rows[0]) == list(batch.rows[i])


@pytest.mark.parametrize("share", [0.5, 0.01])
def test_allowed_mask_is_respected(vindex: VectorIndex, demo_vectors: np.ndarray, share: float) -> None:
    rng = np.random.default_rng(7)
    allowed = rng.random(len(demo_vectors)) < share
    hits = vindex.search(demo_vectors[:10], 10, allowed=allowed)
    rows = hits.rows[hits.rows >= 0]
    assert len(rows) > 0 and allowed[rows].all()


def test_padding_when_fewer_results(vindex: VectorIndex, demo_vectors: np.ndarray) -> None:
    allowed = np.zeros(len(demo_vectors), bool)
    allowed[[3, 9]] = True
    hits = vindex.search(demo_vectors[:1], 5, allowed=allowed)
    assert sorted(hits.rows[0][:2]) == [3, 9]
    assert list(hits.rows[0][2:]) == [-1, -1, -1] and np.isneginf(hits.scores[0][2:]).all()
    none = vindex.search(demo_vectors[:1], 5, allowed=np.zeros(len(demo_vectors), bool))
    assert (none.rows == -1).all()


def test_save_load_round_trip(vindex: VectorIndex, demo_vectors: np.ndarray, tmp_path: Path) -> None:
    vindex.save(tmp_path / "v.faiss")
    loaded = VectorIndex.load(tmp_path / "v.faiss", demo_vectors, vindex.nprobe)
    a, b = vindex.search(demo_vectors[:5], 10), loaded.search(demo_vectors[:5], 10)
    assert np.array_equal(a.rows, b.rows) and np.allclose(a.scores, b.scores)


def test_keyword_index_scores_and_round_trip(tmp_path: Path) -> None:
    docs = ["PLA filament 1.75mm red", "nitrile gloves large", "filament spool holder", "gloves box"]
    index = KeywordIndex.build(docs)
    s = index.scores("Filaments")  # stemmed and lower-cased
    assert s[0] > 0 and s[2] > 0 and s[1] == 0 and s[3] == 0
    assert not index.scores("the and of").any()  # stop words only
    assert not index.scores("zzzz").any()
    index.save(tmp_path / "bm25")
    loaded = KeywordIndex.load(tmp_path / "bm25", len(docs))
    assert np.allclose(loaded.scores("nitrile gloves"), index.scores("nitrile gloves"))


def test_ivf_reuses_the_previous_centroids(demo_vectors: np.ndarray) -> None:
    old, first = build_vector_index(demo_vectors[:1200], spec="IVF32,Flat", nprobe=1, target_recall=0.95)
    assert first.quantizer == "trained"
    new, info = build_vector_index(demo_vectors, spec="IVF32,Flat", nprobe=1, target_recall=0.95, reuse=old)
    assert info.quantizer == "reused" and info.recall_at_10 >= 0.95 and new.ntotal == len(demo_vectors)
    centroids = [faiss.extract_index_ivf(i).quantizer.reconstruct_n(0, 32) for i in (old, new)]
    assert np.array_equal(centroids[0], centroids[1])
    other, again = build_vector_index(demo_vectors, spec="IVF16,Flat", nprobe=1, target_recall=0.95, reuse=old)
    assert again.quantizer == "trained" and faiss.extract_index_ivf(other).nlist == 16  # 32 lists do not fit


@pytest.mark.parametrize("spec", ["Flat", "IVF32,Flat"])
def test_loaded_index_is_memory_mapped_and_answers_the_same(demo_vectors: np.ndarray, spec: str,
                                                           tmp_path: Path) -> None:
    index, info = build_vector_index(demo_vectors, spec=spec, nprobe=8, target_recall=0.9)
    built = VectorIndex(index, demo_vectors, info.nprobe)
    path = tmp_path / f"{spec.split(',')[0]}.faiss"
    built.save(path)
    loaded = VectorIndex.load(path, demo_vectors, info.nprobe)
    maps = Path("/proc/self/maps").read_text()
    assert str(path) in maps  # shared through the page cache, not read into each worker
    a, b = built.search(demo_vectors[:50], 10), loaded.search(demo_vectors[:50], 10)
    assert np.array_equal(a.rows, b.rows) and np.allclose(a.scores, b.scores)


def test_the_tokenizer_is_bm25s_recipe_exactly() -> None:
    import json

    import bm25s

    from engine.index.keyword import _stemmer, tokenize
    from tests.conftest import ROOT

    lines = (ROOT / "data" / "demo" / "catalog.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    texts = [r["title"] for r in rows] + [r.get("description", "") for r in rows] + ["", "The  a of", "CO2-laser 3D's"]
    expected = bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer, return_ids=False, show_progress=False)
    assert tokenize(texts) == [list(t) for t in expected]



def _resident_share(path: Path) -> float:
    """Share of ``path``'s pages in the OS page cache (Linux ``mincore`` over a private, unmodified map)."""
    import ctypes
    import mmap
    import os

    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    vec = ctypes.create_string_buffer(pages)
    with path.open("rb") as fh:
        mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY)
        first = ctypes.c_char.from_buffer(mm)
        try:
            assert libc.mincore(ctypes.addressof(first), size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            del first
            mm.close()
    return sum(b & 1 for b in vec.raw) / pages


def test_a_loaded_version_warms_the_page_cache_with_its_indexes(tmp_path: Path) -> None:
    """The memory-mapped index files are read into the page cache at load, so that the first queries do
    not each wait on the disk (at 1M items that made /v1/search p99 0.3 s)."""
    import os

    from engine.snapshot import warm_page_cache

    path = tmp_path / "index.bin"
    path.write_bytes(np.random.default_rng(0).bytes(8 << 20))
    with path.open("rb") as fh:
        os.fsync(fh.fileno())
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped
    if _resident_share(path) > 0.5:
        pytest.skip("this file system keeps the pages in memory (tmpfs): nothing to warm")
    warm_page_cache([path, tmp_path / "missing.bin"]).join(timeout=30)  # a missing file is logged, not raised
    assert _resident_share(path) == 1.0


@pytest.mark.parametrize("spec", ["Flat", "IVF32,SQ8", "HNSW16,SQ8", "IVF32,PQ48", "IVF32,PQ48,Refine(SQ8)"])
def test_a_search_scores_a_row_as_its_decoded_vector_does(demo_vectors: np.ndarray, spec: str) -> None:
    # engine.search.scored_candidates takes a vector row's cosine from the index search and a keyword row's
    # from its decoded vector, which is only sound if the two agree on every kind of index.
    index, info = build_vector_index(demo_vectors, spec=spec, nprobe=4, target_recall=0.9)
    vi = VectorIndex(index, demo_vectors if spec == "Flat" else None, info.nprobe)
    queries = demo_vectors[::150] + 0.05 * np.random.default_rng(0).standard_normal((10, demo_vectors.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    allowed = np.arange(len(demo_vectors)) % 3 > 0
    for mask in (None, allowed):
        for q in queries:
            hits = vi.search(q[None, :], 50, allowed=mask)
            rows = hits.rows[0][hits.rows[0] >= 0]
            assert len(rows) == 50
            assert np.allclose(hits.scores[0][:len(rows)], vi.score(q, rows), atol=1e-5)
