"""Budget pacing (engine.ads.pacing): target shares, the throttle on a simulated day, the charge rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.ads.pacing import Pacer, can_charge, target_share
from engine.errors import InvalidQuery

MINUTES = 1440
CTR = 0.02
WIN_RATE = 0.5
PRICES = (20, 60)  # click prices, minor units, uniform in [20, 60]
MAX_PRICE = PRICES[1]
PER_MINUTE = 50  # mean auction opportunities per minute over the day


def _morning_peak() -> list[float]:
    hours = np.arange(24)
    w = 1.0 + 3.0 * np.exp(-0.5 * ((hours - 9) / 2.0) ** 2) + 1.5 * np.exp(-0.5 * ((hours - 20) / 2.5) ** 2)
    return [float(x) for x in w]


CURVE = _morning_peak()
MEAN_PRICE = (PRICES[0] + PRICES[1]) / 2
DEMAND = MINUTES * PER_MINUTE * WIN_RATE * CTR * MEAN_PRICE  # expected spend at p = 1 all day (28,800)


def _simulate(budget: int, seed: int) -> tuple[int, Pacer, float]:
    """One day, updated each minute: returns the day's spend, the pacer and the share of opportunities
    entered. Each opportunity entered wins with probability 0.5; a win is clicked with probability CTR."""
    rng = np.random.default_rng(seed)
    weights = np.asarray(CURVE) / sum(CURVE)
    pacer = Pacer(budget)
    spend = entered = opportunities = 0
    for minute in range(MINUTES):
        t = minute / MINUTES
        pacer.update(spend, t, CURVE)
        n = int(rng.poisson(MINUTES * PER_MINUTE * weights[int(t * 24)] / 60))
        k = sum(pacer.participates(rng) for _ in range(n))
        entered, opportunities = entered + k, opportunities + n
        clicks = rng.binomial(rng.binomial(k, WIN_RATE), CTR)
        for _ in range(clicks):
            price = int(rng.integers(PRICES[0], PRICES[1] + 1))
            if can_charge(spend, budget):
                spend += price
    return spend, pacer, entered / max(opportunities, 1)


# ---- target share -------------------------------------------------------------------------------------

def test_uniform_target_share_is_the_time_of_day() -> None:
    for t in (0.0, 0.25, 0.5, 0.9, 1.0):
        assert target_share(t) == t


def test_hourly_curve_by_hand() -> None:
    curve = [0.0] * 24
    curve[8], curve[9], curve[10], curve[20] = 2.0, 4.0, 2.0, 2.0  # total 10
    assert target_share(0.0, curve) == 0.0
    assert target_share(8 / 24, curve) == pytest.approx(0.0)
    assert target_share(9 / 24, curve) == pytest.approx(0.2)
    assert target_share(9.5 / 24, curve) == pytest.approx(0.4)  # half of hour 9: (2 + 4 * 0.5) / 10
    assert target_share(10.25 / 24, curve) == pytest.approx(0.65)  # (2 + 4 + 2 * 0.25) / 10
    assert target_share(15 / 24, curve) == pytest.approx(0.8)
    assert target_share(20.5 / 24, curve) == pytest.approx(0.9)
    assert target_share(1.0, curve) == pytest.approx(1.0)
    assert target_share(0.5, [1.0] * 24) == pytest.approx(0.5)


@pytest.mark.parametrize("curve", [[1.0] * 23, [0.0] * 24, [1.0] * 23 + [-1.0], [1.0] * 23 + [math.nan], "x" * 24])
def test_bad_curves_are_named(curve: object) -> None:
    with pytest.raises(InvalidQuery) as e:
        target_share(0.5, curve)  # type: ignore[arg-type]
    assert e.value.field == "curve"


@pytest.mark.parametrize("t", [-0.1, 1.5, math.nan, None])
def test_bad_times_are_named(t: object) -> None:
    with pytest.raises(InvalidQuery) as e:
        target_share(t)  # type: ignore[arg-type]
    assert e.value.field == "t"


# ---- the pacer on a simulated day ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demand_three_times_the_budget_spends_the_budget(seed: int) -> None:
    budget = int(DEMAND / 3)
    spend, pacer, entered = _simulate(budget, seed)
    assert abs(spend - budget) <= 0.05 * budget
    assert spend < budget + MAX_PRICE
    assert 0.2 < entered < 0.5  # it throttled to about a third


def test_demand_under_budget_keeps_participating() -> None:
    budget = int(DEMAND * 2)
    spend, pacer, entered = _simulate(budget, seed=3)
    assert pacer.p == 1.0
    assert entered > 0.97
    assert spend == pytest.approx(DEMAND, rel=0.15)  # what demand allows (about 720 clicks, sd ~4%)
    assert spend < budget


def test_spent_budget_exhausts_the_pacer() -> None:
    pacer = Pacer(1_000)
    assert pacer.update(1_000, 0.3) == 0.0 and pacer.exhausted
    rng = np.random.default_rng(0)
    assert not any(pacer.participates(rng) for _ in range(100))
    assert pacer.remaining(1_030) == 0 and pacer.remaining(400) == 600
    assert not can_charge(1_000, 1_000) and can_charge(999, 1_000)


def test_finishing_early_compresses_the_plan_by_hand() -> None:
    early = Pacer(1_000, finish=0.8)
    # at t = 0.4 the plan is at share(0.4 / 0.8) = 0.5: target 500, spend 600, gap -0.1 -> p = exp(-0.2)
    assert early.update(600, 0.4) == pytest.approx(math.exp(-0.2))
    # after t = 0.8 the whole budget is due: spend 900 is behind (gap +0.1) -> p grows back to 1
    assert early.update(900, 0.9) == pytest.approx(min(1.0, math.exp(-0.2) * math.exp(0.2)))
    with pytest.raises(InvalidQuery, match="finish"):
        Pacer(1_000, finish=0.3)
    with pytest.raises(InvalidQuery, match="t"):
        early.update(10, 1.5)


def test_update_rule_by_hand() -> None:
    pacer = Pacer(1_000, gain=2.0)
    # Ahead of target: target 250 at t = 0.25, spend 350, gap -0.1 -> p = exp(-0.2).
    assert pacer.update(350, 0.25) == pytest.approx(math.exp(-0.2))
    # Behind target: gap +0.3 -> p * exp(0.6) > 1, clipped to 1.
    assert pacer.update(200, 0.5) == 1.0
    # Far ahead: gap -0.98, p = exp(-1.96); with gain 10, exp(-9.8) < p_min, clipped.
    assert pacer.update(990, 0.01) == pytest.approx(math.exp(-1.96))
    fast = Pacer(1_000, gain=10.0)
    assert fast.update(990, 0.01) == fast.p_min


def test_tolerance_rule_by_hand() -> None:
    pacer = Pacer(1_000, tolerance=100)
    # target 250 at t = 0.25, spend 350: 100 ahead, within the tolerance -> on plan, p stays 1.
    assert pacer.update(350, 0.25) == 1.0 and not pacer.throttled
    # 150 ahead: 50 beyond the tolerance, gap -0.05 -> p = exp(-0.1).
    assert pacer.update(400, 0.25) == pytest.approx(math.exp(-0.1))
    assert pacer.throttled  # it has held the campaign back: the day's spend is no longer all its demand
    # near the end the plan plus the tolerance is capped at the budget: spend 980 at t = 1 is behind by 20.
    assert pacer.update(980, 1.0) == pytest.approx(min(1.0, math.exp(-0.1) * math.exp(0.04)))
    with pytest.raises(InvalidQuery, match="tolerance"):
        Pacer(1_000, tolerance=-1)


def _sparse_day(budget: int, seed: int, tolerance: int) -> tuple[int, int]:
    """A campaign of a few dozen clicks a day: each minute's opportunities, and whether each would be won
    and clicked and at what price, are drawn first (the same for every pacer: common random numbers); the
    pacer only decides which to enter. Returns (spend, demand), demand being the spend at p = 1 all day."""
    rng = np.random.default_rng(seed)
    weights = np.asarray(CURVE) / sum(CURVE)
    days = []
    for minute in range(MINUTES):
        n = int(rng.poisson(2.2 * 24 * weights[minute * 24 // MINUTES]))
        clicked = rng.random(n) < WIN_RATE * CTR
        days.append([(bool(c), int(rng.integers(PRICES[0], PRICES[1] + 1))) for c in clicked])
    demand = sum(price for minute in days for clicked, price in minute if clicked)
    pacer, spend = Pacer(budget, tolerance=tolerance, finish=0.9), 0
    draws = np.random.default_rng([seed, 1])
    for minute, opportunities in enumerate(days):
        pacer.update(spend, minute / MINUTES, CURVE)
        for clicked, price in opportunities:
            if pacer.participates(draws) and clicked and can_charge(spend, budget):
                spend += price
    return spend, demand


@pytest.mark.parametrize("seed", range(6))
def test_a_budget_of_a_few_dozen_clicks_with_little_more_demand_is_spent(seed: int) -> None:
    """Demand 15% over a budget of two to three dozen clicks: two clicks of tolerance (at the highest price) keep an
    early click from throttling the campaign below what the rest of the day needs."""
    _, demand = _sparse_day(1, seed, 0)
    budget = int(demand / 1.15)
    spend, _ = _sparse_day(budget, seed, 2 * MAX_PRICE)
    assert abs(spend - budget) <= 0.05 * budget, (spend, budget, demand)
    assert spend < budget + MAX_PRICE


def test_without_the_tolerance_such_budgets_end_short() -> None:
    """The same days without the tolerance: an early click throttles the campaign for hours, and half the
    seeds end about 10% short (why ``ads_pacing_tolerance`` exists)."""
    short = []
    for seed in range(6):
        _, demand = _sparse_day(1, seed, 0)
        budget = int(demand / 1.15)
        spend, _ = _sparse_day(budget, seed, 0)
        short.append((budget - spend) / budget)
    assert sum(s > 0.05 for s in short) >= 2, short


def test_participates_draws_with_probability_p() -> None:
    pacer = Pacer(1_000, p=0.3)
    rng = np.random.default_rng(5)
    share = np.mean([pacer.participates(rng) for _ in range(20_000)])
    assert share == pytest.approx(0.3, abs=0.015)
    assert Pacer(1_000).participates(rng)


@pytest.mark.parametrize("kwargs, field", [
    ({"budget": 0}, "budget"), ({"budget": 10.0}, "budget"), ({"budget": True}, "budget"),
    ({"budget": 100, "p": 1.5}, "p"), ({"budget": 100, "p_min": 0.0}, "p_min"),
    ({"budget": 100, "gain": -1.0}, "gain"),
])
def test_bad_pacer_settings_are_named(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidQuery) as e:
        Pacer(**kwargs)  # type: ignore[arg-type]
    assert e.value.field == field


def test_bad_spend_is_named() -> None:
    for call in (lambda: Pacer(100).update(-1, 0.5), lambda: Pacer(100).update(1.5, 0.5),  # type: ignore[arg-type]
                 lambda: Pacer(100).remaining(-3), lambda: can_charge(-1, 100)):
        with pytest.raises(InvalidQuery) as e:
            call()
        assert e.value.field == "spend"
    with pytest.raises(InvalidQuery) as e:
        can_charge(10, 0)
    assert e.value.field == "budget"


@pytest.mark.parametrize("key,value", [("ads_pacing_finish", 0.3), ("ads_pacing_finish", 1.2),
                                       ("ads_relevance_power", -1.0), ("ads_relevance_power", 11.0),
                                       ("ads_pacing_tolerance", -1.0), ("ads_pacing_tolerance", 101.0)])
def test_bad_ad_settings_are_named(key: str, value: float) -> None:
    from engine.config import ConfigError, EngineConfig

    with pytest.raises(ConfigError, match=key):
        EngineConfig.load(env={f"VITRINE_{key.upper()}": str(value)})
