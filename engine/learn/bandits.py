"""Contextual bandits that pick which recommendation strategy (arm) fills a list for a request.

Owns the request :class:`Context` and its feature vector (:func:`context_vector`), the outcome
:class:`Rewards`, four bandits behind one :class:`Bandit` protocol, :func:`make_bandit` (validated
settings), :func:`bandit_from_dict` and :func:`replay`:

- :class:`EpsilonGreedyBandit`: mean reward per arm per ``(surface, segment)`` bucket; greedy with
  probability ``1 - epsilon``, uniform otherwise.
- :class:`LinUCB`: disjoint LinUCB (Li, Chu, Langford & Schapire 2010, "A contextual-bandit approach to
  personalized news article recommendation", Algorithm 1).
- :class:`LinearThompson`: linear Gaussian Thompson sampling (Agrawal & Goyal 2013, "Thompson sampling
  for contextual bandits with linear payoffs").
- :class:`BetaThompson`: Bernoulli Thompson sampling per ``(surface, segment)`` bucket.

Updates are deterministic given the same ``(context, arm, reward)`` sequence (the rng is used only to
choose), so a restarted process rebuilds the same state by :func:`replay` of the log, and ``to_dict`` /
``from_dict`` snapshot it as JSON-able values (floats survive JSON exactly). Updates naming an arm
unknown to the bandit are ignored (the log may hold arms of an older configuration); a non-finite reward
raises ``ValueError``. ``credit`` adds a later outcome to a pull already counted (see
:meth:`_Base.credit`). Not thread-safe: callers guard ``update`` (and ``choose`` while updating) with
one lock.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from engine.errors import ConfigError

ARMS = ("content", "cooccurrence", "trending", "new", "category")
SURFACES = ("recommend", "recommend_session", "similar", "search")  # any other surface -> "other"
SEGMENTS = ("anonymous", "new", "returning", "loyal")  # any other segment -> "other"

# context_vector layout (CONTEXT_DIM = 15):
#   [0] bias 1 | [1:6] one-hot surface (SURFACES + "other") | [6:11] one-hot segment (SEGMENTS + "other")
#   [11] log1p(session_step) | [12] cart 0/1 | [13] min(recent_clicks, 10) / 10 | [14] last_category known 0/1
CONTEXT_DIM = 15

_Sampler = Callable[[int], np.ndarray]  # n -> (n, n_arms) sampled arm scores


@dataclass(frozen=True)
class Context:
    """What a bandit sees about one request."""

    surface: str  # "recommend", "recommend_session", "similar", "search"
    segment: str  # "anonymous", "new" (<3 events), "returning", "loyal" (>=10 events or 5 purchases)
    session_step: int  # events so far in this session
    last_category: str | None  # leaf category of the last item viewed
    cart: bool  # something added to cart in this session
    recent_clicks: int  # clicks in the last 10 events


@dataclass(frozen=True)
class Rewards:
    """Reward of each outcome on a shown list (when a list has several, the highest counts)."""

    click: float = 1.0
    add_to_cart: float = 3.0
    purchase: float = 5.0

    def validate(self, prefix: str) -> None:
        for name in ("click", "add_to_cart", "purchase"):
            _number(f"{prefix}.rewards.{name}", getattr(self, name), ">= 0", lambda r: r >= 0.0)

    def value(self, outcome: str | None) -> float:
        """The reward of one outcome type (``click``, ``add_to_cart``, ``purchase``); 0 for anything else."""
        return float(getattr(self, outcome)) if outcome in ("click", "add_to_cart", "purchase") else 0.0


def _bucket(value: str, known: tuple[str, ...]) -> str:
    return value if value in known else "other"


def context_vector(ctx: Context) -> np.ndarray:
    """The features of ``ctx``, ``(CONTEXT_DIM,)`` float64, laid out as documented at CONTEXT_DIM."""
    x = np.zeros(CONTEXT_DIM, dtype=np.float64)
    x[0] = 1.0
    x[1 + (SURFACES + ("other",)).index(_bucket(ctx.surface, SURFACES))] = 1.0
    x[6 + (SEGMENTS + ("other",)).index(_bucket(ctx.segment, SEGMENTS))] = 1.0
    x[11] = math.log1p(max(int(ctx.session_step), 0))
    x[12] = 1.0 if ctx.cart else 0.0
    x[13] = min(max(int(ctx.recent_clicks), 0), 10) / 10.0
    x[14] = 0.0 if ctx.last_category is None else 1.0
    return x


def _bucket_key(ctx: Context) -> str:
    return f"{_bucket(ctx.surface, SURFACES)}|{_bucket(ctx.segment, SEGMENTS)}"


def _number(key: str, value: Any, what: str, ok: Callable[[float], bool], *, integer: bool = False) -> Any:
    """``value`` if it is a finite number (an int if ``integer``) with ``ok(value)``; else ConfigError."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"{key}: must be {what}, got {value!r}")
    return value if integer else float(value)


def _arms(arms: Sequence[str], key: str = "bandit.arms") -> tuple[str, ...]:
    out = tuple(arms)
    if not out or len(set(out)) != len(out) or not all(isinstance(a, str) and a for a in out):
        raise ConfigError(f"{key}: must be distinct non-empty names, got {list(out)!r}")
    return out


def _reward(reward: float) -> float:
    r = float(reward)
    if not math.isfinite(r):
        raise ValueError(f"reward must be finite, got {reward!r}")
    return r


def _choose_sampled(arms: tuple[str, ...], sample: _Sampler, draws: int) -> tuple[str, float]:
    """Choose by one draw of ``sample(n)`` (``(n, n_arms)`` scores); its propensity is estimated from
    ``draws`` more draws as ``(1 + wins) / (1 + draws)`` (the chosen draw counted, so never 0)."""
    scores = sample(1 + draws)
    i = int(np.argmax(scores[0]))
    wins = int(np.sum(np.argmax(scores[1:], axis=1) == i)) if draws else 0
    return arms[i], (1 + wins) / (1 + draws)


class Bandit(Protocol):
    """A policy over ``arms`` that learns from ``(context, arm, reward)``."""

    arms: tuple[str, ...]

    def choose(self, ctx: Context, rng: np.random.Generator) -> tuple[str, float]: ...  # (arm, propensity)
    def probabilities(self, ctx: Context, rng: np.random.Generator, *, draws: int = 200) -> dict[str, float]: ...
    def update(self, ctx: Context, arm: str, reward: float) -> None: ...
    def credit(self, ctx: Context, arm: str, reward: float, *, previous: float = 0.0) -> None: ...
    def to_dict(self) -> dict[str, Any]: ...
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Bandit: ...


class _Base:
    """What the bandits share. A bandit works on an *input* (``_input(ctx)``: the context itself, or its
    vector) and either scores arms exactly (``_scores``; the top one, first on ties, is played with
    probability ``1 - epsilon``, a uniform arm otherwise) or samples them (``SAMPLED``, ``_sampler``;
    propensities by :func:`_choose_sampled`, probabilities by ``draws`` Monte-Carlo draws). ``to_dict``
    saves ``SETTINGS`` (constructor keywords) and ``TABLES`` (state: per-bucket lists or numpy arrays)."""

    kind: ClassVar[str] = ""
    SETTINGS: ClassVar[tuple[str, ...]] = ()
    TABLES: ClassVar[tuple[str, ...]] = ()
    SAMPLED: ClassVar[bool] = False
    epsilon: float = 0.0
    draws: int = 0

    def __init__(self, arms: Sequence[str]) -> None:
        self.arms = _arms(arms)

    def _input(self, ctx: Context) -> Any:
        return ctx

    def _scores(self, inp: Any) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover

    def _sampler(self, inp: Any, rng: np.random.Generator) -> _Sampler:
        raise NotImplementedError  # pragma: no cover

    def _update(self, inp: Any, i: int, reward: float) -> None:
        raise NotImplementedError  # pragma: no cover

    def _credit(self, inp: Any, i: int, reward: float, previous: float) -> None:
        raise NotImplementedError  # pragma: no cover

    def _probs(self, inp: Any, rng: np.random.Generator, draws: int) -> np.ndarray:
        if self.SAMPLED:
            scores = self._sampler(inp, rng)(max(draws, 1))
            wins = np.bincount(np.argmax(scores, axis=1), minlength=len(self.arms))
            return np.asarray(wins / scores.shape[0], dtype=np.float64)
        p = np.full(len(self.arms), self.epsilon / len(self.arms))
        p[int(np.argmax(self._scores(inp)))] += 1.0 - self.epsilon
        return p

    def _choose(self, inp: Any, rng: np.random.Generator) -> tuple[str, float]:
        if self.SAMPLED:
            return _choose_sampled(self.arms, self._sampler(inp, rng), self.draws)
        p = self._probs(inp, rng, 0)
        i = int(np.argmax(p))
        if self.epsilon > 0.0 and rng.random() < self.epsilon:
            i = int(rng.integers(len(self.arms)))
        return self.arms[i], float(p[i])

    def choose(self, ctx: Context, rng: np.random.Generator) -> tuple[str, float]:
        return self._choose(self._input(ctx), rng)

    def probabilities(self, ctx: Context, rng: np.random.Generator, *, draws: int = 200) -> dict[str, float]:
        return dict(zip(self.arms, map(float, self._probs(self._input(ctx), rng, draws))))

    def update(self, ctx: Context, arm: str, reward: float) -> None:
        if arm in self.arms:
            self._update(self._input(ctx), self.arms.index(arm), _reward(reward))

    def credit(self, ctx: Context, arm: str, reward: float, *, previous: float = 0.0) -> None:
        """Add ``reward`` to a pull of ``arm`` in ``ctx`` that ``update`` already counted with the reward
        ``previous`` (an outcome that came later): ``update(c, a, r0)`` then ``credit(c, a, r1,
        previous=r0)`` leaves the state of ``update(c, a, r0 + r1)`` (exactly for whole-number rewards on
        the bucket bandits; up to float rounding of ``b`` on the linear ones), whatever updates come
        between. ``previous`` matters to :class:`BetaThompson` only (a success is a total ``> 0``)."""
        if arm in self.arms:
            self._credit(self._input(ctx), self.arms.index(arm), _reward(reward), _reward(previous))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "arms": list(self.arms)}
        d.update((s, getattr(self, s)) for s in self.SETTINGS)
        for t in self.TABLES:
            v = getattr(self, t)
            d[t] = v.tolist() if isinstance(v, np.ndarray) else {k: list(c) for k, c in v.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        b = cls(d["arms"], **{s: d[s] for s in cls.SETTINGS})
        for t in cls.TABLES:
            old = getattr(b, t)
            if isinstance(old, np.ndarray):
                setattr(b, t, np.asarray(d[t], dtype=old.dtype).reshape(old.shape))
            else:
                setattr(b, t, {str(k): list(v) for k, v in d[t].items()})
        return b


def _row(table: dict[str, list[Any]], ctx: Context, n: int) -> list[Any]:
    """The per-arm list of ``ctx``'s ``(surface, segment)`` bucket (key ``"surface|segment"``), created."""
    return table.setdefault(_bucket_key(ctx), [0] * n)


class EpsilonGreedyBandit(_Base):
    """Mean reward per arm per ``(surface, segment)`` bucket, kept as count and sum so that pulls and
    credits commute exactly (0 before any reward: no optimistic start). The greedy arm (ties by arm
    order) with probability ``1 - epsilon``, a uniform arm otherwise; propensities are exact:
    ``1 - epsilon + epsilon / n`` greedy, ``epsilon / n`` others."""

    kind: ClassVar[str] = "epsilon"
    SETTINGS = ("epsilon",)
    TABLES = ("counts", "sums")

    def __init__(self, arms: Sequence[str] = ARMS, *, epsilon: float = 0.1) -> None:
        super().__init__(arms)
        self.epsilon = _number("bandit.epsilon", epsilon, "in 0..1", lambda e: 0.0 <= e <= 1.0)
        self.counts: dict[str, list[int]] = {}  # bucket -> updates per arm
        self.sums: dict[str, list[float]] = {}  # bucket -> sum of rewards per arm

    def means(self, ctx: Context) -> np.ndarray:
        """Mean reward per arm in ``ctx``'s bucket, ``(n_arms,)`` (0 for arms never pulled)."""
        n = np.asarray(self.counts.get(_bucket_key(ctx), [0] * len(self.arms)), dtype=np.float64)
        total = np.asarray(self.sums.get(_bucket_key(ctx), [0.0] * len(self.arms)), dtype=np.float64)
        return np.divide(total, n, out=np.zeros_like(total), where=n > 0)

    def _scores(self, ctx: Context) -> np.ndarray:
        return self.means(ctx)

    def _update(self, ctx: Context, i: int, reward: float) -> None:
        _row(self.counts, ctx, len(self.arms))[i] += 1
        self._credit(ctx, i, reward, 0.0)

    def _credit(self, ctx: Context, i: int, reward: float, previous: float) -> None:
        _row(self.sums, ctx, len(self.arms))[i] += reward


class BetaThompson(_Base):
    """Bernoulli Thompson sampling per ``(surface, segment)`` bucket: each arm draws from
    ``Beta(a0 + successes, b0 + failures)``, the highest wins. A reward ``> 0`` counts as a success (any
    click, cart or purchase), ``<= 0`` as a failure. ``choose``'s propensity is the Monte-Carlo estimate
    ``(1 + wins) / (1 + draws)`` over ``draws`` extra draws; ``probabilities`` is Monte-Carlo too."""

    kind: ClassVar[str] = "beta"
    SETTINGS = ("a0", "b0", "draws")
    TABLES = ("successes", "failures")
    SAMPLED = True

    def __init__(self, arms: Sequence[str] = ARMS, *, a0: float = 1.0, b0: float = 1.0, draws: int = 200) -> None:
        super().__init__(arms)
        self.a0 = _number("bandit.a0", a0, "> 0", lambda x: x > 0.0)
        self.b0 = _number("bandit.b0", b0, "> 0", lambda x: x > 0.0)
        self.draws = _number("bandit.draws", draws, "an integer >= 0", lambda n: n >= 0, integer=True)
        self.successes: dict[str, list[int]] = {}  # bucket -> per arm
        self.failures: dict[str, list[int]] = {}

    def _sampler(self, ctx: Context, rng: np.random.Generator) -> _Sampler:
        zero = [0] * len(self.arms)
        a = self.a0 + np.asarray(self.successes.get(_bucket_key(ctx), zero), dtype=np.float64)
        b = self.b0 + np.asarray(self.failures.get(_bucket_key(ctx), zero), dtype=np.float64)
        return lambda n: rng.beta(a, b, size=(n, len(self.arms)))

    def _update(self, ctx: Context, i: int, reward: float) -> None:
        successes, failures = _row(self.successes, ctx, len(self.arms)), _row(self.failures, ctx, len(self.arms))
        (successes if reward > 0.0 else failures)[i] += 1

    def _credit(self, ctx: Context, i: int, reward: float, previous: float) -> None:
        was, now = previous > 0.0, previous + reward > 0.0
        src, dst = (self.successes, self.failures) if was else (self.failures, self.successes)
        if was != now and _row(src, ctx, len(self.arms))[i] > 0:  # the pull turns into a success (or back)
            _row(src, ctx, len(self.arms))[i] -= 1
            _row(dst, ctx, len(self.arms))[i] += 1


class _Linear(_Base):
    """Per arm ``A = lambda I + sum x x^T`` ``(d, d)``, its inverse and ``b = sum r x`` ``(d,)``.

    ``A^-1`` is updated by Sherman-Morrison, ``(A + x x^T)^-1 = A^-1 - u u^T / (1 + x^T u)`` with
    ``u = A^-1 x`` (``A`` symmetric, so ``A^-1 x x^T A^-1 = u u^T``): O(d^2) per update, exactly symmetric.
    To bound rounding drift it is recomputed from ``A`` every ``REINVERT_EVERY`` updates of an arm
    (deterministically). ``dim`` other than CONTEXT_DIM serves raw vectors (``*_vector`` methods) only.
    """

    TABLES = ("A", "A_inv", "b", "n")
    REINVERT_EVERY: ClassVar[int] = 1000

    def __init__(self, arms: Sequence[str], *, lam: float, dim: int) -> None:
        super().__init__(arms)
        self.lam = _number("bandit.lambda", lam, "> 0", lambda x: x > 0.0)
        self.dim: int = _number("bandit.dim", dim, "an integer >= 1", lambda n: n >= 1, integer=True)
        k = len(self.arms)
        self.A = np.tile(np.eye(dim) * self.lam, (k, 1, 1))  # (k, d, d)
        self.A_inv = np.tile(np.eye(dim) / self.lam, (k, 1, 1))  # (k, d, d)
        self.b = np.zeros((k, dim))  # (k, d)
        self.n = np.zeros(k, dtype=np.int64)  # updates per arm

    def _input(self, ctx: Context) -> np.ndarray:
        if self.dim != CONTEXT_DIM:
            raise ValueError(f"this bandit has dim={self.dim}; use the *_vector methods")
        return context_vector(ctx)

    def theta(self) -> np.ndarray:
        """Ridge estimates ``A^-1 b`` of all arms, ``(k, d)``."""
        return np.asarray(np.einsum("kij,kj->ki", self.A_inv, self.b), dtype=np.float64)

    def _mean_sd(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per arm ``theta^T x`` and ``sqrt(x^T A^-1 x)``, ``(k,)`` each."""
        x = np.asarray(x, dtype=np.float64)
        var = np.einsum("i,kij,j->k", x, self.A_inv, x)
        return self.theta() @ x, np.sqrt(np.maximum(var, 0.0))

    def choose_vector(self, x: np.ndarray, rng: np.random.Generator) -> tuple[str, float]:
        """``choose`` on a raw vector ``x`` ``(dim,)``."""
        return self._choose(np.asarray(x, dtype=np.float64), rng)

    def probabilities_vector(self, x: np.ndarray, rng: np.random.Generator, draws: int = 200) -> np.ndarray:
        """``probabilities`` on a raw vector ``x`` ``(dim,)``, as an array in arm order."""
        return self._probs(np.asarray(x, dtype=np.float64), rng, draws)

    def update_vector(self, x: np.ndarray, arm: str, reward: float) -> None:
        """``update`` on a raw vector ``x`` ``(dim,)``."""
        if arm in self.arms:
            self._update(np.asarray(x, dtype=np.float64), self.arms.index(arm), _reward(reward))

    def _update(self, x: np.ndarray, i: int, reward: float) -> None:
        self.A[i] += np.outer(x, x)
        self.b[i] += reward * x
        self.n[i] += 1
        if self.n[i] % self.REINVERT_EVERY == 0:
            self.A_inv[i] = np.linalg.inv(self.A[i])
        else:
            u = self.A_inv[i] @ x
            self.A_inv[i] -= np.outer(u, u) / (1.0 + float(x @ u))

    def _credit(self, x: np.ndarray, i: int, reward: float, previous: float) -> None:
        self.b[i] += reward * x


class LinUCB(_Linear):
    """Disjoint LinUCB: arm score ``theta^T x + alpha sqrt(x^T A^-1 x)``, the highest wins (ties by arm
    order). With ``epsilon > 0`` a uniform arm is played instead with probability ``epsilon``;
    propensities are exact: ``1 - epsilon + epsilon / n`` for the top arm, ``epsilon / n`` for others."""

    kind: ClassVar[str] = "linucb"
    SETTINGS = ("alpha", "lam", "epsilon", "dim")

    def __init__(self, arms: Sequence[str] = ARMS, *, alpha: float = 1.0, lam: float = 1.0,
                 epsilon: float = 0.0, dim: int = CONTEXT_DIM) -> None:
        super().__init__(arms, lam=lam, dim=dim)
        self.alpha = _number("bandit.alpha", alpha, ">= 0", lambda a: a >= 0.0)
        self.epsilon = _number("bandit.epsilon", epsilon, "in 0..1", lambda e: 0.0 <= e <= 1.0)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        """UCB score of each arm for the vector ``x`` ``(d,)``, ``(k,)``."""
        mean, sd = self._mean_sd(x)
        return np.asarray(mean + self.alpha * sd, dtype=np.float64)

    scores = _scores


class LinearThompson(_Linear):
    """Linear Gaussian Thompson sampling: per arm ``theta ~ N(A^-1 b, v^2 A^-1)``, the highest
    ``theta^T x`` wins. For one ``x`` that score is exactly ``N(theta_hat^T x, v^2 x^T A^-1 x)`` and the
    arms are independent, so it is drawn as that scalar normal (the same choice distribution as a
    Cholesky draw of ``theta``, at O(d^2) per arm). ``choose``'s propensity is the Monte-Carlo estimate
    ``(1 + wins) / (1 + draws)`` over ``draws`` extra draws; ``probabilities`` is Monte-Carlo too."""

    kind: ClassVar[str] = "thompson"
    SETTINGS = ("v", "lam", "draws", "dim")
    SAMPLED = True

    def __init__(self, arms: Sequence[str] = ARMS, *, v: float = 1.0, lam: float = 1.0, draws: int = 200,
                 dim: int = CONTEXT_DIM) -> None:
        super().__init__(arms, lam=lam, dim=dim)
        self.v = _number("bandit.v", v, "> 0", lambda x: x > 0.0)
        self.draws = _number("bandit.draws", draws, "an integer >= 0", lambda n: n >= 0, integer=True)

    def _sampler(self, x: np.ndarray, rng: np.random.Generator) -> _Sampler:
        mean, sd = self._mean_sd(x)
        return lambda n: mean + self.v * sd * rng.standard_normal((n, len(self.arms)))


_KINDS: dict[str, tuple[type[Any], frozenset[str]]] = {
    "epsilon": (EpsilonGreedyBandit, frozenset({"epsilon"})),
    "linucb": (LinUCB, frozenset({"alpha", "lambda", "epsilon"})),
    "thompson": (LinearThompson, frozenset({"v", "lambda", "draws"})),
    "beta": (BetaThompson, frozenset({"a0", "b0", "draws"})),
}


def make_bandit(kind: Literal["epsilon", "linucb", "thompson", "beta"], arms: Sequence[str] = ARMS,
                **settings: Any) -> Bandit:
    """A fresh bandit of ``kind`` over ``arms``. Settings (validated; ``ConfigError`` names the key):
    ``epsilon`` in 0..1 (epsilon, linucb), ``alpha >= 0`` (linucb), ``v > 0`` (thompson), ``lambda > 0``
    (linucb, thompson; ``lam`` is accepted too), ``a0, b0 > 0`` (beta), ``draws >= 0`` (thompson, beta)."""
    if kind not in _KINDS:
        raise ConfigError(f"bandit.kind: must be one of {', '.join(_KINDS)}, got {kind!r}")
    cls, allowed = _KINDS[kind]
    settings = {("lambda" if k == "lam" else k): v for k, v in settings.items()}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ConfigError(f"bandit.{unknown[0]}: unknown setting for kind {kind!r} "
                          f"(known: {', '.join(sorted(allowed))})")
    bandit: Bandit = cls(arms, **{("lam" if k == "lambda" else k): v for k, v in settings.items()})
    return bandit


def bandit_from_dict(d: dict[str, Any]) -> Bandit:
    """The bandit a ``to_dict`` snapshot describes, whatever its kind."""
    if d.get("kind") not in _KINDS:
        raise ConfigError(f"bandit.kind: must be one of {', '.join(_KINDS)}, got {d.get('kind')!r}")
    bandit: Bandit = _KINDS[d["kind"]][0].from_dict(d)
    return bandit


def replay(bandit: Bandit, records: Iterable[tuple[Context, str, float]]) -> int:
    """Apply ``(context, arm, reward)`` updates in order (e.g. the event log after a restart); returns
    how many records were read (unknown arms among them are read and ignored)."""
    n = 0
    for n, (ctx, arm, reward) in enumerate(records, 1):
        bandit.update(ctx, arm, reward)
    return n
