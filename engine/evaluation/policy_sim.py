"""`vitrine simulate --policies`: the strategy policies of issue 10 on simulated shopping sessions, with
cumulative reward and regret, cold start and an off-policy check.

Protocol (see README, "Exploration and bandits"):

- **Data and lists.** Amazon Scientific, as ``vitrine simulate``: every user's items but the last
  ``holdout`` (3) are stored as their history (purchases, through the importer); the last ``holdout`` items
  not in the history are their *true next items*. ``users`` (3,000) shoppers with a true next item are
  drawn once (seed 0); for each of them, each strategy's list of the best ``depth`` (40) items is asked
  from the real engine (``Engine.recommend(user, strategy=...)``, :mod:`engine.recommend.strategies`) over
  the stored histories. The lists are computed once: within a session a strategy's list loses the items the
  shopper bought, and the next ones move up. (In the server a click also moves co-occurrence; here the
  lists stay those of the stored history.)
- **Sessions.** Per seed, ``rounds`` rounds of ``sessions`` sessions, each of a shopper drawn with
  replacement from those users (the same draws for every policy: common random numbers), ``steps`` (5)
  lists of ``k`` (10) per session. At each step the policy picks a strategy from the context (the
  shopper's segment as served, from the stored history; the step,
  the last clicked item's leaf category, the start being the last history item's; something bought in
  this session; the clicks of the last steps), the shopper reacts by the position-based click model of
  ``vitrine simulate`` (examine position p with (1/p)^1, click a true next item 0.9, another 0.02, buy a
  clicked true item 0.5), and the policy learns from the list's reward at once: the highest outcome of
  the list (purchase 5, click 1; the ``reward_*`` settings, as served).
- **Regret** of a step: the expected reward of the best strategy for this shopper in this state minus that
  of the strategy chosen, both computed exactly from the click model (the expected value of the list's
  highest outcome with independent positions). It is the contextual (one-step) regret.
- **Policies**: ``blend`` (always the tuned blend, never learns), ``epsilon`` (epsilon-greedy per context
  bucket), ``thompson`` (linear Gaussian Thompson sampling), ``linucb`` and ``qlearning`` (tabular, the
  design's MDP: :mod:`engine.learn.qlearning`; gamma 0.9, alpha 0.1, epsilon 0.1), each over the six
  strategies (the blend included, so a bandit can always fall back to it); and ``blend+cold``: the blend
  with ``cold_share`` of each of its slots given to items nobody has touched (``explore_recommend`` with
  ``epsilon:0,cold_share=0.1``: the cold candidates are the "new" strategy's list, appended below the
  blend's, as the engine does).
- **Cold start**: cold items are those without any stored event (items that only held-out purchases
  name: real demand nobody has seen yet). Per policy, the cold items' pooled CTR estimate (clicks /
  impressions) against its truth (the expected clicks of the same impressions); reported: the lists
  served, and the cold impressions, until the estimate is within 20% of the truth for good.
- **OPE check**: the ``epsilon`` policy's run is a log with propensities; IPS, SNIPS and DR (a
  ridge reward model per strategy on the context vector), which treat each list alone, and per-decision
  importance sampling over the sessions (PDIS, WPDIS: :func:`per_decision`) estimate from it what each
  other policy, frozen as it ended, would earn per list, compared with what the frozen policy earns when
  run on as many rounds again (other sessions of the same shoppers).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from engine.config import EngineConfig
from engine.errors import InvalidQuery
from engine.evaluation.simulate import ClickModel, _import_histories, _say
from engine.learn.bandits import Bandit, Context, Rewards, context_vector, make_bandit
from engine.learn.ope import DR, IPS, SNIPS, LoggedBandit
from engine.learn.ope_logs import ridge_rewards
from engine.learn.policy import ExplorationSettings, choose
from engine.learn.qlearning import QLearner, QSettings, State, encode_state
from engine.recommend.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ("blend", "blend+cold", "epsilon", "thompson", "linucb", "qlearning")
LEARNERS = ("epsilon", "thompson", "linucb", "qlearning")
SECTION = "simulate-policies"
WITHIN = 0.2  # cold start: the estimate within 20% of the truth


@dataclass(frozen=True)
class PolicySimSettings:
    rounds: int = 10
    sessions: int = 500
    steps: int = 5
    users: int = 3000
    seeds: tuple[int, ...] = (0, 1, 2)
    k: int = 10
    depth: int = 40
    holdout: int = 3
    clicks: ClickModel = field(default_factory=ClickModel)
    rewards: Rewards = field(default_factory=Rewards)
    epsilon: float = 0.1
    alpha: float = 1.0  # LinUCB
    v: float = 1.0  # linear Thompson
    q: QSettings = field(default_factory=QSettings)
    cold_share: float = 0.1
    categories: int = 10  # the Q table's category vocabulary: the most frequent leaf categories

    def __post_init__(self) -> None:
        checks = (("rounds", 1 <= self.rounds <= 1000, "must be in 1..1000"),
                  ("sessions", 1 <= self.sessions <= 100_000, "must be in 1..100000"),
                  ("steps", 1 <= self.steps <= 50, "must be in 1..50"),
                  ("users", 10 <= self.users <= 100_000, "must be in 10..100000"),
                  ("seeds", 1 <= len(self.seeds) == len(set(self.seeds)), "give one or more distinct seeds"),
                  ("k", 1 <= self.k <= 50, "must be in 1..50"),
                  ("depth", self.k <= self.depth <= 100, "must be in k..100"),
                  ("cold_share", 0.0 < self.cold_share <= 1.0, "must be in (0, 1]"))
        for name, ok, message in checks:
            if not ok:
                raise InvalidQuery(name, f"{message}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Lists:
    """Every strategy's list per user: ``rows[u][s]`` item rows best first, ``scores[u]`` the blend's."""

    users: list[str]
    rows: list[list[np.ndarray]]  # user -> strategy index -> (depth,) int64
    blend_scores: list[np.ndarray]
    targets: list[frozenset[int]]
    start_category: list[str | None]
    segment: list[str]  # the shopper's segment (engine.learn.online.shopper_context) from the stored history
    category: list[str]  # row -> leaf category
    cold: np.ndarray  # row -> no stored event
    vocabulary: tuple[str, ...]


class _Policy(Protocol):
    def choose(self, ctx: Context, state: State, rng: np.random.Generator) -> tuple[str, float]: ...
    def learn(self, ctx: Context, state: State, arm: str, reward: float, next_state: State | None) -> None: ...
    def probabilities(self, ctx: Context, state: State) -> dict[str, float]: ...
    def freeze(self) -> None: ...


class _Fixed:
    def __init__(self, arm: str) -> None:
        self.arm = arm

    def choose(self, ctx: Context, state: State, rng: np.random.Generator) -> tuple[str, float]:
        return self.arm, 1.0

    def learn(self, ctx: Context, state: State, arm: str, reward: float, next_state: State | None) -> None:
        pass

    def probabilities(self, ctx: Context, state: State) -> dict[str, float]:
        return {a: float(a == self.arm) for a in STRATEGIES}

    def freeze(self) -> None:
        pass


class _BanditPolicy:
    def __init__(self, bandit: Bandit) -> None:
        self.bandit = bandit
        self.frozen = False

    def choose(self, ctx: Context, state: State, rng: np.random.Generator) -> tuple[str, float]:
        return self.bandit.choose(ctx, rng)

    def learn(self, ctx: Context, state: State, arm: str, reward: float, next_state: State | None) -> None:
        if not self.frozen:
            self.bandit.update(ctx, arm, reward)

    def probabilities(self, ctx: Context, state: State) -> dict[str, float]:
        return self.bandit.probabilities(ctx, np.random.default_rng(0), draws=200)

    def freeze(self) -> None:
        self.frozen = True


class _QPolicy:
    def __init__(self, settings: QSettings) -> None:
        self.q = QLearner(STRATEGIES, settings)
        self.frozen = False

    def choose(self, ctx: Context, state: State, rng: np.random.Generator) -> tuple[str, float]:
        return self.q.choose(state, rng)

    def learn(self, ctx: Context, state: State, arm: str, reward: float, next_state: State | None) -> None:
        if not self.frozen:
            self.q.update(state, arm, reward, next_state)

    def probabilities(self, ctx: Context, state: State) -> dict[str, float]:
        return self.q.probabilities(state)

    def freeze(self) -> None:
        self.frozen = True


def make_policy(name: str, s: PolicySimSettings) -> _Policy:
    if name in ("blend", "blend+cold"):
        return _Fixed("blend")
    if name == "qlearning":
        return _QPolicy(s.q)
    settings: dict[str, float] = ({"epsilon": s.epsilon} if name == "epsilon" else
                                  {"alpha": s.alpha} if name == "linucb" else {"v": s.v})
    return _BanditPolicy(make_bandit(name, STRATEGIES, **settings))  # type: ignore[arg-type]


@dataclass
class PolicyRun:
    policy: str
    seed: int
    reward: list[float] = field(default_factory=list)  # per round
    regret: list[float] = field(default_factory=list)  # per round, expected
    lists: list[int] = field(default_factory=list)
    clicks: list[int] = field(default_factory=list)
    shown: list[int] = field(default_factory=list)
    arms: dict[str, int] = field(default_factory=dict)
    cold_impressions: int = 0
    cold_lists_to_20: int | None = None  # lists served until the cold CTR estimate stays within 20%
    cold_impressions_to_20: int | None = None
    cold_items_shown: int = 0
    frozen_reward: float = 0.0  # per list, the frozen policy on as many rounds again (other sessions)
    ope: dict[str, float] = field(default_factory=dict)  # estimator -> estimated reward per list

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PolicySimReport:
    settings: PolicySimSettings
    runs: list[PolicyRun]
    started_at: str
    seconds: float
    data: dict[str, Any]

    def of(self, policy: str) -> list[PolicyRun]:
        return [r for r in self.runs if r.policy == policy]

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for p in POLICIES:
            runs = self.of(p)
            if not runs:
                continue
            total = np.array([sum(r.reward) for r in runs])
            regret = np.array([sum(r.regret) for r in runs])
            lists = np.array([sum(r.lists) for r in runs], np.float64)
            ctr = np.array([sum(r.clicks) / max(sum(r.shown), 1) for r in runs])
            last = np.array([r.reward[-1] / max(r.lists[-1], 1) for r in runs])
            to20 = [r.cold_lists_to_20 for r in runs]
            out.append({"policy": p, "reward_mean": float(total.mean()), "reward_sd": float(total.std()),
                        "reward_per_list": float((total / lists).mean()),
                        "last_round_per_list": float(last.mean()), "last_round_per_list_sd": float(last.std()),
                        "regret_mean": float(regret.mean()), "regret_sd": float(regret.std()),
                        "ctr": float(ctr.mean()),
                        "cold_impressions": float(np.mean([r.cold_impressions for r in runs])),
                        "cold_lists_to_20": None if None in to20 else float(np.mean([t or 0 for t in to20])),
                        "cold_lists_to_20_runs": to20,
                        "cold_impressions_to_20": [r.cold_impressions_to_20 for r in runs]})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"settings": _settings_dict(self.settings), "started_at": self.started_at, "seconds": self.seconds,
                "data": self.data, "summary": self.summary(), "runs": [r.to_dict() for r in self.runs]}

    def table(self) -> str:
        lines = ["| policy | reward (sum, mean ± sd over seeds) | reward per list | last round per list | "
                 "regret (sum) | CTR | cold impressions | lists (cold impressions) until the cold CTR is within 20%, "
                 "per seed |",
                 "|---|---|---|---|---|---|---|---|"]
        for row in self.summary():
            to20 = "; ".join("never" if n is None else f"{n} ({m})"
                             for n, m in zip(row["cold_lists_to_20_runs"], row["cold_impressions_to_20"]))
            lines.append(
                f"| {row['policy']} | {row['reward_mean']:.0f} ± {row['reward_sd']:.0f} | "
                f"{row['reward_per_list']:.4f} | {row['last_round_per_list']:.4f} ± {row['last_round_per_list_sd']:.4f} | "
                f"{row['regret_mean']:.0f} ± {row['regret_sd']:.0f} | {row['ctr']:.2%} | "
                f"{row['cold_impressions']:.0f} | "
                f"{to20} |")
        return "\n".join(lines)

    def ope_table(self) -> str:
        names = ("IPS", "SNIPS", "DR", "PDIS", "WPDIS")
        lines = ["| frozen policy | actual reward per list (mean over seeds) | " + " | ".join(names) + " |",
                 "|---|---|" + "---|" * len(names)]
        for p in POLICIES:
            runs = self.of(p)
            if not runs or not runs[0].ope:
                continue
            actual = np.mean([r.frozen_reward for r in runs])
            cells = [np.mean([r.ope[e] for r in runs]) for e in names]
            errs = [np.mean([abs(r.ope[e] - r.frozen_reward) / max(r.frozen_reward, 1e-9) for r in runs])
                    for e in names]
            lines.append(f"| {p} | {actual:.4f} | " + " | ".join(
                f"{c:.4f} (error {e:.1%})" for c, e in zip(cells, errs)) + " |")
        return "\n".join(lines)

    def lines(self) -> list[str]:
        s = self.settings
        return [f"vitrine simulate --policies: {s.rounds} rounds x {s.sessions} sessions x {s.steps} lists of {s.k}, "
                f"seeds {', '.join(map(str, s.seeds))}, {self.data.get('users')} Scientific shoppers, "
                f"{self.seconds / 60:.1f} min", "", self.table(), "",
                "Off-policy estimates from the epsilon-greedy policy's log (reward per list):", self.ope_table()]


def _settings_dict(s: PolicySimSettings) -> dict[str, Any]:
    d = asdict(s)
    d["seeds"] = list(s.seeds)
    return d


# -- the lists ---------------------------------------------------------------------------------------

def build_lists(config: EngineConfig, s: PolicySimSettings, *, work: Path, data_dir: Path, encoder: Any = None,
                show_progress: bool = True) -> Lists:
    """Store the histories, then ask the real engine for every strategy's list of every simulated user."""
    from engine.evaluation.recommend_eval import load_scientific
    from engine.service import Engine

    data = load_scientific(config, data_dir, encoder=encoder)
    eval_dir = (config.index_dir / "eval" / "scientific").resolve()
    names = [f"sci-{u}" for u in range(len(data.seqs))]
    hist = [[data.item_ids[r] for r in q[:-s.holdout].tolist()] for q in data.seqs]
    targets = [frozenset(data.item_ids[r] for r in q[-s.holdout:].tolist()) - set(h) for q, h in zip(data.seqs, hist)]
    eligible = [u for u in range(len(names)) if targets[u]]
    if s.users > len(eligible):
        raise InvalidQuery("users", f"at most {len(eligible)} Scientific users have a true next item")
    pick = sorted(np.random.default_rng(0).choice(len(eligible), size=s.users, replace=False).tolist())
    base = work / "base.db"
    _import_histories(config, base, names, hist, set(data.item_ids), now=time.time(), work=work)
    cfg = config.replace(index_dir=eval_dir, models_dir=config.models_path.resolve(),
                         events_url=f"sqlite:///{base}", ranker_dir=work / "rankers", strategy_policy="blend",
                         explore_recommend="0")
    engine = Engine(cfg, encoder=encoder)
    snap = engine.snapshot()
    row = snap.catalog.id_map
    category = [p.category_path for p in snap.catalog]
    with engine.shoppers.live.current() as models:
        touched = set(models.trending.acc)
    cold = np.array([i not in touched for i in snap.catalog.ids], bool)
    users, rows, scores, tg, start, segments = [], [], [], [], [], []
    t0 = time.time()
    for n, j in enumerate(pick):
        u = eligible[j]
        per: list[np.ndarray] = []
        for strategy in STRATEGIES:
            recs = engine.recommend(names[u], k=s.depth, strategy=strategy).recommendations
            per.append(np.array([row[r.id] for r in recs], np.int64))
            if strategy == "blend":
                scores.append(np.array([r.score for r in recs], np.float64))
        users.append(names[u])
        rows.append(per)
        tg.append(frozenset(row[i] for i in targets[u]))
        start.append(category[row[hist[u][-1]]] if hist[u] else None)
        segments.append(engine._context("recommend", names[u], None).segment)
        if show_progress and (n + 1) % 500 == 0:
            _say(True, f"lists of {n + 1}/{len(pick)} users ({time.time() - t0:.0f} s)")
    counts: dict[str, int] = {}
    for h in hist:
        for i in h:
            counts[category[row[i]]] = counts.get(category[row[i]], 0) + 1
    vocab = tuple(sorted(counts, key=lambda c: (-counts[c], c))[:s.categories])
    return Lists(users, rows, scores, tg, start, segments, category, cold, vocab)


# -- the run -----------------------------------------------------------------------------------------

def _expected(rel: np.ndarray, eta: np.ndarray, c: ClickModel, r: Rewards) -> float:
    """The expected highest outcome of a list (independent positions): purchase, else click, else 0."""
    p_click = eta * np.where(rel, c.rel_click, c.noise_click)
    p_buy = eta * rel * c.rel_click * c.buy
    any_buy = 1.0 - float(np.prod(1.0 - p_buy))
    any_click = 1.0 - float(np.prod(1.0 - p_click))
    return r.purchase * any_buy + r.click * (any_click - any_buy)


def run_policy(name: str, lists: Lists, s: PolicySimSettings, seed: int, *,
               log: list[tuple[Context, State, str, float, float]] | None = None,
               policy: _Policy | None = None, rounds: int | None = None) -> tuple[PolicyRun, _Policy]:
    """One policy on one seed's sessions (see the module docstring); ``log`` collects every list's
    ``(context, state, arm, propensity, reward)``; ``policy`` continues a given (e.g. frozen) policy."""
    rounds = s.rounds if rounds is None else rounds
    policy = policy or make_policy(name, s)
    c, rw = s.clicks, s.rewards
    eta = c.examination(s.k)
    draw = np.random.default_rng([seed, 1])  # sessions' shoppers: the same for every policy
    cold_settings = ExplorationSettings(kind="epsilon", epsilon=0.0, positions=s.k, pool=s.depth,
                                        cold_share=s.cold_share)
    run = PolicyRun(name, seed, arms={a: 0 for a in STRATEGIES})
    cold_clicks, cold_expected, cold_shown, lists_served = 0, 0.0, 0, 0
    cold_items: set[int] = set()
    within_since: tuple[int, int] | None = None
    for r in range(rounds):
        reward = regret = 0.0
        n_lists = clicks = shown = 0
        for j in range(s.sessions):
            u = int(draw.integers(len(lists.users)))
            rng = np.random.default_rng([seed, r, j])  # clicks and the policy's draws of this session
            bought: set[int] = set()
            last_cat, cart = lists.start_category[u], False
            recent: list[int] = []
            targets = lists.targets[u]
            for t in range(s.steps):
                ctx = Context("recommend", lists.segment[u], t, last_cat, cart, sum(recent[-5:]))
                state = encode_state(t, last_cat, cart, sum(recent[-5:]), lists.vocabulary)
                arm, p = policy.choose(ctx, state, rng)
                values = []
                chosen_rows = np.empty(0, np.int64)
                for a, strategy in enumerate(STRATEGIES):
                    rows = lists.rows[u][a]
                    keep = np.array([i not in bought for i in rows.tolist()], bool) if bought else np.ones(len(rows), bool)
                    rows = rows[keep][:s.k]
                    if name == "blend+cold" and strategy == "blend":  # as Engine.recommend with a cold share
                        pool, sc = _with_cold(lists, u, a, keep, bought)
                        slate = choose(sc, s.k, cold_settings, rng, cold=lists.cold[pool])
                        rows = pool[slate.order]
                    rel = np.array([i in targets and i not in bought for i in rows.tolist()], bool)
                    values.append(_expected(rel, eta[:len(rows)], c, rw))
                    if strategy == arm:
                        chosen_rows, chosen_rel = rows, rel
                got = c.draw(chosen_rel, rng)
                out = rw.purchase if got.bought.any() else (rw.click if got.clicked.any() else 0.0)
                reward += out
                regret += max(values) - values[STRATEGIES.index(arm)]
                n_lists += 1
                lists_served += 1
                clicks += int(got.clicked.sum())
                shown += len(chosen_rows)
                run.arms[arm] += 1
                is_cold = lists.cold[chosen_rows]
                if is_cold.any():
                    p_click = eta[:len(chosen_rows)] * np.where(chosen_rel, c.rel_click, c.noise_click)
                    cold_shown += int(is_cold.sum())
                    cold_clicks += int(got.clicked[is_cold].sum())
                    cold_expected += float(p_click[is_cold].sum())
                    cold_items.update(chosen_rows[is_cold].tolist())
                    est, truth = cold_clicks / cold_shown, cold_expected / cold_shown
                    if abs(est - truth) <= WITHIN * truth:
                        within_since = within_since or (lists_served, cold_shown)
                    else:
                        within_since = None
                bought |= set(chosen_rows[got.bought].tolist())
                cart = cart or bool(got.bought.any())
                if got.clicked.any():
                    last_cat = lists.category[int(chosen_rows[np.flatnonzero(got.clicked)[-1]])]
                recent.append(int(got.clicked.sum()))
                last = t == s.steps - 1
                next_state = None if last else encode_state(t + 1, last_cat, cart, sum(recent[-5:]), lists.vocabulary)
                policy.learn(ctx, state, arm, out, next_state)
                if log is not None:
                    log.append((ctx, state, arm, p, out))
        run.reward.append(reward)
        run.regret.append(regret)
        run.lists.append(n_lists)
        run.clicks.append(clicks)
        run.shown.append(shown)
    run.cold_impressions = cold_shown
    run.cold_items_shown = len(cold_items)
    if within_since is not None:
        run.cold_lists_to_20, run.cold_impressions_to_20 = within_since
    return run, policy


def _with_cold(lists: Lists, u: int, a: int, keep: np.ndarray, bought: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """The blend's candidates with the "new" strategy's cold items appended below them (their score under
    the lowest), as ``Engine.recommend`` does when ``explore_recommend`` has a ``cold_share``."""
    rows, scores = lists.rows[u][a][keep], lists.blend_scores[u][keep]
    new = lists.rows[u][STRATEGIES.index("new")]
    extra = np.array([i for i in new.tolist() if i not in bought and i not in set(rows.tolist())], np.int64)
    floor = (float(scores.min()) if len(scores) else 0.0) - 1.0
    return np.concatenate([rows, extra]), np.concatenate([scores, np.full(len(extra), floor)])


def _ope(log: list[tuple[Context, State, str, float, float]], target: _Policy) -> dict[str, float]:
    """IPS, SNIPS and DR estimates of ``target``'s reward per list from ``log`` (list level: the action is
    the strategy; DR's reward model: ridge regression per strategy on the context vector, fit on the log)."""
    X = np.array([context_vector(ctx) for ctx, *_ in log])
    arms = [a for _, _, a, _, _ in log]
    reward = np.array([r for *_, r in log], np.float64)
    pscore = np.array([p for _, _, _, p, _ in log], np.float64)
    probs = [target.probabilities(ctx, state) for ctx, state, *_ in log]
    pi = np.array([pr[a] for pr, a in zip(probs, arms)], np.float64)
    q_logged, q_target = ridge_rewards(X, arms, reward, probs, folds=1)
    batch = LoggedBandit(reward, pscore, pi, q_logged=q_logged, q_target=q_target)
    return {"IPS": IPS().value(batch), "SNIPS": SNIPS().value(batch), "DR": DR().value(batch),
            **per_decision(np.array([ctx.session_step for ctx, *_ in log]), reward, pscore, pi)}


def per_decision(step: np.ndarray, reward: np.ndarray, pscore: np.ndarray, pi: np.ndarray) -> dict[str, float]:
    """Per-decision importance sampling over sessions (Precup, Sutton & Singh 2000): a session's step ``t``
    is weighted by the product of ``pi / p`` over its steps ``0..t``, so a choice's effect on the rest of its
    session is accounted for. ``step``: each row's step in its session (rows of a session consecutive, a
    session starting at step 0). Returns the reward per list: ``PDIS`` (plain) and ``WPDIS`` (each step's
    weights normalized to mean 1)."""
    rho = np.empty(len(step))
    running = 1.0
    for i, t in enumerate(step.tolist()):
        running = (1.0 if t == 0 else running) * pi[i] / pscore[i]
        rho[i] = running
    steps = np.unique(step)
    pdis = float(np.sum(rho * reward) / np.sum(step == 0) / len(steps))
    wpdis = float(np.mean([np.sum(rho[step == t] * reward[step == t]) / max(np.sum(rho[step == t]), 1e-12)
                           for t in steps]))
    return {"PDIS": pdis, "WPDIS": wpdis}


def run_policy_simulation(config: EngineConfig, s: PolicySimSettings, *, out_dir: Path, data_dir: Path | None = None,
                          encoder: Any = None, show_progress: bool = True,
                          policies: tuple[str, ...] = POLICIES) -> PolicySimReport:
    t0 = time.time()
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    work = Path(out_dir).resolve() / "policy-runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lists = build_lists(config, s, work=work, data_dir=Path(data_dir or config.data_dir), encoder=encoder,
                        show_progress=show_progress)
    _say(show_progress, f"lists ready ({time.time() - t0:.0f} s); {int(lists.cold.sum())} cold items")
    runs: list[PolicyRun] = []
    for seed in s.seeds:
        log: list[tuple[Context, State, str, float, float]] = []
        finished: dict[str, tuple[PolicyRun, _Policy]] = {}
        for name in policies:
            finished[name] = run_policy(name, lists, s, seed, log=log if name == "epsilon" else None)
            run = finished[name][0]
            _say(show_progress, f"seed {seed} {name}: reward {sum(run.reward):.0f}, regret {sum(run.regret):.0f}")
        for name, (run, policy) in finished.items():
            policy.freeze()
            frozen, _ = run_policy(name, lists, s, seed + 1000, policy=policy)
            run.frozen_reward = sum(frozen.reward) / max(sum(frozen.lists), 1)
            if log and name != "epsilon" and name != "blend+cold":
                run.ope = _ope(log, policy)
            runs.append(run)
    shutil.rmtree(work, ignore_errors=True)
    return PolicySimReport(s, runs, started, time.time() - t0, {
        "dataset": "scientific", "users": len(lists.users), "cold_items": int(lists.cold.sum()),
        "items": len(lists.cold), "category_vocabulary": list(lists.vocabulary)})


# -- outputs -----------------------------------------------------------------------------------------

def write_outputs(report: PolicySimReport, out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "simulate_policies.json"
    js.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    png = out_dir / "simulate_policies.png"
    plot(report, png)
    return png, js


def plot(report: PolicySimReport, path: Path) -> None:
    """Cumulative reward and cumulative regret over the lists served, per policy: the mean over the seeds,
    with a band from the seeds' min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report.settings
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    colors = ("#4c72b0", "#8172b3", "#dd8452", "#55a868", "#c44e52", "#937860")
    for policy, color in zip(POLICIES, colors):
        runs = report.of(policy)
        if not runs:
            continue
        x = np.cumsum(runs[0].lists)
        for ax, key in zip(axes, ("reward", "regret")):
            y = np.array([np.cumsum(getattr(r, key)) for r in runs])
            ax.plot(x, y.mean(axis=0), marker="o", markersize=3, color=color, label=policy)
            ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=color, alpha=0.15, linewidth=0)
    for ax, label in zip(axes, ("cumulative reward", "cumulative regret (expected)")):
        ax.set_xlabel("lists served")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"vitrine simulate --policies: {s.sessions} sessions x {s.steps} lists per round, "
                 f"seeds {', '.join(map(str, s.seeds))} (band: min-max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def record_results(report: PolicySimReport, png: Path, command: str, *,
                   results: Path = ROOT / "bench" / "RESULTS.md",
                   image: Path | None = ROOT / "bench" / "simulate_policies.png") -> None:
    """Replace the ``<!-- simulate-policies -->`` section of ``results`` with the table and the plot."""
    from engine.evaluation.simulate import replace_section, run_lines

    s = report.settings
    if image is not None:
        shutil.copyfile(png, image)
    picture = (f"![Cumulative reward and regret]({os.path.relpath(image, results.parent)})" if image is not None
               else "")
    c = s.clicks
    body = "\n".join([
        "### Strategy policies on simulated sessions (`vitrine simulate --policies`)", "",
        *run_lines(command, report.started_at, report.seconds),
        f"- {report.data['users']} Scientific shoppers (their stored histories; true next items: the last "
        f"{s.holdout}), {s.rounds} rounds x {s.sessions} sessions x {s.steps} lists of {s.k} per seed; "
        f"rewards purchase {s.rewards.purchase:g}, click {s.rewards.click:g} (a list's highest outcome); "
        f"click model: (1/p)^{c.bias:g}, true item {c.rel_click:g}, other {c.noise_click:g}, buy {c.buy:g}",
        f"- {report.data['cold_items']} cold items (no stored event) of {report.data['items']}; "
        f"`blend+cold` gives them {s.cold_share:g} of each slot",
        "", report.table(), "", picture, "",
        "Off-policy estimates of each policy as it ended (frozen), from the epsilon-greedy policy's whole run "
        "(its logged propensities), against the frozen policy's actual reward per list on as many rounds again "
        "(other sessions); errors are per seed, then averaged:", "",
        report.ope_table(),
    ])
    replace_section(results, SECTION, body)
