"""Attribution: which shown items led to a click, an add-to-cart or a purchase, and the rates per surface.

Owns the join of outcome events to impressions (see README, "Attribution") and what is built on it: the
labels of each shown item (:func:`outcomes`, for training data) and the per-surface CTR, add-to-cart rate,
conversion and CTR by position (:func:`surface_stats`, for the admin stats). The join itself is one SQL
query of the event store (``EventStore.attributed_outcomes``):

- an event carrying a ``request_id`` belongs to that impression, if the item is in it;
- an event without one belongs to the latest impression of the same ``user_id`` that holds the item,
  logged at most ``window_s`` before the event (``attribution_window_minutes``, 30 by default).

An item's position is its 1-based rank in the impression, ``offset`` included: the position the list
showed it at, which the storefront also sends. Each (impression, item) counts once per outcome type,
however often the event repeats.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, NamedTuple

from engine.errors import InvalidQuery
from engine.events import EventStore, EventType

OUTCOME_TYPES = (EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE)
MAX_POSITION = 20  # CTR by position covers positions 1..MAX_POSITION


class Outcome(NamedTuple):
    """One outcome of one shown item: an event of ``type`` attributed to it (once per type)."""

    request_id: str
    surface: str
    item_id: str
    position: int  # 1-based, offset included
    type: EventType


def attributed(store: EventStore, *, since: float, until: float | None = None, window_s: float) -> list[Outcome]:
    """Every outcome (click, add to cart, purchase) of the items shown by impressions logged in
    ``[since, until)`` (epoch seconds; ``until`` None: up to now), ordered by request id, item and type."""
    _check(window_s)
    return [Outcome(*row) for row in store.attributed_outcomes(since, until, window_s=window_s, types=OUTCOME_TYPES)]


def outcomes(store: EventStore, *, since: float, until: float | None = None,
             window_s: float) -> dict[str, dict[str, frozenset[EventType]]]:
    """``request_id -> item_id -> outcome types`` for the impressions logged in ``[since, until)``: the
    labels of shown items. Items without an outcome and impressions without any are left out."""
    labels: dict[str, dict[str, set[EventType]]] = defaultdict(lambda: defaultdict(set))
    for o in attributed(store, since=since, until=until, window_s=window_s):
        labels[o.request_id][o.item_id].add(o.type)
    return {rid: {item: frozenset(types) for item, types in items.items()} for rid, items in labels.items()}


def _rate(n: int, shown: int) -> float:
    return round(n / shown, 6) if shown else 0.0


@dataclass(frozen=True)
class PositionStats:
    """Shown items at one position of a surface's lists, and how many of them were clicked."""

    position: int
    shown: int
    clicks: int

    @property
    def ctr(self) -> float:
        return _rate(self.clicks, self.shown)

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "shown": self.shown, "clicks": self.clicks, "ctr": self.ctr}


@dataclass(frozen=True)
class SurfaceStats:
    """One surface's lists and outcomes. ``shown`` counts shown items (the lists' lengths summed); ``clicks``,
    ``add_to_cart`` and ``purchases`` count shown items with at least one such event attributed, so each
    rate is a share of shown items (0 when nothing was shown). A purchase needs no recorded click."""

    surface: str
    lists: int
    shown: int
    clicks: int
    add_to_cart: int
    purchases: int
    by_position: tuple[PositionStats, ...]  # positions 1..MAX_POSITION that were shown, in order
    explored_lists: int = 0  # lists made by a stochastic (exploring) policy
    explored: int = 0  # shown items the exploring policy placed off its greedy order

    @property
    def exploration_share(self) -> float:
        """The share of shown items placed by exploration rather than by the ranking."""
        return _rate(self.explored, self.shown)

    @property
    def ctr(self) -> float:
        return _rate(self.clicks, self.shown)

    @property
    def add_to_cart_rate(self) -> float:
        return _rate(self.add_to_cart, self.shown)

    @property
    def conversion(self) -> float:
        return _rate(self.purchases, self.shown)

    def to_dict(self) -> dict[str, Any]:
        return {"surface": self.surface, "lists": self.lists, "shown": self.shown, "clicks": self.clicks,
                "add_to_cart": self.add_to_cart, "purchases": self.purchases, "ctr": self.ctr,
                "add_to_cart_rate": self.add_to_cart_rate, "conversion": self.conversion,
                "explored_lists": self.explored_lists, "explored": self.explored,
                "exploration_share": self.exploration_share,
                "by_position": [p.to_dict() for p in self.by_position]}


@dataclass(frozen=True)
class AttributionStats:
    """Per-surface stats of the impressions logged in ``[since, until)``, most lists first (ties by name)."""

    since: float
    until: float | None
    window_s: float
    surfaces: tuple[SurfaceStats, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "window_minutes": self.window_s / 60.0,
                "surfaces": [s.to_dict() for s in self.surfaces]}


def surface_stats(store: EventStore, *, since: float, until: float | None = None, window_s: float,
                  max_position: int = MAX_POSITION) -> AttributionStats:
    """Lists, shown items, clicks, add-to-carts, purchases and their rates per surface, and CTR by position
    (1..``max_position``), over the impressions logged in ``[since, until)``. Three store queries: the lists'
    shapes (no items unpacked), the attributed outcomes and the exploring lists; at 100k impressions, well under a second."""
    _check(window_s)
    lists: dict[str, int] = defaultdict(int)
    shown: dict[str, int] = defaultdict(int)
    shown_at: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for surface, offset, n, count in store.impression_shapes(since, until):
        lists[surface] += count
        shown[surface] += n * count
        for pos in range(offset + 1, min(offset + n, max_position) + 1):
            shown_at[surface][pos] += count
    hits: dict[tuple[str, EventType], int] = defaultdict(int)
    clicks_at: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for o in attributed(store, since=since, until=until, window_s=window_s):
        hits[o.surface, o.type] += 1
        if o.type is EventType.CLICK:
            clicks_at[o.surface][o.position] += 1
    explored = store.exploration_counts(since, until)
    surfaces = [
        SurfaceStats(s, lists[s], shown[s], hits[s, EventType.CLICK], hits[s, EventType.ADD_TO_CART],
                     hits[s, EventType.PURCHASE],
                     tuple(PositionStats(p, n, clicks_at[s][p]) for p, n in sorted(shown_at[s].items())),
                     *explored.get(s, (0, 0)))
        for s in sorted(lists, key=lambda s: (-lists[s], s))]
    return AttributionStats(since, until, window_s, tuple(surfaces))


def _check(window_s: float) -> None:
    if not window_s > 0:  # NaN too
        raise InvalidQuery("window_s", f"must be > 0 seconds, got {window_s}")
