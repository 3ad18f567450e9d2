"""Strategy bandits (engine/learn/bandits.py): hand-computed LinUCB, Sherman-Morrison, Beta counts,
epsilon-greedy, learning on a synthetic contextual problem, snapshots, replay and settings."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.learn.bandits import (
    ARMS, CONTEXT_DIM, BetaThompson, Context, EpsilonGreedyBandit, LinearThompson, LinUCB, Rewards,
    bandit_from_dict, context_vector, make_bandit, replay,
)

KINDS = ("epsilon", "linucb", "thompson", "beta")


def ctx(segment: str = "new", surface: str = "recommend", step: int = 0, cart: bool = False,
        clicks: int = 0, category: str | None = None) -> Context:
    return Context(surface, segment, step, category, cart, clicks)


def records(seed: int, n: int = 300) -> list[tuple[Context, str, float]]:
    rng = np.random.default_rng(seed)
    return [(ctx(str(rng.choice(["new", "loyal", "anonymous"])), str(rng.choice(["recommend", "search"])),
                 int(rng.integers(0, 30)), bool(rng.random() < 0.3), int(rng.integers(0, 12)),
                 None if rng.random() < 0.5 else "shoes"),
             str(rng.choice(ARMS)), float(rng.choice([0.0, 1.0, 3.0, 5.0]))) for _ in range(n)]


# -- context ----------------------------------------------------------------------------------

def test_context_vector_layout() -> None:
    x = context_vector(ctx("loyal", "search", step=3, cart=True, clicks=14, category="shoes"))
    assert x.shape == (CONTEXT_DIM,) and x.dtype == np.float64
    expected = np.zeros(CONTEXT_DIM)
    expected[[0, 4, 9, 12, 14]] = 1.0  # bias, surface "search", segment "loyal", cart, category known
    expected[11] = math.log1p(3)
    expected[13] = 1.0  # min(14, 10) / 10
    assert x.tolist() == expected.tolist()
    y = context_vector(ctx("robot", "email", step=0, clicks=3))
    assert y[5] == 1.0 and y[10] == 1.0  # unknown surface and segment -> "other"
    assert y[13] == pytest.approx(0.3) and y[11] == 0.0 and y[14] == 0.0


# -- LinUCB by hand ---------------------------------------------------------------------------

def test_linucb_one_update_by_hand() -> None:
    b = LinUCB(("a", "b"), alpha=1.0, lam=1.0, dim=2)
    b.update_vector(np.array([1.0, 0.0]), "a", 1.0)
    assert b.A[0].tolist() == [[2.0, 0.0], [0.0, 1.0]]
    assert b.A_inv[0].tolist() == [[0.5, 0.0], [0.0, 1.0]]
    assert b.theta()[0].tolist() == [0.5, 0.0]
    assert b.theta()[1].tolist() == [0.0, 0.0]
    scores = b.scores(np.array([1.0, 0.0]))
    assert scores[0] == pytest.approx(0.5 + math.sqrt(0.5), abs=1e-15)
    assert scores[1] == pytest.approx(1.0, abs=1e-15)  # untouched arm: 0 + sqrt(x^T I x)
    assert b.choose_vector(np.array([1.0, 0.0]), np.random.default_rng(0)) == ("a", 1.0)
    # for x = [0, 1] arm "a" scores 0 + 1 and "b" too: the tie goes to the first arm
    assert b.probabilities_vector(np.array([0.0, 1.0]), np.random.default_rng(0)).tolist() == [1.0, 0.0]


def test_linucb_two_updates_by_hand() -> None:
    b = LinUCB(("a", "b"), alpha=1.0, lam=1.0, dim=2)
    b.update_vector(np.array([1.0, 0.0]), "a", 1.0)
    b.update_vector(np.array([1.0, 1.0]), "a", 0.0)
    # A = I + [[1,0],[0,0]] + [[1,1],[1,1]] = [[3,1],[1,2]], det 5, A^-1 = [[2,-1],[-1,3]] / 5; b = [1, 0]
    np.testing.assert_allclose(b.A[0], [[3.0, 1.0], [1.0, 2.0]], rtol=0, atol=0)
    np.testing.assert_allclose(b.A_inv[0], np.array([[2.0, -1.0], [-1.0, 3.0]]) / 5, atol=1e-15)
    np.testing.assert_allclose(b.A_inv[0], np.linalg.inv(b.A[0]), atol=1e-15)
    np.testing.assert_allclose(b.theta()[0], [0.4, -0.2], atol=1e-15)
    # x = [0, 1]: theta^T x = -0.2, x^T A^-1 x = 3/5
    assert b.scores(np.array([0.0, 1.0]))[0] == pytest.approx(-0.2 + math.sqrt(0.6), abs=1e-14)
    alpha2 = LinUCB(("a", "b"), alpha=2.0, lam=1.0, dim=2)
    replay_vectors = [(np.array([1.0, 0.0]), "a", 1.0), (np.array([1.0, 1.0]), "a", 0.0)]
    for x, arm, r in replay_vectors:
        alpha2.update_vector(x, arm, r)
    assert alpha2.scores(np.array([0.0, 1.0]))[0] == pytest.approx(-0.2 + 2 * math.sqrt(0.6), abs=1e-14)


def test_lambda_scales_the_prior() -> None:
    b = LinUCB(("a",), lam=4.0, dim=2)
    assert b.A_inv[0].tolist() == [[0.25, 0.0], [0.0, 0.25]]
    b.update_vector(np.array([0.0, 2.0]), "a", 3.0)  # A = diag(4, 8), b = [0, 6], theta = [0, 0.75]
    np.testing.assert_allclose(b.theta()[0], [0.0, 0.75], atol=1e-15)


@pytest.mark.parametrize("cls", [LinUCB, LinearThompson])
def test_sherman_morrison_matches_inverse(cls: type[LinUCB] | type[LinearThompson]) -> None:
    rng = np.random.default_rng(7)
    b = cls(("a", "b", "c"), lam=0.5, dim=6)
    xs = rng.normal(size=(50, 6))
    arms = rng.choice(["a", "b", "c"], size=50)
    for x, arm in zip(xs, arms):
        b.update_vector(x, str(arm), float(rng.random()))
    for i, arm in enumerate(("a", "b", "c")):
        A = 0.5 * np.eye(6) + sum((np.outer(x, x) for x, a in zip(xs, arms) if a == arm), np.zeros((6, 6)))
        np.testing.assert_allclose(b.A[i], A, atol=1e-12)
        np.testing.assert_allclose(b.A_inv[i], np.linalg.inv(A), atol=1e-9, rtol=0)
        assert np.array_equal(b.A_inv[i], b.A_inv[i].T)  # kept exactly symmetric


def test_periodic_reinversion_keeps_the_inverse() -> None:
    rng = np.random.default_rng(3)
    b = LinUCB(("a",), dim=4)
    for _ in range(LinUCB.REINVERT_EVERY + 37):
        b.update_vector(rng.normal(size=4), "a", 1.0)
    np.testing.assert_allclose(b.A_inv[0], np.linalg.inv(b.A[0]), atol=1e-12)


def test_linear_bandit_on_a_raw_dim_refuses_contexts() -> None:
    b = LinUCB(("a", "b"), dim=2)
    with pytest.raises(ValueError, match="dim=2"):
        b.choose(ctx(), np.random.default_rng(0))


def test_linucb_epsilon_mixing_is_exact() -> None:
    b = LinUCB(("a", "b", "c", "d"), epsilon=0.2, dim=2)
    b.update_vector(np.array([1.0, 0.0]), "c", 1.0)
    p = b.probabilities_vector(np.array([1.0, 0.0]), np.random.default_rng(0))
    np.testing.assert_allclose(p, [0.05, 0.05, 0.85, 0.05], atol=1e-15)
    rng = np.random.default_rng(1)
    picks = [b.choose_vector(np.array([1.0, 0.0]), rng) for _ in range(4000)]
    assert {arm: prop for arm, prop in picks} == pytest.approx({"a": 0.05, "b": 0.05, "c": 0.85, "d": 0.05})
    assert sum(arm == "c" for arm, _ in picks) / 4000 == pytest.approx(0.85, abs=0.025)


# -- Beta Thompson ----------------------------------------------------------------------------

def test_beta_counts() -> None:
    b = BetaThompson()
    b.update(ctx("new"), "content", 1.0)
    b.update(ctx("new"), "content", 0.0)
    b.update(ctx("new"), "new", 5.0)
    b.update(ctx("loyal", "chat"), "trending", 0.0)  # unknown surface -> the "other" bucket
    b.update(ctx("new"), "retired-arm", 1.0)  # an arm of an older configuration: ignored
    assert b.successes == {"recommend|new": [1, 0, 0, 1, 0], "other|loyal": [0, 0, 0, 0, 0]}
    assert b.failures == {"recommend|new": [1, 0, 0, 0, 0], "other|loyal": [0, 0, 1, 0, 0]}


def test_beta_probabilities_and_a_clear_winner() -> None:
    b = BetaThompson(("good", "bad"))
    for k in range(100):
        b.update(ctx(), "good", 1.0 if k < 90 else 0.0)
        b.update(ctx(), "bad", 1.0 if k < 10 else 0.0)
    rng = np.random.default_rng(11)
    p = b.probabilities(ctx(), rng, draws=1000)
    assert sum(p.values()) == pytest.approx(1.0) and p["good"] > 0.99
    picks = [b.choose(ctx(), rng) for _ in range(1000)]
    assert sum(arm == "good" for arm, _ in picks) > 990
    assert all(prop > 0.99 for arm, prop in picks if arm == "good")
    fresh = b.probabilities(ctx("loyal"), rng, draws=4000)  # an untouched bucket: uniform
    assert fresh["good"] == pytest.approx(0.5, abs=0.04)


# -- epsilon-greedy ---------------------------------------------------------------------------

def test_epsilon_zero_is_deterministic_and_means_are_exact() -> None:
    b = EpsilonGreedyBandit(epsilon=0.0)
    for arm, r in [("trending", 1.0), ("trending", 3.0), ("trending", 0.0), ("trending", 5.0),
                   ("content", 2.0), ("content", 2.5)]:
        b.update(ctx(), arm, r)
    assert b.means(ctx()).tolist() == [2.25, 0.0, 2.25, 0.0, 0.0]  # tie: "content" comes first
    assert b.counts["recommend|new"] == [2, 0, 4, 0, 0]
    assert {b.choose(ctx(), np.random.default_rng(seed)) for seed in range(20)} == {("content", 1.0)}
    b.update(ctx(), "trending", 1.0)  # trending: 10 / 5 = 2.0 < 2.25
    assert b.means(ctx())[2] == 2.0
    assert b.probabilities(ctx(), np.random.default_rng(0)) == {
        "content": 1.0, "cooccurrence": 0.0, "trending": 0.0, "new": 0.0, "category": 0.0}
    assert {b.choose(ctx("loyal"), np.random.default_rng(s))[0] for s in range(10)} == {"content"}  # unseen


def test_epsilon_probabilities_are_exact() -> None:
    b = EpsilonGreedyBandit(epsilon=0.25)
    b.update(ctx(), "new", 1.0)
    p = b.probabilities(ctx(), np.random.default_rng(0))
    assert p == pytest.approx({"content": 0.05, "cooccurrence": 0.05, "trending": 0.05, "new": 0.8,
                               "category": 0.05})
    assert sum(p.values()) == pytest.approx(1.0)
    rng = np.random.default_rng(5)
    for _ in range(50):
        arm, prop = b.choose(ctx(), rng)
        assert prop == pytest.approx(p[arm])


# -- learning ---------------------------------------------------------------------------------

MU = {"new": [0.2, 0.3, 0.6, 0.3, 0.2], "loyal": [0.6, 0.3, 0.2, 0.3, 0.2]}  # Bernoulli click rates per arm
BEST = {"new": "trending", "loyal": "content"}


def simulate(choose: object, update: object, seed: int, rounds: int = 3000) -> tuple[float, float]:
    """Pseudo-regret over all rounds and the share of the best arm in the last 500."""
    rng = np.random.default_rng(seed)
    regret, right = 0.0, 0
    for t in range(rounds):
        seg = "new" if rng.random() < 0.5 else "loyal"
        c = ctx(seg, step=int(rng.integers(0, 12)), cart=bool(rng.random() < 0.3), clicks=int(rng.integers(0, 6)))
        arm, _ = choose(c, rng)  # type: ignore[operator]
        mu = MU[seg][ARMS.index(arm)]
        update(c, arm, float(rng.random() < mu))  # type: ignore[operator]
        regret += max(MU[seg]) - mu
        right += t >= rounds - 500 and arm == BEST[seg]
    return regret, right / 500


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learns_the_best_arm_per_segment(kind: str, seed: int) -> None:
    b = make_bandit(kind)  # type: ignore[arg-type]
    regret, right = simulate(b.choose, b.update, seed)
    uniform, _ = simulate(lambda c, rng: (ARMS[int(rng.integers(len(ARMS)))], 0.2), lambda *a: None, seed)
    assert right > 0.8
    assert regret < 0.5 * uniform  # uniform: about 0.28 per round


# -- snapshots, replay, credit ----------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_to_dict_round_trip(kind: str) -> None:
    b = make_bandit(kind, epsilon=0.2) if kind in ("epsilon", "linucb") else make_bandit(kind)  # type: ignore[arg-type]
    replay(b, records(1))
    d = json.loads(json.dumps(b.to_dict()))
    c = bandit_from_dict(d)
    assert type(c) is type(b) and c.to_dict() == b.to_dict()
    for probe in (ctx("new"), ctx("loyal", "search", 5, True, 3, "shoes"), ctx("anonymous")):
        assert b.probabilities(probe, np.random.default_rng(4)) == c.probabilities(probe, np.random.default_rng(4))
        r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
        assert [b.choose(probe, r1) for _ in range(20)] == [c.choose(probe, r2) for _ in range(20)]


@pytest.mark.parametrize("kind", KINDS)
def test_replay_rebuilds_the_same_state(kind: str) -> None:
    log = records(2) + [(ctx(), "retired-arm", 5.0)]
    a, b = make_bandit(kind), make_bandit(kind)  # type: ignore[arg-type]
    assert replay(a, log) == len(log)
    assert replay(b, iter(log)) == len(log)
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    unchanged = json.dumps(a.to_dict())
    a.update(ctx(), "retired-arm", 1.0)
    assert json.dumps(a.to_dict()) == unchanged
    with pytest.raises(ValueError, match="finite"):
        a.update(ctx(), "content", float("nan"))


@pytest.mark.parametrize("kind", KINDS)
def test_a_pull_then_its_credits_equal_one_update(kind: str) -> None:
    """The online policy counts a pull at reward 0 and credits its outcomes as they come."""
    pulled, direct = make_bandit(kind), make_bandit(kind)  # type: ignore[arg-type]
    for b in (pulled, direct):
        replay(b, records(3, 50))
    c = ctx("loyal", step=4, cart=True, clicks=2)
    pulled.update(c, "trending", 0.0)
    pulled.update(ctx("new"), "content", 1.0)  # other updates may come between
    pulled.credit(c, "trending", 1.0, previous=0.0)  # a click
    pulled.credit(c, "trending", 4.0, previous=1.0)  # then a purchase: the list's reward is now 5
    direct.update(c, "trending", 5.0)
    direct.update(ctx("new"), "content", 1.0)
    a, b = pulled.to_dict(), direct.to_dict()
    for key in a:
        if isinstance(a[key], list) and a[key] and isinstance(a[key][0], list):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-12)
        else:
            assert a[key] == b[key], key


def test_rewards() -> None:
    r = Rewards()
    assert [r.value(k) for k in ("click", "add_to_cart", "purchase", "view", None)] == [1.0, 3.0, 5.0, 0.0, 0.0]
    assert Rewards(0.0, 1.0, 1.0).value("purchase") == 1.0


# -- settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, settings, message", [
    ("epsilon", {"epsilon": 1.5}, "bandit.epsilon: must be in 0..1, got 1.5"),
    ("epsilon", {"epsilon": -0.1}, "bandit.epsilon: must be in 0..1"),
    ("epsilon", {"epsilon": True}, "bandit.epsilon"),
    ("linucb", {"epsilon": 2}, "bandit.epsilon"),
    ("linucb", {"alpha": -1.0}, "bandit.alpha: must be >= 0"),
    ("linucb", {"alpha": float("nan")}, "bandit.alpha"),
    ("linucb", {"lambda": 0.0}, "bandit.lambda: must be > 0"),
    ("thompson", {"lam": -2.0}, "bandit.lambda: must be > 0"),
    ("thompson", {"v": 0.0}, "bandit.v: must be > 0"),
    ("thompson", {"draws": -1}, "bandit.draws"),
    ("beta", {"a0": 0.0}, "bandit.a0"),
    ("beta", {"b0": "1"}, "bandit.b0"),
    ("beta", {"alpha": 1.0}, "bandit.alpha: unknown setting"),
    ("epsilon", {"v": 1.0}, "bandit.v: unknown setting"),
    ("ucb2", {}, "bandit.kind: must be one of"),
])
def test_bad_settings_name_the_field(kind: str, settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
        make_bandit(kind, **settings)  # type: ignore[arg-type]


def test_bad_arms_and_snapshots() -> None:
    with pytest.raises(ConfigError, match="bandit.arms"):
        make_bandit("beta", arms=("a", "a"))
    with pytest.raises(ConfigError, match="bandit.arms"):
        make_bandit("epsilon", arms=())
    with pytest.raises(ConfigError, match="bandit.kind"):
        bandit_from_dict({"kind": "nope"})
    good = make_bandit("linucb", alpha=0.5, **{"lambda": 2.0})
    assert isinstance(good, LinUCB) and good.alpha == 0.5 and good.lam == 2.0
