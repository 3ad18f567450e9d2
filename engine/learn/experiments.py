"""Experiments: named variants of a surface's ranking compared on live traffic (issue 9, part 6).

An experiment runs on one surface (``search`` or ``recommend``), at most one at a time per surface, with
two or more named variants. Each variant's ``policy`` is ``blend`` (the tuned blend), ``ranker`` (the
surface's currently published learned ranker) or ``ranker:<version>`` (one published version). Two kinds:

- ``split``: each shopper gets one variant for the whole experiment (:func:`assign`): the first 53 bits
  of ``sha256("<experiment>:<user_id>")`` read as a number in [0, 1) against the variants' cumulative
  shares. Sticky across requests, processes and restarts, and independent between experiments.
- ``interleave`` (search only, exactly two variants): every list is a team-draft interleaving of both
  variants' rankings (:func:`team_draft`), and the variant whose items get more of a list's clicks wins
  that list (:func:`interleaving_credit`). Radlinski, Kurup & Joachims (2008), "How does clickthrough data
  reflect retrieval quality?", CIKM.

The serving side asks :meth:`Experiments.running` on every request (one dict look-up; the store is read
at most every ``cache_s`` seconds per process) and logs each list's impression with the policy
``exp:<experiment>/<variant>`` (:func:`policy_tag`), or, for an interleaved list,
``exp:<experiment>/interleaved`` with each shown item's team (0: the first variant, 1: the second) as the
feature ``team`` (:data:`TEAM_FEATURE`) of that item. :func:`stats` reads those impressions back and joins
their outcomes (:mod:`engine.learn.attribution`).

Confidence intervals (95%): a rate (CTR, add-to-cart rate, conversion) is a share of shown items, as
attribution defines it, with a Wilson score interval at the *effective* sample size ``n / deff``: the
design effect ``deff`` (at least 1) is the shoppers-clustered variance of the ratio estimate (delta
method) over the binomial variance; lists without a shopper are clusters of their own. The shown items of
one shopper are not independent trials (one shopper clicks a lot, another never), and the shopper is the
unit a split assigns, so a plain per-item Wilson interval would be too narrow; clustering by list only
would still count a heavy shopper's many lists as independent. Wilson, unlike the normal interval, stays
inside [0, 1] and is not empty at 0 clicks. This is the effective-sample-size approach of Korn & Graubard
(1998), "Confidence intervals for proportions with small expected number of positive counts estimated from
survey data", with Wilson in place of Clopper-Pearson. With one shown item per shopper it is plain Wilson.

The interleaving preference is ``(wins_b - wins_a) / (wins_a + wins_b + ties)`` in [-1, 1] (positive: the
second variant is better) over the lists with at least one click, which equals ``2p - 1`` for
``p = (wins_b + ties / 2) / n`` (Chapelle et al. (2012), "Large-scale validation and analysis of
interleaved search evaluation", TOIS); its interval is the Wilson interval of ``p`` mapped the same way
(conservative: a tie varies less than a coin). ``p_value`` is the two-sided exact sign test of wins_a
against wins_b, ties left out.
"""
from __future__ import annotations

import dataclasses

import builtins
import hashlib
import json
import logging
import math
import random
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from engine.errors import InvalidQuery, NotFound, StoreUnavailable
from engine.events import EventStore, EventType
from engine.learn import registry
from engine.learn.attribution import attributed

log = logging.getLogger(__name__)

SURFACES = ("search", "recommend")
POLICY_PREFIX = "exp:"
INTERLEAVED = "interleaved"  # the variant part of an interleaved list's policy; no variant may be named so
TEAM_FEATURE = "team"  # the feature of an interleaved list's item that names its team: 0 or 1
BLEND = "blend"
RANKER = "ranker"
CACHE_S = 2.0  # Experiments.running reads the store at most this often per process
DEFAULT_WINDOW_S = 1800.0
Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal
SHARE_TOLERANCE = 1e-9
MAX_VARIANTS = 10
_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")


class Kind(str, Enum):
    SPLIT = "split"
    INTERLEAVE = "interleave"


class State(str, Enum):
    RUNNING = "running"
    STOPPED = "stopped"


class Preference(str, Enum):
    """Which variant an interleaved list prefers: the one whose team got more of its clicked items."""

    A = "a"
    B = "b"
    TIE = "tie"  # clicks, as many for each team
    NONE = "none"  # no clicks: the list says nothing


@dataclass(frozen=True)
class Variant:
    name: str
    policy: str  # "blend", "ranker" (the surface's published ranker) or "ranker:<version>"
    share: float  # of the shoppers, in a split; 1/2 each in an interleave

    @property
    def uses_ranker(self) -> bool:
        return self.policy != BLEND

    @property
    def ranker_version(self) -> str | None:
        """The pinned ranker version of ``ranker:<version>``; None for ``ranker`` (the published one) or ``blend``."""
        return self.policy.split(":", 1)[1] if self.policy.startswith(RANKER + ":") else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "policy": self.policy, "share": self.share}


@dataclass(frozen=True)
class Experiment:
    name: str
    surface: str
    kind: Kind
    variants: tuple[Variant, ...]  # in the order given; in an interleave the first is team 0 ("a")
    state: State
    created_at: float  # epoch seconds
    stopped_at: float | None = None
    winner: str | None = None  # a variant name, once chosen

    @property
    def running(self) -> bool:
        return self.state is State.RUNNING

    def assign(self, user_id: str) -> Variant:
        """The shopper's variant in a split (see :func:`assign`)."""
        return assign(self.name, user_id, self.variants)

    def policy(self, variant: str) -> str:
        """The impression policy of lists served with ``variant`` (a variant name, or ``INTERLEAVED``)."""
        return policy_tag(self.name, variant)

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise InvalidQuery("variant", f"unknown variant {name!r} of {self.name}; use one of "
                                      f"{', '.join(v.name for v in self.variants)}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "surface": self.surface, "kind": self.kind.value, "state": self.state.value,
                "created_at": self.created_at, "stopped_at": self.stopped_at, "winner": self.winner,
                "variants": [v.to_dict() for v in self.variants]}


def policy_tag(experiment: str, variant: str) -> str:
    """``exp:<experiment>/<variant>``: the impression policy of a list served under an experiment."""
    return f"{POLICY_PREFIX}{experiment}/{variant}"


# -- assignment ---------------------------------------------------------------------------------

def bucket(experiment: str, user_id: str) -> float:
    """The shopper's point in [0, 1) for ``experiment``: the first 53 bits of
    ``sha256("<experiment>:<user_id>")``. Uniform and independent between experiments."""
    digest = hashlib.sha256(f"{experiment}:{user_id}".encode("utf-8", "surrogatepass")).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def assign(experiment: str, user_id: str, variants: Sequence[Variant]) -> Variant:
    """The variant whose slice of [0, 1) (cumulative shares, in order) holds the shopper's
    :func:`bucket`. The same shopper always gets the same variant while the variants stay the same.
    InvalidQuery (``variants``) when there are none or the shares do not sum to 1."""
    _check_shares([v.share for v in variants])
    u = bucket(experiment, user_id)
    edge = 0.0
    for v in variants:
        edge += v.share
        if u < edge:
            return v
    return variants[-1]  # the shares summed to a hair under 1


def _check_shares(shares: Sequence[float]) -> None:
    if not shares:
        raise InvalidQuery("variants", "needs at least one variant")
    if any(not (s > 0 and math.isfinite(s)) for s in shares):
        raise InvalidQuery("variants", f"every share must be > 0, got {list(shares)}")
    if abs(math.fsum(shares) - 1.0) > SHARE_TOLERANCE:
        raise InvalidQuery("variants", f"the shares must sum to 1, got {math.fsum(shares)}")


# -- interleaving ---------------------------------------------------------------------------------

def team_draft(a: Sequence[str], b: Sequence[str], k: int, seed: int | str | bytes) -> tuple[list[str], list[int]]:
    """Team-draft interleaving of rankings ``a`` and ``b``, best first: at most ``k`` items and the team of
    each (0: from ``a``, 1: from ``b``).

    Each round a coin (``random.Random(seed)``: the same seed, such as the request id, gives the same
    list) decides which team picks first; each team then adds its highest-ranked item not yet in the list.
    While both teams have items left, every prefix's team counts differ by at most one. When one runs out,
    the other fills the remaining places (on rankings of the same candidates both run out together).
    Identical rankings give that ranking, whatever the coin."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InvalidQuery("k", f"must be an integer >= 0, got {k!r}")
    rng = random.Random(seed)
    ranked = (a, b)
    nxt = [0, 0]
    merged: list[str] = []
    teams: list[int] = []
    seen: set[str] = set()

    def pick(team: int) -> bool:
        r, i = ranked[team], nxt[team]
        while i < len(r) and r[i] in seen:
            i += 1
        nxt[team] = i + 1
        if i >= len(r):
            return False
        merged.append(r[i])
        teams.append(team)
        seen.add(r[i])
        return True

    while len(merged) < k:
        first = rng.randrange(2)
        picked = pick(first)
        if len(merged) < k:
            picked = pick(1 - first) or picked
        if not picked:
            break
    return merged, teams


def interleaving_credit(teams: Sequence[int], clicked_positions: Iterable[int]) -> Preference:
    """Which team an interleaved list prefers: the one with more of its clicked items. ``clicked_positions``
    are 1-based places in the list (each counted once; places past its end or without a team ignored)."""
    wins = [0, 0]
    for pos in set(clicked_positions):
        if 1 <= pos <= len(teams) and teams[pos - 1] in (0, 1):
            wins[int(teams[pos - 1])] += 1
    if wins[0] == wins[1]:
        return Preference.TIE if wins[0] else Preference.NONE
    return Preference.A if wins[0] > wins[1] else Preference.B


@dataclass(frozen=True)
class InterleavingResult:
    """Lists won by each variant, and the preference for the second (``b``) with its 95% interval (see the
    module docstring)."""

    wins_a: int
    wins_b: int
    ties: int
    no_clicks: int  # interleaved lists without a click: left out of the comparison
    preference: float  # (wins_b - wins_a) / (wins_a + wins_b + ties); 0 (in [-1, 1]) without any
    low: float
    high: float
    p_value: float  # two-sided sign test, ties left out; 1.0 without any win

    @classmethod
    def of(cls, prefs: Iterable[Preference]) -> InterleavingResult:
        n = {p: 0 for p in Preference}
        for pref in prefs:
            n[pref] += 1
        wa, wb, ties = n[Preference.A], n[Preference.B], n[Preference.TIE]
        if wa + wb + ties == 0:
            return cls(0, 0, 0, n[Preference.NONE], 0.0, -1.0, 1.0, 1.0)
        p, lo, hi = wilson(wb + ties / 2.0, float(wa + wb + ties))
        return cls(wa, wb, ties, n[Preference.NONE], 2 * p - 1, 2 * lo - 1, 2 * hi - 1, sign_test(wa, wb))

    def to_dict(self) -> dict[str, Any]:
        return {"wins_a": self.wins_a, "wins_b": self.wins_b, "ties": self.ties, "no_clicks": self.no_clicks,
                "preference": round(self.preference, 6), "low": round(self.low, 6), "high": round(self.high, 6),
                "p_value": self.p_value}


def sign_test(wins_a: int, wins_b: int) -> float:
    """Two-sided exact binomial (sign) test of ``wins_a`` against ``wins_b`` at 1/2: the p-value."""
    m = wins_a + wins_b
    if m == 0:
        return 1.0
    low = min(wins_a, wins_b)
    log_half = m * math.log(0.5)
    tail = math.fsum(math.exp(math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) + log_half)
                     for i in range(low + 1))
    return min(1.0, 2.0 * tail)


# -- rates and intervals --------------------------------------------------------------------------

def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float, float]:
    """``(p, low, high)``: the share ``successes / n`` and its Wilson score interval (Wilson 1927); ``n``
    may be an effective, non-integer size. ``(0, 0, 1)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return p, max(0.0, center - half), min(1.0, center + half)


@dataclass(frozen=True)
class Rate:
    """``count`` of ``shown`` items, the rate and its 95% interval (clustered by shopper, see the module
    docstring); ``deff`` is the design effect used (1: as if every shown item were independent)."""

    count: int
    shown: int
    value: float
    low: float
    high: float
    deff: float

    @classmethod
    def clustered(cls, clusters: Sequence[tuple[int, int]]) -> Rate:
        """From ``(count, shown)`` per cluster (shopper)."""
        x = sum(c for c, _ in clusters)
        n = sum(s for _, s in clusters)
        k = len(clusters)
        deff = 1.0
        if n > 1 and k > 1 and 0 < x < n:
            p = x / n
            var_clustered = k / (k - 1) * math.fsum((c - p * s) ** 2 for c, s in clusters) / (n * n)
            var_binomial = p * (1 - p) / (n - 1)
            deff = max(1.0, var_clustered / var_binomial)
        p, lo, hi = wilson(x / deff, n / deff)
        return cls(x, n, p, lo, hi, deff)

    def to_dict(self) -> dict[str, Any]:
        return {"value": round(self.value, 6), "low": round(self.low, 6), "high": round(self.high, 6),
                "deff": round(self.deff, 4)}


@dataclass(frozen=True)
class VariantStats:
    """One variant's lists and what shoppers did with their items. In an interleave, ``lists`` are the
    interleaved lists (shared) and ``shown`` the items of this variant's team in them."""

    variant: str
    policy: str
    lists: int
    shoppers: int  # clusters: distinct shoppers, a list without one counting as one
    shown: int
    clicks: int
    add_to_cart: int
    purchases: int
    ctr: Rate
    add_to_cart_rate: Rate
    conversion: Rate
    # The newest off-policy estimate of this variant's policy on logged traffic (`vitrine eval ope --policy
    # ... --record`): {computed_at, since, rows, estimates: {estimator: {value, interval, ...}}}, or None.
    ope: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "policy": self.policy, "lists": self.lists, "shoppers": self.shoppers,
                "shown": self.shown, "clicks": self.clicks, "add_to_cart": self.add_to_cart,
                "purchases": self.purchases, "ctr": self.ctr.to_dict(),
                "add_to_cart_rate": self.add_to_cart_rate.to_dict(), "conversion": self.conversion.to_dict(),
                "ope": self.ope}


@dataclass(frozen=True)
class ExperimentStats:
    """The lists served under an experiment in ``[since, until)`` (its start to its stop, or now) and
    their outcomes, per variant; for an interleave also the comparison of the two."""

    experiment: str
    since: float
    until: float | None
    window_s: float
    variants: tuple[VariantStats, ...]  # in the experiment's order
    interleaving: InterleavingResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "since": self.since, "until": self.until,
                "window_minutes": self.window_s / 60.0, "variants": [v.to_dict() for v in self.variants],
                "interleaving": None if self.interleaving is None else self.interleaving.to_dict()}


_TYPES = (EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE)


class _Counts:
    """Per cluster: shown items and, per outcome type, items with that outcome."""

    def __init__(self) -> None:
        self.lists = 0
        self.shown: dict[str, int] = defaultdict(int)
        self.hits: dict[EventType, dict[str, int]] = {t: defaultdict(int) for t in _TYPES}

    def variant(self, v: Variant) -> VariantStats:
        def rate(t: EventType) -> Rate:
            return Rate.clustered([(self.hits[t].get(c, 0), s) for c, s in self.shown.items()])

        ctr, cart, conv = (rate(t) for t in _TYPES)
        return VariantStats(v.name, v.policy, self.lists, len(self.shown), ctr.shown, ctr.count, cart.count,
                            conv.count, ctr, cart, conv)


def stats(store: EventStore, experiment: Experiment, *, window_s: float, now: float | None = None) -> ExperimentStats:
    """Per-variant lists, shown items, clicks, add-to-carts, purchases and their rates with 95% intervals,
    over the lists served under ``experiment`` from its start to its stop (or ``now``; None: up to now),
    with outcomes joined by attribution (``window_s``); for an interleave also the interleaving result.
    Two store reads: the experiment's lists, and the attributed outcomes of the lists of that time."""
    since = experiment.created_at
    until = experiment.stopped_at if experiment.stopped_at is not None else now
    interleave = experiment.kind is Kind.INTERLEAVE
    rows = store.policy_lists(policy_tag(experiment.name, ""), since, until,
                              feature=TEAM_FEATURE if interleave else None)
    lists = {rid: (policy, user, offset, n, values) for rid, policy, user, offset, n, values in rows}
    found: dict[str, list[tuple[int, EventType]]] = defaultdict(list)  # rid -> (position, type)
    if lists:
        for o in attributed(store, since=since, until=until, window_s=window_s):
            if o.request_id in lists:
                found[o.request_id].append((o.position, o.type))
    counts = [_Counts() for _ in experiment.variants]
    prefs: list[Preference] = []
    tags = {experiment.policy(v.name): i for i, v in enumerate(experiment.variants)}
    mixed = experiment.policy(INTERLEAVED)
    for rid, (policy, user, offset, n, values) in lists.items():
        cluster = f"u:{user}" if user is not None else f"r:{rid}"
        if interleave:
            if policy != mixed or len(values) != n or not all(t in (0, 1) for t in values):
                continue  # an interleaved list logged without its teams cannot be credited
            teams = [int(t or 0) for t in values]
            for team in (0, 1):
                counts[team].lists += 1
                counts[team].shown[cluster] += teams.count(team)
            for pos, t in found.get(rid, []):
                if 1 <= pos - offset <= n:
                    counts[teams[pos - offset - 1]].hits[t][cluster] += 1
            prefs.append(interleaving_credit(
                teams, [pos - offset for pos, t in found.get(rid, []) if t is EventType.CLICK]))
        elif policy in tags:
            c = counts[tags[policy]]
            c.lists += 1
            c.shown[cluster] += n
            for _, t in found.get(rid, []):
                c.hits[t][cluster] += 1
    return ExperimentStats(experiment.name, since, until, window_s,
                           tuple(dataclasses.replace(c.variant(v), ope=store.latest_ope_estimate(experiment.surface,
                                                                                                 v.policy))
                                 for c, v in zip(counts, experiment.variants)),
                           InterleavingResult.of(prefs) if interleave else None)


# -- the experiments of a store -------------------------------------------------------------------

def _row_experiment(row: Sequence[Any]) -> Experiment:
    name, surface, kind, variants, state, created_at, stopped_at, winner = row
    return Experiment(name, surface, Kind(kind),
                      tuple(Variant(v["name"], v["policy"], float(v["share"])) for v in json.loads(variants)),
                      State(state), float(created_at), None if stopped_at is None else float(stopped_at), winner)


class Experiments:
    """Create, stop, choose the winner of and look up the experiments kept in the event store's
    ``experiments`` table. Thread-safe; processes sharing the store see each other's changes within
    ``cache_s`` (in :meth:`running`) or at once (the other calls)."""

    def __init__(self, store: Callable[[], EventStore], *, window_s: float = DEFAULT_WINDOW_S,
                 rankers_root: Path | None = None, cache_s: float = CACHE_S,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        """``store``: gives the event store (opened lazily by the caller). ``window_s``: the attribution
        window of :meth:`stats` (``attribution_window_minutes * 60``). ``rankers_root``: the published
        rankers (``EngineConfig.rankers_path``); when given, a ``ranker:<version>`` policy must name a
        version on disk. ``cache_s``: how long :meth:`running` reuses what it read."""
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if cache_s < 0:
            raise ValueError(f"cache_s must be >= 0, got {cache_s}")
        self._store = store
        self.window_s = window_s
        self.rankers_root = rankers_root
        self.cache_s = cache_s
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._running: tuple[float, dict[str, Experiment]] | None = None

    # -- admin actions

    def create(self, name: str, surface: str, variants: Sequence[Mapping[str, Any] | Variant],
               kind: str = Kind.SPLIT.value) -> Experiment:
        """Start a new experiment. ``variants``: ``{"name", "policy", "share"}`` each (or :class:`Variant`);
        shares may be left out of all of them (equal shares). InvalidQuery naming the field for bad input,
        a taken name, or a surface that already runs an experiment."""
        exp = self._validate(name, surface, variants, kind)
        variants_json = json.dumps([v.to_dict() for v in exp.variants])
        clash = self._store().add_experiment((exp.name, exp.surface, exp.kind.value, variants_json, exp.state.value,
                                              exp.created_at, None, None))
        if clash == exp.name:
            raise InvalidQuery("name", f"an experiment named {name!r} exists already; choose another name")
        if clash is not None:
            raise InvalidQuery("surface", f"experiment {clash!r} runs on {surface} already; stop it first")
        self._running = None
        log.info("experiment %s started on %s: %s", exp.name, exp.surface,
                 ", ".join(f"{v.name}={v.policy}" for v in exp.variants))
        return exp

    def stop(self, name: str) -> Experiment:
        """Stop the experiment (its lists are served as without it from then on); stopping a stopped one
        changes nothing. NotFound when there is none of that name."""
        self.get(name)
        self._store().stop_experiment(name, self._wall(), None)
        self._running = None
        return self.get(name)

    def choose_winner(self, name: str, variant: str) -> Experiment:
        """Record ``variant`` as the winner, stopping the experiment if it runs. InvalidQuery (``variant``)
        for an unknown variant, or when another winner was chosen before."""
        exp = self.get(name)
        if not isinstance(variant, str):
            raise InvalidQuery("variant", "required: the name of one of the experiment's variants")
        exp.variant(variant)
        if exp.winner is not None and exp.winner != variant:
            raise InvalidQuery("variant", f"{name} already has a winner: {exp.winner}")
        self._store().stop_experiment(name, self._wall(), variant)
        self._running = None
        exp = self.get(name)
        if exp.winner != variant:  # another admin chose first
            raise InvalidQuery("variant", f"{name} already has a winner: {exp.winner}")
        return exp

    # -- look-ups

    def list(self) -> builtins.list[Experiment]:
        """Every experiment, newest first."""
        return [_row_experiment(r) for r in self._store().experiments()]

    def get(self, name: str) -> Experiment:
        row = self._store().get_experiment(name) if isinstance(name, str) else None
        if row is None:
            raise NotFound(f"no experiment named {name!r}")
        return _row_experiment(row)

    def running(self, surface: str) -> Experiment | None:
        """The experiment running on ``surface``, if any: what serving asks on every request. Reads the
        store at most every ``cache_s`` seconds (one thread reads; the others meanwhile get the previous
        answer); while the store cannot be read the previous answer stays."""
        cached = self._running
        if cached is not None and self._clock() - cached[0] < self.cache_s:
            return cached[1].get(surface)
        if cached is None:
            self._lock.acquire()
        elif not self._lock.acquire(blocking=False):
            return cached[1].get(surface)
        try:
            fresh = self._running
            if fresh is not None and fresh is not cached and self._clock() - fresh[0] < self.cache_s:
                return fresh[1].get(surface)
            try:
                found = {e.surface: e for e in map(_row_experiment, self._store().experiments(running=True))}
            except StoreUnavailable as e:
                log.warning("cannot read the running experiments, keeping the last known: %s", e)
                found = cached[1] if cached is not None else {}
            self._running = (self._clock(), found)
            return found.get(surface)
        finally:
            self._lock.release()

    def stats(self, experiment: str | Experiment, *, now: float | None = None) -> ExperimentStats:
        """:func:`stats` of the experiment (by name or as read) with this store and window."""
        exp = self.get(experiment) if isinstance(experiment, str) else experiment
        return stats(self._store(), exp, window_s=self.window_s, now=now)

    def report(self, *, now: float | None = None) -> builtins.list[tuple[Experiment, ExperimentStats]]:
        """Every experiment, newest first, with its stats (one attribution pass per experiment)."""
        return [(e, self.stats(e, now=now)) for e in self.list()]

    # -- validation

    def _validate(self, name: Any, surface: Any, variants: Any, kind: Any) -> Experiment:
        if name is None:
            raise InvalidQuery("name", "required: 1 to 64 of a-z, 0-9, '-' and '_'")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidQuery("name", f"must be 1 to 64 of a-z, 0-9, '-' and '_', got {name!r}")
        if not isinstance(surface, str) or surface not in SURFACES:
            raise InvalidQuery("surface", f"must be one of {', '.join(SURFACES)}, got {surface!r}")
        if not isinstance(kind, str) or kind not in [k.value for k in Kind]:
            raise InvalidQuery("kind", f"must be one of {', '.join(k.value for k in Kind)}, got {kind!r}")
        kind_ = Kind(kind)
        if not isinstance(variants, (builtins.list, tuple)) or not 2 <= len(variants) <= MAX_VARIANTS:
            raise InvalidQuery("variants", f"must be a list of 2 to {MAX_VARIANTS} variants")
        if kind_ is Kind.INTERLEAVE and (surface != "search" or len(variants) != 2):
            raise InvalidQuery("kind", "interleave compares exactly 2 variants, on search only")
        specs = [self._variant(i, v, surface) for i, v in enumerate(variants)]
        given = [s is not None for _, _, s in specs]
        if any(given) and not all(given):
            raise InvalidQuery(f"variants[{given.index(False)}].share", "give every variant a share, or none")
        if kind_ is Kind.INTERLEAVE and any(given) and any(s != 0.5 for _, _, s in specs):
            raise InvalidQuery("variants", "an interleave shows both variants in every list: leave out the "
                                           "shares (or give 0.5 each)")
        shares = [s if s is not None else 1.0 / len(specs) for _, _, s in specs]
        if any(given) and abs(math.fsum(shares) - 1.0) > SHARE_TOLERANCE:
            raise InvalidQuery("variants", f"the shares must sum to 1, got {math.fsum(shares)}")
        names = [n for n, _, _ in specs]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise InvalidQuery(f"variants[{i}].name", f"{n!r} is given twice; variant names must differ")
        return Experiment(name, surface, kind_, tuple(Variant(n, p, s) for (n, p, _), s in zip(specs, shares)),
                          State.RUNNING, self._wall())

    def _variant(self, i: int, v: Any, surface: str) -> tuple[str, str, float | None]:
        field = f"variants[{i}]"
        if isinstance(v, Variant):
            v = v.to_dict()
        if not isinstance(v, Mapping):
            raise InvalidQuery(field, "must be an object {name, policy, share}")
        unknown = sorted(str(k) for k in v if k not in ("name", "policy", "share"))
        if unknown:
            raise InvalidQuery(f"{field}.{unknown[0]}", "unknown key; a variant has name, policy and share")
        name, policy, share = v.get("name"), v.get("policy"), v.get("share")
        if not isinstance(name, str) or not _NAME.match(name) or name == INTERLEAVED:
            raise InvalidQuery(f"{field}.name", f"must be 1 to 64 of a-z, 0-9, '-' and '_' (not "
                                                f"{INTERLEAVED!r}), got {name!r}")
        policy = self._check_policy(f"{field}.policy", policy, surface)
        if share is None:
            return name, policy, None
        if isinstance(share, bool) or not isinstance(share, (int, float)):
            raise InvalidQuery(f"{field}.share", f"must be a number in (0, 1], got {share!r}")
        try:
            value = float(share)
        except OverflowError:
            value = math.inf
        if not 0 < value <= 1:
            raise InvalidQuery(f"{field}.share", f"must be a number in (0, 1], got {share!r}")
        return name, policy, value

    def _check_policy(self, field: str, policy: Any, surface: str) -> str:
        """``policy`` itself when it is one of the allowed forms; else InvalidQuery naming ``field``."""
        hint = f"use {BLEND}, {RANKER} (the published {surface} ranker) or {RANKER}:<version>"
        if policy == BLEND or policy == RANKER:
            return str(policy)
        if not isinstance(policy, str) or not policy.startswith(RANKER + ":"):
            raise InvalidQuery(field, f"unknown policy {policy!r}; {hint}")
        version = policy[len(RANKER) + 1:]
        if not registry.is_version(surface, version):
            raise InvalidQuery(field, f"{version!r} is not a {surface} ranker version name; {hint}")
        if self.rankers_root is not None and not registry.version_dir(self.rankers_root, surface, version).is_dir():
            raise InvalidQuery(field, f"{surface} ranker version {version} is not published")
        return policy
