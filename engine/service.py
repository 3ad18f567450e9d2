"""Online serving: ``Engine`` answers search, suggestions, similar items, item look-ups and, through the
``Shoppers`` it owns, events and recommendations, from the published version.

Read-only over ``index_dir``. Thread-safe: requests share an immutable ``Snapshot``; at most every
``reload_check_seconds`` a request looks at the ``current`` pointer, and when it moved, that
request loads the new version and swaps the reference while other requests keep using the old
one. No request ever sees a half-loaded version or fails because of a publish.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import logging
import uuid
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from engine.ads.serve import AdSettings, SponsoredHit
from engine.ads.service import Ads
from engine.qa.service import QA
from engine.analytics.service import Analytics, snapshot_catalog
from engine.catalog import Product
from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.errors import IndexNotBuilt, InvalidQuery, NotFound, StoreUnavailable
from engine.events import EventStore
from engine.filters import NO_FILTERS, Filters
from engine.index import versions
from engine.events.impressions import Impression
from engine.index.vector import set_blas_threads, set_search_threads
from engine.learn.attribution import AttributionStats
from engine.learn.impressions import WRITER_ENV, ImpressionLog, InFlight
from engine.learn.experiments import INTERLEAVED, TEAM_FEATURE, Experiment, Experiments, Kind, Variant, team_draft
from engine.learn.model import MlpRanker, ModelError
from engine.learn.bandits import Context, Rewards
from engine.learn.online import StrategyPolicy, context_dict, request_rng, shopper_context
from engine.learn.policy import ExplorationSettings, choose
from engine.learn.registry import load_version
from engine.learn.serve import Rankers
from engine.ranking.features import RECOMMEND_FEATURES, SEARCH_FEATURES, item_age_days, item_rates
from engine.recommend.compose import RecDeferred, SeqScorer
from engine.recommend.strategies import check_strategy
from engine.memory import release_free_memory
from engine.search import Hit, KeywordPart, Ranked, SearchDeferred, facets, keyword_part, ranked_search, similar_items
from engine.shoppers import EventStats, IngestResult, Recommendations, SampleShopper, Shoppers
from engine.snapshot import Snapshot
from engine.suggest import DEFAULT_K as DEFAULT_SUGGESTIONS
from engine.suggest import MAX_K as MAX_SUGGESTIONS
from engine.suggest import MAX_QUERY_CHARS as MAX_SUGGEST_CHARS
from engine.suggest import Suggester

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 500
# Search: from this many rows, the BM25 part runs in a helper thread while the query is encoded (measured at
# 1M rows: 0.9 ms off p50; at 4,385 rows, 0.1 ms slower); up to this many at once.
KEYWORD_BESIDE_ROWS, KEYWORD_BESIDE_THREADS = 100_000, 4


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
    request_id: str = ""  # names this list in the impression log; events may carry it back
    # Sponsored results of the first page (engine.ads), each with its display position: extra slots, the
    # organic hits are as without them.
    sponsored: list[SponsoredHit] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "sponsored": [s.to_dict() for s in self.sponsored],
            "query": self.query,
            "version": self.version,
            "k": self.k,
            "offset": self.offset,
            "took_ms": round(self.took_ms, 3),
            "total_candidates": self.total_candidates,
            "facets": self.facets,
            "hits": [h.to_dict() for h in self.hits],
        }


@dataclass(frozen=True)
class Similar:
    item_id: str
    version: str  # the version the hits come from
    hits: list[Hit]
    request_id: str = ""
    sponsored: list[SponsoredHit] = field(default_factory=list)  # engine.ads: extra slots, at their positions

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "item_id": self.item_id, "version": self.version,
                "similar": [h.to_dict() for h in self.hits], "sponsored": [s.to_dict() for s in self.sponsored]}


@dataclass(frozen=True)
class Suggestions:
    q: str
    version: str
    suggestions: list[dict[str, Any]]  # [{"text", "kind", "id"?, "category", "count"?}], best first

    def to_dict(self) -> dict[str, Any]:
        return {"q": self.q, "version": self.version, "suggestions": self.suggestions}


@dataclass(frozen=True)
class Info:
    """What anyone may know of the served version: no paths, hashes or build details (see ``manifest``)."""

    version: str
    items: int
    created_at: str | None
    model: str | None
    dims: int | None
    encoder: str | None
    rankers: dict[str, dict[str, Any] | None] = dataclasses.field(default_factory=dict)  # surface -> served
    # The background warm-ups this process still runs (see ``warming``): it serves meanwhile, more slowly.
    warming: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "items": self.items, "created_at": self.created_at,
                "model": self.model, "dims": self.dims, "encoder": self.encoder, "rankers": self.rankers,
                "warming": list(self.warming)}


# The background threads of a start or a version load (by name), and what each warms.
WARM_UPS = {"warm-suggestions": "suggestions", "analytics-warm": "analytics", "vitrine-warm-page-cache": "page_cache"}


def warming() -> tuple[str, ...]:
    """The warm-ups still running in this process: the suggestion index, the analytics copy of the event
    store, the page cache of the index files. The process answers meanwhile, but on a small machine they
    compete with the requests (at 1M items on 2 cores: the first 20 s, p95 over 100 ms)."""
    return tuple(sorted({WARM_UPS[t.name] for t in threading.enumerate() if t.name in WARM_UPS}))


@dataclass(frozen=True)
class Health:
    """``status``: ``ok``; ``no_index`` (nothing published yet); ``degraded`` (serving, but ``reason`` says
    what does not work, e.g. the event store cannot write)."""

    status: str
    index_version: str | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "index_version": self.index_version} | (
            {"reason": self.reason} if self.reason else {})


class Engine:
    """The serving façade. Create one per process and share it between threads."""

    def __init__(self, config: EngineConfig, encoder: Encoder | None = None, *,
                 warm_suggestions: bool = False, log_impressions: bool = False) -> None:
        """``warm_suggestions``: build each new version's suggestion index in the background as soon as
        the version is loaded (the server does), instead of on the first suggestion request.
        ``log_impressions``: log every list answered (see :mod:`engine.learn.impressions`; the server does)."""
        self.config = config
        self._warm_suggestions = warm_suggestions
        self._encoder = encoder
        self._snap: Snapshot | None = None
        self._checked_at = 0.0
        self._reload_lock = threading.Lock()
        self._encoder_lock = threading.Lock()
        self._embed_cached = functools.lru_cache(maxsize=config.query_cache_size)(self._embed_uncached)
        # Threads start at the first submit (after a fork, in a gunicorn worker): see _keyword_beside.
        self._keyword_pool = ThreadPoolExecutor(KEYWORD_BESIDE_THREADS, thread_name_prefix="vitrine-keyword")
        self._suggester: tuple[str, Suggester] | None = None
        self._suggester_lock = threading.Lock()
        self.shoppers = Shoppers(config, self.snapshot)
        self.experiments = Experiments(lambda: self.shoppers.events,
                                       window_s=config.attribution_window_minutes * 60.0,
                                       rankers_root=config.rankers_path)
        self._pinned: dict[tuple[str, str], MlpRanker | None] = {}
        self.rankers = Rankers(config.rankers_path, features={"recommend": RECOMMEND_FEATURES, "search": SEARCH_FEATURES},
                               check_s=config.reload_check_seconds)
        # Requests being answered now (the web app counts them): the impression flusher works between them.
        self.in_flight = InFlight()
        self.impressions = ImpressionLog(
            lambda: self.shoppers.events, retention_s=config.impression_retention_days * 86400.0,
            flush_every_s=config.impression_flush_seconds, in_flight=self.in_flight,
            spool_only=bool(os.environ.get(WRITER_ENV))) if log_impressions else None
        # Exploration per surface (engine.learn.policy) and the recommendations' strategy policy (engine.learn.online).
        self.exploration = {s: ExplorationSettings.parse(getattr(config, f"explore_{s}"), key=f"explore_{s}")
                            for s in EXPLORED_SURFACES}
        self.strategy = None if config.strategy_policy == "blend" else StrategyPolicy(
            config.strategy_policy, lambda: self.shoppers.events, epsilon=config.strategy_epsilon,
            alpha=config.strategy_alpha,
            rewards=Rewards(config.reward_click, config.reward_cart, config.reward_purchase),
            qtable=config.rankers_path / "qlearning" / "current.json", refresh_s=config.reload_check_seconds)
        self.analytics = Analytics(lambda: self.shoppers.events, snapshot_catalog(self.snapshot),
                                   daily_budget=config.dp_daily_budget,  # engine.analytics (issue 12)
                                   window_s=config.attribution_window_minutes * 60.0,
                                   warm_wait_s=config.analytics_warm_wait_seconds)
        self.ads = Ads(lambda: self.shoppers.events, lambda item: item in self.snapshot().catalog,
                       settings=AdSettings(config.ad_slots, config.ads_reserve, config.ads_relevance_floor,
                                           config.ads_click_window_minutes * 60.0, config.reload_check_seconds,
                                           config.slots("ads_similar_slots"), config.slots("ads_recommend_slots"),
                                           config.ads_match_organic,
                                           relevance_power=config.ads_relevance_power,
                                           pacing_finish=config.ads_pacing_finish,
                                           pacing_tolerance=config.ads_pacing_tolerance))
        self.qa = QA(lambda: self.shoppers.events, lambda: self.encoder, self.item,
                     lambda item: item in self.snapshot().catalog, models_path=config.models_path,
                     min_score=config.qa_min_score)
        set_search_threads(config.faiss_threads)
        set_blas_threads(config.blas_threads)

    # -- versions -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The current snapshot, reloaded if ``current`` moved since the last check."""
        now = time.monotonic()
        snap = self._snap
        if snap is not None and now - self._checked_at < self.config.reload_check_seconds:
            return snap
        if snap is None:
            self._reload_lock.acquire()  # nothing to serve yet: wait for the load
        elif not self._reload_lock.acquire(blocking=False):
            return snap  # another thread is reloading; serve the old one
        try:
            self._checked_at = now
            version = versions.current_version(self.config.index_dir)
            if version is None:
                if self._snap is None:
                    raise IndexNotBuilt(f"no index published in {self.config.index_dir}; run `vitrine build`")
                return self._snap
            if self._snap is None or self._snap.version != version:
                try:
                    loaded = Snapshot.load(versions.current_dir(self.config.index_dir))
                    self._check_encoder(loaded)
                except (OSError, ValueError, KeyError, IndexNotBuilt) as e:
                    if self._snap is None:
                        if isinstance(e, IndexNotBuilt):
                            raise
                        raise IndexNotBuilt(f"cannot load index version {version}: {e}") from e
                    log.warning("cannot serve version %s, still serving %s: %s", version, self._snap.version, e)
                    return self._snap
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
        filters: Filters = NO_FILTERS,
        weight: float | None = None,
        user: str | None = None,
        personalize: float | None = None,
    ) -> SearchResult:
        """Hits, the number of candidates and the facets of ``query`` under ``filters``, re-ranked for
        ``user`` (strength ``personalize``, default ``EngineConfig.personalize``) when given."""
        t0 = time.perf_counter()
        query = " ".join((query or "").split())
        if not query:
            raise InvalidQuery("q", "must not be empty")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidQuery("q", f"must be at most {MAX_QUERY_CHARS} characters")
        k = self._check_k(k)
        if not 0 <= offset <= self.config.max_offset:
            raise InvalidQuery("offset", f"must be in 0..{self.config.max_offset}, got {offset}")
        if weight is not None and not 0.0 <= weight <= 1.0:
            raise InvalidQuery("weight", f"must be in 0..1, got {weight}")
        if personalize is not None and not 0.0 <= personalize <= 1.0:
            raise InvalidQuery("personalize", f"must be in 0..1 (0 = off), got {personalize}")
        if user is not None and not user.strip():
            raise InvalidQuery("user", "must not be empty")
        snap = self.snapshot()
        mask = snap.filter_mask(filters)
        strength = (self.config.personalize if personalize is None else personalize) if user else 0.0
        consent = not user or self.shoppers.personalized(user)
        affinity, usual = None, None
        if user and strength > 0 and consent:
            try:
                affinity, usual = self.shoppers.search_profile(user, snap, consent=True)
            except StoreUnavailable as e:  # search still answers, unpersonalized
                log.warning("search not personalized: %s", e)
        pool = max(self.config.candidate_pool, offset + k)
        chosen = self._choose("search", user)
        logging = self.impressions is not None
        interleaved = chosen.interleave is not None and offset == 0
        explore = self.exploration["search"]
        exploring = not explore.deterministic and offset == 0 and not interleaved  # the first page only
        k_run = self._explore_pool(explore, k) if exploring else k
        keyword = self._keyword_beside(snap, query, max(pool, offset + k_run), mask)
        qvec = self.embed_query(query)
        kw = None if keyword is None else keyword.result()

        def run(model: MlpRanker | None) -> Ranked:
            return ranked_search(
                snap, query, qvec, k=k_run, offset=offset, mask=mask, pool=pool,
                weight=self.config.hybrid_weight if weight is None else weight, fusion=self.config.fusion,
                affinity=affinity, personalize=strength, scorer=None if model is None else model.score,
                features=logging and model is not None or interleaved, item_rates=self._item_rates,
                defer_features=logging and model is None and not interleaved, keyword=kw, usual_price=usual)

        rid = uuid.uuid4().hex
        policy = chosen.policy or (f"hybrid/{self.config.fusion.value}" + ("+personal" if affinity is not None else ""))
        if interleaved and chosen.interleave is not None:  # team-draft: both variants' first page, merged
            exp = chosen.interleave
            ra, rb = (run(self._variant_model("search", v)) for v in exp.variants[:2])
            items, teams = team_draft([h.id for h in ra.hits], [h.id for h in rb.hits], k, seed=rid)
            by_id = {h.id: h for h in rb.hits} | {h.id: h for h in ra.hits}
            ranked = Ranked([dataclasses.replace(by_id[i], features={**(by_id[i].features or {}), TEAM_FEATURE: t})
                             for i, t in zip(items, teams)], ra.rows, ra.bm25_all)
            policy = exp.policy(INTERLEAVED)
        else:
            ranked = run(chosen.model)
        explored: Explored | None = None
        if exploring:
            explored = self._explore(explore, [h.score for h in ranked.hits], [h.id for h in ranked.hits], k, rid)
            ranked = Ranked([ranked.hits[j] for j in explored.order], ranked.rows, ranked.bm25_all,
                            explored.reorder(ranked.later))
        facet = facets(snap, ranked.bm25_all, qvec, pool, ranked.rows, filters)
        sponsored = [] if offset else self._sponsored(snap, query, qvec, filters, ranked.hits, user, rid)
        if sponsored:  # the ads' own impression (reports, frequency caps): the organic one is unchanged
            self._log_ads("search", user, query, sponsored, rid)
        self._log("search", user, query, lambda: [(h.id, _hit_features(h)) for h in ranked.hits], policy, offset, rid,
                  later=ranked.later, explored=explored, context=None if consent else {"personalization": False})
        return SearchResult(query, snap.version, k, offset, ranked.hits, (time.perf_counter() - t0) * 1000,
                            total_candidates=len(ranked.rows), facets=facet, request_id=rid, sponsored=sponsored)

    def _sponsored(self, snap: Snapshot, query: str, qvec: np.ndarray, filters: Filters, hits: list[Hit],
                   user: str | None, rid: str) -> list[SponsoredHit]:
        """The first page's sponsored results (engine.ads.serve): the query's category is the filter's, else
        the top organic hit's."""
        category = filters.category or (hits[0].category if hits else None)
        rows = snap.catalog.id_map
        mask = snap.filter_mask(filters)  # an ad obeys the page's filters, and is in stock
        allowed = snap.in_stock if mask is None else snap.in_stock & mask
        return self.ads.server.search(
            query=query, category=category, item_ids=lambda ids: [rows.get(i, -1) for i in ids],
            item_vectors=np.asarray(snap.vectors), qvec=qvec, organic=[h.id for h in hits], in_stock=allowed,
            ctr_of=lambda ids: self._item_rates(ids)[0], product=lambda r: snap.catalog[r], user=user,
            request_id=rid, rng=request_rng(rid, stream=1), organic_scores=[float(h.vector or 0.0) for h in hits],
            same_product=lambda r: snap.title_keys[r])

    def suggest(self, q: str, k: int | None = None) -> Suggestions:
        """Type-ahead suggestions for the typed text ``q`` (see :mod:`engine.suggest`)."""
        k = DEFAULT_SUGGESTIONS if k is None else k
        if not isinstance(q, str) or not q.strip():
            raise InvalidQuery("q", "must not be empty")
        if len(q) > MAX_SUGGEST_CHARS:
            raise InvalidQuery("q", f"must be at most {MAX_SUGGEST_CHARS} characters, got {len(q)}")
        if not 1 <= k <= MAX_SUGGESTIONS:
            raise InvalidQuery("k", f"must be in 1..{MAX_SUGGESTIONS}, got {k}")
        snap = self.snapshot()
        return Suggestions(q, snap.version, self.suggester(snap).suggest(q, k))

    def suggester(self, snap: Snapshot, *, wait: bool = False) -> Suggester:
        """The suggestion index of ``snap``'s version, built once per version and process. While another
        thread builds it (about 2 s at 100k items), the previous version's index answers, unless ``wait``."""
        cached = self._suggester
        if cached is not None and cached[0] == snap.version:
            return cached[1]
        if wait or cached is None:
            self._suggester_lock.acquire()
        elif not self._suggester_lock.acquire(blocking=False):
            return cached[1]  # being built: the previous version's answers meanwhile
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

    def similar(self, item_id: str, *, k: int | None = None, same_category: bool = False,
                viewer: str | None = None) -> Similar:
        """Nearest neighbours of the item (itself and items with its exact title left out). ``viewer``: the
        shopper or session shown the list, for its impression (attribution joins their later events to it)."""
        k = self._check_k(k)
        snap = self.snapshot()
        explore = self.exploration["similar"]
        hits = similar_items(snap, snap.catalog.row(item_id), k=k if explore.deterministic else self._explore_pool(explore, k),
                             same_category=same_category)
        rid = uuid.uuid4().hex
        explored = None
        if not explore.deterministic:
            explored = self._explore(explore, [h.score for h in hits], [h.id for h in hits], k, rid)
            hits = [hits[j] for j in explored.order]
        self._log("similar", viewer, item_id, lambda: [(h.id, {"score": h.score}) for h in hits], "nearest", rid=rid,
                  explored=explored)
        row = snap.catalog.row(item_id)
        vec = np.asarray(snap.vectors[row], np.float32)
        sponsored = self._placed("similar", snap, [item_id, *(h.id for h in hits)], viewer, rid, context_vec=vec,
                                 category=snap.catalog[row].category_path, audience=[], near=vec[None, :],
                                 organic_scores=[float(h.score) for h in hits])
        return Similar(item_id, snap.version, hits, rid, sponsored)

    def item(self, item_id: str) -> Product:
        snap = self.snapshot()
        return snap.catalog[snap.catalog.row(item_id)]

    def info(self) -> Info:
        """The served version, for anyone (the full manifest is ``Admin.manifest``, for the admin key)."""
        snap = self.snapshot()
        m = snap.manifest
        warm = warming()
        if self.impressions is not None and self.impressions.writer_warming():
            warm = tuple(sorted((*warm, "impression_writer")))
        return Info(snap.version, len(snap), m.get("created_at"), m.get("model"), m.get("dims"),
                    m.get("embedding", {}).get("encoder"), self.ranker_info(), warm)

    def ranker_info(self) -> dict[str, dict[str, Any] | None]:
        """Per surface, the learned ranker served (version, when, what it was trained on, its metrics and
        the last refused version's error), or None when the blend / fused order serves."""
        out: dict[str, dict[str, Any] | None] = {}
        for surface in ("recommend", "search"):
            loaded = self.rankers.get(surface)
            error = self.rankers.last_error(surface)
            if loaded is None:
                out[surface] = None if error is None else {"version": None, "error": error}
                continue
            m = loaded.manifest
            training = m.get("training", {})
            out[surface] = {"version": loaded.version, "created_at": m.get("created_at"),
                            "training": {k: training[k] for k in ("data", "lists", "rows", "lists_used", "span")
                                         if k in training},
                            "metrics": m.get("metrics", {}), "error": error}
        return out

    def health(self) -> Health:
        """Whether the engine serves, and what does not work when it is degraded (never raises)."""
        version = versions.current_version(self.config.index_dir)
        if version is None:
            return Health("no_index", None)
        try:
            reason = self.shoppers.events.health()
        except StoreUnavailable as e:
            reason = str(e)
        return Health("degraded", version, reason) if reason else Health("ok", version)

    # -- shoppers (see engine.shoppers) ---------------------------------------------------------
    @property
    def events(self) -> EventStore:
        return self.shoppers.events

    def ingest(self, objs: list[Any]) -> IngestResult:
        """Validate and durably store shopper events (see :meth:`Shoppers.ingest`)."""
        return self.shoppers.ingest(objs)

    def recommend(self, user_id: str | None = None, *, recent: list[str] | None = None, k: int | None = None,
                  filters: Filters = NO_FILTERS, exclude: list[str] | None = None,
                  diversity: float = 0.0, surface: str | None = None,
                  viewer: str | None = None, strategy: str | None = None) -> Recommendations:
        """Recommendations for a shopper, or for an anonymous session's ``recent`` items (oldest first).
        ``viewer``: who is shown a list asked without ``user_id`` (a storefront session's trending strip), for
        its impression.
        ``surface`` names where the list is shown, in the impression log (default: ``recommend``, or
        ``recommend_session`` without a shopper). ``strategy``: one of
        :data:`engine.recommend.strategies.STRATEGIES`; by default the strategy policy chooses
        (``strategy_policy``), or the blend serves. ``explore_recommend`` may then shuffle the top slots."""
        k = self._check_k(k)
        asked = check_strategy(strategy) if strategy is not None else None
        name = surface or ("recommend" if user_id is not None else "recommend_session")
        consent = user_id is None or self.shoppers.personalized(user_id)
        if not consent:  # the answer of an empty session: no history, no session items, no shopper context
            recent = None
        rid = uuid.uuid4().hex
        chosen = self._choose("recommend", user_id)
        policy = chosen.policy or "blend"
        arm, context = asked or "blend", None
        if asked is not None:
            policy = f"strategy/{asked}" + (f"+{chosen.policy}" if chosen.policy else "")
        elif self.strategy is not None and (chosen.policy is None or chosen.policy.startswith("ranker:")):
            ctx = self._context(name, user_id if consent else None, recent)
            arm, p = self.strategy.choose(ctx, rid)
            context = {"arm": arm, "p": p, "context": context_dict(ctx)}
            policy = f"{self.strategy.name}/{arm}" + (f"+{chosen.policy}" if chosen.policy else "")
        explore = self.exploration["recommend"]
        recs = self.shoppers.recommend(user_id, recent=recent, k=k if explore.deterministic else self._explore_pool(explore, k),
                                       filters=filters, exclude=exclude, diversity=diversity,
                                       scorer=None if chosen.model is None else chosen.model.score,
                                       features=self.impressions is not None, strategy=arm, consent=consent,
                                       seq=self._seq_scorer(chosen))
        shown, later, explored = recs.recommendations, recs.later, None
        if not explore.deterministic:
            scores = [r.score for r in shown]
            if explore.cold_share > 0 and arm != "new":  # cold candidates: the "new" strategy's, below the rest
                cold = self.shoppers.recommend(user_id, recent=recent, k=self._explore_pool(explore, k),
                                               filters=filters, exclude=exclude, strategy="new",
                                               consent=consent).recommendations
                have = {r.id for r in shown}
                extra = [r for r in cold if r.id not in have]
                floor = min(scores, default=0.0) - 1.0
                shown, scores = shown + extra, scores + [floor] * len(extra)
                later = _padded(later, len(extra))
            explored = self._explore(explore, scores, [r.id for r in shown], k, rid)
            shown, later = [shown[j] for j in explored.order], explored.reorder(later)
        self._log(name, user_id if user_id is not None else viewer, None,
                  lambda: [(r.id, dict(r.features or {})) for r in shown], policy, rid=rid, later=later,
                  explored=explored, context=context if consent else {**(context or {}), "personalization": False})
        sponsored = [] if not consent else self._recommend_ads(name, user_id, recent, viewer, [r.id for r in shown], rid)
        return dataclasses.replace(recs, k=k, recommendations=shown, later=later, request_id=rid, sponsored=sponsored)

    def _recommend_ads(self, surface: str, user_id: str | None, recent: list[str] | None, viewer: str | None,
                       shown: list[str], rid: str) -> list[SponsoredHit]:
        """A recommendation list's sponsored items: the context is the shopper's (or session's) last items."""
        if not self.ads.server.settings.recommend_slots or not self.ads.server.any_campaign():
            return []
        snap = self.snapshot()
        try:
            items = ([e.item_id for e in self.shoppers.events.user_events(user_id, limit=10) if e.item_id]
                     if user_id is not None else list(recent or [])[-10:])
        except StoreUnavailable:
            return []
        rows = [snap.catalog.id_map[i] for i in items if i in snap.catalog][-5:]
        if not rows:
            return []
        near = np.asarray(snap.vectors[rows], np.float32)
        mean = near.mean(axis=0)
        mean /= max(float(np.linalg.norm(mean)), 1e-12)
        audience = [snap.catalog[r].category_path for r in rows]
        shown_rows = [snap.catalog.id_map[i] for i in shown if i in snap.catalog]
        scores = (np.asarray(snap.vectors[shown_rows], np.float32) @ mean).tolist() if shown_rows else []
        return self._placed("recommend", snap, [*items, *shown], user_id if user_id is not None else viewer, rid,
                            context_vec=mean, category=audience[-1], audience=audience, near=near,
                            organic_scores=scores)

    def _placed(self, placement: str, snap: Snapshot, organic: list[str], user: str | None, rid: str, *,
                context_vec: np.ndarray, category: str | None, audience: list[str], near: np.ndarray,
                organic_scores: list[float]) -> list[SponsoredHit]:
        """The sponsored items of a similar strip or a recommendation list, their impression logged."""
        if not self.ads.server.settings.slots_of(placement) or not self.ads.server.any_campaign():
            return []
        ids = snap.catalog.id_map
        sponsored = self.ads.server.context(
            placement, category=category, audience=audience, near=near, context_vec=context_vec,
            item_ids=lambda xs: [ids.get(i, -1) for i in xs], item_vectors=np.asarray(snap.vectors),
            organic=organic, in_stock=snap.in_stock, ctr_of=lambda xs: self._item_rates(xs)[0],
            product=lambda r: snap.catalog[r], user=user, request_id=rid, rng=request_rng(rid, stream=1),
            organic_scores=organic_scores, same_product=lambda r: snap.title_keys[r])
        if sponsored:
            self._log_ads(placement, user, None, sponsored, rid)
        return sponsored

    def _log_ads(self, placement: str, user: str | None, query: str | None, sponsored: list[SponsoredHit],
                 rid: str) -> None:
        """The sponsored items' own impression (surface ``ads_<placement>``: reports, frequency caps); the
        organic list's impression is unchanged."""
        self._log(f"ads_{placement}", user, query, lambda: [(s.id, {"relevance": s.relevance}) for s in sponsored],
                  "gsp", rid=f"{rid}:ads", context={"campaigns": [s.campaign_id for s in sponsored],
                                                    "prices": [s.cpc for s in sponsored],
                                                    "positions": [s.position for s in sponsored]})

    def also_bought(self, item_id: str, k: int = 10) -> list[dict[str, Any]]:
        """Items taken together with ``item_id`` (see :meth:`Shoppers.also_bought`); none while the event
        store is unavailable, so that the similar-items answer still comes."""
        try:
            return self.shoppers.also_bought(item_id, k)
        except StoreUnavailable as e:
            log.warning("no also-bought items: %s", e)
            return []

    def item_stats(self, item_id: str) -> dict[str, Any]:
        return self.shoppers.item_stats(item_id)

    def user(self, user_id: str) -> dict[str, Any]:
        """Features of a shopper; an unknown shopper gets zeros (cold start), not an error."""
        return self.shoppers.user(user_id)

    def delete_user(self, user_id: str) -> int:
        return self.shoppers.delete_user(user_id)

    def erase_user(self, user_id: str) -> dict[str, Any]:
        """Delete everything of a shopper; returns the deletion receipt (see :meth:`Shoppers.erase_user`)."""
        return self.shoppers.erase_user(user_id)

    def verify_deletion(self, receipt: str) -> dict[str, Any]:
        """Re-check a deletion receipt (see :meth:`Shoppers.verify_deletion`)."""
        return self.shoppers.verify_deletion(receipt)

    def set_consent(self, user_id: str, personalization: Any, source: str = "api") -> dict[str, Any]:
        """Record a shopper's consent to personalization (``personalization``: true or false)."""
        if not isinstance(personalization, bool):
            raise InvalidQuery("personalization", "must be true or false")
        return self.shoppers.set_consent(user_id, personalization, source)

    def consent(self, user_id: str) -> dict[str, Any]:
        return {"user_id": user_id, "personalization": self.shoppers.personalized(user_id)}

    def event_stats(self, days: int = 30, *, now: float | None = None) -> EventStats:
        return self.shoppers.event_stats(days, now=now)

    def surface_stats(self, days: int = 30, *, now: float | None = None) -> AttributionStats:
        """CTR, add-to-cart rate, conversion and CTR by position per surface (see :meth:`Shoppers.surface_stats`)."""
        return self.shoppers.surface_stats(days, now=now)

    def sample_shoppers(self, limit: int = 20) -> list[SampleShopper]:
        return self.shoppers.sample_shoppers(limit)

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

    def _keyword_beside(self, snap: Snapshot, query: str, pool: int,
                        mask: np.ndarray | None) -> "Future[KeywordPart] | None":
        """On a catalog of at least ``KEYWORD_BESIDE_ROWS`` rows, the query's BM25 part computed in a helper
        thread while the request's thread encodes the query (onnxruntime releases the GIL): at 1M rows it
        takes about 1.2 ms, which then costs nothing. Smaller catalogs compute it in line, where the
        thread hand-off would cost more than it saves."""
        if len(snap) < KEYWORD_BESIDE_ROWS:
            return None
        return self._keyword_pool.submit(keyword_part, snap, query, pool, mask)

    def embed_query(self, query: str) -> np.ndarray:
        """Unit query vector (read-only array), from an LRU cache of ``query_cache_size`` entries."""
        return self._embed_cached(query)

    def _embed_uncached(self, query: str) -> np.ndarray:
        vec: np.ndarray = self.encoder.encode([query])[0]
        vec.flags.writeable = False
        return vec

    def _check_encoder(self, snap: Snapshot) -> None:
        family = snap.manifest.get("embedding", {}).get("family")
        if family and family != self.encoder.family:
            raise IndexNotBuilt(
                f"index {snap.version} was embedded by {family!r} but this server encodes queries with "
                f"{self.encoder.family!r}; rebuild the index or set VITRINE_ENCODER"
            )

    def _choose(self, surface: str, user_id: str | None) -> Chosen:
        """The ranking of one list: the experiment running on ``surface`` decides for a shopper or session
        with an id (sticky split, or team-draft interleaving for search); otherwise the published ranker,
        or the blend / fused order when none is. A variant whose ranker is not published serves the blend
        (its lists are still logged under the variant)."""
        published = self.rankers.get(surface)
        exp = None
        if user_id is not None:
            try:
                exp = self.experiments.running(surface)
            except StoreUnavailable as e:
                log.warning("experiments not read: %s", e)
        if exp is None:
            return Chosen(None if published is None else published.model,
                          None if published is None else f"ranker:{published.version}")
        if exp.kind is Kind.INTERLEAVE:
            return Chosen(self._variant_model(surface, exp.variants[0]), exp.policy(exp.variants[0].name), exp)
        variant = exp.assign(user_id or "")
        return Chosen(self._variant_model(surface, variant), exp.policy(variant.name))

    def _seq_scorer(self, chosen: Chosen) -> SeqScorer | None:
        """The sequence model behind a recommendation list's ``seq`` features: the ranking model's own, or,
        when the blend ranks, the published ranker's (so that the logged features are those a retrained
        model will see); None without one (the features are then 0)."""
        model = chosen.model
        if model is None:
            published = self.rankers.get("recommend")
            model = None if published is None else published.model
        return None if model is None or model.seq is None else model.seq.scores

    def refresh_live(self) -> None:
        """Bring the live models (item statistics, co-occurrence, trending) up to the event store now: the
        impression writer does before each pass, as it answers no recommendation that would."""
        try:
            with self.shoppers.live.current():
                pass
        except StoreUnavailable as e:
            log.warning("live models not refreshed: %s", e)

    def deferred(self, spec: Mapping[str, Any]) -> Callable[[], list[dict[str, float]]]:
        """A deferred feature computation from its spec (``later.spec()`` of another process: the impression
        writer computes the serving processes' deferred features with it), on this engine's current
        snapshot, item statistics and published sequence model. ValueError / NotFound: it cannot be had."""
        kind = spec.get("kind")
        if kind == "reorder":
            return Reordered(self.deferred(spec["of"]), tuple(int(j) for j in spec["order"]))
        if kind == "pad":
            return Padded(self.deferred(spec["of"]), int(spec["n"]))
        if kind == "search":
            return SearchDeferred.from_spec(spec, self.snapshot(), self._item_rates)
        if kind == "recommend":
            return RecDeferred.from_spec(spec, self.snapshot(), self.shoppers.live, self._seq_scorer(Chosen(None, None)))
        raise ValueError(f"unknown deferred features {kind!r}")

    def _variant_model(self, surface: str, variant: Variant) -> MlpRanker | None:
        """The model a variant serves: None for the blend; the published ranker; or a pinned version (loaded
        once and kept; None, with a warning, when it cannot be loaded)."""
        if not variant.uses_ranker:
            return None
        version = variant.ranker_version
        if version is None:
            published = self.rankers.get(surface)
            return None if published is None else published.model
        key = (surface, version)
        if key not in self._pinned:
            try:
                self._pinned[key] = load_version(self.config.rankers_path, surface, version,
                                                 RECOMMEND_FEATURES if surface == "recommend" else SEARCH_FEATURES)[0]
            except (ModelError, NotFound, OSError, ValueError) as e:
                log.warning("variant %s: ranker %s not served: %s", variant.name, version, e)
                self._pinned[key] = None
        return self._pinned[key]

    def _log(self, surface: str, user_id: str | None, query: str | None,
             shown: Callable[[], list[tuple[str, dict[str, float | None]]]], policy: str, offset: int = 0,
             rid: str | None = None, later: Callable[[], list[dict[str, float]]] | None = None,
             explored: Explored | None = None, context: dict[str, Any] | None = None) -> str:
        """A new request id (or ``rid``) for a list about to be answered, and its impression logged when
        logging is on (``shown`` gives each shown item's id and features; called only then; ``later`` gives
        more features per item, computed by the log's flusher off the request path; ``explored``: what an
        exploring policy did, its propensities logged; ``context``: what the strategy policy saw and chose)."""
        rid = rid or uuid.uuid4().hex
        if self.impressions is not None:
            items = shown()
            if explored is not None:
                context = {**(context or {}), "explored": explored.explored, "explore": explored.settings}
                policy = f"{policy}+{explored.settings}"
            self.impressions.log(Impression(rid, time.time(), surface, user_id, query, [i for i, _ in items], offset,
                                            [f for _, f in items], policy,
                                            None if explored is None else explored.propensities, context), later=later)
        return rid

    def _explore_pool(self, settings: ExplorationSettings, k: int) -> int:
        """How many of the ranking's best an exploring list draws from (at least ``k``, at most ``max_k``)."""
        return min(max(k, settings.pool), self.config.max_k)

    def _explore(self, settings: ExplorationSettings, scores: list[float], ids: list[str], k: int,
                 rid: str) -> Explored:
        """The shown order of an exploring list (engine.learn.policy.choose, the request's generator)."""
        cold = None
        if settings.cold_share > 0:
            try:
                with self.shoppers.live.held() as models:
                    cold = np.array([i not in models.trending.acc for i in ids], bool)
            except StoreUnavailable:
                cold = None
        slate = choose(np.asarray(scores, np.float64), k, settings, request_rng(rid), cold=cold)
        return Explored(slate.order.tolist(), slate.propensities.tolist(), np.flatnonzero(slate.explored).tolist(),
                        settings.spec())

    def _context(self, surface: str, user_id: str | None, recent: list[str] | None) -> Context:
        """What the strategy policy sees of a request (see :func:`engine.learn.online.shopper_context`)."""
        snap = self.snapshot()

        def category_of(item: str) -> str | None:
            p = snap.catalog.get(item)
            return None if p is None else p.category_path

        if user_id is None:
            last = recent[-1] if recent else None
            return Context(surface, "anonymous", len(recent or []), None if last is None else category_of(last),
                           False, 0)
        try:
            events = self.shoppers.events.user_events(user_id, limit=50)
        except StoreUnavailable:
            events = []
        return shopper_context(surface, user_id, events, now=time.time(), category_of=category_of)

    def _item_rates(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Click rate, purchase rate, log1p(trending) and age in days of items (search ranker features), from
        the live models as of their last refresh (by recommendations, also-bought or personalized search;
        zeros while the event store is unavailable) and the served catalog's ``created_at``."""
        snap = self.snapshot()
        created = np.full(len(ids), np.nan)
        if snap.created is not None:  # a catalog with dates
            rows = np.fromiter((snap.catalog.id_map.get(i, -1) for i in ids), np.int64, len(ids))
            created[rows >= 0] = snap.created[rows[rows >= 0]]
        try:
            with self.shoppers.live.held() as models:  # as of the last refresh: no store read per search
                views, clicks, purchases = models.item_counts(ids)
                trending = models.trending.scores(ids)
                first_seen = models.first_seen(ids)
        except StoreUnavailable:
            z = np.zeros(len(ids))
            return z, z, z, item_age_days(created, np.full(len(ids), np.nan), time.time())
        ctr, conversion = item_rates(views, clicks, purchases)
        return ctr, conversion, np.log1p(np.maximum(trending, 0.0)), item_age_days(created, first_seen, time.time())

    def _check_k(self, k: int | None) -> int:
        k = self.config.default_k if k is None else k
        if not 1 <= k <= self.config.max_k:
            raise InvalidQuery("k", f"must be in 1..{self.config.max_k}, got {k}")
        return k


@dataclasses.dataclass(frozen=True)
class Chosen:
    """How one list is ranked: the model (None: the blend or fused order), the impression policy when it
    is not the default, and the interleaving experiment when the list is interleaved."""

    model: MlpRanker | None
    policy: str | None
    interleave: Experiment | None = None


EXPLORED_SURFACES = ("search", "recommend", "similar")


@dataclasses.dataclass(frozen=True)
class Explored:
    """An exploring list: ``order`` indexes the ranking's best into the shown order; per shown item its
    ``propensities``; ``explored`` the 0-based slots placed off the greedy order; ``settings`` the policy's
    spec (``epsilon:0.1``...)."""

    order: list[int]
    propensities: list[float]
    explored: list[int]
    settings: str

    def reorder(self, later: Callable[[], list[dict[str, float]]] | None) -> Callable[[], list[dict[str, float]]] | None:
        """``later`` (features of the ranking's best, in its order) for the shown items, in the shown order."""
        return None if later is None else Reordered(later, tuple(self.order))


@dataclasses.dataclass(frozen=True)
class Reordered:
    """Deferred features (``inner``: the ranking's best, in its order) for the shown items, in the shown order."""

    inner: Callable[[], list[dict[str, float]]]
    order: tuple[int, ...]

    def __call__(self) -> list[dict[str, float]]:
        full = self.inner()
        return [full[j] for j in self.order]

    def spec(self) -> dict[str, Any]:
        return {"kind": "reorder", "order": list(self.order), "of": deferred_spec(self.inner)}


@dataclasses.dataclass(frozen=True)
class Padded:
    """Deferred features with ``n`` empty feature sets after its own (for candidates it did not rank)."""

    inner: Callable[[], list[dict[str, float]]]
    n: int

    def __call__(self) -> list[dict[str, float]]:
        return self.inner() + [{} for _ in range(self.n)]

    def spec(self) -> dict[str, Any]:
        return {"kind": "pad", "n": self.n, "of": deferred_spec(self.inner)}


def deferred_spec(later: Callable[[], list[dict[str, float]]]) -> dict[str, Any]:
    """The JSON spec of a deferred feature computation (ValueError: it has none)."""
    spec = getattr(later, "spec", None)
    if spec is None:
        raise ValueError(f"{later!r} cannot be computed in another process")
    return dict(spec())


def _padded(later: Callable[[], list[dict[str, float]]] | None,
            n: int) -> Callable[[], list[dict[str, float]]] | None:
    """``later`` with ``n`` empty feature sets after its own (for candidates it did not rank)."""
    if later is None or n == 0:
        return later
    return Padded(later, n)


def _hit_features(h: Hit) -> dict[str, float | None]:
    """The features of a search hit in the impression log: the ranker's features and the score parts."""
    return {"score": h.score, "bm25": h.bm25, "vector": h.vector, "personal": h.personal, **(h.features or {})}
