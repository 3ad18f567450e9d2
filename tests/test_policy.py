"""Exploration policies (engine.learn.policy): shown order, per-slot distributions, logged propensities."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.learn.policy import ExplorationSettings, Slate, choose, slot_distributions, target_probability

EPS = ExplorationSettings(kind="epsilon", epsilon=0.2, positions=4, pool=6)
SOFT = ExplorationSettings(kind="softmax", temperature=0.7, positions=4, pool=6)
COLD_EPS = ExplorationSettings(kind="epsilon", epsilon=0.2, positions=5, pool=8, cold_share=0.3)
COLD_GREEDY = ExplorationSettings(kind="greedy", positions=5, pool=8, cold_share=0.25)
RANDOM_SETTINGS = [EPS, SOFT, COLD_EPS, COLD_GREEDY]


def _scores(n: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n)


def _cold(n: int = 30, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < 0.3


# ---- deterministic settings ---------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [
    ExplorationSettings(),
    ExplorationSettings(kind="epsilon", epsilon=0.0),
    ExplorationSettings(kind="softmax", temperature=0.0),
    ExplorationSettings(kind="epsilon", epsilon=0.5, pool=1),
])
def test_deterministic_settings_follow_the_score_order(settings: ExplorationSettings) -> None:
    assert settings.deterministic
    s = np.array([0.5, 2.0, 2.0, -1.0, 3.0, 0.5, 1.0])
    a = choose(s, 5, settings, np.random.default_rng(1), cold=np.ones(7, bool))
    b = choose(s, 5, settings, np.random.default_rng(99))
    expect = np.argsort(-s, kind="stable")[:5]
    np.testing.assert_array_equal(a.order, expect)
    np.testing.assert_array_equal(b.order, expect)
    assert a.order.dtype == np.int64 and a.propensities.dtype == np.float64 and a.explored.dtype == np.bool_
    np.testing.assert_array_equal(a.propensities, np.ones(5))
    assert not a.explored.any()


def test_deterministic_choose_leaves_the_generator_alone() -> None:
    rng = np.random.default_rng(5)
    choose(_scores(), 10, ExplorationSettings(kind="epsilon", epsilon=0.0), rng)
    assert rng.random() == np.random.default_rng(5).random()


def test_randomizing_settings_are_not_deterministic() -> None:
    assert not EPS.deterministic and not SOFT.deterministic
    assert not ExplorationSettings(cold_share=0.1).deterministic
    assert not ExplorationSettings(kind="softmax", temperature=0.0, cold_share=0.1).deterministic


def test_empty_inputs_give_an_empty_slate() -> None:
    rng = np.random.default_rng(0)
    for slate in (choose(_scores(), 0, EPS, rng), choose(_scores(), -3, EPS, rng), choose(np.array([]), 5, EPS, rng)):
        assert isinstance(slate, Slate) and len(slate) == 0
        assert slate.order.dtype == np.int64 and slate.propensities.shape == (0,) and slate.explored.shape == (0,)


def test_k_larger_than_n_shows_every_candidate_once() -> None:
    s = _scores(8)
    slate = choose(s, 20, ExplorationSettings(kind="epsilon", epsilon=1.0, positions=20, pool=50),
                   np.random.default_rng(3))
    assert sorted(slate.order.tolist()) == list(range(8))


# ---- distributions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", RANDOM_SETTINGS)
def test_slot_distributions_sum_to_one_and_match_the_logged_propensities(settings: ExplorationSettings) -> None:
    s, cold = _scores(), _cold()
    for seed in range(20):
        slate = choose(s, 8, settings, np.random.default_rng(seed), cold=cold)
        assert slate.order.shape == (8,) and len(set(slate.order.tolist())) == 8
        dists = slot_distributions(s, 8, settings, slate.order, cold=cold)
        assert len(dists) == 8
        for slot, d in enumerate(dists):
            assert d.shape == (30,)
            assert abs(d.sum() - 1.0) < 1e-12
            assert (d >= 0).all()
            assert d[slate.order[:slot]].sum() == 0.0  # placed candidates get nothing
            assert slate.propensities[slot] == d[slate.order[slot]]
            assert slate.propensities[slot] > 0
            if slot >= settings.positions:
                assert slate.propensities[slot] == 1.0 and not slate.explored[slot]


def test_pool_and_positions_bound_the_support() -> None:
    s = _scores()
    ranked = np.argsort(-s, kind="stable")
    settings = ExplorationSettings(kind="epsilon", epsilon=0.5, positions=2, pool=4)
    d = slot_distributions(s, 3, settings, ranked[:3])
    assert set(np.flatnonzero(d[0]).tolist()) == set(ranked[:4].tolist())
    assert set(np.flatnonzero(d[1]).tolist()) == set(ranked[1:5].tolist())  # pool counted among the remaining
    np.testing.assert_array_equal(np.flatnonzero(d[2]), [ranked[2]])  # slot >= positions: the best remaining


def test_explored_marks_picks_other_than_the_best_remaining() -> None:
    s = _scores()
    settings = ExplorationSettings(kind="epsilon", epsilon=1.0, positions=10, pool=30)
    slate = choose(s, 10, settings, np.random.default_rng(7))
    for slot in range(10):
        rest = np.setdiff1d(np.arange(30), slate.order[:slot])
        best = rest[np.argmax(s[rest])]
        assert slate.explored[slot] == (slate.order[slot] != best)
    assert slate.explored.any()


def test_epsilon_by_hand() -> None:
    s = np.array([3.0, 2.0, 1.0])
    settings = ExplorationSettings(kind="epsilon", epsilon=0.3, pool=3)
    d = slot_distributions(s, 1, settings, np.array([0]))
    np.testing.assert_allclose(d[0], [0.8, 0.1, 0.1], rtol=0, atol=1e-15)
    # the second slot, given item 0 above: pool of 2, 1 - 0.3 + 0.15 on item 1
    d = slot_distributions(s, 2, settings, np.array([0, 2]))
    np.testing.assert_allclose(d[1], [0.0, 0.85, 0.15], rtol=0, atol=1e-15)


def test_softmax_by_hand() -> None:
    # exp(s / 1) = [1, 2, 4] -> [1/7, 2/7, 4/7]; at temperature 2: sqrt -> [1, sqrt2, 2] / (3 + sqrt2)
    s = np.array([0.0, math.log(2), math.log(4)])
    d = slot_distributions(s, 1, ExplorationSettings(kind="softmax", temperature=1.0, pool=3), np.array([2]))
    np.testing.assert_allclose(d[0], [1 / 7, 2 / 7, 4 / 7], rtol=1e-12)
    d = slot_distributions(s, 2, ExplorationSettings(kind="softmax", temperature=2.0, pool=3), np.array([2, 0]))
    z = 3 + math.sqrt(2)
    np.testing.assert_allclose(d[0], [1 / z, math.sqrt(2) / z, 2 / z], rtol=1e-12)
    # second slot given item 2 above: [1, sqrt2] / (1 + sqrt2)
    np.testing.assert_allclose(d[1], [1 / (1 + math.sqrt(2)), math.sqrt(2) / (1 + math.sqrt(2)), 0.0], rtol=1e-12)


def test_softmax_is_stable_on_large_scores() -> None:
    s = np.array([1000.0, 999.0, -1000.0])
    d = slot_distributions(s, 1, ExplorationSettings(kind="softmax", temperature=1.0), np.array([0]))
    np.testing.assert_allclose(d[0], [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1)), 0.0], atol=1e-15)


def test_cold_share_by_hand() -> None:
    s = np.array([3.0, 2.0, 1.0, 0.0])
    cold = np.array([False, False, True, True])
    greedy = ExplorationSettings(kind="greedy", cold_share=0.2, pool=4)
    d = slot_distributions(s, 1, greedy, np.array([0]), cold=cold)
    np.testing.assert_allclose(d[0], [0.8, 0.0, 0.1, 0.1], atol=1e-15)
    eps = ExplorationSettings(kind="epsilon", epsilon=0.4, cold_share=0.5, pool=3)
    d = slot_distributions(s, 1, eps, np.array([0]), cold=cold)
    # base over the pool {0, 1, 2}: [0.6 + 0.4/3, 0.4/3, 0.4/3]; cold in the pool: item 2 only
    base = np.array([0.6 + 0.4 / 3, 0.4 / 3, 0.4 / 3, 0.0])
    np.testing.assert_allclose(d[0], 0.5 * base + 0.5 * np.array([0, 0, 1.0, 0]), atol=1e-15)
    # no cold candidate in the pool: base alone
    d = slot_distributions(s, 1, ExplorationSettings(kind="epsilon", epsilon=0.4, cold_share=0.5, pool=2),
                           np.array([0]), cold=cold)
    np.testing.assert_allclose(d[0], [0.8, 0.2, 0.0, 0.0], atol=1e-15)
    # without a mask, cold_share changes nothing
    d = slot_distributions(s, 1, greedy, np.array([0]))
    np.testing.assert_array_equal(d[0], [1.0, 0.0, 0.0, 0.0])


def test_non_finite_scores_are_never_explored() -> None:
    s = np.array([np.nan, 1.0, np.inf, 2.0, -np.inf, 0.5])
    settings = ExplorationSettings(kind="epsilon", epsilon=1.0, positions=6, pool=10)
    for seed in range(30):
        slate = choose(s, 6, settings, np.random.default_rng(seed))
        assert slate.order[0] == 2 and slate.propensities[0] == 1.0  # +inf first, deterministically
        assert set(slate.order[1:4].tolist()) == {1, 3, 5}
        np.testing.assert_array_equal(slate.order[4:], [0, 4])  # NaN as -inf, ties by index
        np.testing.assert_array_equal(slate.propensities[4:], [1.0, 1.0])
        dists = slot_distributions(s, 6, settings, slate.order)
        for slot, d in enumerate(dists):
            assert abs(d.sum() - 1.0) < 1e-12 and slate.propensities[slot] == d[slate.order[slot]]


# ---- sampling matches the distributions ---------------------------------------------------------------

@pytest.mark.parametrize("settings", RANDOM_SETTINGS)
def test_empirical_first_slot_frequencies_match(settings: ExplorationSettings) -> None:
    n, draws = 12, 20_000
    s, cold = _scores(n, seed=4), _cold(n, seed=5)
    rng = np.random.default_rng(123)
    counts = np.zeros(n)
    for _ in range(draws):
        counts[choose(s, 1, settings, rng, cold=cold).order[0]] += 1
    ranked = np.argsort(-s, kind="stable")
    p = slot_distributions(s, 1, settings, ranked[:1], cold=cold)[0]
    se = np.sqrt(p * (1 - p) / draws)
    freq = counts / draws
    assert np.all(np.abs(freq - p) <= 4 * se + 1e-12), (freq, p)
    assert counts[p == 0].sum() == 0


def test_empirical_second_slot_given_the_first() -> None:
    s = np.array([2.0, 1.5, 1.0, 0.2])
    settings = ExplorationSettings(kind="softmax", temperature=0.5, pool=4)
    rng = np.random.default_rng(9)
    counts = np.zeros(4)
    total = 0
    for _ in range(20_000):
        o = choose(s, 2, settings, rng).order
        if o[0] == 0:
            counts[o[1]] += 1
            total += 1
    p = slot_distributions(s, 2, settings, np.array([0, 1]))[1]
    se = np.sqrt(p * (1 - p) / total)
    assert np.all(np.abs(counts / total - p) <= 4 * se + 1e-12), (counts / total, p)


# ---- target probabilities -----------------------------------------------------------------------------

def test_target_probability_of_a_logged_order() -> None:
    s, cold = _scores(), _cold()
    logged = choose(s, 8, SOFT, np.random.default_rng(2), cold=cold)
    for target in (EPS, COLD_EPS, COLD_GREEDY, ExplorationSettings()):
        pi = target_probability(s, target, logged.order, cold=cold)
        dists = slot_distributions(s, 8, target, logged.order, cold=cold)
        assert pi.shape == (8,) and pi.dtype == np.float64
        np.testing.assert_array_equal(pi, [d[a] for d, a in zip(dists, logged.order)])
    # the logging policy's own target probabilities are its propensities
    np.testing.assert_array_equal(target_probability(s, SOFT, logged.order, cold=cold), logged.propensities)
    # greedy gives 1 where the log followed the score order, else 0
    greedy = target_probability(s, ExplorationSettings(), logged.order)
    assert set(np.unique(greedy).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(greedy == 1.0, ~logged.explored)
    assert target_probability(s, EPS, np.array([], dtype=np.int64)).shape == (0,)


def test_bad_order_is_rejected() -> None:
    from engine.errors import InvalidQuery
    s = _scores(5)
    for bad in (np.array([0, 0]), np.array([5]), np.array([-1]), np.array([0.5])):
        with pytest.raises(InvalidQuery, match="order"):
            slot_distributions(s, 2, EPS, bad)
    with pytest.raises(InvalidQuery, match="cold"):
        choose(s, 2, COLD_EPS, np.random.default_rng(0), cold=np.ones(4, bool))


# ---- settings -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, field", [
    ({"kind": "epsilon", "epsilon": -0.1}, "epsilon"),
    ({"kind": "epsilon", "epsilon": 1.5}, "epsilon"),
    ({"kind": "softmax", "temperature": -1.0}, "temperature"),
    ({"kind": "softmax", "temperature": math.inf}, "temperature"),
    ({"positions": 0}, "positions"),
    ({"pool": 0}, "pool"),
    ({"pool": 2.5}, "pool"),
    ({"cold_share": 2.0}, "cold_share"),
    ({"kind": "bogus"}, "kind"),
])
def test_bad_settings_name_the_field(changes: dict[str, object], field: str) -> None:
    settings = ExplorationSettings(**changes)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"^explore_recommend\.{field}: "):
        settings.validate("explore_recommend")
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        choose(_scores(), 3, settings, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=rf"^explore_search\.{field}: "):
        ExplorationSettings.parse(changes, key="explore_search")


def test_validate_message() -> None:
    with pytest.raises(ConfigError) as e:
        ExplorationSettings(kind="epsilon", epsilon=1.5).validate("explore_recommend")
    assert str(e.value) == "explore_recommend.epsilon: must be in 0..1, got 1.5"


@pytest.mark.parametrize("value, field", [
    ("epsilon:abc", "epsilon"),
    ("epsilon", "epsilon"),
    ("softmax:-1", "temperature"),
    ("bogus:0.1", "kind"),
    ("greedy:0.1", "kind"),
    ("0.1", "kind"),
    ({"kind": "epsilon", "epsilon": "x"}, "epsilon"),
    ({"kind": "epsilon", "epsilon": True}, "epsilon"),
    ({"kind": "epsilon", "epsilon": 0.1, "typo": 1}, "typo"),
    ({"kind": 3}, "kind"),
    ({"epsilon": 0.1}, "kind"),
    ({"kind": "softmax", "positions": "five"}, "positions"),
])
def test_parse_rejects(value: object, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^explore_recommend\.{field}: "):
        ExplorationSettings.parse(value, key="explore_recommend")  # type: ignore[arg-type]


def test_parse_rejects_other_types() -> None:
    with pytest.raises(ConfigError, match=r"^explore_recommend: "):
        ExplorationSettings.parse(0.1, key="explore_recommend")  # type: ignore[arg-type]


def test_parse() -> None:
    for text in ("0", "greedy", " Greedy ", "off", None):
        got = ExplorationSettings.parse(text, key="explore")
        assert got == ExplorationSettings() and got.deterministic
    assert ExplorationSettings.parse("epsilon:0.1", key="x") == ExplorationSettings(kind="epsilon", epsilon=0.1)
    assert ExplorationSettings.parse("softmax:0.5", key="x") == ExplorationSettings(kind="softmax", temperature=0.5)
    got = ExplorationSettings.parse({"kind": "softmax", "temperature": 0.5}, key="x")
    assert got == ExplorationSettings(kind="softmax", temperature=0.5) and not got.deterministic
    got = ExplorationSettings.parse({"kind": "epsilon", "epsilon": "0.1", "positions": 5, "pool": "20",
                                     "cold_share": 0.05}, key="x")
    assert got == ExplorationSettings(kind="epsilon", epsilon=0.1, positions=5, pool=20, cold_share=0.05)
    assert ExplorationSettings.parse({"kind": "epsilon", "epsilon": 0}, key="x").deterministic


def test_short_form_takes_options_and_spec_round_trips() -> None:
    got = ExplorationSettings.parse("epsilon:0.2,positions=3,pool=20,cold_share=0.1", key="explore_recommend")
    assert got == ExplorationSettings(kind="epsilon", epsilon=0.2, positions=3, pool=20, cold_share=0.1)
    assert ExplorationSettings.parse(got.spec(), key="x") == got
    assert ExplorationSettings().spec() == "greedy"
    with pytest.raises(ConfigError, match="explore_recommend.bogus"):
        ExplorationSettings.parse("epsilon:0.2,bogus=1", key="explore_recommend")
    with pytest.raises(ConfigError, match="explore_recommend.pool"):
        ExplorationSettings.parse("softmax:0.5,pool=x", key="explore_recommend")
