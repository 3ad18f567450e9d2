"""Budget pacing: a campaign's daily budget spread over the day, and the budget check before a charge.

Owns how much of a daily budget should be spent by a time of day (:func:`target_share`), the per campaign
and day throttle that steers spend toward that target (:class:`Pacer`) and the charge rule
(:func:`can_charge`). Money is always an ``int`` in minor units (cents).

**Definitions.** ``t`` is the fraction of the (campaign's local) day elapsed, in ``[0, 1]`` (1 is the end of
the day). The *target share* is the share of the daily budget that should be spent by ``t``: ``t`` itself by
default (uniform), or, with a traffic ``curve`` of 24 hourly weights ``w_0..w_23`` (non-negative, sum > 0),
their cumulative share linearly interpolated within the hour:
``share(t) = (w_0 + ... + w_{h-1} + w_h * f) / sum(w)`` with ``h = floor(24 t)`` and ``f = 24 t - h``.
Pacing to the traffic curve spends more when shoppers are there, instead of a flat rate that would miss the
peak (and its better conversions) and overspend at night.

**Throttle.** The :class:`Pacer` keeps a participation probability ``p``: each auction opportunity the
campaign enters with probability ``p`` (probabilistic throttling). At each :meth:`Pacer.update`, with
``target = budget * share(t)`` and the normalized gap ``gap = (min(target + tolerance, budget) - spend) /
budget``:

    ``p <- clip(max(p, p_min) * exp(gain * gap), p_min, 1)``;   ``p <- 0`` once ``spend >= budget``.

With ``finish < 1`` the plan is compressed so that the whole budget is due by ``t = finish`` (``share(min(t /
finish, 1))``). The controller lags its target: a campaign that only catches up in the quiet last hours
ends the day short of its budget; planning to finish a little early leaves those hours as slack.

``tolerance`` (minor units; the server sets ``ads_pacing_tolerance`` clicks at the campaign's bid) is spend
ahead of the plan that still counts as on plan. A budget of a few dozen clicks moves a whole click at a time:
without it, one early click puts the campaign ahead, ``p`` sinks for as long as it stays ahead, and climbs
back only as fast as the small gap allows, so a campaign with little more demand than budget ends short.
``throttled`` records whether ``p`` was ever below 1 with budget left (the campaign skipped auctions).

This is integral control on ``log p``: behind the target ``p`` grows, ahead of it ``p`` shrinks, at a rate
proportional to the gap; multiplicative steps reach low participation (a budget far below demand) in a few
updates and keep ``p`` positive. ``gain`` is per update; the default 2 is tuned for an update about once a
minute (1,440 a day): with demand three times the budget it ends the day within a few percent of the budget
(see tests/test_ads_pacing.py). With demand below the budget spend stays behind target, so ``p`` stays at 1
and the campaign spends what demand allows.

**Charges.** :func:`can_charge` allows a click while ``spend < budget``: the click that crosses the budget is
still charged, so a day's spend exceeds the budget by less than one click's price at most. The caller must
check and charge atomically (the campaigns store does both in one write transaction), or two concurrent
clicks could both pass the check.

**Thread-safety.** :func:`target_share` and :func:`can_charge` are pure. A :class:`Pacer` is mutable state
of one campaign and day: not thread-safe, the caller serializes :meth:`Pacer.update` (e.g. one updater per
campaign) and :meth:`Pacer.participates` uses the caller's ``numpy.random.Generator`` (one per thread).

Sources: Agarwal et al. (2014), "Budget pacing for targeted online advertisements at LinkedIn" (KDD)
(probabilistic throttling, traffic-shaped spend plan); Xu et al. (2015), "Smart pacing for effective online
ad campaign optimization" (KDD).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import InvalidQuery

HOURS = 24


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _money(field: str, value: Any, *, positive: bool = False) -> int:
    if not _is_int(value) or value < (1 if positive else 0):
        kind = "positive" if positive else "non-negative"
        raise InvalidQuery(field, f"must be a {kind} integer in minor units (cents), got {value!r}")
    return int(value)


def check_curve(curve: Sequence[float]) -> list[float]:
    """``curve`` as 24 floats, validated: non-negative, finite, summing to more than 0."""
    if isinstance(curve, (str, bytes)) or not isinstance(curve, Sequence) or len(curve) != HOURS:
        raise InvalidQuery("curve", f"must be a list of {HOURS} hourly traffic weights")
    weights: list[float] = []
    for h, w in enumerate(curve):
        if not _is_number(w) or not 0.0 <= float(w) < math.inf:
            raise InvalidQuery("curve", f"hour {h}: weights must be finite and non-negative, got {w!r}")
        weights.append(float(w))
    if sum(weights) <= 0.0:
        raise InvalidQuery("curve", "the weights must sum to more than 0")
    return weights


def target_share(t: float, curve: Sequence[float] | None = None) -> float:
    """The share of the daily budget that should be spent by time of day ``t`` in ``[0, 1]``: ``t`` without a
    curve, else the cumulative share of the 24 hourly ``curve`` weights, linearly interpolated in the hour."""
    if not _is_number(t) or not 0.0 <= float(t) <= 1.0:
        raise InvalidQuery("t", f"must be the fraction of the day elapsed, in [0, 1], got {t!r}")
    t = float(t)
    if curve is None:
        return t
    weights = check_curve(curve)
    hour = min(int(t * HOURS), HOURS - 1)
    frac = t * HOURS - hour
    return min((sum(weights[:hour]) + weights[hour] * frac) / sum(weights), 1.0)


def can_charge(spend: int, budget: int) -> bool:
    """Whether a click may still be charged: ``spend < budget`` (check and charge atomically)."""
    return _money("spend", spend) < _money("budget", budget, positive=True)


@dataclass
class Pacer:
    """Per campaign and day: participation probability ``p`` in ``[p_min, 1]`` adjusted from the gap between
    spend and target (0 once the budget is spent). See the module docstring for the rule."""

    budget: int
    p: float = 1.0
    p_min: float = 0.01
    gain: float = 2.0
    finish: float = 1.0  # the fraction of the day by which the plan spends the whole budget
    tolerance: int = 0  # minor units of spend ahead of the plan that do not count as ahead (a click or two)
    throttled: bool = False  # whether p was ever below 1 with budget left: the campaign skipped auctions

    def __post_init__(self) -> None:
        self.budget = _money("budget", self.budget, positive=True)
        if not _is_number(self.p_min) or not 0.0 < float(self.p_min) <= 1.0:
            raise InvalidQuery("p_min", f"must be in (0, 1], got {self.p_min!r}")
        if not _is_number(self.p) or not 0.0 <= float(self.p) <= 1.0:
            raise InvalidQuery("p", f"must be a probability in [0, 1], got {self.p!r}")
        if not _is_number(self.gain) or not 0.0 < float(self.gain) < math.inf:
            raise InvalidQuery("gain", f"must be a finite number > 0, got {self.gain!r}")
        if not _is_number(self.finish) or not 0.5 <= float(self.finish) <= 1.0:
            raise InvalidQuery("finish", f"must be a fraction of the day in [0.5, 1], got {self.finish!r}")
        self.tolerance = _money("tolerance", self.tolerance)
        self.p, self.p_min, self.gain = float(self.p), float(self.p_min), float(self.gain)
        self.finish = float(self.finish)

    @property
    def exhausted(self) -> bool:
        return self.p == 0.0

    def update(self, spend: int, t: float, curve: Sequence[float] | None = None) -> float:
        """Adjust ``p`` to the day's ``spend`` so far at time of day ``t`` (optionally with a traffic
        ``curve``); returns the new ``p``."""
        spend = _money("spend", spend)
        target_share(t)  # validates t
        share = target_share(min(float(t) / self.finish, 1.0), curve)
        if spend >= self.budget:
            self.p = 0.0
            return self.p
        gap = (min(self.budget * share + self.tolerance, self.budget) - spend) / self.budget
        p = max(self.p, self.p_min) * math.exp(self.gain * gap)
        self.p = min(max(p, self.p_min), 1.0)
        self.throttled = self.throttled or self.p < 1.0
        return self.p

    def participates(self, rng: np.random.Generator) -> bool:
        """Whether to enter this auction: true with probability ``p``. Draws one ``rng.random()`` unless
        ``p`` is 0 or 1 (then the answer is certain and nothing is drawn)."""
        if self.p >= 1.0:
            return True
        if self.p <= 0.0:
            return False
        return bool(rng.random() < self.p)

    def remaining(self, spend: int) -> int:
        """Budget left after ``spend``, never negative (minor units)."""
        return max(self.budget - _money("spend", spend), 0)
