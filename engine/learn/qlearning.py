"""Tabular Q-learning over shopping sessions: which strategy to show at each step of a session.

Owns the session MDP's state encoding (:func:`encode_state`), its settings (:class:`QSettings`) and the
learner (:class:`QLearner`: one-step Q-learning, Watkins & Dayan 1992; Sutton & Barto 2018, section 6.5).

- **State** ``(step, category, cart, engagement)``: the session step bucketed ``0, 1, 2-3, 4-7, 8+`` (0..4);
  the leaf category of the last item viewed if it is in the given vocabulary (the top-N categories),
  ``"other"`` if not, ``"none"`` without one; cart 0/1 (something added to cart in the session); the
  clicks in the last 5 steps bucketed ``0, 1, 2+`` (0..2).
- **Action**: the strategy shown (:data:`engine.learn.bandits.ARMS`, or a given tuple).
- **Reward**: click 1, add to cart 3, purchase 5 (:class:`Rewards`), nothing 0.

The caller builds episodes (one logged session: ``(state, action, reward)`` per step, in order) and learns
offline with :meth:`QLearner.fit`; serving is epsilon-greedy on the table (:meth:`QLearner.choose`).
Updates are deterministic given the same sequence; ``to_dict`` / ``from_dict`` round-trip the table as
JSON-able values. Not thread-safe while learning; a learner that is only read (``q``, ``greedy``,
``choose``, ``probabilities`` never write) may be shared by threads.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engine.learn.bandits import ARMS, Rewards, _arms, _number

__all__ = ["ENGAGEMENT_BUCKETS", "STEP_BUCKETS", "QLearner", "QSettings", "Rewards", "State", "encode_state"]

State = tuple[int, str, int, int]  # (step bucket 0..4, category, cart 0/1, engagement bucket 0..2)
STEP_BUCKETS = 5  # session step 0, 1, 2-3, 4-7, 8+
ENGAGEMENT_BUCKETS = 3  # clicks in the last 5 steps 0, 1, 2+


@dataclass(frozen=True)
class QSettings:
    """Discount ``gamma`` in [0, 1], learning rate ``alpha`` in (0, 1], exploration ``epsilon`` in [0, 1]."""

    gamma: float = 0.9
    alpha: float = 0.1
    epsilon: float = 0.1
    rewards: Rewards = field(default_factory=Rewards)

    def validate(self, prefix: str = "qlearning") -> None:
        """Raise ConfigError naming the first bad setting (``qlearning.gamma``, ``qlearning.rewards.click``)."""
        _number(f"{prefix}.gamma", self.gamma, "in 0..1", lambda g: 0.0 <= g <= 1.0)
        _number(f"{prefix}.alpha", self.alpha, "in (0, 1]", lambda a: 0.0 < a <= 1.0)
        _number(f"{prefix}.epsilon", self.epsilon, "in 0..1", lambda e: 0.0 <= e <= 1.0)
        self.rewards.validate(prefix)


def encode_state(step: int, last_category: str | None, cart: bool, recent_clicks: int,
                 categories: Collection[str]) -> State:
    """The state of a session at ``step`` (events so far; negative counts as 0), bucketed as documented
    above; ``categories`` is the vocabulary of categories kept as such. A vocabulary entry spelled
    ``"other"`` or ``"none"`` would share that bucket."""
    step_bucket = 0 if step <= 0 else min(int(step).bit_length(), STEP_BUCKETS - 1)
    category = "none" if last_category is None else (last_category if last_category in categories else "other")
    return step_bucket, category, 1 if cart else 0, min(max(int(recent_clicks), 0), ENGAGEMENT_BUCKETS - 1)


def _state(value: Any) -> State:
    step, category, cart, engagement = value
    return int(step), str(category), int(cart), int(engagement)


class QLearner:
    """A Q table ``state -> value per action`` (unseen pairs are 0), learned by
    ``Q(s, a) <- Q(s, a) + alpha (r + gamma max_a' Q(s', a') - Q(s, a))`` (no bootstrap at the end)."""

    def __init__(self, actions: Sequence[str] = ARMS, settings: QSettings = QSettings()) -> None:
        settings.validate()
        self.actions = _arms(actions, "qlearning.actions")
        self.settings = settings
        self._index = {a: i for i, a in enumerate(self.actions)}
        self._q: dict[State, list[float]] = {}

    @property
    def n_states(self) -> int:
        """States with at least one update."""
        return len(self._q)

    def _values(self, state: State) -> list[float]:
        return self._q.get(state) or [0.0] * len(self.actions)

    def _i(self, action: str) -> int:
        try:
            return self._index[action]
        except KeyError:
            raise ValueError(f"unknown action {action!r}; actions are {', '.join(self.actions)}") from None

    def q(self, state: State, action: str) -> float:
        """``Q(state, action)``; 0.0 for a pair never updated. ``ValueError`` for an unknown action."""
        return self._values(state)[self._i(action)]

    def update(self, state: State, action: str, reward: float, next_state: State | None) -> float:
        """One Q-learning step; ``next_state`` None is terminal (target ``r``, no bootstrap). Returns the
        TD error ``r + gamma max_a' Q(s', a') - Q(s, a)`` (before the step). ``ValueError`` for an unknown
        action or a non-finite reward."""
        i, r = self._i(action), float(reward)
        if not math.isfinite(r):
            raise ValueError(f"reward must be finite, got {reward!r}")
        target = r if next_state is None else r + self.settings.gamma * max(self._values(next_state))
        values = self._q.setdefault(state, [0.0] * len(self.actions))
        td = target - values[i]
        values[i] += self.settings.alpha * td
        return td

    def greedy(self, state: State) -> str:
        """The action of highest Q in ``state`` (ties, and unseen states, by action order)."""
        values = self._values(state)
        return self.actions[values.index(max(values))]

    def probabilities(self, state: State) -> dict[str, float]:
        """Each action's epsilon-greedy probability: ``1 - epsilon + epsilon / n`` greedy, ``epsilon / n``
        others (sums to 1)."""
        eps, n = self.settings.epsilon, len(self.actions)
        best = self.greedy(state)
        return {a: (1.0 - eps + eps / n) if a == best else eps / n for a in self.actions}

    def choose(self, state: State, rng: np.random.Generator) -> tuple[str, float]:
        """Epsilon-greedy: a uniform action with probability ``epsilon``, else the greedy one; returns the
        action and its probability (as :meth:`probabilities`). ``rng`` is drawn only when ``epsilon > 0``."""
        eps = self.settings.epsilon
        action = self.greedy(state)
        if eps > 0.0 and rng.random() < eps:
            action = self.actions[int(rng.integers(len(self.actions)))]
        return action, self.probabilities(state)[action]

    def learn_episode(self, steps: Sequence[tuple[State, str, float]]) -> list[float]:
        """Learn from one session, ``(state, action, reward)`` per step, updating in order: a step's next
        state is the following step's, the last step is terminal. A step whose action is unknown (a log of
        an older configuration) is skipped, its state still serving as the previous step's next state.
        Returns the TD errors of the updates made, in order."""
        return [self.update(state, action, reward, steps[k + 1][0] if k + 1 < len(steps) else None)
                for k, (state, action, reward) in enumerate(steps) if action in self._index]

    def fit(self, episodes: Iterable[Sequence[tuple[State, str, float]]], *, epochs: int = 1) -> int:
        """Learn offline from logged sessions, ``epochs`` passes over them in order; returns the updates."""
        _number("qlearning.epochs", epochs, "an integer >= 1", lambda e: e >= 1, integer=True)
        data = episodes if epochs == 1 else list(episodes)
        return sum(len(self.learn_episode(steps)) for _ in range(epochs) for steps in data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: actions, settings and the table as ``[[step, category, cart, engagement], values]``."""
        return {"kind": "qlearning", "actions": list(self.actions), "settings": asdict(self.settings),
                "q": [[list(s), list(v)] for s, v in self._q.items()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QLearner:
        s = dict(d["settings"])
        settings = QSettings(**{**s, "rewards": Rewards(**s.get("rewards", {}))})
        learner = cls(d["actions"], settings)
        for state, values in d["q"]:
            if len(values) != len(learner.actions):
                raise ValueError(f"Q table row {state!r}: {len(values)} values for {len(learner.actions)} actions")
            learner._q[_state(state)] = [float(v) for v in values]
        return learner
