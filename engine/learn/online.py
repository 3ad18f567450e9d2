"""The strategy policy of recommendations: a bandit or the Q table choosing which strategy fills a list
(:mod:`engine.recommend.strategies`), learning online from the event log in every server process.

**Context.** :func:`shopper_context` reads a request's context from the shopper's recent events (oldest
first): the segment (``anonymous`` without a shopper id; ``new`` under 3 events; ``loyal`` from 10 events
or 5 purchases; else ``returning``), the session (the events since the last gap of
``SESSION_GAP_S``, 30 minutes): its step (events so far), whether something was added to the cart, the leaf
category of the last item, and the clicks among the last 10 events.

**Logging.** A list chosen by the policy is logged with policy ``strategy:<kind>/<arm>`` and
``context = {"arm", "p", "context"}`` (the arm's probability and the context's fields), so that any
process, and off-policy evaluation, can replay the choice.

**Learning from the log** (:meth:`StrategyPolicy.refresh`, at most every ``refresh_s`` on the request
path). Every process tails the store, as the live co-occurrence model does:

- the impressions of this policy (by ``rowid``): each is one *pull* of its arm in its context (a reward of
  0 so far), whichever process served it;
- the outcome events that carry a ``request_id`` (by ``seq``): an outcome on a list of this policy *credits*
  its arm in that context with the increase of the list's reward (the highest outcome of a list counts:
  click 1, add to cart 3, purchase 5 by default, ``reward_*`` settings). An outcome whose list is not
  stored yet waits up to ``PENDING_S``.

A pull then its credits add up to one ``update(context, arm, reward)``: the bandits' statistics are sums,
so the order in which processes see pulls and credits does not matter, and every process reaches the same
state. After a restart the policy replays the impressions kept (``impression_retention_days``) and their
outcomes: it survives a restart from the log.

Q-learning (``strategy_policy = "qlearning"``) serves the Q table published by ``vitrine train qlearning``
(:mod:`engine.learn.qlearning`), epsilon-greedy, and does not learn online.

Thread-safe: one lock around the policy's state.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from engine.errors import StoreUnavailable
from engine.events import Event, EventStore
from engine.learn.bandits import Bandit, Context, make_bandit
from engine.recommend.strategies import STRATEGIES
from engine.learn.qlearning import QLearner, QSettings, Rewards, State, encode_state

log = logging.getLogger(__name__)

SESSION_GAP_S = 1800.0
PENDING_S = 120.0
LOYAL_EVENTS = 10
LOYAL_PURCHASES = 5
NEW_EVENTS = 3
RECENT = 10
OUTCOMES = ("click", "add_to_cart", "purchase")


def shopper_context(surface: str, user_id: str | None, events: Sequence[Event], *, now: float,
                    category_of: Callable[[str], str | None]) -> Context:
    """The context of a list for ``user_id`` (None: an anonymous session) whose recent ``events`` (oldest
    first) are given; ``category_of`` maps an item id to its leaf category path (None if unknown)."""
    session: list[Event] = []
    t_next = now
    for e in reversed(events):
        if t_next - e.timestamp > SESSION_GAP_S:
            break
        session.append(e)
        t_next = e.timestamp
    session.reverse()
    types = [e.type.value for e in events]
    if user_id is None:
        segment = "anonymous"
    elif len(events) >= LOYAL_EVENTS or types.count("purchase") >= LOYAL_PURCHASES:
        segment = "loyal"
    elif len(events) < NEW_EVENTS:
        segment = "new"
    else:
        segment = "returning"
    last = next((e.item_id for e in reversed(session) if e.item_id is not None), None)
    return Context(surface, segment, len(session), None if last is None else category_of(last),
                   any(e.type.value == "add_to_cart" for e in session),
                   sum(1 for t in types[-RECENT:] if t == "click"))


def context_dict(ctx: Context) -> dict[str, Any]:
    return {"surface": ctx.surface, "segment": ctx.segment, "session_step": ctx.session_step,
            "last_category": ctx.last_category, "cart": ctx.cart, "recent_clicks": ctx.recent_clicks}


def context_from(d: dict[str, Any]) -> Context:
    return Context(str(d["surface"]), str(d["segment"]), int(d["session_step"]),
                   None if d.get("last_category") is None else str(d["last_category"]), bool(d["cart"]),
                   int(d["recent_clicks"]))


def request_rng(request_id: str, stream: int = 0) -> np.random.Generator:
    """The generator of one request's random choices, seeded by its id (a logged choice can be replayed);
    ``stream`` > 0 gives another independent generator of the same request (the ads' pacing draws)."""
    try:
        seed = int(request_id[:16], 16)
    except ValueError:
        seed = int(hashlib.sha256(request_id.encode()).hexdigest()[:16], 16)
    return np.random.default_rng(seed if stream == 0 else [seed, stream])


class StrategyPolicy:
    """The strategy policy of one process (see the module docstring). ``kind``: a bandit kind of
    :func:`engine.learn.bandits.make_bandit` or ``"qlearning"``; ``qtable``: the Q table's file."""

    def __init__(self, kind: str, store: Callable[[], EventStore], *, epsilon: float = 0.1, alpha: float = 1.0,
                 rewards: Rewards = Rewards(), qtable: Path | None = None, refresh_s: float = 0.5) -> None:
        self.kind = kind
        self.epsilon = epsilon
        self.prefix = f"strategy:{kind}/"
        self._store = store
        self.rewards = rewards
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._checked = 0.0
        self._rowid = 0
        self._seq = 0
        self._lists: dict[str, tuple[Context, str, float, float]] = {}  # request id -> (ctx, arm, ts, credited)
        self._pending: dict[str, list[tuple[str, float]]] = {}  # request id -> [(outcome, received)]
        self.pulls = 0
        self.credits = 0
        self.qlearner: QLearner | None = None
        self.bandit: Bandit | None = None
        self._qtable = qtable
        self._qtable_mtime = -1.0
        self.categories: tuple[str, ...] = ()
        if kind == "qlearning":
            self.qlearner = QLearner(STRATEGIES, QSettings(epsilon=epsilon, rewards=rewards))
        else:
            settings: dict[str, float] = {"epsilon": epsilon} if kind == "epsilon" else (
                {"alpha": alpha} if kind == "linucb" else {})
            self.bandit = make_bandit(kind, STRATEGIES, **settings)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return f"strategy:{self.kind}"

    def choose(self, ctx: Context, request_id: str) -> tuple[str, float]:
        """The arm for this list and its probability (the request's generator: see :func:`request_rng`)."""
        self.refresh()
        rng = request_rng(request_id)
        with self._lock:
            if self.qlearner is not None:
                state = encode_state(ctx.session_step, ctx.last_category, ctx.cart, ctx.recent_clicks,
                                     self.categories)
                return self.qlearner.choose(state, rng)
            assert self.bandit is not None
            return self.bandit.choose(ctx, rng)

    def probabilities(self, ctx: Context) -> dict[str, float]:
        with self._lock:
            if self.qlearner is not None:
                return self.qlearner.probabilities(encode_state(
                    ctx.session_step, ctx.last_category, ctx.cart, ctx.recent_clicks, self.categories))
            assert self.bandit is not None
            return self.bandit.probabilities(ctx, np.random.default_rng(0))

    def refresh(self, *, force: bool = False) -> None:
        """Fold the log's new lists and outcomes in (at most every ``refresh_s`` unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._checked < self.refresh_s:
            return
        self._checked = now
        try:
            if self.qlearner is not None:
                self._load_qtable()
                return
            with self._lock:
                self._fold(self._store())
        except StoreUnavailable as e:
            log.warning("strategy policy not refreshed: %s", e)

    def _load_qtable(self) -> None:
        path = self._qtable
        if path is None or not path.exists():
            return
        mtime = path.stat().st_mtime
        if mtime == self._qtable_mtime:
            return
        try:
            data = json.loads(path.read_text())
            learner = QLearner.from_dict(data["q"])
            # serve with this server's exploration (strategy_epsilon), not the one the table was trained with
            learner.settings = dataclasses.replace(learner.settings, epsilon=self.epsilon)
            categories = tuple(str(c) for c in data.get("categories", []))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("Q table %s not loaded: %s", path, e)
            return
        with self._lock:
            self.qlearner, self.categories, self._qtable_mtime = learner, categories, mtime

    def _fold(self, store: EventStore) -> None:
        bandit = self.bandit
        assert bandit is not None
        while True:
            batch = store.policy_impressions_after(self._rowid, self.prefix)
            for rowid, imp in batch:
                self._rowid = rowid
                c = imp.context or {}
                try:
                    ctx, arm = context_from(c["context"]), str(c["arm"])
                except (KeyError, TypeError, ValueError):
                    continue
                bandit.update(ctx, arm, 0.0)
                self.pulls += 1
                self._lists[imp.request_id] = (ctx, arm, imp.ts, 0.0)
            if len(batch) < 5000:
                break
        received = time.time()
        while True:
            rows, self._seq = store.outcomes_after(self._seq)
            for _, rid, kind, _ in rows:
                if kind in OUTCOMES:
                    self._pending.setdefault(rid, []).append((kind, received))
            if len(rows) < 10000:
                break
        for rid in list(self._pending):
            got = self._lists.get(rid)
            if got is None:
                kept = [(k, t) for k, t in self._pending[rid] if received - t < PENDING_S]
                if kept:
                    self._pending[rid] = kept
                else:
                    del self._pending[rid]
                continue
            ctx, arm, ts, credited = got
            best = max([credited] + [self.rewards.value(k) for k, _ in self._pending.pop(rid)])
            if best > credited:
                bandit.credit(ctx, arm, best - credited, previous=credited)
                self.credits += 1
                self._lists[rid] = (ctx, arm, ts, best)
        horizon = time.time() - 2 * SESSION_GAP_S - PENDING_S  # lists older than this get no more credit
        if len(self._lists) > 100_000:
            self._lists = {r: v for r, v in self._lists.items() if v[2] >= horizon}

    def snapshot(self) -> dict[str, Any]:
        """What the admin page shows: kind, pulls and credits folded, and the state's size."""
        with self._lock:
            return {"kind": self.kind, "pulls": self.pulls, "credits": self.credits,
                    "lists_tracked": len(self._lists), "pending": len(self._pending)}


# -- Q-learning: the table, trained offline ---------------------------------------------------------

def save_qtable(path: Path, learner: QLearner, categories: Sequence[str], info: dict[str, Any]) -> None:
    """Write the Q table (atomically: a temporary file renamed over ``path``), which serving reloads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"q": learner.to_dict(), "categories": list(categories), "info": info}) + "\n",
                   encoding="utf-8")
    tmp.replace(path)


def logged_episodes(store: EventStore, *, since: float, window_s: float, rewards: Rewards,
                    prefix: str = "strategy:", categories: int = 10,
                    ) -> tuple[list[list[tuple[State, str, float]]], tuple[str, ...]]:
    """The shopping sessions of the lists a strategy policy chose (impressions with ``prefix`` since
    ``since``), as Q-learning episodes: per shopper, lists less than ``SESSION_GAP_S`` apart form one session;
    a step is (state, strategy, the list's highest outcome's reward). Also the category vocabulary (the
    ``categories`` most frequent last categories)."""
    from engine.learn.attribution import outcomes

    labels = outcomes(store, since=since, window_s=window_s)
    rows: list[tuple[str, float, Context, str, float]] = []
    rowid = 0
    while True:
        batch = store.policy_impressions_after(rowid, prefix)
        for rowid, imp in batch:
            if imp.ts < since or imp.user_id is None or not imp.context or "context" not in imp.context:
                continue
            try:
                ctx, arm = context_from(imp.context["context"]), str(imp.context["arm"])
            except (KeyError, TypeError, ValueError):
                continue
            got = {t.value for types in labels.get(imp.request_id, {}).values() for t in types}
            rows.append((imp.user_id, imp.ts, ctx, arm, max([0.0] + [rewards.value(t) for t in got])))
        if len(batch) < 5000:
            break
    counts: dict[str, int] = {}
    for *_, ctx, _, _ in rows:
        if ctx.last_category:
            counts[ctx.last_category] = counts.get(ctx.last_category, 0) + 1
    vocab = tuple(sorted(counts, key=lambda c: (-counts[c], c))[:categories])
    episodes: list[list[tuple[State, str, float]]] = []
    last: dict[str, tuple[float, int]] = {}
    for user, ts, ctx, arm, reward in sorted(rows, key=lambda r: (r[0], r[1])):
        state = encode_state(ctx.session_step, ctx.last_category, ctx.cart, ctx.recent_clicks, vocab)
        prev = last.get(user)
        if prev is None or ts - prev[0] > SESSION_GAP_S:
            episodes.append([])
            last[user] = (ts, len(episodes) - 1)
        else:
            last[user] = (ts, prev[1])
        episodes[last[user][1]].append((state, arm, reward))
    return episodes, vocab
