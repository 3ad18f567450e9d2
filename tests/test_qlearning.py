"""Tabular Q-learning over sessions (engine/learn/qlearning.py): hand-computed updates, an episode in
order, epsilon-greedy probabilities, convergence on a chain MDP to value iteration, state buckets,
snapshots and settings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.learn.bandits import ARMS
from engine.learn.qlearning import QLearner, QSettings, Rewards, State, encode_state

S0: State = (0, "none", 0, 0)
S1: State = (1, "none", 0, 0)
S2: State = (2, "none", 0, 0)


def learner(gamma: float = 0.9, alpha: float = 0.5, epsilon: float = 0.0,
            actions: tuple[str, ...] = ("a", "b")) -> QLearner:
    return QLearner(actions, QSettings(gamma=gamma, alpha=alpha, epsilon=epsilon))


# -- updates by hand --------------------------------------------------------------------------

def test_update_by_hand() -> None:
    q = learner(gamma=0.9, alpha=0.5)
    assert q.q(S1, "b") == 0.0 and q.n_states == 0  # unseen: 0, and reading stores nothing
    assert q.update(S1, "b", 4.0, None) == 4.0  # terminal: Q(S1, b) = 0.5 * 4 = 2
    assert q.q(S1, "b") == 2.0
    td = q.update(S0, "a", 1.0, S1)  # target 1 + 0.9 * max(0, 2) = 2.8
    assert td == pytest.approx(2.8)
    assert q.q(S0, "a") == pytest.approx(0.5 * (1 + 1.8)) == pytest.approx(1.4)
    td = q.update(S0, "b", 1.0, None)  # terminal: no bootstrap from S1's 2
    assert td == 1.0 and q.q(S0, "b") == 0.5
    td = q.update(S0, "a", 0.0, S1)  # 0 + 1.8 - 1.4 = 0.4 -> 1.4 + 0.2
    assert td == pytest.approx(0.4) and q.q(S0, "a") == pytest.approx(1.6)
    assert q.n_states == 2
    with pytest.raises(ValueError, match="unknown action"):
        q.update(S0, "zzz", 1.0, None)
    with pytest.raises(ValueError, match="finite"):
        q.update(S0, "a", float("inf"), None)


def test_learn_episode_in_order() -> None:
    q = learner(gamma=0.9, alpha=0.5)
    episode = [(S0, "a", 0.0), (S1, "b", 1.0), (S2, "a", 3.0)]
    # first pass, fresh table: Q(S0,a) <- 0 + 0.9*0 = 0; Q(S1,b) <- 0.5*(1 + 0.9*0) = 0.5;
    # Q(S2,a) <- 0.5*3 = 1.5 (terminal)
    assert q.learn_episode(episode) == pytest.approx([0.0, 1.0, 3.0])
    assert (q.q(S0, "a"), q.q(S1, "b"), q.q(S2, "a")) == (0.0, 0.5, 1.5)
    # second pass: td(S0,a) = 0.9*0.5 - 0 = 0.45 -> 0.225; td(S1,b) = 1 + 0.9*1.5 - 0.5 = 1.85 -> 1.425;
    # td(S2,a) = 3 - 1.5 = 1.5 -> 2.25. (Back to front, the first pass would already give Q(S0,a) = 0.225.)
    assert q.learn_episode(episode) == pytest.approx([0.45, 1.85, 1.5])
    assert q.q(S0, "a") == pytest.approx(0.225)
    assert q.q(S1, "b") == pytest.approx(1.425)
    assert q.q(S2, "a") == pytest.approx(2.25)


def test_learn_episode_skips_unknown_actions() -> None:
    q = learner(gamma=0.5, alpha=1.0)
    q.update(S1, "b", 2.0, None)
    tds = q.learn_episode([(S0, "a", 1.0), (S1, "retired", 7.0), (S2, "b", 1.0)])
    assert tds == [2.0, 1.0]  # S0 still bootstraps from S1 (max 2): 1 + 0.5 * 2
    assert q.q(S0, "a") == 2.0 and q.q(S1, "b") == 2.0 and q.q(S2, "b") == 1.0


# -- choosing ---------------------------------------------------------------------------------

def test_epsilon_zero_is_deterministic() -> None:
    q = learner(epsilon=0.0, actions=ARMS)
    q.update(S0, "trending", 1.0, None)
    assert {q.choose(S0, np.random.default_rng(seed)) for seed in range(25)} == {("trending", 1.0)}
    assert q.greedy(S1) == "content"  # unseen state: ties by action order
    q.update(S1, "new", -1.0, None)
    assert q.greedy(S1) == "content"


def test_choose_probabilities() -> None:
    q = learner(epsilon=0.3, actions=ARMS)
    q.update(S0, "new", 1.0, None)
    p = q.probabilities(S0)
    assert p["new"] == pytest.approx(1 - 0.3 + 0.3 / 5) == pytest.approx(0.76)
    assert all(p[a] == pytest.approx(0.3 / 5) for a in ARMS if a != "new")
    assert sum(p.values()) == pytest.approx(1.0)
    rng = np.random.default_rng(8)
    picks = [q.choose(S0, rng) for _ in range(5000)]
    assert all(prop == pytest.approx(p[a]) for a, prop in picks)
    assert sum(a == "new" for a, _ in picks) / 5000 == pytest.approx(0.76, abs=0.025)
    full = learner(epsilon=1.0, actions=ARMS)
    assert full.probabilities(S0) == pytest.approx({a: 0.2 for a in ARMS})


# -- convergence ------------------------------------------------------------------------------
# A chain: "a" ends the session with reward 1 anywhere; "b" moves S0 -> S1 -> S2 with reward 0, and "b"
# at S2 ends it with reward 5. Q*(s, a) = 1; Q*(S2, b) = 5, Q*(S1, b) = 5 gamma, Q*(S0, b) = 5 gamma^2.

CHAIN = {S0: S1, S1: S2}


def step(state: State, action: str) -> tuple[float, State | None]:
    if action == "a":
        return 1.0, None
    return (0.0, CHAIN[state]) if state in CHAIN else (5.0, None)


def value_iteration(gamma: float) -> dict[tuple[State, str], float]:
    q = {(s, a): 0.0 for s in (S0, S1, S2) for a in ("a", "b")}
    for _ in range(100):
        for (s, a) in q:
            r, nxt = step(s, a)
            q[(s, a)] = r + (0.0 if nxt is None else gamma * max(q[(nxt, "a")], q[(nxt, "b")]))
    return q


@pytest.mark.parametrize("gamma, policy", [
    (0.9, {S0: "b", S1: "b", S2: "b"}),  # Q*(S0, b) = 4.05 > 1
    (0.3, {S0: "a", S1: "b", S2: "b"}),  # Q*(S0, b) = 0.45 < 1, Q*(S1, b) = 1.5 > 1
])
def test_converges_on_a_chain(gamma: float, policy: dict[State, str]) -> None:
    star = value_iteration(gamma)
    assert star[(S0, "b")] == pytest.approx(5 * gamma ** 2) and star[(S1, "b")] == pytest.approx(5 * gamma)
    assert star[(S2, "b")] == 5.0 and all(star[(s, "a")] == 1.0 for s in (S0, S1, S2))
    q = learner(gamma=gamma, alpha=0.5, epsilon=0.5)  # off-policy: exploring behaviour, greedy target
    rng = np.random.default_rng(0)
    for _ in range(3000):
        episode, state = [], S0
        while True:
            action, _ = q.choose(state, rng)
            r, nxt = step(state, action)
            episode.append((state, action, r))
            if nxt is None:
                break
            state = nxt
        q.learn_episode(episode)
    for (s, a), v in star.items():
        assert q.q(s, a) == pytest.approx(v, abs=1e-6)
    assert {s: q.greedy(s) for s in (S0, S1, S2)} == policy


def test_fit_offline_from_logged_sessions() -> None:
    logged = [[(S0, "a", 1.0)], [(S0, "b", 0.0), (S1, "a", 1.0)], [(S0, "b", 0.0), (S1, "b", 0.0), (S2, "a", 1.0)],
              [(S0, "b", 0.0), (S1, "b", 0.0), (S2, "b", 5.0)]]
    q = learner(gamma=0.9, alpha=0.5)
    assert q.fit(iter(logged), epochs=60) == 9 * 60  # a one-shot iterator is kept for every epoch
    for (s, a), v in value_iteration(0.9).items():
        assert q.q(s, a) == pytest.approx(v, abs=1e-9)
    assert learner().fit(logged) == 9


# -- states -----------------------------------------------------------------------------------

def test_encode_state_buckets() -> None:
    cats = {"shoes", "hats"}
    steps = [encode_state(s, None, False, 0, cats)[0] for s in (0, 1, 2, 3, 4, 7, 8, 100, -3)]
    assert steps == [0, 1, 2, 2, 3, 3, 4, 4, 0]
    clicks = [encode_state(0, None, False, c, cats)[3] for c in (0, 1, 2, 3, 5, -1)]
    assert clicks == [0, 1, 2, 2, 2, 0]
    assert encode_state(3, "shoes", True, 1, cats) == (2, "shoes", 1, 1)
    assert encode_state(3, "gloves", False, 1, cats)[1:3] == ("other", 0)
    assert encode_state(3, None, False, 1, cats)[1] == "none"
    assert encode_state(3, "shoes", False, 1, ())[1] == "other"


# -- snapshots and settings -------------------------------------------------------------------

def test_to_dict_round_trip() -> None:
    q = QLearner(ARMS, QSettings(gamma=0.8, alpha=0.2, epsilon=0.15, rewards=Rewards(1.0, 2.0, 4.0)))
    rng = np.random.default_rng(2)
    for _ in range(200):
        s = encode_state(int(rng.integers(0, 12)), str(rng.choice(["shoes", "hats", "x"])), bool(rng.random() < 0.5),
                         int(rng.integers(0, 4)), {"shoes", "hats"})
        q.update(s, str(rng.choice(ARMS)), float(rng.choice([0.0, 1.0, 3.0])), None if rng.random() < 0.3 else S0)
    d = json.loads(json.dumps(q.to_dict()))
    r = QLearner.from_dict(d)
    assert r.to_dict() == q.to_dict() and r.n_states == q.n_states
    assert r.settings == q.settings and r.settings.rewards == Rewards(1.0, 2.0, 4.0)
    states = [tuple(s) for s, _ in d["q"]]
    assert [r.probabilities(s) for s in states] == [q.probabilities(s) for s in states]  # type: ignore[arg-type]
    d["q"][0][1] = [1.0]
    with pytest.raises(ValueError, match="values for 5 actions"):
        QLearner.from_dict(d)


@pytest.mark.parametrize("settings, key", [
    (QSettings(gamma=1.5), "qlearning.gamma: must be in 0..1, got 1.5"),
    (QSettings(gamma=-0.1), "qlearning.gamma"),
    (QSettings(alpha=0.0), "qlearning.alpha: must be in (0, 1], got 0.0"),
    (QSettings(alpha=1.2), "qlearning.alpha"),
    (QSettings(epsilon=-0.1), "qlearning.epsilon: must be in 0..1, got -0.1"),
    (QSettings(epsilon=float("nan")), "qlearning.epsilon"),
    (QSettings(rewards=Rewards(click=-1.0)), "qlearning.rewards.click: must be >= 0"),
    (QSettings(rewards=Rewards(purchase=-5.0)), "qlearning.rewards.purchase"),
])
def test_bad_settings_name_the_field(settings: QSettings, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        settings.validate()
    assert str(e.value).startswith(key)
    with pytest.raises(ConfigError):
        QLearner(ARMS, settings)


def test_other_bad_inputs() -> None:
    with pytest.raises(ConfigError, match=r"^strategy\.gamma"):
        QSettings(gamma=2.0).validate("strategy")
    with pytest.raises(ConfigError, match=r"^qlearning\.actions"):
        QLearner(("a", "a"))
    with pytest.raises(ConfigError, match=r"^qlearning\.epochs"):
        learner().fit([], epochs=0)
    QSettings(gamma=0.0, alpha=1.0, epsilon=1.0, rewards=Rewards(0.0, 0.0, 0.0)).validate()  # the bounds are valid
