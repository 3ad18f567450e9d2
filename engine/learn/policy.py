"""Exploration policies: a scored candidate list turned into the shown order, with logged propensities.

Owns the step between ranking and showing: the ranker (or a blend) gives each of ``n`` candidates a score
(higher is better) and :func:`choose` fills ``min(k, n)`` slots from the top down, each slot sampled from a
distribution over the candidates not yet placed (sequential sampling without replacement). Each shown item
comes with its *propensity*: the probability the policy had of putting that item in that slot, conditional
on the slots above it; that is the per-slot ``p(a | x, k)`` that off-policy evaluation
(:mod:`engine.learn.ope`, position-based IPS) needs. :func:`slot_distributions` gives the whole
distribution of every slot of a given order, and :func:`target_probability` the probability a (target)
policy would have given each logged item in its slot, the ``pi`` of OPE.

**Definitions.** Candidates are ranked by score descending, ties by index ascending (stable sort); a NaN
score counts as ``-inf``. The *remaining* candidates of a slot are those not placed in the slots above; the
*greedy* choice is the best remaining one. A slot *explores* when its index is ``< positions`` and the best
remaining score is finite; its *pool* is the best ``pool`` remaining candidates with a finite score (so
``+inf``, ``-inf`` and NaN scores are never picked at random: ``+inf`` ones fill the top slots, ``-inf`` and
NaN ones the bottom ones, deterministically). Every other slot shows the best remaining, propensity 1.
At an exploring slot, with ``m`` candidates in the pool and ``b`` the best remaining:

- ``greedy``: the point mass on ``b``.
- ``epsilon`` (epsilon-greedy, Sutton & Barto 2018, sec. 2.2): ``1 - eps`` on ``b`` plus ``eps / m`` on
  each pool candidate, so ``b`` gets ``1 - eps + eps / m``.
- ``softmax`` (Plackett-Luce, Plackett 1975 / Luce 1959; the slots together are a Plackett-Luce draw
  truncated to the pool): ``softmax(score / temperature)`` over the pool, computed with the maximum
  subtracted. The temperature is in score units: a score gap of one temperature is a factor ``e`` in
  odds, whatever the scale of the scores. Temperature 0 is greedy.
- ``cold_share`` ``c > 0`` with a ``cold`` mask (candidates without interactions): when the pool holds at
  least one remaining cold candidate, the distribution is ``(1 - c) * base + c * uniform(cold in pool)``,
  ``base`` being one of the above (for ``greedy`` the point mass on ``b``, so cold items get a bounded
  share ``c`` of exploring slots even then); without cold candidates in the pool it is ``base`` alone.

``explored`` marks the slots whose pick differed from the best remaining. With deterministic settings
(:attr:`ExplorationSettings.deterministic`) the order is ``argsort(-scores, kind="stable")[:k]`` (NaN as
``-inf``), every propensity is 1 and the generator is not used. A slot whose distribution is a point mass
draws nothing from the generator either; any other slot draws exactly one ``rng.random()``.

Cost: O(k * n) with numpy per call, a Python loop over slots only (about 0.1 ms for n=100, k=10).

**Thread-safety.** Plain functions over arrays and frozen settings; the only state is the
``numpy.random.Generator`` passed in, which the caller must not share between threads without a lock
(one generator per thread or per request, e.g. seeded from the request id, keeps draws reproducible).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import numpy as np

from engine.errors import ConfigError, InvalidQuery

PolicyKind = Literal["greedy", "epsilon", "softmax"]
KINDS: tuple[str, ...] = get_args(PolicyKind)
_GREEDY_WORDS = frozenset({"", "0", "greedy", "off", "none"})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class ExplorationSettings:
    """How the shown order departs from the score order (see the module docstring for the distributions).

    ``epsilon`` is read by kind ``epsilon`` only, ``temperature`` by kind ``softmax`` only;
    ``positions``, ``pool`` and ``cold_share`` by every kind. Construction does not validate (so that
    :meth:`parse` can name the settings key); :meth:`validate` does, and :func:`choose` calls it.
    """

    kind: PolicyKind = "greedy"  # "greedy": deterministic, the score order as it is
    epsilon: float = 0.0  # epsilon-greedy: per exploring slot, the chance of a uniform pick from the pool
    temperature: float = 0.0  # softmax (Plackett-Luce) temperature, in score units; 0 is greedy
    positions: int = 10  # only slots 0..positions-1 explore; later ones follow the score order
    pool: int = 50  # a random pick is among the best `pool` remaining candidates (finite scores only)
    cold_share: float = 0.0  # share (0..1) of each exploring slot's mass given to cold candidates in the pool

    def validate(self, prefix: str = "") -> None:
        """Raise :class:`ConfigError` naming ``prefix.field`` (e.g. ``explore_recommend.epsilon``)."""
        def name(f: str) -> str:
            return f"{prefix}.{f}" if prefix else f

        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise ConfigError(f"{name('kind')}: must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for f in ("epsilon", "cold_share"):
            v = getattr(self, f)
            if not _is_number(v) or not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"{name(f)}: must be in 0..1, got {v!r}")
        t = self.temperature
        if not _is_number(t) or not (math.isfinite(float(t)) and float(t) >= 0.0):
            raise ConfigError(f"{name('temperature')}: must be a finite number >= 0, got {t!r}")
        for f in ("positions", "pool"):
            v = getattr(self, f)
            if not _is_integer(v) or int(v) < 1:
                raise ConfigError(f"{name(f)}: must be an integer >= 1, got {v!r}")

    @property
    def deterministic(self) -> bool:
        """True when these settings can never randomize: greedy (kind ``greedy``, ``epsilon`` 0 or
        ``temperature`` 0) and ``cold_share`` 0, or a pool of 1."""
        if self.pool == 1:
            return True
        if self.cold_share > 0:
            return False
        if self.kind == "epsilon":
            return self.epsilon == 0
        if self.kind == "softmax":
            return self.temperature == 0
        return True

    def spec(self) -> str:
        """The short form of these settings (what :meth:`parse` reads back), e.g. ``epsilon:0.1,positions=10``."""
        if self.deterministic and self.cold_share == 0:
            return "greedy"
        head = {"epsilon": f"epsilon:{self.epsilon:g}", "softmax": f"softmax:{self.temperature:g}"}.get(
            self.kind, "greedy:0")
        head = "epsilon:0" if head == "greedy:0" else head
        return f"{head},positions={self.positions},pool={self.pool},cold_share={self.cold_share:g}"

    @classmethod
    def parse(cls, value: Mapping[str, Any] | str | None, *, key: str) -> ExplorationSettings:
        """Settings from a mapping (``{"kind": "epsilon", "epsilon": 0.1, "positions": 5}``) or a short string
        (``"epsilon:0.1"``, ``"softmax:0.5"``, ``"greedy"``, ``"0"``, ``"off"``, optionally followed by
        ``,name=value`` options: ``"epsilon:0.1,positions=5,pool=20,cold_share=0.1"``); ``None`` is greedy.

        Numbers may be given as strings (environment variables). A mapping that sets ``epsilon`` or
        ``temperature`` must also set ``kind``. Raises :class:`ConfigError` naming ``key.field``.
        """
        if value is None:
            out = cls()
        elif isinstance(value, str):
            out = cls._parse_short(value, key)
        elif isinstance(value, Mapping):
            out = cls._parse_mapping(value, key)
        else:
            raise ConfigError(f"{key}: must be a table (kind, epsilon, ...) or a string like 'epsilon:0.1', "
                              f"got {type(value).__name__}")
        out.validate(key)
        return out

    @classmethod
    def _parse_short(cls, text: str, key: str) -> ExplorationSettings:
        s, _, rest = text.strip().lower().partition(",")
        options = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            name, eq, val = (p.strip() for p in part.partition("="))
            if not eq:
                raise ConfigError(f"{key}: options are name=value after the kind, got {part!r}")
            options[name] = val
        if options:
            base = cls._parse_short(s, key)
            return cls._parse_mapping({"kind": base.kind, "epsilon": base.epsilon, "temperature": base.temperature,
                                       **options}, key)
        s = s.strip()
        if s in _GREEDY_WORDS:
            return cls()
        kind, sep, arg = (p.strip() for p in s.partition(":"))
        if kind not in KINDS:
            raise ConfigError(f"{key}.kind: must be one of {', '.join(KINDS)}, got {kind!r} "
                              f"(write e.g. 'epsilon:0.1', 'softmax:0.5' or 'greedy')")
        if kind == "greedy":
            if sep:
                raise ConfigError(f"{key}.kind: 'greedy' takes no value, got {text!r}")
            return cls()
        f = "epsilon" if kind == "epsilon" else "temperature"
        if not sep:
            raise ConfigError(f"{key}.{f}: missing; write '{kind}:<{f}>', e.g. '{kind}:0.1'")
        x = _float(arg, f"{key}.{f}")
        return cls(kind="epsilon", epsilon=x) if kind == "epsilon" else cls(kind="softmax", temperature=x)

    @classmethod
    def _parse_mapping(cls, value: Mapping[str, Any], key: str) -> ExplorationSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: unknown field; use {', '.join(sorted(known))}")
        kind = value.get("kind", "greedy")
        if not isinstance(kind, str):
            raise ConfigError(f"{key}.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
        kind = kind.strip().lower()
        if "kind" not in value:
            for f in ("epsilon", "temperature"):
                if f in value:
                    raise ConfigError(f"{key}.kind: required when {f} is set "
                                      f"('epsilon' or 'softmax'; the default 'greedy' ignores {f})")
        args: dict[str, Any] = {"kind": kind}
        for f in ("epsilon", "temperature", "cold_share"):
            if f in value:
                args[f] = _float(value[f], f"{key}.{f}")
        for f in ("positions", "pool"):
            if f in value:
                args[f] = _int(value[f], f"{key}.{f}")
        return cls(**args)


def _float(value: Any, name: str) -> float:
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{name}: must be a number, got {value!r}")


def _int(value: Any, name: str) -> int:
    if _is_integer(value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{name}: must be an integer, got {value!r}")


@dataclass(frozen=True)
class Slate:
    """The shown order of one request; every array has shape ``(min(k, n),)``.

    ``order``: int64 candidate indices, top slot first. ``propensities``: float64,
    ``P(order[s] in slot s | order[:s])`` under the policy that chose it (1.0 on deterministic slots).
    ``explored``: bool, True where the pick was not the best remaining candidate.
    """

    order: np.ndarray
    propensities: np.ndarray
    explored: np.ndarray

    def __len__(self) -> int:
        return int(self.order.shape[0])


def _empty_slate() -> Slate:
    return Slate(np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.bool_))


def _scores(scores: Any) -> np.ndarray:
    """Scores as float64 ``(n,)`` with NaN replaced by ``-inf``."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise InvalidQuery("scores", f"must be one score per candidate (1-D), got shape {s.shape}")
    nan = np.isnan(s)
    if nan.any():
        s = np.where(nan, -np.inf, s)
    return s


def _cold(cold: Any, n: int, settings: ExplorationSettings) -> np.ndarray | None:
    """The cold mask as bool ``(n,)``, or None when it cannot matter (no mask or ``cold_share`` 0)."""
    if cold is None:
        return None
    c = np.asarray(cold)
    if c.shape != (n,):
        raise InvalidQuery("cold", f"must be one flag per candidate ({n}), got shape {c.shape}")
    if settings.cold_share == 0:
        return None
    return c.astype(np.bool_, copy=False)


def _greedy_order(s: np.ndarray) -> np.ndarray:
    return np.argsort(-s, kind="stable").astype(np.int64, copy=False)


def _slot(s: np.ndarray, rem: np.ndarray, nf: int, slot: int, settings: ExplorationSettings,
          cold: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The distribution of one slot as ``(support, probs)`` over ``support = rem[:m]`` (the pool), or None
    for the point mass on ``rem[0]``.

    ``rem``: the remaining candidates in score order; ``nf``: how many of them have a finite score (when
    ``rem[0]`` is finite they are exactly ``rem[:nf]``, since ``+inf`` ranks first and ``-inf`` last).
    """
    if slot >= settings.positions or not math.isfinite(s[rem[0]]):
        return None
    m = min(settings.pool, nf)
    if m <= 1:
        return None
    support = rem[:m]
    probs: np.ndarray | None = None
    if settings.kind == "epsilon" and settings.epsilon > 0:
        eps = float(settings.epsilon)
        probs = np.full(m, eps / m)
        probs[0] += 1.0 - eps
    elif settings.kind == "softmax" and settings.temperature > 0:
        z = s[support]
        z = (z - z[0]) / float(settings.temperature)  # z[0] is the maximum: support is in score order
        e = np.exp(z)
        probs = e / e.sum()
    if cold is not None:
        is_cold = cold[support]
        n_cold = int(np.count_nonzero(is_cold))
        if n_cold:
            c = float(settings.cold_share)
            if probs is None:
                probs = np.zeros(m)
                probs[0] = 1.0
            probs = (1.0 - c) * probs + (c / n_cold) * is_cold
    if probs is None:
        return None
    return support, probs


def _check_order(order: Any, n: int) -> np.ndarray:
    o = np.asarray(order)
    if o.ndim != 1 or (o.size and not np.issubdtype(o.dtype, np.integer)):
        raise InvalidQuery("order", f"must be a 1-D array of candidate indices, got {o.dtype} {o.shape}")
    o = o.astype(np.int64, copy=False)
    if o.size and (o.min() < 0 or o.max() >= n):
        raise InvalidQuery("order", f"indices must be in 0..{n - 1}")
    if np.unique(o).size != o.size:
        raise InvalidQuery("order", "must not repeat a candidate")
    return o


def choose(scores: np.ndarray, k: int, settings: ExplorationSettings, rng: np.random.Generator,
           *, cold: np.ndarray | None = None) -> Slate:
    """The shown order of ``min(k, n)`` candidates, sampled slot by slot, with its propensities.

    ``scores``: ``(n,)``, higher is better; ``cold``: optional bool ``(n,)``, candidates without
    interactions (read only when ``settings.cold_share > 0``). Each slot is drawn from exactly the
    distribution :func:`slot_distributions` gives for it, so ``propensities[s] ==
    slot_distributions(scores, k, settings, order, cold=cold)[s][order[s]]``.
    """
    settings.validate()
    s = _scores(scores)
    n = s.shape[0]
    c = _cold(cold, n, settings)
    kk = min(int(k), n)
    if kk <= 0:
        return _empty_slate()
    ranked = _greedy_order(s)
    if settings.deterministic:
        return Slate(ranked[:kk].copy(), np.ones(kk), np.zeros(kk, np.bool_))
    order = np.empty(kk, np.int64)
    props = np.ones(kk)
    explored = np.zeros(kk, np.bool_)
    finite = np.isfinite(s)
    rem = ranked
    nf = int(np.count_nonzero(finite))
    for slot in range(kk):
        if slot >= settings.positions:  # the rest follows the score order
            order[slot:] = rem[:kk - slot]
            break
        dist = _slot(s, rem, nf, slot, settings, c)
        j = 0
        if dist is not None:
            _, probs = dist
            cum = np.cumsum(probs)
            j = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), probs.shape[0] - 1)
            props[slot] = probs[j]
            explored[slot] = j != 0
        pick = rem[j]
        order[slot] = pick
        nf -= bool(finite[pick])
        rem = rem[1:] if j == 0 else np.concatenate((rem[:j], rem[j + 1:]))
    return Slate(order, props, explored)


def slot_distributions(scores: np.ndarray, k: int, settings: ExplorationSettings, order: np.ndarray,
                       *, cold: np.ndarray | None = None) -> list[np.ndarray]:
    """For each of the first ``min(k, len(order))`` slots of a given order, the policy's probability vector
    ``(n,)`` over all candidates, conditional on ``order[:slot]`` being placed above: zeros on placed
    candidates and outside the pool, summing to 1. ``order`` may come from another policy (a log).
    """
    settings.validate()
    s = _scores(scores)
    n = s.shape[0]
    o = _check_order(order, n)
    c = _cold(cold, n, settings)
    kk = min(int(k), o.shape[0])
    out: list[np.ndarray] = []
    rem = _greedy_order(s)
    finite = np.isfinite(s)
    nf = int(np.count_nonzero(finite))
    for slot in range(max(kk, 0)):
        p = np.zeros(n)
        dist = _slot(s, rem, nf, slot, settings, c)
        if dist is None:
            p[rem[0]] = 1.0
        else:
            p[dist[0]] = dist[1]
        out.append(p)
        pick = o[slot]
        nf -= bool(finite[pick])
        rem = rem[rem != pick]
    return out


def target_probability(scores: np.ndarray, settings: ExplorationSettings, order: np.ndarray,
                       *, cold: np.ndarray | None = None) -> np.ndarray:
    """Per slot of a logged ``order`` ``(K,)``: the probability these settings would have given the logged
    item in that slot, conditional on the logged slots above; float64 ``(K,)``. The ``pi`` of OPE.
    """
    o = _check_order(order, _scores(scores).shape[0])
    dists = slot_distributions(scores, o.shape[0], settings, o, cold=cold)
    return np.array([d[a] for d, a in zip(dists, o)], dtype=np.float64).reshape(o.shape[0])
