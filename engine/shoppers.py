"""The shopper side of ``Engine``: events, features, profiles, recommendations, shopper stats.

A mixin, so that ``Engine`` keeps one public surface while this file holds one concern. It uses the
engine's ``config``, ``snapshot()`` and ``_check_k``, and owns the event store, the live models and the
shopper-sampler cache (created in ``Engine.__init__``).
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from engine.catalog import Product
from engine.config import EngineConfig
from engine.errors import IndexNotBuilt, InvalidQuery
from engine.events import EventStore, EventType, open_event_store, validate_many
from engine.recommend.blend import Blender
from engine.recommend.compose import BETA, HISTORY_DECAY, HISTORY_LIMIT, Touch, profile_from, recommend
from engine.recommend.content import InterestProfile, decode_profile, encode_profile
from engine.recommend.live import LiveModels
from engine.search import COOC_WEIGHT, personal_score
from engine.snapshot import Snapshot

MAX_STATS_DAYS = 366
MAX_SAMPLE_SHOPPERS = 1000
# sample_shoppers reads one row per shopper: its answer is kept this long, so that a storefront page
# does not pay it on every render (deleting a shopper clears it at once; new events show within this time).
SAMPLE_SHOPPERS_TTL_S = 30.0

# Profiles are folded from the event log on read; see Engine._profile.
PROFILE_FOLD_LIMIT = 500
PROFILE_WRITE_BACK = 10



class ShopperMixin:
    config: EngineConfig
    _events: EventStore | None
    _events_lock: threading.Lock
    _live: LiveModels | None
    _top_users: dict[int, tuple[float, list[tuple[str, int, str | None]]]]

    if TYPE_CHECKING:  # provided by Engine
        def snapshot(self) -> Snapshot: ...

        def _check_k(self, k: int | None) -> int: ...

        def item(self, item_id: str) -> Product: ...

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
                for e in self.events.user_events(user_id, limit=HISTORY_LIMIT)
                if e.item_id is not None and e.item_id in snap.catalog]

    def _affinity(self, user_id: str, snap: Snapshot) -> Callable[[np.ndarray], np.ndarray] | None:
        """``rows -> personal_score`` for this shopper (content profile + co-occurrence with their
        recent items), or None for a shopper without history (then search is not personalized)."""
        history = self._history(user_id, snap)
        profile = self._profile(user_id, snap) if history else None
        if profile is None:
            return None
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
        when the served version lacks that item. The store's answer (one row per shopper) is reused for
        ``SAMPLE_SHOPPERS_TTL_S``; a deletion through this engine refreshes it at once."""
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

