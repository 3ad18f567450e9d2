"""Off-policy evaluation on Vitrine's own logs: what a candidate policy would have earned on the logged
traffic, before it serves anyone (`vitrine eval ope --policy P --surface S --since 7d`).

The estimators are those of :mod:`engine.learn.ope` (the code path validated on the Open Bandit Dataset);
this module turns logged impressions and their attributed outcomes (:mod:`engine.learn.attribution`) into
a :class:`engine.learn.ope.LoggedBandit`. The value estimated is the candidate's **CTR** (clicked shown
items / shown items), comparable with an experiment variant's live CTR. Two kinds of candidates:

- **A strategy choice** (``strategy/<strategy>``: always that strategy, e.g. ``strategy/blend``;
  ``strategy:<kind>``: a bandit of that kind, ``epsilon``, ``linucb``, ``thompson`` or ``beta``, learned by
  replaying the logged lists *before* ``since`` and then frozen; ``strategy:qlearning``: the published Q
  table). Rows are the lists a strategy policy chose, one per list, with the logged probability of the
  chosen strategy (``context.p``); the reward is the list's CTR. IPS, SNIPS, DM and DR; the reward model
  is a ridge regression per strategy on the context vector (:func:`engine.learn.bandits.context_vector`),
  cross-fitted in 2 folds. Unbiased (IPS, DR) when the logging policy gave every strategy a chance.
- **A ranking** (``blend``: the surface's own score order, without exploration; ``ranker``: the published
  learned ranker; ``ranker:<version>``: a version of it; ``<experiment>/<variant>``: that variant's). Rows are the shown slots of *exploring* lists
  (``explore_<surface>`` on: propensities logged), one per shown item: its click, and the logged
  probability of that item in that slot given the slots above (the position-based, per-slot estimator of
  :mod:`engine.learn.ope`). The candidate's probability of the same item in the same slot is 1 when it is
  the candidate's best among the list's items not yet placed, else 0: the candidate is judged on the
  items the exploring list showed, re-ordered by its scores (the features of the items it did not show are
  not logged). So the estimate answers "had the candidate ordered what was shown", a lower bar than
  "had it chosen the list"; IPS and SNIPS only (no reward model over unshown items).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from engine.errors import InvalidQuery, NotFound
from engine.events import EventStore
from engine.events.impressions import Impression
from engine.learn.attribution import outcomes
from engine.learn.bandits import Context, context_vector, make_bandit
from engine.learn.ope import DM, DR, IPS, SNIPS, Estimate, Estimator, LoggedBandit
from engine.learn.online import context_from
from engine.learn.qlearning import QLearner, encode_state
from engine.recommend.strategies import STRATEGIES

BANDITS = ("epsilon", "linucb", "thompson", "beta")
SCORE_FEATURE = {"recommend": "blend", "search": "fused"}  # the blend / fused order's score in the logged features


@dataclass
class LogOpeReport:
    surface: str
    policy: str
    since: float
    until: float | None
    kind: str  # "strategy" (one row per list) or "ranking" (one row per shown slot)
    rows: int
    lists: int
    logged_ctr: float  # what the logging policy got on the same lists
    estimates: dict[str, Estimate] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"surface": self.surface, "policy": self.policy, "since": self.since, "until": self.until,
                "kind": self.kind, "rows": self.rows, "lists": self.lists, "logged_ctr": self.logged_ctr,
                "estimates": {k: e.to_dict() for k, e in self.estimates.items()}, "notes": self.notes}

    def lines(self) -> list[str]:
        out = [f"off-policy estimate of {self.policy!r} on {self.surface} ({self.kind} level): {self.lists} logged "
               f"lists, {self.rows} rows; the logged policy's CTR on them: {self.logged_ctr:.4f}"]
        for name, e in self.estimates.items():
            out.append(f"  {name:6s} CTR {e.value:.4f}  95% interval [{e.low:.4f}, {e.high:.4f}]")
        return out + [f"  note: {n}" for n in self.notes]


def parse_since(text: str) -> float:
    """Seconds in ``7d``, ``12h``, ``30m`` or a plain number of days."""
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0}
    t = str(text).strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t) * 86400.0
    except ValueError:
        raise InvalidQuery("since", f"a span such as 7d, 12h or 30m, got {text!r}") from None
    if not value > 0:
        raise InvalidQuery("since", f"must be a positive span, got {text!r}")
    return value


def evaluate_logged(store: EventStore, surface: str, policy: str, *, since: float, until: float | None = None,
                    window_s: float, rankers_root: Path, features: Sequence[str] | None = None,
                    clip: float | None = None, n_bootstrap: int = 200, seed: int = 0) -> LogOpeReport:
    """The candidate ``policy``'s CTR on ``surface``'s lists logged in ``[since, until)`` (see the module
    docstring for the policies and what is estimated)."""
    if surface not in ("recommend", "search", "similar"):
        raise InvalidQuery("surface", f"must be recommend, search or similar, got {surface!r}")
    policy = resolve_variant(store, policy)
    imps = _impressions(store, surface, since, until)
    labels = outcomes(store, since=since, until=until, window_s=window_s)
    if policy.startswith("strategy"):
        return _strategy(store, surface, policy, imps, labels, since, until, window_s, rankers_root, clip,
                         n_bootstrap, seed)
    return _ranking(surface, policy, imps, labels, since, until, rankers_root, features, clip, n_bootstrap, seed)


def resolve_variant(store: EventStore, policy: str) -> str:
    """``<experiment>/<variant>`` -> that variant's policy (``blend``, ``ranker`` or ``ranker:<version>``);
    any other ``policy`` as given."""
    if "/" not in policy or policy.startswith("strategy"):
        return policy
    name, variant = policy.split("/", 1)
    row = store.get_experiment(name)
    if row is None:
        raise NotFound(f"no experiment {name!r} (a policy <experiment>/<variant> names a variant)")
    for v in json.loads(row[3]):
        if v["name"] == variant:
            return str(v["policy"])
    raise InvalidQuery("policy", f"experiment {name!r} has no variant {variant!r}")


def _impressions(store: EventStore, surface: str, since: float, until: float | None) -> list[Impression]:
    surfaces = ("recommend", "recommend_session", "for_you", "trending") if surface == "recommend" else (surface,)
    out: list[Impression] = []
    for s in surfaces:
        out += store.impressions(s, since, until)
    return sorted(out, key=lambda i: (i.ts, i.request_id))


def _clicked(imp: Impression, labels: dict[str, dict[str, frozenset[Any]]]) -> np.ndarray:
    got = labels.get(imp.request_id, {})
    return np.array([any(t.value == "click" for t in got.get(i, ())) for i in imp.items], bool)


def _strategy(store: EventStore, surface: str, policy: str, imps: list[Impression],
              labels: dict[str, dict[str, frozenset[Any]]], since: float, until: float | None, window_s: float,
              rankers_root: Path, clip: float | None, n_bootstrap: int, seed: int) -> LogOpeReport:
    rows = [(i, context_from(i.context["context"]), str(i.context["arm"]), float(i.context["p"]))
            for i in imps if i.context and "arm" in i.context and "p" in i.context and i.items]
    if not rows:
        raise InvalidQuery("policy", f"no {surface} list logged by a strategy policy in that span: serve with "
                                     "strategy_policy set first (its lists carry the chosen strategy's probability)")
    target = _strategy_target(store, policy, since, window_s, rankers_root)
    ctrs = np.array([_clicked(i, labels).mean() for i, *_ in rows])
    arms = [a for _, _, a, _ in rows]
    pi_all = [target(ctx) for _, ctx, _, _ in rows]
    pi = np.array([p[a] for p, a in zip(pi_all, arms)])
    X = np.array([context_vector(ctx) for _, ctx, _, _ in rows])
    q_logged, q_target = _cross_fit(X, arms, ctrs, pi_all)
    batch = LoggedBandit(ctrs, np.array([p for *_, p in rows]), pi, q_logged=q_logged, q_target=q_target)
    est: dict[str, Estimator] = {"IPS": IPS(clip), "SNIPS": SNIPS(clip), "DM": DM(), "DR": DR(clip)}
    report = LogOpeReport(surface, policy, since, until, "strategy", len(rows), len(rows), float(ctrs.mean()),
                          {n: e.estimate(batch, n_bootstrap=n_bootstrap, seed=seed) for n, e in est.items()})
    report.notes.append("reward = the list's CTR; rows = lists a strategy policy chose (context.p logged)")
    return report


def _strategy_target(store: EventStore, policy: str, since: float, window_s: float,
                     rankers_root: Path) -> Callable[[Context], dict[str, float]]:
    if policy.startswith("strategy/"):
        arm = policy.split("/", 1)[1]
        if arm not in STRATEGIES:
            raise InvalidQuery("policy", f"strategy/<one of {', '.join(STRATEGIES)}>, got {policy!r}")
        return lambda ctx: {a: float(a == arm) for a in STRATEGIES}
    kind = policy.split(":", 1)[1] if ":" in policy else ""
    if kind == "qlearning":
        path = rankers_root / "qlearning" / "current.json"
        if not path.exists():
            raise NotFound(f"no Q table at {path}: run `vitrine train qlearning` first")
        data = json.loads(path.read_text(encoding="utf-8"))
        learner, vocab = QLearner.from_dict(data["q"]), tuple(data.get("categories", []))
        return lambda ctx: learner.probabilities(
            encode_state(ctx.session_step, ctx.last_category, ctx.cart, ctx.recent_clicks, vocab))
    if kind not in BANDITS:
        raise InvalidQuery("policy", "blend, ranker, ranker:<version>, strategy/<strategy> or "
                                     f"strategy:<{'|'.join(BANDITS + ('qlearning',))}>, got {policy!r}")
    bandit = make_bandit(kind, STRATEGIES)  # type: ignore[arg-type]
    before = [i for i in _impressions(store, "recommend", 0.0, since) if i.context and "arm" in i.context]
    labels = outcomes(store, since=0.0, until=since, window_s=window_s) if before else {}
    for imp in before:  # the candidate learns from the lists before the span, then is frozen
        assert imp.context is not None
        bandit.update(context_from(imp.context["context"]), str(imp.context["arm"]),
                      float(_clicked(imp, labels).mean()) if imp.items else 0.0)
    rng = np.random.default_rng(0)
    return lambda ctx: bandit.probabilities(ctx, rng, draws=200)


def _cross_fit(X: np.ndarray, arms: list[str], reward: np.ndarray,
               pi_all: list[dict[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """DR's reward model for a list's CTR: :func:`ridge_rewards` cross-fitted in 2 folds, clipped to [0, 1]."""
    q_logged, q_target = ridge_rewards(X, arms, reward, pi_all, folds=2)
    return np.clip(q_logged, 0.0, 1.0), np.clip(q_target, 0.0, 1.0)


def ridge_rewards(X: np.ndarray, arms: Sequence[str], reward: np.ndarray, pi_all: Sequence[dict[str, float]], *,
                  folds: int) -> tuple[np.ndarray, np.ndarray]:
    """A reward model per strategy: ridge regression (L2 1) of ``reward`` on the context vectors ``X``
    (``(n, d)``), fitted per arm. Returns each row's prediction for its logged arm and its expectation under
    the target's ``pi_all`` probabilities. ``folds`` > 1: row ``i`` is predicted by the fit on the rows of the
    other folds (``i % folds``); 1: by the fit on every row."""
    n = len(arms)
    fold = np.arange(n) % folds
    q_logged, q_target = np.zeros(n), np.zeros(n)
    for f in range(folds):
        train, test = (fold != f, fold == f) if folds > 1 else (np.ones(n, bool), np.ones(n, bool))
        theta = {}
        for a in STRATEGIES:
            m = train & np.array([x == a for x in arms])
            Xa = X[m]
            theta[a] = np.linalg.solve(Xa.T @ Xa + np.eye(X.shape[1]), Xa.T @ reward[m])
        for i in np.flatnonzero(test).tolist():
            q_logged[i] = X[i] @ theta[arms[i]]
            q_target[i] = sum(pi_all[i][a] * float(X[i] @ theta[a]) for a in STRATEGIES)
    return q_logged, q_target


def _ranking(surface: str, policy: str, imps: list[Impression], labels: dict[str, dict[str, frozenset[Any]]],
             since: float, until: float | None, rankers_root: Path, features: Sequence[str] | None,
             clip: float | None, n_bootstrap: int, seed: int) -> LogOpeReport:
    score = _ranking_scorer(surface, policy, rankers_root, features)
    reward, pscore, pi = [], [], []
    lists = clicked_total = shown_total = 0
    for imp in imps:
        if imp.propensities is None or not imp.items or len(imp.features) != len(imp.items):
            continue
        s = score(imp.features)
        clicked = _clicked(imp, labels)
        lists += 1
        clicked_total += int(clicked.sum())
        shown_total += len(imp.items)
        for j, p in enumerate(imp.propensities):
            rest = s[j:]
            best = j + int(np.argmax(rest))  # the candidate's best among the items not yet placed (ties: first)
            reward.append(float(clicked[j]))
            pscore.append(float(p))
            pi.append(1.0 if best == j else 0.0)
    if not reward:
        raise InvalidQuery("policy", f"no exploring {surface} list in that span: set explore_{surface} "
                                     "(e.g. epsilon:0.1) so that lists log their propensities")
    batch = LoggedBandit(np.array(reward), np.array(pscore), np.array(pi))
    est: dict[str, Estimator] = {"IPS": IPS(clip), "SNIPS": SNIPS(clip)}
    report = LogOpeReport(surface, policy, since, until, "ranking", len(reward), lists,
                          clicked_total / max(shown_total, 1),
                          {n: e.estimate(batch, n_bootstrap=n_bootstrap, seed=seed) for n, e in est.items()})
    report.notes.append("the candidate re-orders the items each exploring list showed (their logged features)")
    return report


def _ranking_scorer(surface: str, policy: str, rankers_root: Path,
                    features: Sequence[str] | None) -> Callable[[list[dict[str, float | None]]], np.ndarray]:
    from engine.learn.registry import current_version, load_version

    if policy == "blend":
        name = SCORE_FEATURE.get(surface, "score")
        return lambda feats: np.array([float(f.get(name) or f.get("score") or 0.0) for f in feats])
    if not (policy == "ranker" or policy.startswith("ranker:")) or features is None:
        raise InvalidQuery("policy", "blend, ranker, ranker:<version>, strategy/<strategy> or strategy:<kind>, "
                                     f"got {policy!r}")
    version = current_version(rankers_root, surface) if policy == "ranker" else policy.split(":", 1)[1]
    if version is None:
        raise NotFound(f"no {surface} ranker published")
    model = load_version(rankers_root, surface, version, features)[0]
    names = list(features)

    def score(feats: list[dict[str, float | None]]) -> np.ndarray:
        X = np.array([[0.0 if n == "position" else float(f.get(n) or 0.0) for n in names] for f in feats],
                     np.float64)
        return np.asarray(model.score(X), np.float64)

    return score


def record(store: EventStore, report: LogOpeReport) -> None:
    """Keep the estimate, shown beside an experiment variant of the same policy."""
    store.add_ope_estimate(report.surface, report.policy, time.time(), report.since, report.rows,
                           {k: e.to_dict() for k, e in report.estimates.items()})
