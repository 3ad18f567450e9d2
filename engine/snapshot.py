"""One published index version loaded for serving: catalog, vectors, FAISS, BM25 and filter arrays.

Read-only and immutable once loaded, so any number of request threads can share it; a reload
builds a new Snapshot and swaps the reference (see ``engine.service``).
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.catalog import Catalog, category_key, load_catalog_jsonl
from engine.filters import Filters
from engine.index import versions
from engine.index.keyword import KeywordIndex
from engine.index.vector import VectorIndex

log = logging.getLogger(__name__)
_WARM_CHUNK = 4 << 20
TITLE_VECTORS = "title_vectors.npy"  # float16 (n, dim): each item's title embedded alone (setting ``title_vectors``)


def warm_page_cache(paths: Sequence[Path]) -> threading.Thread:
    """Read ``paths`` once, in a daemon thread, so that their pages are in the OS page cache (shared by
    every process that maps them) before queries touch them. Errors are logged, never raised."""

    def read() -> None:
        t0, total = time.perf_counter(), 0
        buf = bytearray(_WARM_CHUNK)
        for path in paths:
            try:
                with open(path, "rb", buffering=0) as fh:
                    if hasattr(os, "posix_fadvise"):
                        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
                    while n := fh.readinto(buf):
                        total += n
            except OSError as e:
                log.warning("could not warm the page cache with %s: %s", path, e)
        log.debug("page cache warmed with %.0f MB in %.2f s", total / 2**20, time.perf_counter() - t0)

    thread = threading.Thread(target=read, name="vitrine-warm-page-cache", daemon=True)
    thread.start()
    return thread


def created_seconds(catalog: Catalog) -> np.ndarray | None:
    """Each item's ``created_at`` (ISO 8601 UTC, as the catalog stores it) as float64 epoch seconds, NaN where
    it has none; None when no item has one."""
    stamps = [p.created_at for p in catalog]
    if not any(stamps):
        return None
    when = np.array([s.rstrip("Z") if s else "NaT" for s in stamps], "datetime64[s]")
    out = when.astype(np.int64).astype(np.float64)
    out[np.isnat(when)] = math.nan
    return out


def title_key(title: str) -> str:
    return " ".join(title.lower().split())


@dataclass(frozen=True)
class Snapshot:
    version: str
    path: Path
    manifest: dict[str, Any]
    catalog: Catalog
    vectors: np.ndarray
    vector_index: VectorIndex
    keyword: KeywordIndex
    price: np.ndarray  # float32, NaN where unknown
    in_stock: np.ndarray  # bool; unknown counts as in stock
    category_rows: dict[str, np.ndarray]  # every category prefix key -> int64 rows
    category_code: np.ndarray  # int32 per row: its category path's index in ``category_paths``
    category_paths: list[tuple[str, ...]]  # every distinct category path, in catalog order of first use
    title_keys: list[str]
    # Memory-mapped; None for a version built without them (``title_vectors = false``, or before they existed).
    title_vectors: np.ndarray | None = None
    # float64 epoch seconds of each item's ``created_at`` (NaN unknown); None when no item has one
    created: np.ndarray | None = None

    @classmethod
    def load(cls, version_dir: Path) -> "Snapshot":
        manifest = versions.read_manifest(version_dir)
        catalog = load_catalog_jsonl(version_dir / "items.jsonl")
        vectors = np.load(version_dir / "vectors.npy", mmap_mode="r", allow_pickle=False)
        ix = manifest["index"]
        # A compressed index scores from its own codes: the fp32 array stays on disk for it (the search
        # path never reads it; ``vectors`` below is a lazy memory map for the recommenders).
        vindex = VectorIndex.load(version_dir / "vectors.faiss", None if ix.get("serves_from_codes") else vectors,
                                  int(ix.get("nprobe", 0)), ef_search=int(ix.get("ef_search", 0)),
                                  k_factor=int(ix.get("k_factor", 0)))
        keyword = KeywordIndex.load(version_dir / "bm25", len(catalog))
        title_vectors = None
        if (version_dir / TITLE_VECTORS).is_file():
            title_vectors = np.load(version_dir / TITLE_VECTORS, mmap_mode="r", allow_pickle=False)
            if title_vectors.shape != (len(catalog), vectors.shape[1]):
                raise ValueError(f"{version_dir / TITLE_VECTORS}: shape {title_vectors.shape}, expected "
                                 f"{(len(catalog), vectors.shape[1])}")
        # The indexes are memory-mapped: read them into the page cache now, in the background, so that the
        # first queries do not wait on the disk for each page they touch (at 1M items that made p99 0.3 s).
        warm_page_cache([version_dir / "vectors.faiss", *sorted((version_dir / "bm25").glob("*"))]
                        + ([] if ix.get("serves_from_codes") else [version_dir / "vectors.npy"])
                        + ([] if title_vectors is None else [version_dir / TITLE_VECTORS]))
        price = np.array([math.nan if p.price is None else p.price for p in catalog], np.float32)
        in_stock = np.array([p.in_stock is not False for p in catalog], bool)
        prefixes: dict[str, list[int]] = {}
        codes: dict[tuple[str, ...], int] = {}
        category_code = np.empty(len(catalog), np.int32)
        for row, p in enumerate(catalog):
            for depth in range(1, len(p.category) + 1):
                prefixes.setdefault(category_key(p.category[:depth]), []).append(row)
            category_code[row] = codes.setdefault(p.category, len(codes))
        return cls(
            version=manifest["version"],
            path=version_dir,
            manifest=manifest,
            catalog=catalog,
            vectors=vectors,
            vector_index=vindex,
            keyword=keyword,
            price=price,
            in_stock=in_stock,
            category_rows={k: np.array(v, np.int64) for k, v in prefixes.items()},
            category_code=category_code,
            category_paths=list(codes),
            title_keys=[title_key(p.title) for p in catalog],
            title_vectors=title_vectors,
            created=created_seconds(catalog),
        )

    def __len__(self) -> int:
        return len(self.catalog)

    def vectors_of(self, item_ids: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(found, vectors)``: which of ``item_ids`` this version serves, and their unit vectors
        ``(len(item_ids), dim)`` (row 0's vector where not found)."""
        rows = np.fromiter((self.catalog.id_map.get(i, -1) for i in item_ids), np.int64, len(item_ids))
        found = rows >= 0
        return found, np.asarray(self.vectors)[np.where(found, rows, 0)]

    def title_scores(self, qvec: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
        """Cosine of the query vector to each of ``rows``' titles embedded alone; None without title vectors."""
        if self.title_vectors is None:
            return None
        tv = self.title_vectors.view(np.ndarray)[np.asarray(rows, np.int64)].astype(np.float32)  # no memmap per call
        return (tv @ np.asarray(qvec, np.float32)).astype(np.float64)

    def filter_mask(self, filters: Filters) -> np.ndarray | None:
        """Bool mask of rows passing every filter set in ``filters``; ``None`` when none is set."""
        mask: np.ndarray | None = None

        def both(m: np.ndarray) -> np.ndarray:
            return m if mask is None else mask & m

        if filters.category is not None:
            m = np.zeros(len(self), bool)
            m[self.category_rows.get(category_key(filters.category), np.empty(0, np.int64))] = True
            mask = both(m)
        if filters.min_price is not None:
            mask = both(self.price >= filters.min_price)
        if filters.max_price is not None:
            mask = both(self.price <= filters.max_price)
        if filters.in_stock is not None:
            mask = both(self.in_stock if filters.in_stock else ~self.in_stock)
        return mask
