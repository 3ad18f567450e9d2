"""Online serving: ``Engine`` answers search, similar items and item look-ups from the published version.

Read-only over ``index_dir``. Thread-safe: requests share an immutable ``Snapshot``; at most every
``reload_check_seconds`` a request looks at the ``current`` pointer, and when it moved, that
request loads the new version and swaps the reference while other requests keep using the old
one. No request ever sees a half-loaded version or fails because of a publish.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from engine.catalog import Product
from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.events import EventStore, EventType, open_event_store, validate_many
from engine.recommend.blend import Blender
from engine.recommend.compose import BETA, HISTORY_DECAY, HISTORY_LIMIT, Touch, profile_from, recommend
from engine.recommend.content import InterestProfile, decode_profile, encode_profile
from engine.recommend.live import LiveModels
from engine.errors import IndexNotBuilt, InvalidQuery
from engine.index import store
from engine.memory import release_free_memory
from engine.search import COOC_WEIGHT, Hit, facets, personal_score, ranked_search, similar_items
from engine.snapshot import Snapshot
from engine.suggest import DEFAULT_K as DEFAULT_SUGGESTIONS
from engine.suggest import MAX_K as MAX_SUGGESTIONS
from engine.suggest import MAX_QUERY_CHARS as MAX_SUGGEST_CHARS
from engine.suggest import Suggester

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 500
MAX_STATS_DAYS = 366
MAX_SAMPLE_SHOPPERS = 1000
# sample_shoppers scans every event: its answer is kept this long (this engine's own ingests and
# deletions clear it at once; other processes' events show up within this time).
SAMPLE_SHOPPERS_TTL_S = 30.0


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


# Profiles are folded from the event log on read; see Engine._profile.
PROFILE_FOLD_LIMIT = 500
PROFILE_WRITE_BACK = 10


class Engine:
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

    # -- shoppers -----------------------------------------------------------------------------
    @property
    def events(self) -> EventStore:
        """The event store (opened on first use; category look-ups go to the served catalog)."""
        if self._events is None:
            with self._events_lock:
                if self._events is None:
                    self._events = open_event_store(self.config.events_url, category_of=self._category_of)
        return self._events

    def ingest(self, objs: list[Any]) -> dict[str, Any]:
        """Validate each event, store the valid ones durably; returns accepted, duplicate and rejected ones."""
        snap = self.snapshot()
        events, rejected = validate_many(objs, known_item=snap.catalog.__contains__, now=time.time())
        result = self.events.add_many(events)
        if result.accepted:
            self._top_users.clear()
        return {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "rejected": [r.to_dict() for r in rejected],
        }

    def recommend(
        self,
        user_id: str | None = None,
        *,
        recent: list[str] | None = None,
        k: int | None = None,
        category: str | None = None,
        min_price: float | None = None,
        max_price: float | None = None,
        exclude: list[str] | None = None,
        diversity: float = 0.0,
    ) -> dict[str, Any]:
        """Recommendations for a known shopper (their stored history and profile) or an anonymous
        session (``recent`` item ids, oldest first). An unknown shopper gets cold-start (trending) answers."""
        k = self._check_k(k)
        if not 0.0 <= diversity <= 1.0:
            raise InvalidQuery("diversity", f"must be in 0..1, got {diversity}")
        snap = self.snapshot()
        mask = snap.filter_mask(category, min_price, max_price)
        profile = None
        if user_id is not None:
            history = self._history(user_id, snap)
            profile = self._profile(user_id, snap) if history else None
        else:
            history = [Touch(i, "view") for i in (recent or [])]
        recs = recommend(snap, self.live, history, k=k, blender=Blender(mmr_lambda=1.0 - diversity),
                         profile=profile, filter_mask=mask, exclude=exclude or [])
        return {"user_id": user_id, "version": snap.version, "k": k, "recommendations": recs}

    def _history(self, user_id: str, snap: Snapshot) -> list[Touch]:
        """The shopper's last ``HISTORY_LIMIT`` item events on served items, oldest first."""
        return [Touch(e.item_id, e.type.value, e.timestamp)
                for e in self.events.user_events(user_id, limit=HISTORY_LIMIT) if e.item_id in snap.catalog]

    def _affinity(self, user_id: str, snap: Snapshot) -> Callable[[np.ndarray], np.ndarray] | None:
        """``rows -> personal_score`` for this shopper (content profile + co-occurrence with their
        recent items), or None for a shopper without history (then search is not personalized)."""
        history = self._history(user_id, snap)
        if not history:
            return None
        profile = self._profile(user_id, snap) or profile_from(history, snap)
        recent = [(t.item_id, HISTORY_DECAY ** age) for age, t in enumerate(reversed(history))]
        with self.live.current() as models:
            scored = models.cooccurrence.scores(recent)
        ids = snap.catalog.ids

        def affinity(rows: np.ndarray) -> np.ndarray:
            content, _ = profile.score(np.asarray(snap.vectors[rows]), BETA)
            cooc = np.array([scored.get(ids[r], (0.0, None))[0] for r in rows], np.float64)
            return personal_score(content, cooc, COOC_WEIGHT)

        return affinity

    @property
    def live(self) -> LiveModels:
        if self._live is None:
            events = self.events
            with self._events_lock:
                if self._live is None:
                    self._live = LiveModels(events)
        return self._live

    def also_bought(self, item_id: str, k: int = 10) -> list[dict[str, Any]]:
        """Items most often taken together with ``item_id`` by other shoppers (co-occurrence), best first."""
        snap = self.snapshot()
        snap.catalog.row(item_id)
        with self.live.current() as models:
            scored = models.cooccurrence.scores([(item_id, 1.0)])
        ranked = sorted(((s, j) for j, (s, _) in scored.items() if j in snap.catalog and j != item_id),
                        key=lambda e: (-e[0], e[1]))[:k]
        return [{"id": j, "title": snap.catalog[snap.catalog.row(j)].title, "score": round(s, 6)} for s, j in ranked]

    def _profile(self, user_id: str, snap: Snapshot) -> InterestProfile | None:
        """The shopper's profile, current to their last event: the stored one (a cache of the fold up to
        some event seq) with every later event folded in, O(1) each, oldest first; None without events.

        The fold goes back at most ``PROFILE_FOLD_LIMIT`` events past the stored profile (with the default
        position decay, older ones weigh under 0.35**500). A read that folded ``PROFILE_WRITE_BACK`` or more
        events stores the result, so no event is folded more than about that many times."""
        stored = self.events.get_profile(user_id)
        profile, seq = (decode_profile(stored[0], snap.vectors_of), stored[1]) if stored else (None, 0)
        new = self.events.user_events(user_id, limit=PROFILE_FOLD_LIMIT, after_seq=seq)
        if not new:
            return profile
        profile = profile_from([Touch(e.item_id, e.type.value, e.timestamp) for e in new if e.item_id], snap, profile)
        if len(new) >= PROFILE_WRITE_BACK:
            self.events.put_profile(user_id, encode_profile(profile, snap.vectors_of), max(e.seq or 0 for e in new))
        return profile

    def item_stats(self, item_id: str) -> dict[str, Any]:
        self.item(item_id)  # NotFound for unknown items
        return self.events.item_stats(item_id)

    def user(self, user_id: str) -> dict[str, Any]:
        """Features of a shopper; an unknown shopper gets zeros (cold start), not an error."""
        return self.events.user_stats(user_id)

    def delete_user(self, user_id: str) -> int:
        removed = self.events.delete_user(user_id)
        self._top_users.clear()
        return removed

    def event_stats(self, days: int = 30, *, now: float | None = None) -> dict[str, Any]:
        """Event counts of the last ``days`` UTC calendar days, today included (by event timestamp):
        ``{"days", "since", "events_per_day": [{"day", "type", "count"}], "totals": {type: n},
        "events", "shoppers"}``. ``totals`` has every event type; ``shoppers`` counts distinct users."""
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_STATS_DAYS:
            raise InvalidQuery("days", f"must be an integer in 1..{MAX_STATS_DAYS}, got {days!r}")
        today = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc).date()
        first = today - dt.timedelta(days=days - 1)
        since = dt.datetime(first.year, first.month, first.day, tzinfo=dt.timezone.utc).timestamp()
        per_day = self.events.counts_by_type_per_day(since=since)
        totals = {t.value: 0 for t in EventType}
        for _, etype, n in per_day:
            totals[etype] = totals.get(etype, 0) + n
        return {
            "days": days,
            "since": first.isoformat(),
            "events_per_day": [{"day": d, "type": t, "count": n} for d, t, n in per_day],
            "totals": totals,
            "events": sum(totals.values()),
            "shoppers": self.events.count_users(since=since),
        }

    def sample_shoppers(self, limit: int = 20) -> list[dict[str, Any]]:
        """The ``limit`` shoppers with the most item events, most first (ties by id), for a "pick a demo
        shopper" menu: ``[{"user_id", "events", "last_item_id", "last_item_title"}]``; the title is None
        when the served version lacks that item. The store's answer (a scan of every event) is reused for
        ``SAMPLE_SHOPPERS_TTL_S``; this engine's ingests and deletions refresh it at once."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_SAMPLE_SHOPPERS:
            raise InvalidQuery("limit", f"must be an integer in 1..{MAX_SAMPLE_SHOPPERS}, got {limit!r}")
        snap = self.snapshot()
        now = time.monotonic()
        cached = self._top_users.get(limit)
        if cached is None or now - cached[0] >= SAMPLE_SHOPPERS_TTL_S:
            cached = self._top_users[limit] = (now, self.events.top_users(limit))
        out = []
        for user_id, n, item_id in cached[1]:
            product = snap.catalog.get(item_id) if item_id is not None else None
            out.append({"user_id": user_id, "events": n, "last_item_id": item_id,
                        "last_item_title": product.title if product is not None else None})
        return out

    def _category_of(self, item_id: str) -> str | None:
        try:
            product = self.snapshot().catalog.get(item_id)
        except IndexNotBuilt:
            return None
        return product.category_path if product is not None and product.category else None

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
