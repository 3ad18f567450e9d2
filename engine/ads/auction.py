"""The sponsored-products auction: generalized second price (GSP) with a quality score.

Owns who wins the sponsored slots of one placement and what each winner pays per click. Money is always an
``int`` in minor units (cents): bids, the reserve and every price computed here.

**Definitions.** A :class:`Bidder` is one ad (campaign, item) with a cost-per-click ``bid`` and a predicted
click probability ``ctr`` in this placement. Its *rank score* is its expected value per impression,
``rank_score = ctr * bid`` (a float). :func:`run_auction`:

1. *Eligible list.* Bidders with ``bid < reserve`` are dropped, and so are items in ``exclude_items`` (already
   on the page organically). The rest are ranked by rank score descending; ties by higher bid, then
   ``campaign_id``, then ``item_id`` (ascending), so the order is deterministic. Walking that order, only the
   first (best) entry of each product (``Bidder.product``: the item id unless the caller says two ids are
   one product, such as listings with the same exact title) is kept: a product never wins two slots, and its
   lower entries are gone from the list (they set no price either).
2. *Slots.* ``positions`` (e.g. ``[1, 5]``, the 1-based display positions of the placement's sponsored
   slots) are filled in order by the eligible list from the top; fewer bidders than slots leaves the last
   slots empty.
3. *GSP price.* The winner of slot ``i`` (eligible rank ``i``) pays the least bid that keeps its rank score at
   or above the next eligible bidder's (rank ``i + 1``, which is the first loser for the last slot filled):
   ``price_i = ceil(ctr_{i+1} * bid_{i+1} / ctr_i)``, then ``price_i = min(max(price_i, reserve), bid_i)``.
   With no next bidder the price is the reserve (0 when the reserve is 0).

**Rounding.** Prices round *up* to the next minor unit: ``price_i`` is the smallest integer ``p`` with
``ctr_i * p >= ctr_{i+1} * bid_{i+1}`` (both sides computed in floating point, as the ranking is), so at that
price the winner still ties or beats the next score, and ties are the winner's by the order above. That
integer is at most ``bid_i`` since rank order gives ``ctr_i * bid_i >= ctr_{i+1} * bid_{i+1}``; the naive
``math.ceil(next / ctr_i)`` can exceed it through float error (``ctr 0.3, bid 7`` tied with an equal
bidder: ``2.1 / 0.3 = 7.000000000000001``), which is why the price is computed as the smallest such integer
and clamped to the bid anyway. A price is never above the bid and never below the reserve.

:func:`calibrated_ctr` smooths a new ad's observed CTR toward a prior, for use as ``Bidder.ctr``.

**Thread-safety.** Plain functions over frozen values; safe to call from any thread.

Sources: Edelman, Ostrovsky & Schwarz (2007), "Internet advertising and the generalized second-price
auction" (AER); Varian (2007), "Position auctions"; the quality-weighted ranking is Google's and Bing's
(``bid * quality``); the Beta-prior CTR smoothing is the usual empirical-Bayes estimate (e.g. Chakrabarti
et al. 2008, "Contextual advertising by combining relevance with click feedback").
"""
from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import InvalidQuery


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class Bidder:
    """One ad competing for a placement. Construction validates ``bid`` (an int > 0, minor units) and
    ``ctr`` (in (0, 1]); ``relevance`` (already above the relevance floor) is informational, not ranked on."""

    campaign_id: str
    item_id: str
    bid: int
    ctr: float
    relevance: float = 0.0
    product: str = ""  # what "the same item" means on one page ("": the item id)

    def __post_init__(self) -> None:
        if not self.product:
            object.__setattr__(self, "product", self.item_id)
        if not _is_int(self.bid) or self.bid <= 0:
            raise InvalidQuery("bid", f"must be a positive integer in minor units (cents), got {self.bid!r}")
        if not _is_number(self.ctr) or not 0.0 < float(self.ctr) <= 1.0:
            raise InvalidQuery("ctr", f"must be a click probability in (0, 1], got {self.ctr!r}")
        if not _is_number(self.relevance) or not math.isfinite(float(self.relevance)):
            raise InvalidQuery("relevance", f"must be a finite number, got {self.relevance!r}")
        object.__setattr__(self, "bid", int(self.bid))
        object.__setattr__(self, "ctr", float(self.ctr))
        object.__setattr__(self, "relevance", float(self.relevance))

    @property
    def rank_score(self) -> float:
        """Expected value per impression, ``ctr * bid``."""
        return self.ctr * self.bid


@dataclass(frozen=True)
class Won:
    """A slot won: ``slot`` indexes ``positions`` (0-based), ``position`` is its display position (1-based),
    ``price`` the cost per click charged if clicked (minor units), ``rank_score`` the winner's ``ctr * bid``."""

    slot: int
    position: int
    bidder: Bidder
    price: int
    rank_score: float


def _sort_key(b: Bidder) -> tuple[float, int, str, str]:
    return (-b.rank_score, -b.bid, b.campaign_id, b.item_id)


def _check_reserve(reserve: Any) -> int:
    if not _is_int(reserve) or reserve < 0:
        raise InvalidQuery("reserve", f"must be a non-negative integer in minor units, got {reserve!r}")
    return int(reserve)


def _check_positions(positions: Sequence[int]) -> list[int]:
    out: list[int] = []
    for p in positions:
        if not _is_int(p) or p < 1:
            raise InvalidQuery("positions", f"must be positive integers (1-based display positions), got {p!r}")
        if out and p <= out[-1]:
            raise InvalidQuery("positions", f"must be distinct and increasing, got {list(positions)!r}")
        out.append(int(p))
    return out


def gsp_price(winner: Bidder, next_score: float | None, reserve: int) -> int:
    """The GSP price of ``winner`` against the next eligible rank score (``None``: no next bidder): the
    smallest integer ``p`` with ``winner.ctr * p >= next_score``, then ``min(max(p, reserve), winner.bid)``."""
    if next_score is None:
        return min(reserve, winner.bid)
    ctr = winner.ctr
    p = min(max(math.ceil(next_score / ctr), 0), winner.bid)
    while p > 0 and ctr * (p - 1) >= next_score:  # float error on the high side
        p -= 1
    while p < winner.bid and ctr * p < next_score:  # float error on the low side
        p += 1
    return min(max(p, reserve), winner.bid)


def eligible(bidders: Sequence[Bidder], *, reserve: int, exclude_items: Collection[str] = ()) -> list[Bidder]:
    """The ranked eligible list of step 1: at or above the reserve, not excluded, best entry per product."""
    reserve = _check_reserve(reserve)
    excluded = set(exclude_items)
    seen: set[str] = set()
    out: list[Bidder] = []
    for b in sorted((b for b in bidders if b.bid >= reserve and b.item_id not in excluded), key=_sort_key):
        if b.product not in seen:
            seen.add(b.product)
            out.append(b)
    return out


def run_auction(bidders: Sequence[Bidder], positions: Sequence[int], *, reserve: int,
                exclude_items: Collection[str] = (), min_relevance: Sequence[float] | None = None,
                page_relevance: Sequence[float] | None = None) -> list[Won]:
    """Fill ``positions`` by GSP with ``ctr * bid`` ranking (see the module docstring for the rules and the
    price formula). Returns the slots won in slot order; slots nobody won are absent.

    ``min_relevance`` (one per position): a bidder may take a slot only with at least that relevance (the
    organic result it would sit above). Slots are then filled one by one, each among the remaining bidders
    that qualify for it, and priced against the next of those (GSP within the slot's qualifiers).

    ``page_relevance`` (the least relevance at each display position ``1..n`` of the page, e.g. the organic
    results' own): the slots become the highest positions an ad may take. Slot ``i`` may place its winner
    anywhere from its position to the one before the next slot (the last slot: to ``n``), at the first
    position whose least relevance the winner meets; it is filled by the best-ranked remaining bidder that
    meets one of them, priced against the next such bidder. A slot past ``n`` has no organic result to
    compare with and takes any bidder. (Like the search engines' ad-rank thresholds per position: an ad not
    relevant enough for the top of the page may still show lower down.)"""
    slots = _check_positions(positions)
    for b in bidders:
        if not isinstance(b, Bidder):
            raise InvalidQuery("bidders", f"must be Bidder values, got {type(b).__name__}")
    if min_relevance is not None and page_relevance is not None:
        raise InvalidQuery("min_relevance", "give min_relevance or page_relevance, not both")
    if page_relevance is not None:
        page = [float(x) for x in page_relevance]
        ranges = []
        for i, first in enumerate(slots):
            last = slots[i + 1] - 1 if i + 1 < len(slots) else max(first, len(page))
            ranges.append([(p, page[p - 1] if p <= len(page) else -math.inf) for p in range(first, last + 1)])
        return _fill(eligible(bidders, reserve=reserve, exclude_items=exclude_items), ranges, int(reserve))
    if min_relevance is not None:
        if len(min_relevance) != len(slots):
            raise InvalidQuery("min_relevance", "must give one relevance per position")
        return _fill(eligible(bidders, reserve=reserve, exclude_items=exclude_items),
                     [[(p, float(least))] for p, least in zip(slots, min_relevance)], int(reserve))
    ranked = eligible(bidders, reserve=reserve, exclude_items=exclude_items)
    won: list[Won] = []
    for i, position in enumerate(slots[:len(ranked)]):
        winner = ranked[i]
        next_score = ranked[i + 1].rank_score if i + 1 < len(ranked) else None
        won.append(Won(i, position, winner, gsp_price(winner, next_score, int(reserve)), winner.rank_score))
    return won


def _fill(remaining: list[Bidder], ranges: list[list[tuple[int, float]]], reserve: int) -> list[Won]:
    """Slots one by one: slot ``i`` offers the (position, least relevance) pairs ``ranges[i]``; its winner is
    the best remaining bidder meeting one of them, shown at the first it meets, priced against the next."""
    out: list[Won] = []
    for i, offers in enumerate(ranges):
        lowest = min(least for _, least in offers)
        qualified = [b for b in remaining if b.relevance >= lowest]
        if not qualified:
            continue
        winner = qualified[0]
        position = next(p for p, least in offers if winner.relevance >= least)
        next_score = qualified[1].rank_score if len(qualified) > 1 else None
        out.append(Won(i, position, winner, gsp_price(winner, next_score, reserve), winner.rank_score))
        remaining = [b for b in remaining if b.product != winner.product]
    return out


def calibrated_ctr(clicks: int, impressions: int, *, prior_ctr: float, prior_strength: float = 100.0) -> float:
    """Beta-prior smoothed CTR, ``(clicks + prior_ctr * prior_strength) / (impressions + prior_strength)``.

    The prior is ``Beta(prior_ctr * s, (1 - prior_ctr) * s)`` with ``s = prior_strength`` pseudo-impressions;
    the result is its posterior mean. A new ad (0 impressions) gets ``prior_ctr``; the observed CTR takes
    over as impressions grow past ``s``. ``prior_ctr`` must be in (0, 1] and ``prior_strength`` > 0, so the
    result is in (0, 1] and can be used as :attr:`Bidder.ctr` directly.
    """
    if not _is_int(clicks) or clicks < 0:
        raise InvalidQuery("clicks", f"must be a non-negative integer, got {clicks!r}")
    if not _is_int(impressions) or impressions < 0:
        raise InvalidQuery("impressions", f"must be a non-negative integer, got {impressions!r}")
    if clicks > impressions:
        raise InvalidQuery("clicks", f"cannot exceed impressions ({clicks} > {impressions})")
    if not _is_number(prior_ctr) or not 0.0 < float(prior_ctr) <= 1.0:
        raise InvalidQuery("prior_ctr", f"must be in (0, 1], got {prior_ctr!r}")
    if not _is_number(prior_strength) or not 0.0 < float(prior_strength) < math.inf:
        raise InvalidQuery("prior_strength", f"must be a finite number > 0, got {prior_strength!r}")
    s = float(prior_strength)
    return (int(clicks) + float(prior_ctr) * s) / (int(impressions) + s)
