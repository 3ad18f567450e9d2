"""Online serving: ``Engine`` answers search, similar items and item look-ups from the published version.

Read-only over ``index_dir``. Thread-safe: requests share an immutable ``Snapshot``; at most every
``reload_check_seconds`` a request looks at the ``current`` pointer, and when it moved, that
request loads the new version and swaps the reference while other requests keep using the old
one. No request ever sees a half-loaded version or fails because of a publish.
"""
from __future__ import annotations

import functools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.catalog import Product
from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.events import EventStore
from engine.recommend.live import LiveModels
from engine.errors import IndexNotBuilt, InvalidQuery
from engine.index import store
from engine.memory import release_free_memory
from engine.search import Hit, facets, ranked_search, similar_items
from engine.shoppers import ShopperMixin
from engine.snapshot import Snapshot
from engine.suggest import DEFAULT_K as DEFAULT_SUGGESTIONS
from engine.suggest import MAX_K as MAX_SUGGESTIONS
from engine.suggest import MAX_QUERY_CHARS as MAX_SUGGEST_CHARS
from engine.suggest import Suggester

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 500


@dataclass(frozen=True)
class SearchResult:
    query: str
    version: str
    k: int
    offset: int
    hits: list[Hit]
    took_ms: float
    # Candidate rows after every filter: about how many results paging can reach.
    total_candidates: int = 0
    # See engine.search.facets: {"category": [{"path", "name", "count"}], "price": {"min", "max"}}.
    facets: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "version": self.version,
            "k": self.k,
            "offset": self.offset,
            "took_ms": round(self.took_ms, 3),
            "total_candidates": self.total_candidates,
            "facets": self.facets,
            "hits": [h.to_dict() for h in self.hits],
        }


class Engine(ShopperMixin):
    """The serving façade. Create one per process and share it between threads."""

    def __init__(self, config: EngineConfig, encoder: Encoder | None = None, *,
                 warm_suggestions: bool = False) -> None:
        """``warm_suggestions``: build each new version's suggestion index in the background as soon as
        the version is loaded (the server does), instead of on the first suggestion request."""
        self.config = config
        self._warm_suggestions = warm_suggestions
        self._encoder = encoder
        self._snap: Snapshot | None = None
        self._checked_at = 0.0
        self._reload_lock = threading.Lock()
        self._encoder_lock = threading.Lock()
        self._embed_cached = functools.lru_cache(maxsize=config.query_cache_size)(self._embed_uncached)
        self._events: EventStore | None = None
        self._events_lock = threading.Lock()
        self._live: LiveModels | None = None
        self._suggester: tuple[str, Suggester] | None = None
        self._suggester_lock = threading.Lock()
        self._top_users: dict[int, tuple[float, list[tuple[str, int, str | None]]]] = {}

    # -- versions -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The current snapshot, reloaded if ``current`` moved since the last check."""
        now = time.monotonic()
        snap = self._snap
        if snap is not None and now - self._checked_at < self.config.reload_check_seconds:
            return snap
        if not self._reload_lock.acquire(blocking=snap is None):
            return snap  # type: ignore[return-value]  # another thread is reloading; serve the old one
        try:
            self._checked_at = now
            version = store.current_version(self.config.index_dir)
            if version is None:
                if self._snap is None:
                    raise IndexNotBuilt(f"no index published in {self.config.index_dir}; run `vitrine build`")
                return self._snap
            if self._snap is None or self._snap.version != version:
                try:
                    loaded = Snapshot.load(store.current_dir(self.config.index_dir))
                except (OSError, ValueError, KeyError) as e:
                    if self._snap is None:
                        raise IndexNotBuilt(f"cannot load index version {version}: {e}") from e
                    log.warning("cannot load version %s, still serving %s: %s", version, self._snap.version, e)
                    return self._snap
                self._check_encoder(loaded)
                self._snap = loaded
                release_free_memory()
                log.info("serving index version %s (%d items)", loaded.version, len(loaded))
                if self._warm_suggestions:
                    threading.Thread(target=self.suggester, args=(loaded,), kwargs={"wait": True},
                                     name="warm-suggestions", daemon=True).start()
            return self._snap
        finally:
            self._reload_lock.release()

    # -- queries ------------------------------------------------------------------------------
    def search(
        self,
        query: str,
        *,
        k: int | None = None,
        offset: int = 0,
        category: str | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        in_stock: bool | None = None,
        weight: float | None = None,
        user: str | None = None,
        personalize: float | None = None,
    ) -> SearchResult:
        t0 = time.perf_counter()
        query = " ".join((query or "").split())
        if not query:
            raise InvalidQuery("q", "must not be empty")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidQuery("q", f"must be at most {MAX_QUERY_CHARS} characters")
        k = self._check_k(k)
        if not 0 <= offset <= self.config.max_offset:
            raise InvalidQuery("offset", f"must be in 0..{self.config.max_offset}, got {offset}")
        for name, value in (("min_price", min_price), ("max_price", max_price)):
            if value is not None and (not math.isfinite(value) or value < 0):
                raise InvalidQuery(name, f"must be a number >= 0, got {value}")
        if min_price is not None and max_price is not None and min_price > max_price:
            raise InvalidQuery("min_price", f"must not exceed max_price ({min_price} > {max_price})")
        if weight is not None and not 0.0 <= weight <= 1.0:
            raise InvalidQuery("weight", f"must be in 0..1, got {weight}")
        if personalize is not None and not 0.0 <= personalize <= 1.0:
            raise InvalidQuery("personalize", f"must be in 0..1 (0 = off), got {personalize}")
        if user is not None and not user.strip():
            raise InvalidQuery("user", "must not be empty")
        snap = self.snapshot()
        mask = snap.filter_mask(category, min_price, max_price, in_stock)
        strength = (self.config.personalize if personalize is None else personalize) if user else 0.0
        affinity = self._affinity(user, snap) if user and strength > 0 else None
        qvec = self.embed_query(query)
        pool = max(self.config.candidate_pool, offset + k)
        ranked = ranked_search(
            snap,
            query,
            qvec,
            k=k,
            offset=offset,
            mask=mask,
            pool=pool,
            weight=self.config.hybrid_weight if weight is None else weight,
            fusion=self.config.fusion,
            affinity=affinity,
            personalize=strength,
        )
        facet = facets(snap, ranked.bm25_all, qvec, pool, ranked.rows, category=category, min_price=min_price,
                       max_price=max_price, in_stock=in_stock)
        return SearchResult(query, snap.version, k, offset, ranked.hits, (time.perf_counter() - t0) * 1000,
                            total_candidates=len(ranked.rows), facets=facet)

    def suggest(self, q: str, k: int | None = None) -> dict[str, Any]:
        """Type-ahead suggestions for the typed text ``q`` (see :mod:`engine.suggest`):
        ``{"q", "version", "suggestions": [{"text", "kind", "id"?, "category", "count"?}]}``."""
        k = DEFAULT_SUGGESTIONS if k is None else k
        if not isinstance(q, str) or not q.strip():
            raise InvalidQuery("q", "must not be empty")
        if len(q) > MAX_SUGGEST_CHARS:
            raise InvalidQuery("q", f"must be at most {MAX_SUGGEST_CHARS} characters, got {len(q)}")
        if not 1 <= k <= MAX_SUGGESTIONS:
            raise InvalidQuery("k", f"must be in 1..{MAX_SUGGESTIONS}, got {k}")
        snap = self.snapshot()
        return {"q": q, "version": snap.version, "suggestions": self.suggester(snap).suggest(q, k)}

    def suggester(self, snap: Snapshot, *, wait: bool = False) -> Suggester:
        """The suggestion index of ``snap``'s version, built once per version and process. While another
        thread builds it (about 2 s at 100k items), the previous version's index answers, unless ``wait``."""
        cached = self._suggester
        if cached is not None and cached[0] == snap.version:
            return cached[1]
        if not self._suggester_lock.acquire(blocking=wait or cached is None):
            return cached[1]  # type: ignore[index]  # being built: the previous version's answers meanwhile
        try:
            cached = self._suggester
            if cached is None or cached[0] != snap.version:
                t0 = time.perf_counter()
                cached = (snap.version, Suggester.from_products(snap.catalog))
                self._suggester = cached
                release_free_memory()
                log.info("suggestion index for %s: %d entries, %d words in %.2f s", snap.version,
                         len(cached[1]), len(cached[1].vocab), time.perf_counter() - t0)
            return cached[1]
        finally:
            self._suggester_lock.release()

    def similar(self, item_id: str, *, k: int | None = None, same_category: bool = False) -> list[Hit]:
        k = self._check_k(k)
        snap = self.snapshot()
        return similar_items(snap, snap.catalog.row(item_id), k=k, same_category=same_category)

    def item(self, item_id: str) -> Product:
        snap = self.snapshot()
        return snap.catalog[snap.catalog.row(item_id)]

    def info(self) -> dict[str, Any]:
        snap = self.snapshot()
        return {
            "version": snap.version,
            "items": len(snap),
            "versions": store.list_versions(self.config.index_dir),
            "encoder": self.encoder.name if self._encoder is not None else None,
            "manifest": snap.manifest,
        }

    # -- embedding ----------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    from engine.embedding.factory import build_encoder

                    self._encoder = build_encoder(
                        self.config.encoder,
                        cache_dir=self.config.models_path,
                        threads=self.config.torch_threads,
                        max_seq_length=self.config.max_seq_length,
                    )
        return self._encoder

    def embed_query(self, query: str) -> np.ndarray:
        """Unit query vector (read-only array), from an LRU cache of ``query_cache_size`` entries."""
        return self._embed_cached(query)

    def _embed_uncached(self, query: str) -> np.ndarray:
        vec = self.encoder.encode([query])[0]
        vec.flags.writeable = False
        return vec

    def _check_encoder(self, snap: Snapshot) -> None:
        family = snap.manifest.get("embedding", {}).get("family")
        if family and family != self.encoder.family:
            raise IndexNotBuilt(
                f"index {snap.version} was embedded by {family!r} but this server encodes queries with "
                f"{self.encoder.family!r}; rebuild the index or set VITRINE_ENCODER"
            )

    def _check_k(self, k: int | None) -> int:
        k = self.config.default_k if k is None else k
        if not 1 <= k <= self.config.max_k:
            raise InvalidQuery("k", f"must be in 1..{self.config.max_k}, got {k}")
        return k
