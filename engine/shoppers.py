"""The shopper side of the engine: events, features, profiles, recommendations, shopper and surface stats.

``Shoppers`` is owned by ``Engine`` (which hands it the current snapshot on every call) and owns the event
store, the live models and the shopper-sampler cache. Thread-safe like the engine.
"""
from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.config import EngineConfig
from engine.errors import InvalidQuery, NotFound, StoreUnavailable
from engine.events import EventStore, EventType, RejectedEvent, open_event_store, validate_many
from engine.filters import NO_FILTERS, Filters
from engine.learn.attribution import AttributionStats, surface_stats
from engine.ranking.features import usual_price
from engine.recommend.blend import Blender
from engine.recommend.compose import HISTORY_LIMIT, Recommended, Scorer, SeqScorer, Touch, profile_from, recommend
from engine.recommend.content import InterestProfile, decode_profile, encode_profile
from engine.recommend.live import LiveModels
from engine.recommend.personal import ShopperAffinity, affinity
from engine.snapshot import Snapshot

MAX_STATS_DAYS = 366
MAX_SAMPLE_SHOPPERS = 1000
# sample_shoppers reads one row per shopper: its answer is kept this long, so that a storefront page
# does not pay it on every render (deleting a shopper clears it at once; new events show within this time).
SAMPLE_SHOPPERS_TTL_S = 30.0

# Profiles are folded from the event log on read; see Shoppers._profile.
PROFILE_FOLD_LIMIT = 500
PROFILE_WRITE_BACK = 10


@dataclass(frozen=True)
class IngestResult:
    """Event ids stored now, ids stored before (or twice in the batch), and the events rejected, with why."""

    accepted: list[str]
    duplicates: list[str]
    rejected: list[RejectedEvent]

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates,
                "rejected": [r.to_dict() for r in self.rejected]}


@dataclass(frozen=True)
class Recommendations:
    user_id: str | None
    version: str
    k: int
    recommendations: list[Recommended]
    request_id: str = ""  # names this list in the impression log; events may carry it back
    # The recommendations' ranker features, computed when called (see engine.recommend.compose.Composed).
    later: Callable[[], list[dict[str, float]]] | None = field(default=None, compare=False)
    # Sponsored items (engine.ads.serve.SponsoredHit) in extra slots, each with its display position.
    sponsored: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "user_id": self.user_id, "version": self.version, "k": self.k,
                "recommendations": [r.to_dict() for r in self.recommendations],
                "sponsored": [s.to_dict() for s in self.sponsored]}


@dataclass(frozen=True)
class EventStats:
    """Event counts of the last ``days`` UTC calendar days (see :meth:`Shoppers.event_stats`)."""

    days: int
    since: str
    events_per_day: list[dict[str, Any]]
    totals: dict[str, int]
    events: int
    shoppers: int

    def to_dict(self) -> dict[str, Any]:
        return {"days": self.days, "since": self.since, "events_per_day": self.events_per_day,
                "totals": self.totals, "events": self.events, "shoppers": self.shoppers}


@dataclass(frozen=True)
class SampleShopper:
    user_id: str
    events: int
    last_item_id: str | None
    last_item_title: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "events": self.events, "last_item_id": self.last_item_id,
                "last_item_title": self.last_item_title}


class Shoppers:
    """Events, profiles and recommendations of the shoppers, over the snapshot ``snapshot()`` returns."""

    def __init__(self, config: EngineConfig, snapshot: Callable[[], Snapshot]) -> None:
        self.config = config
        self._snapshot = snapshot
        self._events: EventStore | None = None
        self._events_lock = threading.Lock()
        self._live: LiveModels | None = None
        self._top_users: dict[int, tuple[float, list[tuple[str, int, str | None]]]] = {}

    @property
    def events(self) -> EventStore:
        """The event store (opened on first use)."""
        if self._events is None:
            with self._events_lock:
                if self._events is None:
                    self._events = open_event_store(self.config.events_url)
        return self._events

    def ingest(self, objs: list[Any]) -> IngestResult:
        """Validate each event, store the valid ones durably; returns accepted, duplicate and rejected ones.

        The item categories counted in the shopper features come from the served snapshot."""
        snap = self._snapshot()
        events, rejected = validate_many(objs, known_item=snap.catalog.__contains__, now=time.time())
        categories = {}
        for e in events:
            if e.item_id is not None and e.item_id not in categories:
                product = snap.catalog.get(e.item_id)
                categories[e.item_id] = product.category_path if product is not None and product.category else None
        result = self.events.add_many(events, categories=categories)
        return IngestResult(result.accepted, result.duplicates, rejected)

    def recommend(
        self,
        user_id: str | None = None,
        *,
        recent: list[str] | None = None,
        k: int,
        filters: Filters = NO_FILTERS,
        exclude: list[str] | None = None,
        diversity: float = 0.0,
        scorer: Scorer | None = None,
        features: bool = False,
        strategy: str = "blend",
        consent: bool | None = None,
        seq: SeqScorer | None = None,
    ) -> Recommendations:
        """Recommendations for a known shopper (their stored history and profile) or an anonymous
        session (``recent`` item ids, oldest first). An unknown shopper gets cold-start (trending) answers,
        and so does a shopper who said no to personalization.
        ``k`` is checked by the engine. ``scorer``: a learned ranker re-ranking the blend's candidates;
        ``features``: the items' ranker features are wanted (attached, or ``later``: see
        :func:`engine.recommend.compose.recommend`); ``strategy``: see :mod:`engine.recommend.strategies`;
        ``consent``: the shopper's consent to personalization when the caller has read it (else read here);
        ``seq``: the published ranker's sequence model, for the ``seq`` features."""
        if not 0.0 <= diversity <= 1.0:
            raise InvalidQuery("diversity", f"must be in 0..1, got {diversity}")
        snap = self._snapshot()
        mask = snap.filter_mask(filters)
        profile = None
        if user_id is not None:  # a shopper without consent gets the answer of an empty session
            given = self.personalized(user_id) if consent is None else consent
            history = self._history(user_id, snap) if given else []
            profile = self._profile(user_id, snap) if history else None
        else:
            history = [Touch(i, "view") for i in (recent or [])]
        composed = recommend(snap, self.live, history, k=k, blender=Blender(mmr_lambda=1.0 - diversity),
                             profile=profile, filter_mask=mask, exclude=exclude or [], scorer=scorer,
                             features=features, strategy=strategy, seq=seq)
        return Recommendations(user_id, snap.version, k, composed.recommendations, later=composed.later)

    def _history(self, user_id: str, snap: Snapshot) -> list[Touch]:
        """The shopper's last ``HISTORY_LIMIT`` item events on served items, oldest first."""
        return [Touch(e.item_id, e.type.value, e.timestamp)
                for e in self.events.user_events(user_id, limit=HISTORY_LIMIT)
                if e.item_id is not None and e.item_id in snap.catalog]

    def search_profile(self, user_id: str, snap: Snapshot, consent: bool | None = None
                       ) -> tuple[ShopperAffinity | None, float | None]:
        """What a personalized search uses of this shopper, from one read of their history: the affinity
        (:class:`engine.recommend.personal.ShopperAffinity`; None: search is not personalized) and their usual
        price (:func:`engine.ranking.features.usual_price` of the history's items), each None without history
        or consent."""
        if not (self.personalized(user_id) if consent is None else consent):
            return None, None
        history = self._history(user_id, snap)
        if not history:
            return None, None
        profile = self._profile(user_id, snap)
        usual = usual_price(snap.price[[snap.catalog.row(t.item_id) for t in history]])
        return (None if profile is None else affinity(snap, self.live, history, profile)), usual

    @property
    def live(self) -> LiveModels:
        if self._live is None:
            events = self.events
            with self._events_lock:
                if self._live is None:
                    self._live = LiveModels(events, dp_epsilon=self.config.trending_dp_epsilon,
                                            dp_items=self.config.trending_dp_items)
        return self._live

    def also_bought(self, item_id: str, k: int = 10) -> list[dict[str, Any]]:
        """Items most often taken together with ``item_id`` by other shoppers (co-occurrence), best first:
        ``[{"id", "title", "score"}]``."""
        snap = self._snapshot()
        snap.catalog.row(item_id)
        with self.live.current() as models:
            scored = models.cooccurrence.scores([(item_id, 1.0)])
        ranked = sorted(((s, j) for j, (s, _) in scored.items() if j in snap.catalog and j != item_id),
                        key=lambda e: (-e[0], e[1]))[:k]
        return [{"id": j, "title": snap.catalog[snap.catalog.row(str(j))].title, "score": round(s, 6)}
                for s, j in ranked]

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
        self._snapshot().catalog.row(item_id)  # NotFound for unknown items
        return self.events.item_stats(item_id)

    def user(self, user_id: str) -> dict[str, Any]:
        """Features of a shopper; an unknown shopper gets zeros (cold start), not an error."""
        return self.events.user_stats(user_id)

    def delete_user(self, user_id: str) -> int:
        return int(self.erase_user(user_id)["removed"]["events"])

    def erase_user(self, user_id: str) -> dict[str, Any]:
        """Delete everything of ``user_id`` (see :meth:`EventStore.erase_user`) and return the receipt: its id,
        the time and what was removed, per kind. The live models (co-occurrence, trending, item counts) are
        rebuilt from the remaining events at their next read, as every process sees the deletion epoch move."""
        receipt, now = uuid.uuid4().hex, time.time()
        tables = self.events.erase_user(user_id, (receipt, now))
        self._top_users.clear()
        return receipt_body(receipt, now, tables)

    def verify_deletion(self, receipt: str) -> dict[str, Any]:
        """Re-check a deletion receipt: no row of any shopper table names its shopper any more, and the live
        models were rebuilt since (so they hold nothing of the deleted events). ``verified`` and, if not,
        ``remaining`` (rows per table)."""
        stored = self.events.get_receipt(receipt)
        if stored is None:
            raise NotFound(f"no deletion receipt {receipt!r}")
        remaining = self.events.receipt_traces(receipt)
        with self.live.current() as models:
            rebuilt = models.epoch >= int(stored["epoch"])
        body = receipt_body(receipt, float(stored["deleted_at"]), stored["removed"])
        return body | {"verified": not remaining and rebuilt, "remaining": remaining,
                       "live_models_rebuilt": rebuilt, "checked_at": time.time()}

    def personalized(self, user_id: str) -> bool:
        """Whether ``user_id`` consented to personalization (default yes); a store that cannot be read says
        no, so that nothing personal is used when consent cannot be checked."""
        try:
            return self.events.personalization(user_id)
        except StoreUnavailable:
            return False

    def set_consent(self, user_id: str, personalization: bool, source: str = "api") -> dict[str, Any]:
        return self.events.set_consent(user_id, personalization, source)

    def event_stats(self, days: int = 30, *, now: float | None = None) -> EventStats:
        """Event counts of the last ``days`` UTC calendar days, today included (by event timestamp):
        ``events_per_day`` as ``[{"day", "type", "count"}]``, ``totals`` for every event type, ``shoppers``
        counts distinct users."""
        first, since = _first_day(days, now)
        per_day = self.events.counts_by_type_per_day(since=since)
        totals = {t.value: 0 for t in EventType}
        for _, etype, n in per_day:
            totals[etype] = totals.get(etype, 0) + n
        return EventStats(days, first.isoformat(), [{"day": d, "type": t, "count": n} for d, t, n in per_day],
                          totals, sum(totals.values()), self.events.count_users(since=since))

    def surface_stats(self, days: int = 30, *, now: float | None = None) -> AttributionStats:
        """Lists, CTR, add-to-cart rate, conversion and CTR by position per surface, over the impressions
        logged in the last ``days`` UTC calendar days, today included (see :mod:`engine.learn.attribution`)."""
        _, since = _first_day(days, now)
        return surface_stats(self.events, since=since, window_s=self.config.attribution_window_minutes * 60.0)

    def sample_shoppers(self, limit: int = 20) -> list[SampleShopper]:
        """The ``limit`` shoppers with the most item events, most first (ties by id), for a "pick a demo
        shopper" menu; the title is None
        when the served version lacks that item. The store's answer (one row per shopper) is reused for
        ``SAMPLE_SHOPPERS_TTL_S``; a deletion through this engine refreshes it at once."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_SAMPLE_SHOPPERS:
            raise InvalidQuery("limit", f"must be an integer in 1..{MAX_SAMPLE_SHOPPERS}, got {limit!r}")
        snap = self._snapshot()
        now = time.monotonic()
        cached = self._top_users.get(limit)
        if cached is None or now - cached[0] >= SAMPLE_SHOPPERS_TTL_S:
            cached = self._top_users[limit] = (now, self.events.top_users(limit))
        out = []
        for user_id, n, item_id in cached[1]:
            product = snap.catalog.get(item_id) if item_id is not None else None
            out.append(SampleShopper(user_id, n, item_id, product.title if product is not None else None))
        return out


def _first_day(days: int, now: float | None) -> tuple[dt.date, float]:
    """The first UTC day of the last ``days`` days (today included) and its start in epoch seconds."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_STATS_DAYS:
        raise InvalidQuery("days", f"must be an integer in 1..{MAX_STATS_DAYS}, got {days!r}")
    today = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc).date()
    first = today - dt.timedelta(days=days - 1)
    return first, dt.datetime(first.year, first.month, first.day, tzinfo=dt.timezone.utc).timestamp()


# The kinds a deletion receipt lists, from the tables ``EventStore.erase_user`` reports.
RECEIPT_KINDS = {
    "events": ("events",),
    "features": ("user_features", "user_categories"),
    "profile": ("profiles",),
    "impressions": ("impressions",),
    "consent": ("consent",),
    "ad_attributions": ("ads_clicks",),
}


def receipt_body(receipt: str, deleted_at: float, tables: dict[str, int]) -> dict[str, Any]:
    """A deletion receipt as the API returns it: per kind, the rows removed; ``item_features``, the events
    taken out of the item counts, is also what left co-occurrence and trending (rebuilt without them)."""
    removed = {kind: sum(int(tables.get(t, 0)) for t in names) for kind, names in RECEIPT_KINDS.items()}
    removed["item_statistics"] = int(tables.get("item_features", 0))
    removed["co_occurrence_and_trending"] = int(tables.get("item_features", 0))
    return {"receipt": receipt, "deleted_at": deleted_at,
            "deleted_at_iso": dt.datetime.fromtimestamp(deleted_at, dt.timezone.utc).isoformat(timespec="seconds"),
            "removed": removed, "tables": dict(sorted(tables.items()))}
