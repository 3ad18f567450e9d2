"""Serving-side recommendation state, kept current from the event log.

``LiveModels`` folds every stored event into the co-occurrence and trending models, in ``seq`` order,
and on each ``refresh`` reads only the events stored since (an indexed range read), so a click is in the
next answer without a rebuild, in every server process. When a shopper is deleted anywhere
(``deletion_epoch`` moves), the models are rebuilt from the remaining events.

Trending counts each shopper once per item: a shopper's events on an item add up to the weight of their
strongest event type on it (a view then a purchase count as one purchase), so that one browser sending
the same purchase again and again cannot move trending. Each shopper's last ``VOTES_PER_SHOPPER`` items
are remembered for this.
For the learned ranker's features it also keeps, per item, its view, click and purchase counts
(``item_counts``) and the time of its earliest event (``first_seen``), and each shopper's consecutive items,
folded into leaf-category transitions over the served catalog (``category_transitions``,
:mod:`engine.recommend.categories`).
**Differentially private trending** (``dp_epsilon`` > 0, setting ``trending_dp_epsilon``): a second
trending model counts each shopper's strongest event weight on at most ``dp_items`` distinct items (their
first ones since the models were built; later items of theirs are left out of it), so one shopper moves it
by at most ``dp_items x max event weight`` in L1 norm, whatever the decay (scores are read at the latest
event time or later, so every decay factor is at most 1). :meth:`LiveModels.trending_dense` then serves a
*release*: those scores over the catalog plus Laplace noise of scale ``sensitivity / dp_epsilon`` on every
item, computed once per ``dp_interval_s`` (and again after a deletion rebuilds the models) and frozen in
between. Each release is ``dp_epsilon``-differentially private for one shopper's events; releases compose:
``r`` releases cost ``r x dp_epsilon`` (Dwork & Roth 2014, the Laplace mechanism and composition).
Thread-safe: ``refresh`` and reads of the models take one lock.
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Hashable, Iterator, Mapping

import numpy as np

from engine.catalog import Catalog
from engine.recommend.categories import CategoryTransitions
from engine.events import Event, EventStore
from engine.recommend.content import DEFAULT_EVENT_WEIGHTS, event_weight
from engine.recommend.cooccurrence import CooccurrenceModel
from engine.recommend.popular import TrendingModel

TRENDING_HALF_LIFE_S = 7 * 86400.0
DP_ITEMS_PER_SHOPPER = 5
DP_INTERVAL_S = 3600.0
VOTES_PER_SHOPPER = 200
MAX_PENDING = 100_000


class LiveModels:
    def __init__(self, store: EventStore, *, event_weights: Mapping[str, float] | None = None,
                 trending_half_life_s: float = TRENDING_HALF_LIFE_S, dp_epsilon: float = 0.0,
                 dp_items: int = DP_ITEMS_PER_SHOPPER, dp_interval_s: float = DP_INTERVAL_S,
                 dp_rng: np.random.Generator | None = None) -> None:
        self.store = store
        self.event_weights = dict(DEFAULT_EVENT_WEIGHTS if event_weights is None else event_weights)
        self.trending_half_life_s = trending_half_life_s
        self.dp_epsilon, self.dp_items, self.dp_interval_s = float(dp_epsilon), int(dp_items), float(dp_interval_s)
        self._dp_rng = dp_rng if dp_rng is not None else np.random.Generator(
            np.random.PCG64(int.from_bytes(os.urandom(32), "little")))
        self._lock = threading.Lock()
        self._reset(-1)

    def _reset(self, epoch: int) -> None:
        self.epoch = epoch
        self.seq = 0
        self.cooccurrence = CooccurrenceModel()
        self.trending = TrendingModel(self.trending_half_life_s)
        self._dense: tuple[object, object, np.ndarray] | None = None  # (catalog, t_ref, array)
        self._touched: set[Hashable] = set()
        self._votes: dict[str, OrderedDict[str, float]] = {}  # shopper -> item -> trending weight counted
        self._counts: dict[str, list[float]] = {}  # item -> [views, clicks, purchases, first event time]
        self._prev: dict[str, str] = {}  # shopper -> their last item
        self._pairs: dict[tuple[str, str], float] = {}  # (item, next item of the same shopper) -> count
        self._pending: list[tuple[str, str]] = []  # pairs not yet folded into _transitions
        self._transitions: tuple[object, CategoryTransitions] | None = None  # (catalog, model)
        self.dp_trending = TrendingModel(self.trending_half_life_s)  # contributions capped per shopper
        self._dp_votes: dict[str, dict[str, float]] = {}  # shopper -> their (at most dp_items) items counted
        self._dp_release: tuple[object, int, np.ndarray] | None = None  # (catalog, interval, noisy scores)

    def item_counts(self, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views, clicks and purchases of each item, ``(len(item_ids),)`` float64 each."""
        zero = (0.0, 0.0, 0.0)
        c = np.array([self._counts.get(i, zero)[:3] for i in item_ids], np.float64).reshape(-1, 3)
        return c[:, 0], c[:, 1], c[:, 2]

    def first_seen(self, item_ids: list[str]) -> np.ndarray:
        """The time (epoch seconds) of each item's earliest event among those folded (NaN: none), the age of an
        item the catalog gives no ``created_at``: ``(len(item_ids),)`` float64."""
        return np.array([self._counts[i][3] if i in self._counts else np.nan for i in item_ids], np.float64)

    def follows(self, item: str, candidates: list[str]) -> np.ndarray:
        """How often a shopper's next item after ``item`` was each of ``candidates``, ``(len,)`` float64."""
        return np.array([self._pairs.get((item, c), 0.0) for c in candidates], np.float64)

    def category_transitions(self, catalog: Catalog) -> CategoryTransitions:
        """Leaf-category transitions of the shoppers' consecutive items, over ``catalog``'s categories
        (rebuilt when the catalog changes, else the new pairs are folded in)."""
        def cat(item: str) -> str:
            p = catalog.get(item)
            return p.category_path if p is not None else ""

        if self._transitions is None or self._transitions[0] is not catalog:
            model = CategoryTransitions()
            for (a, b), w in self._pairs.items():
                model.add(cat(a), cat(b), w)
            self._transitions = (catalog, model)
        else:
            model = self._transitions[1]
            for a, b in self._pending:
                model.add(cat(a), cat(b))
        self._pending = []
        return model

    @property
    def dp_sensitivity(self) -> float:
        """L1 sensitivity of the capped trending scores to one shopper: ``dp_items x max event weight``."""
        return self.dp_items * max(self.event_weights.values(), default=0.0)

    def trending_release(self, catalog: Catalog, now: float | None = None) -> np.ndarray:
        """The differentially private trending scores over ``catalog`` rows (see the module docstring): the
        release of the current interval, computed at its first read."""
        now = time.time() if now is None else now
        interval = int(now // self.dp_interval_s)
        if self._dp_release is not None and self._dp_release[0] is catalog and self._dp_release[1] == interval:
            return self._dp_release[2]
        t = self.dp_trending
        at = max(now, t.last_t or now)  # every decay factor at most 1
        exact = t.scores_dense(catalog.id_map, len(catalog), now=at)
        noisy = exact + self._dp_rng.laplace(0.0, self.dp_sensitivity / self.dp_epsilon, len(catalog))
        self._dp_release = (catalog, interval, noisy)
        return noisy

    def trending_dense(self, catalog: Catalog) -> np.ndarray:
        """Trending scores over ``catalog`` rows, ``(n,)`` float64, up to one common decay factor (which the
        blender's z-scores ignore). Kept up to date item by item instead of rebuilt per request. With
        ``dp_epsilon`` set, the differentially private release (:meth:`trending_release`)."""
        if self.dp_epsilon > 0:
            return self.trending_release(catalog)
        t = self.trending
        if self._dense is None or self._dense[0] is not catalog or self._dense[1] != t.t_ref:
            dense = np.zeros(len(catalog), np.float64)
            touched: set[Hashable] = set(t.acc)
            self._dense = (catalog, t.t_ref, dense)
        else:
            dense, touched = self._dense[2], self._touched
        for key in touched:
            if key in catalog:
                dense[catalog.row(str(key))] = t.acc[key]
        self._touched = set()
        return dense

    @contextmanager
    def held(self) -> Iterator["LiveModels"]:
        """The models as last refreshed (no store read), held still while the caller reads them: for
        readers that can be a refresh behind, such as the search ranker's item rates."""
        with self._lock:
            yield self

    @contextmanager
    def current(self) -> Iterator["LiveModels"]:
        """Refresh from the event log, then hold the models still while the caller reads them."""
        with self._lock:
            epoch = self.store.deletion_epoch()
            if epoch != self.epoch:
                self._reset(epoch)
            while True:
                batch = self.store.events_after(self.seq, limit=10000)
                if not batch:
                    break
                for event in batch:
                    self._apply(event)
                self.seq = batch[-1].seq or self.seq
            yield self

    def _apply(self, e: Event) -> None:
        w = event_weight(e.type, self.event_weights)
        if e.item_id is None or w <= 0:
            return
        counts = self._counts.setdefault(e.item_id, [0.0, 0.0, 0.0, e.timestamp])
        if e.timestamp < counts[3]:  # events are folded in storage order, not time order
            counts[3] = e.timestamp
        slot = _COUNTED.get(e.type.value)
        if slot is not None:
            counts[slot] += 1.0
        prev = self._prev.get(e.user_id)
        if prev is not None and prev != e.item_id:
            pair = (prev, e.item_id)
            self._pairs[pair] = self._pairs.get(pair, 0.0) + 1.0
            self._pending.append(pair)
            if len(self._pending) > MAX_PENDING:  # nobody reads transitions: rebuild from _pairs when asked
                self._pending, self._transitions = [], None
        self._prev[e.user_id] = e.item_id
        self.cooccurrence.add_event(e.user_id, e.item_id, w)
        votes = self._votes.setdefault(e.user_id, OrderedDict())
        counted = votes.pop(e.item_id, 0.0)
        votes[e.item_id] = max(counted, w)
        if len(votes) > VOTES_PER_SHOPPER:
            votes.popitem(last=False)
        if w > counted:
            self.trending.add_event(e.item_id, w - counted, e.timestamp)
            self._touched.add(e.item_id)
        if self.dp_epsilon > 0:
            mine = self._dp_votes.setdefault(e.user_id, {})
            had = mine.get(e.item_id)
            if had is None and len(mine) >= self.dp_items:
                return  # the shopper's cap is reached: this item is left out of the private model
            if w > (had or 0.0):
                mine[e.item_id] = w
                self.dp_trending.add_event(e.item_id, w - (had or 0.0), e.timestamp)


_COUNTED = {"view": 0, "click": 1, "purchase": 2}
