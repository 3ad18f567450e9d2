"""Off-policy evaluation (OPE): a target policy's expected reward (CTR) from another policy's logs.

A logged batch (:class:`LoggedBandit`) holds one row per logged action (one shown item in one slot): the
reward ``r`` (a click, 0/1), the *propensity* ``p`` (``pscore``: the logging policy's probability of
showing that item in that slot), the target policy's probability ``pi`` of the same item in the same slot
and, for the model-based estimators, a reward model's prediction ``q`` of the logged item and
``qpi = sum_a pi(a | x, slot) q(x, a, slot)``, the reward the model expects from the target policy in
that row. With the importance weight ``w = pi / p``, optionally clipped (``min(w, clip)``):

- IPS (inverse propensity scoring, Horvitz-Thompson): ``mean(w r)``; unbiased when ``p > 0`` wherever
  ``pi > 0`` and ``w`` is not clipped.
- SNIPS (self-normalized IPS): ``sum(w r) / sum(w)``; a little biased, less variance.
- DM (direct method): ``mean(qpi)``; low variance, biased as the reward model is.
- DR (doubly robust; Dudik, Langford & Li 2011): ``mean(qpi + w (r - q))``; unbiased when either the
  propensities or the reward model are right.
- SNDR: ``mean(qpi) + sum(w (r - q)) / sum(w)``.
- Switch-DR (Wang, Agarwal & Dudik 2017): DR's correction only on rows with ``w <= tau``.
- DR-os (DR with optimistic shrinkage; Su et al. 2020): DR with ``w`` replaced by ``lam w / (w^2 + lam)``.

The definitions are those of the Open Bandit Pipeline (Saito et al. 2021, ``obp.ope``), so figures compare;
clipping applies to the weight of IPS, SNIPS, DR and SNDR (``clip=None``, the default, is no clipping).

**Slates, position-based.** A list of ``K`` items is logged as ``K`` rows, each with its slot and the
*per-slot* (marginal) probabilities ``p(a | x, k)`` and ``pi(a | x, k)`` of the item shown in slot ``k``.
Averaged over rows, every estimator above then estimates the target's reward per shown item (its CTR per
impression), the slots weighted as in the log. This is the independent (position-based) IPS of
Li et al. (2018), "Offline evaluation of ranking policies with click models" (KDD), and what OBP does with
its ``position`` argument: it is unbiased if a slot's click depends on the item in that slot only (not on
its neighbours), and its weights stay small because they are per slot, not per whole list.
:meth:`Estimator.by_position` breaks an estimate down per slot.

**Intervals.** :meth:`Estimator.estimate` adds a percentile bootstrap interval: the rows are resampled
with replacement (:func:`bootstrap`) and the reward model's predictions are kept as given (not refitted per
resample; a caller that refits, as ``engine.evaluation.ope_eval`` does, uses :func:`bootstrap` itself).

**Reward model.** :class:`LogisticRewardModel`: L2-regularized logistic regression (L-BFGS) on features
factorized as row (the shopper), item, slot and row-item (an affinity of the shopper to each item), so
that ``q`` for every (row, item, slot) costs one matrix product. :func:`cross_fit_rewards` predicts each
row from a model fitted on the other folds (cross-fitting, as OBP's ``fit_predict(n_folds=3)``), so the
DR correction of a row is not fitted to that row's own click. :func:`select_l2` picks its L2 strength by
cross-validated log loss on the logged clicks.

Everything here is plain numpy on arrays, independent of any data set or store.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from engine.errors import InvalidQuery

T = TypeVar("T")


def _vector(name: str, values: Any, n: int | None) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise InvalidQuery(name, f"must be one value per logged row (1-D), got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise InvalidQuery(name, f"must have one value per logged row ({n}), got {a.shape[0]}")
    if not np.all(np.isfinite(a)):
        raise InvalidQuery(name, "must be finite (no NaN or inf)")
    return a


@dataclass(frozen=True)
class LoggedBandit:
    """The arrays of one logged batch, one entry per logged row (shape ``(n,)`` each).

    ``position`` (0-based slot) is needed only by :meth:`Estimator.by_position`; ``q_logged`` and
    ``q_target`` only by the model-based estimators (DM, DR, SNDR, Switch-DR, DR-os).
    Construction validates: ``pscore`` in (0, 1], ``target_prob`` in [0, 1], everything finite.
    """

    reward: np.ndarray
    pscore: np.ndarray
    target_prob: np.ndarray
    position: np.ndarray | None = None
    q_logged: np.ndarray | None = None
    q_target: np.ndarray | None = None

    def __post_init__(self) -> None:
        reward = _vector("reward", self.reward, None)
        n = reward.shape[0]
        if n == 0:
            raise InvalidQuery("reward", "the logged batch is empty")
        pscore = _vector("pscore", self.pscore, n)
        if np.any(pscore <= 0.0) or np.any(pscore > 1.0):
            raise InvalidQuery("pscore", "propensities must be in (0, 1]; drop rows whose logged propensity is 0 "
                                         "(the logging policy could not have shown them)")
        target = _vector("target_prob", self.target_prob, n)
        if np.any(target < 0.0) or np.any(target > 1.0):
            raise InvalidQuery("target_prob", "target probabilities must be in [0, 1]")
        object.__setattr__(self, "reward", reward)
        object.__setattr__(self, "pscore", pscore)
        object.__setattr__(self, "target_prob", target)
        for name in ("q_logged", "q_target"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _vector(name, getattr(self, name), n))
        if self.position is not None:
            pos = np.asarray(self.position)
            if pos.shape != (n,) or not np.issubdtype(pos.dtype, np.integer) or np.any(pos < 0):
                raise InvalidQuery("position", f"must be {n} non-negative integer slots (0-based)")
            object.__setattr__(self, "position", pos.astype(np.int64))

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    def weights(self, clip: float | None = None) -> np.ndarray:
        """Importance weights ``target_prob / pscore``, ``(n,)``, capped at ``clip`` if given."""
        w = np.asarray(self.target_prob / self.pscore, np.float64)
        return w if clip is None else np.minimum(w, clip)

    def take(self, rows: np.ndarray) -> LoggedBandit:
        """The batch restricted to (or resampled at) the row indices ``rows``."""
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return LoggedBandit(self.reward[rows], self.pscore[rows], self.target_prob[rows], pick(self.position),
                            pick(self.q_logged), pick(self.q_target))

    def model_terms(self, estimator: str) -> tuple[np.ndarray, np.ndarray]:
        if self.q_logged is None or self.q_target is None:
            raise InvalidQuery(estimator, "needs the reward model's q_logged and q_target in the logged batch")
        return self.q_logged, self.q_target


@dataclass(frozen=True)
class Estimate:
    """One estimator's estimate of the target policy's value, with a ``1 - alpha`` bootstrap interval."""

    estimator: str
    value: float
    low: float
    high: float
    n_rows: int
    n_bootstrap: int
    alpha: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "value": self.value, "interval": [self.low, self.high],
                "level": 1.0 - self.alpha, "n_rows": self.n_rows, "n_bootstrap": self.n_bootstrap}


def bootstrap(n_rows: int, stat: Callable[[np.ndarray], T], *, n_resamples: int, seed: int = 0) -> list[T]:
    """``stat(rows)`` on ``n_resamples`` resamples of ``range(n_rows)`` drawn with replacement (each ``n_rows``
    long); resample ``b`` uses ``numpy.random.default_rng([seed, b])``, so results do not depend on order."""
    if n_resamples < 1:
        raise InvalidQuery("n_resamples", f"must be at least 1, got {n_resamples}")
    return [stat(np.random.default_rng([seed, b]).integers(0, n_rows, n_rows)) for b in range(n_resamples)]


def percentile_interval(values: Sequence[float] | np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The ``alpha / 2`` and ``1 - alpha / 2`` quantiles of bootstrap values (the percentile interval)."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2))


def _check_clip(clip: float | None) -> None:
    if clip is not None and not clip > 0:
        raise InvalidQuery("clip", f"the weight cap must be > 0 (or None for no clipping), got {clip}")


@dataclass(frozen=True)
class Estimator:
    """Base of the estimators: each overrides :meth:`round_rewards`, whose mean is the estimate."""

    @property
    def name(self) -> str:
        return type(self).__name__

    def round_rewards(self, batch: LoggedBandit) -> np.ndarray:
        """Per-row contributions ``(n,)``; their mean is the estimate."""
        raise NotImplementedError

    def value(self, batch: LoggedBandit) -> float:
        """The estimated value (expected reward per logged row) of the target policy."""
        return float(np.mean(self.round_rewards(batch)))

    def estimate(self, batch: LoggedBandit, *, n_bootstrap: int = 200, alpha: float = 0.05,
                 seed: int = 0) -> Estimate:
        """:meth:`value` with a percentile bootstrap interval over resampled rows (``q`` kept as given)."""
        values = bootstrap(len(batch), lambda rows: self.value(batch.take(rows)), n_resamples=n_bootstrap,
                           seed=seed)
        low, high = percentile_interval(values, alpha)
        return Estimate(self.name, self.value(batch), low, high, len(batch), n_bootstrap, alpha)

    def by_position(self, batch: LoggedBandit) -> dict[int, float]:
        """The estimate on each slot's rows alone (slot -> value; 0-based slots, as in ``batch.position``)."""
        if batch.position is None:
            raise InvalidQuery("position", "by_position needs the slot of each logged row")
        return {int(k): self.value(batch.take(np.flatnonzero(batch.position == k)))
                for k in np.unique(batch.position)}


@dataclass(frozen=True)
class IPS(Estimator):
    """Inverse propensity scoring: ``mean(w r)``, ``w = min(pi / p, clip)``."""

    clip: float | None = None

    def __post_init__(self) -> None:
        _check_clip(self.clip)

    def round_rewards(self, batch: LoggedBandit) -> np.ndarray:
        return np.asarray(batch.weights(self.clip) * batch.reward, np.float64)


@dataclass(frozen=True)
class SNIPS(IPS):
    """Self-normalized IPS: ``sum(w r) / sum(w)``."""

    def round_rewards(self, batch: LoggedBandit) -> np.ndarray:
        w = batch.weights(self.clip)
        return w * batch.reward / np.mean(w) if np.any(w > 0) else np.zeros_like(w)


@dataclass(frozen=True)
class DM(Estimator):
    """Direct method: ``mean(qpi)``, the reward model's expectation under the target policy."""

    def round_rewards(self, batch: LoggedBandit) -> np.ndarray:
        return batch.model_terms(self.name)[1]


@dataclass(frozen=True)
class _Corrected(Estimator):
    """DM plus a weighted correction by the model's residual: ``mean(qpi + c(w) (r - q))``."""

    def correction_weights(self, batch: LoggedBandit) -> np.ndarray:
        raise NotImplementedError

    def round_rewards(self, batch: LoggedBandit) -> np.ndarray:
        q, qpi = batch.model_terms(self.name)
        return np.asarray(qpi + self.correction_weights(batch) * (batch.reward - q), np.float64)


@dataclass(frozen=True)
class DR(_Corrected):
    """Doubly robust: ``mean(qpi + w (r - q))``, ``w = min(pi / p, clip)``."""

    clip: float | None = None

    def __post_init__(self) -> None:
        _check_clip(self.clip)

    def correction_weights(self, batch: LoggedBandit) -> np.ndarray:
        return batch.weights(self.clip)


@dataclass(frozen=True)
class SNDR(DR):
    """Self-normalized DR: ``mean(qpi) + sum(w (r - q)) / sum(w)``."""

    def round_rewards(self, batch: LoggedBandit) -> np.ndarray:
        q, qpi = batch.model_terms(self.name)
        w = batch.weights(self.clip)
        return qpi + (w * (batch.reward - q) / np.mean(w) if np.any(w > 0) else 0.0)


@dataclass(frozen=True)
class SwitchDR(_Corrected):
    """Switch-DR: DR's correction only on rows whose weight is at most ``tau``, DM elsewhere."""

    tau: float = 1.0

    def __post_init__(self) -> None:
        if not self.tau >= 0:
            raise InvalidQuery("tau", f"the switch threshold must be >= 0, got {self.tau}")

    def correction_weights(self, batch: LoggedBandit) -> np.ndarray:
        w = batch.weights()
        return np.where(w <= self.tau, w, 0.0)


@dataclass(frozen=True)
class DRos(_Corrected):
    """DR with optimistic shrinkage: the weight becomes ``lam w / (w^2 + lam)`` (0: DM; infinity: DR)."""

    lam: float = 1.0

    def __post_init__(self) -> None:
        if not self.lam > 0:
            raise InvalidQuery("lam", f"the shrinkage must be > 0, got {self.lam}")

    def correction_weights(self, batch: LoggedBandit) -> np.ndarray:
        w = batch.weights()
        return np.asarray(self.lam * w / (w * w + self.lam), np.float64)


# The same estimators as plain functions over arrays (each row: reward, pscore, target probability, and
# for the model-based ones the model's q of the logged item and its expectation qpi under the target).

def ips(reward: np.ndarray, pscore: np.ndarray, target_prob: np.ndarray, *, clip: float | None = None) -> float:
    return IPS(clip).value(LoggedBandit(reward, pscore, target_prob))


def snips(reward: np.ndarray, pscore: np.ndarray, target_prob: np.ndarray, *, clip: float | None = None) -> float:
    return SNIPS(clip).value(LoggedBandit(reward, pscore, target_prob))


def dm(q_target: np.ndarray) -> float:
    q = _vector("q_target", q_target, None)
    return float(np.mean(q))


def dr(reward: np.ndarray, pscore: np.ndarray, target_prob: np.ndarray, q_logged: np.ndarray,
       q_target: np.ndarray, *, clip: float | None = None) -> float:
    return DR(clip).value(LoggedBandit(reward, pscore, target_prob, q_logged=q_logged, q_target=q_target))


def sndr(reward: np.ndarray, pscore: np.ndarray, target_prob: np.ndarray, q_logged: np.ndarray,
         q_target: np.ndarray, *, clip: float | None = None) -> float:
    return SNDR(clip).value(LoggedBandit(reward, pscore, target_prob, q_logged=q_logged, q_target=q_target))


# ---------------------------------------------------------------------------------------------- reward model

@dataclass(frozen=True)
class RewardFeatures:
    """Features of a reward model ``q(x, a, k)``, factorized so that every (row, item, slot) is cheap.

    ``row`` ``(n, d_row)``: the context of each logged row (e.g. the shopper's one-hot features);
    ``item`` ``(n_items, d_item)``: each item's features; ``n_positions``: slots (one-hot, one weight each);
    ``row_item`` ``(n, n_items)`` or ``(n, n_items, d_ri)``: features of a row with an item (an affinity).
    Keep the columns on comparable scales: one L2 penalty applies to all weights.
    """

    row: np.ndarray
    item: np.ndarray
    n_positions: int = 1
    row_item: np.ndarray | None = None

    def __post_init__(self) -> None:
        row = np.asarray(self.row, np.float64)
        item = np.asarray(self.item, np.float64)
        if row.ndim != 2 or item.ndim != 2:
            raise InvalidQuery("features", f"row and item features must be 2-D, got {row.shape} and {item.shape}")
        if self.n_positions < 1:
            raise InvalidQuery("n_positions", f"must be >= 1, got {self.n_positions}")
        object.__setattr__(self, "row", row)
        object.__setattr__(self, "item", item)
        if self.row_item is not None:
            ri = np.asarray(self.row_item, np.float64)
            ri = ri[:, :, None] if ri.ndim == 2 else ri
            if ri.ndim != 3 or ri.shape[:2] != (row.shape[0], item.shape[0]):
                raise InvalidQuery("row_item", f"must be (rows, items[, d]) = ({row.shape[0]}, {item.shape[0]}), "
                                               f"got {ri.shape}")
            object.__setattr__(self, "row_item", ri)

    @property
    def n_items(self) -> int:
        return int(self.item.shape[0])

    @property
    def dims(self) -> tuple[int, int, int, int]:
        """Column counts of the blocks: row, item, slot, row-item."""
        d_ri = 0 if self.row_item is None else int(self.row_item.shape[2])
        return int(self.row.shape[1]), int(self.item.shape[1]), self.n_positions, d_ri

    def take(self, rows: np.ndarray) -> RewardFeatures:
        return RewardFeatures(self.row[rows], self.item, self.n_positions,
                              None if self.row_item is None else self.row_item[rows])

    def design(self, action: np.ndarray, position: np.ndarray) -> np.ndarray:
        """The design matrix ``(n, d)`` of each row with its own logged item and slot."""
        n = self.row.shape[0]
        blocks = [self.row, self.item[action], np.eye(self.n_positions)[position]]
        if self.row_item is not None:
            blocks.append(self.row_item[np.arange(n), action])
        return np.hstack(blocks)


@dataclass(frozen=True)
class FittedRewardModel:
    """A fitted logistic reward model: ``q = sigmoid(intercept + design @ coef)``."""

    coef: np.ndarray
    intercept: float
    dims: tuple[int, int, int, int]

    def logits_all(self, features: RewardFeatures) -> np.ndarray:
        """Logits for every row, item and slot, ``(n, n_items, n_positions)``."""
        if features.dims != self.dims:
            raise InvalidQuery("features", f"fitted on blocks {self.dims}, given {features.dims}")
        d_row, d_item, d_pos, _ = self.dims
        w_row, w_item = self.coef[:d_row], self.coef[d_row:d_row + d_item]
        w_pos, w_ri = self.coef[d_row + d_item:d_row + d_item + d_pos], self.coef[d_row + d_item + d_pos:]
        z = (self.intercept + features.row @ w_row)[:, None] + (features.item @ w_item)[None, :]
        if features.row_item is not None:
            z = z + features.row_item @ w_ri
        return np.asarray(z[:, :, None] + w_pos[None, None, :], np.float64)

    def predict_all(self, features: RewardFeatures) -> np.ndarray:
        """Predicted reward for every row, item and slot, ``(n, n_items, n_positions)``."""
        return np.asarray(expit(self.logits_all(features)), np.float64)


@dataclass(frozen=True)
class LogisticRewardModel:
    """L2-regularized logistic regression: minimizes ``sum(log loss) + l2 / 2 * |coef|^2`` (the intercept is
    not penalized; ``l2 = 1`` is scikit-learn's default ``C = 1``) with L-BFGS."""

    l2: float = 1.0
    max_iter: int = 500

    def fit(self, features: RewardFeatures, action: np.ndarray, position: np.ndarray,
            reward: np.ndarray) -> FittedRewardModel:
        X = features.design(action, position)
        y = np.asarray(reward, np.float64)
        d = X.shape[1]

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            z = theta[0] + X @ theta[1:]
            residual = expit(z) - y
            value = float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * self.l2 * theta[1:] @ theta[1:])
            grad = np.concatenate([[residual.sum()], X.T @ residual + self.l2 * theta[1:]])
            return value, grad

        mean = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
        theta0 = np.concatenate([[np.log(mean / (1 - mean))], np.zeros(d)])
        res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": self.max_iter})
        theta = np.asarray(res.x, np.float64)
        return FittedRewardModel(theta[1:], float(theta[0]), features.dims)


def cross_fit_rewards(features: RewardFeatures, action: np.ndarray, position: np.ndarray, reward: np.ndarray,
                      *, model: LogisticRewardModel | None = None, n_folds: int = 3, seed: int = 0,
                      groups: np.ndarray | None = None) -> np.ndarray:
    """``q`` for every row, item and slot, ``(n, n_items, n_positions)``, each row predicted by a model fitted
    on the other ``n_folds - 1`` folds. Rows sharing a ``groups`` value (e.g. copies of one original row in
    a bootstrap resample) land in the same fold, so no row is predicted by a model that saw its copy."""
    if n_folds < 2:
        raise InvalidQuery("n_folds", f"cross-fitting needs at least 2 folds, got {n_folds}")
    model = model or LogisticRewardModel()
    action = np.asarray(action, np.int64)
    position = np.asarray(position, np.int64)
    reward = np.asarray(reward, np.float64)
    n = action.shape[0]
    keys = np.arange(n) if groups is None else np.asarray(groups)
    uniq, inverse = np.unique(keys, return_inverse=True)
    fold_of_key = np.random.default_rng(seed).permutation(uniq.shape[0]) % n_folds
    fold = fold_of_key[inverse]
    q = np.empty((n, features.n_items, features.n_positions), np.float64)
    for f in range(n_folds):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if test.size == 0:
            continue
        fitted = model.fit(features.take(train), action[train], position[train], reward[train])
        q[test] = fitted.predict_all(features.take(test))
    return q


def model_terms(q_all: np.ndarray, target_dist: np.ndarray, action: np.ndarray,
                position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(q_logged, q_target)`` for :class:`LoggedBandit` from ``q_all`` ``(n, n_items, n_positions)`` and the
    target's distribution ``target_dist``: ``(n_items, n_positions)`` (the same in every row) or
    ``(n, n_items, n_positions)``, each slot's column a distribution over items."""
    rows = np.arange(q_all.shape[0])
    q_logged = q_all[rows, action, position]
    pi = target_dist[None] if target_dist.ndim == 2 else target_dist
    pi_rows = np.broadcast_to(pi, q_all.shape)[rows, :, position]  # (n, n_items): the row's slot
    q_target = np.sum(pi_rows * q_all[rows, :, position], axis=1)
    return q_logged, q_target


def select_l2(features: RewardFeatures, action: np.ndarray, position: np.ndarray, reward: np.ndarray, *,
              grid: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0), n_folds: int = 3,
              seed: int = 0) -> tuple[float, dict[float, float]]:
    """The L2 strength of :class:`LogisticRewardModel` with the least ``n_folds``-fold cross-validated log
    loss (summed over rows) on the logged rows, and the loss of each value of ``grid``. Uses the logged
    rewards only, never anything of the target policy."""
    if not grid:
        raise InvalidQuery("grid", "give at least one L2 strength")
    action = np.asarray(action, np.int64)
    position = np.asarray(position, np.int64)
    reward = np.asarray(reward, np.float64)
    n = action.shape[0]
    fold = np.random.default_rng(seed).permutation(n) % n_folds
    losses: dict[float, float] = {}
    for l2 in grid:
        total = 0.0
        for f in range(n_folds):
            train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            fitted = LogisticRewardModel(l2=l2).fit(features.take(train), action[train], position[train],
                                                    reward[train])
            z = fitted.logits_all(features.take(test))[np.arange(test.size), action[test], position[test]]
            total += float(np.sum(np.logaddexp(0.0, z) - reward[test] * z))
        losses[float(l2)] = total
    return min(losses, key=lambda k: losses[k]), losses
