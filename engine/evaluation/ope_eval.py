"""`vitrine eval ope --dataset obd`: the off-policy estimators of :mod:`engine.learn.ope` checked against
on-policy truth on the Open Bandit Dataset (Saito et al. 2021; ZOZOTOWN, small sample of 10,000 rows per
file, ``<data_dir>/open_bandit_dataset``, see its SOURCE.md).

Two logging policies ran side by side for a week on the same traffic: Uniform Random and Bernoulli
Thompson Sampling (BTS), each on three campaigns (all, men, women). Each row is one item shown in one of 3
slots, with its click and the logging policy's probability of that item in that slot. For each campaign and
direction (BTS estimated from the Random log, and Random from the BTS log) every estimator estimates the
target's CTR from the source's log, and is compared with the CTR the target actually got in its own log
(the mean click of its whole file, as OBP's ``calc_on_policy_policy_value_estimate``): relative error
``|estimate - actual| / actual``, mean and standard deviation over bootstrap resamples of the source log
(rows drawn with replacement; the reward model is refitted on each resample), as OBP's example
``examples/obd/evaluate_off_policy_estimators.py`` does with 30 runs.

**The target policy's action distribution.** OPE needs ``pi_e(item | slot)`` for every logged row.

- Random: ``1 / n_items`` for every item in every slot.
- BTS: OBP recomputes it by Monte Carlo from BTS's production prior (``BernoulliTS(is_zozotown_prior=True)``),
  which needs obp. Instead it is estimated here from the BTS log itself, whose ``propensity_score`` is
  BTS's probability of the shown item in that slot at that time. BTS's posterior moved during the week
  (one (item, slot)'s logged propensity has a relative standard deviation of about 0.5), and the actual CTR
  is that of the week's mixture of policies, so the target is the time average ``pi(a|k) = E_t[pi_t(a|k)]``.
  Over the rows that show item ``a`` in slot ``k``, time is sampled in proportion to ``pi_t(a|k)``, so the
  plain mean of their propensities estimates ``E[pi^2] / E[pi]`` (too high for items whose propensity
  swings), while their harmonic mean, ``count / sum(1 / p)``, estimates ``E[pi]`` itself. The default
  (``harmonic``) takes the harmonic mean per (item, slot), 0 for pairs BTS never showed, and normalizes each
  slot to sum to 1 (before normalizing the slots sum to 1.03-1.13, close to the 1 a consistent estimate
  gives; the plain means sum to 1.7-3.7). The report also gives IPS on the full log with the plain mean and
  with the shown frequency ``count(a, k) / count(k)`` (unbiased for the time average, noisier), to show how
  much the choice matters. Unlike OBP's, this distribution is estimated from the target's own log: it
  uses BTS's propensities (what BTS would do), never its clicks.

**Reward model** (DM, DR, SNDR, Switch-DR, DR-os): :class:`engine.learn.ope.LogisticRewardModel` on the
shopper's 4 user features one-hot, the item's features (``item_feature_0`` as given, already standardized;
``item_feature_1..3`` one-hot), the slot one-hot and ``log1p`` of the shopper's affinity to the item,
cross-fitted in 3 folds on each resample (copies of one row of a resample stay in one fold). Its L2
strength is chosen per source log by 3-fold cross-validated log loss on that log's clicks
(:func:`engine.learn.ope.select_l2`, grid 0.1 to 1000), which sees nothing of the target policy. On these
logs the features predict clicks no better than a constant (38-69 clicks per log), so the choice is mostly
the strongest (1000; 10 on the BTS men and women logs), and DM comes out close to the source log's own
CTR. OBP's example fits scikit-learn's ``LogisticRegression(C=100)`` (weak regularization) per slot on the
user and item features, without the affinity.

**Click-noise floor.** With 38-69 clicks per log, a resample's click count varies by about
``1 / sqrt(clicks)`` (12-16%). The report gives, per campaign and direction, the mean relative error of an
estimator that would be exact on the full log and move only with the resample's click count
(``|clicks_b / clicks - 1|``), a rough floor for any estimator that follows the logged clicks.

**Settings.** No clipping (OBP's default; ``run_ope_eval(clip=...)`` caps the weights of IPS, SNIPS, DR and
SNDR). Switch-DR: ``tau = 1`` (the default of OBP 0.4, which the published figures seem to come from; its
README does not say); DR-os: ``lam = 1`` (OBP's default of 0 would make it DM). Neither was tuned on this
data.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from engine.config import EngineConfig
from engine.errors import InvalidQuery
from engine.learn.ope import (
    DM, DR, IPS, SNDR, SNIPS, DRos, Estimator, LoggedBandit, LogisticRewardModel, RewardFeatures, SwitchDR,
    bootstrap, cross_fit_rewards, model_terms, percentile_interval, select_l2,
)

CAMPAIGNS = ("all", "men", "women")
POLICY_NAMES = {"random": "Random", "bts": "Bernoulli TS"}
DIRECTIONS = (("random", "bts"), ("bts", "random"))  # (source log, target policy)
N_FOLDS = 3
L2_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)


def estimators(clip: float | None = None) -> dict[str, Estimator]:
    """The estimators compared, by their names in the report (``clip`` caps IPS, SNIPS, DR and SNDR weights)."""
    return {"DM": DM(), "IPS": IPS(clip), "SNIPS": SNIPS(clip), "DR": DR(clip), "SNDR": SNDR(clip),
            "Switch-DR": SwitchDR(tau=1.0), "DR-os": DRos(lam=1.0)}


ESTIMATORS = estimators()
# OBP's examples/obd README (st-tech/zr-obp): BTS evaluated from the Random log, campaign All, logistic
# regression, 30 bootstrap runs: mean and std of the relative error (its names: dm, ipw, snipw, dr, sndr,
# switch-dr, dr-os).
PUBLISHED: dict[str, tuple[float, float]] = {
    "DM": (0.156876, 0.109898), "IPS": (0.311082, 0.311170), "SNIPS": (0.311795, 0.334736),
    "DR": (0.292464, 0.315485), "SNDR": (0.302407, 0.328434), "Switch-DR": (0.258410, 0.160598),
    "DR-os": (0.159520, 0.109660),
}
TARGET = 0.157  # best estimator's mean relative error on All, BTS from Random (OBP's best, DM)
AIM = 0.12
PolicyMethod = Literal["harmonic", "mean", "frequency"]


@dataclass(frozen=True)
class Logs:
    """One logging policy's log of one campaign, as arrays (``position`` is 0-based)."""

    policy: str
    campaign: str
    action: np.ndarray
    position: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    features: RewardFeatures

    @property
    def n_items(self) -> int:
        return self.features.n_items

    @property
    def n_positions(self) -> int:
        return self.features.n_positions


def load_obd(data_dir: Path, policy: str, campaign: str) -> Logs:
    """Read ``open_bandit_dataset/<policy>/<campaign>/`` (the log and its item_context)."""
    folder = data_dir / "open_bandit_dataset" / policy / campaign
    path = folder / f"{campaign}.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; set data_dir (VITRINE_DATA_DIR) to the shared data folder")
    df = pd.read_csv(path)
    items = pd.read_csv(folder / "item_context.csv.gz").sort_values("item_id")
    n_items = len(items)
    if not np.array_equal(items["item_id"].to_numpy(), np.arange(n_items)):
        raise ValueError(f"{folder / 'item_context.csv.gz'}: item ids are not 0..{n_items - 1}")
    user_cols = [f"user_feature_{k}" for k in range(4)]
    row = pd.get_dummies(df[user_cols].astype(str), dtype=np.float64).to_numpy()
    item = np.hstack([
        items[["item_feature_0"]].to_numpy(np.float64),
        pd.get_dummies(items[["item_feature_1", "item_feature_2", "item_feature_3"]].astype(str),
                       dtype=np.float64).to_numpy(),
    ])
    affinity = np.log1p(df[[f"user-item_affinity_{a}" for a in range(n_items)]].to_numpy(np.float64))
    position = df["position"].to_numpy(np.int64) - 1
    n_positions = int(position.max()) + 1
    return Logs(policy, campaign, df["item_id"].to_numpy(np.int64), position, df["click"].to_numpy(np.float64),
                df["propensity_score"].to_numpy(np.float64), RewardFeatures(row, item, n_positions, affinity))


def logged_action_dist(logs: Logs, method: PolicyMethod = "harmonic") -> np.ndarray:
    """The logging policy's time-averaged ``pi(item | slot)``, ``(n_items, n_positions)``, from its own log
    (see the module docstring): ``harmonic`` mean of the logged propensities per (item, slot), their plain
    ``mean``, or the shown ``frequency``; each slot normalized to sum to 1."""
    dist = np.zeros((logs.n_items, logs.n_positions))
    for a, k in set(zip(logs.action.tolist(), logs.position.tolist())):
        shown = (logs.action == a) & (logs.position == k)
        p = logs.pscore[shown]
        if method == "harmonic":
            dist[a, k] = p.size / np.sum(1.0 / p)
        elif method == "mean":
            dist[a, k] = p.mean()
        else:
            dist[a, k] = p.size / np.count_nonzero(logs.position == k)
    return np.asarray(dist / dist.sum(axis=0, keepdims=True), np.float64)


def uniform_action_dist(n_items: int, n_positions: int) -> np.ndarray:
    return np.full((n_items, n_positions), 1.0 / n_items)


def logged_batch(logs: Logs, target_dist: np.ndarray, rows: np.ndarray, *, model: LogisticRewardModel,
                 seed: int) -> LoggedBandit:
    """The batch of ``rows`` of the source log, with cross-fitted reward model terms for ``target_dist``."""
    action, position = logs.action[rows], logs.position[rows]
    q_all = cross_fit_rewards(logs.features.take(rows), action, position, logs.reward[rows], model=model,
                              n_folds=N_FOLDS, seed=seed, groups=rows)
    q_logged, q_target = model_terms(q_all, target_dist, action, position)
    return LoggedBandit(logs.reward[rows], logs.pscore[rows], target_dist[action, position], position,
                        q_logged, q_target)


@dataclass
class CampaignResult:
    campaign: str
    source_rows: int
    source_clicks: int
    actual: float  # the target's CTR in its own log
    actual_by_position: dict[int, float]  # 1-based slot -> CTR
    estimates: dict[str, float]  # on the full source log
    by_position: dict[str, dict[int, float]]  # 1-based slot -> estimate on the full log
    rel_error: dict[str, tuple[float, float]]  # mean, std over the bootstrap resamples
    interval: dict[str, tuple[float, float]]  # 95% percentile interval of the bootstrap estimates
    max_weight: float
    l2: float  # the reward model's L2 strength, chosen by cross-validated log loss on the source log
    cv_log_loss: dict[float, float]
    click_floor: float  # mean |clicks_b / clicks - 1| over the same resamples
    policy_sensitivity: dict[str, float] = field(default_factory=dict)  # IPS with other pi_e (BTS target)

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign, "source_rows": self.source_rows, "source_clicks": self.source_clicks,
            "actual_ctr": self.actual, "actual_ctr_by_position": self.actual_by_position,
            "estimates": self.estimates, "estimates_by_position": self.by_position,
            "relative_error": {k: {"mean": m, "std": s} for k, (m, s) in self.rel_error.items()},
            "interval_95": {k: list(v) for k, v in self.interval.items()},
            "max_importance_weight": self.max_weight,
            "reward_model": {"l2": self.l2, "cv_log_loss": {str(k): v for k, v in self.cv_log_loss.items()}},
            "click_noise_floor": self.click_floor,
            **({"ips_with_other_target_distributions": self.policy_sensitivity} if self.policy_sensitivity else {}),
        }


@dataclass
class OpeEvalReport:
    dataset: str
    bootstrap: int
    seed: int
    clip: float | None
    directions: dict[tuple[str, str], list[CampaignResult]]

    def _all_bts_from_random(self) -> CampaignResult | None:
        return next((c for c in self.directions.get(("random", "bts"), []) if c.campaign == "all"), None)

    def verdict(self) -> dict[str, Any]:
        """Target (best mean relative error on All, BTS from Random, <= 0.157) and aim (<= 0.12, and every
        estimator at or below its published counterpart); empty when All was not run."""
        res = self._all_bts_from_random()
        if res is None:
            return {}
        best = min(res.rel_error, key=lambda k: res.rel_error[k][0])
        best_err = res.rel_error[best][0]
        worse = [k for k in PUBLISHED if k in res.rel_error and res.rel_error[k][0] > PUBLISHED[k][0]]
        return {"best": best, "best_mean_relative_error": best_err,
                "best_standard_error": res.rel_error[best][1] / np.sqrt(self.bootstrap),
                "target": TARGET, "target_met": best_err <= TARGET,
                "aim": AIM, "aim_met": best_err <= AIM and not worse, "above_published": worse}

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "metric": "relative error |estimate - actual| / actual",
            "bootstrap": self.bootstrap, "seed": self.seed,
            "estimators": {name: repr(est) for name, est in estimators(self.clip).items()},
            "reward_model": f"logistic regression, L2 chosen by {N_FOLDS}-fold CV log loss on the source log "
                            f"from {list(L2_GRID)}, cross-fitted in {N_FOLDS} folds",
            "bts_action_distribution": "harmonic mean of BTS's logged propensities per (item, slot), "
                                       "normalized per slot",
            "directions": [
                {"source": s, "target": t, "campaigns": [c.to_dict() for c in cs]}
                for (s, t), cs in self.directions.items()
            ],
            "published_all_bts_from_random": {k: {"mean": m, "std": s} for k, (m, s) in PUBLISHED.items()},
            "verdict": self.verdict(),
        }

    def lines(self) -> list[str]:
        names = list(estimators(self.clip))
        out = [f"off-policy evaluation on the Open Bandit Dataset (small sample), {self.bootstrap} bootstrap "
               f"resamples of the source log, seed {self.seed}, "
               + ("no clipping" if self.clip is None else f"weights clipped at {self.clip:g}"),
               "relative error |estimate - actual| / actual, mean ± std; actual = the target's CTR in its own log"]

        def slots(d: dict[int, float]) -> str:
            return "/".join(f"{d[k]:.4f}" for k in sorted(d))

        for (source, target), results in self.directions.items():
            published = (source, target) == ("random", "bts")
            out += ["", f"{POLICY_NAMES[target]} estimated from the {POLICY_NAMES[source]} log"]
            head = f"{'estimator':<11}" + "".join(f"{c.campaign:>16}" for c in results)
            out.append(head + (f"{'OBP (all)':>16}" if published else ""))
            for name in names:
                row = f"{name:<11}" + "".join(
                    f"{c.rel_error[name][0]:>8.3f} ± {c.rel_error[name][1]:<5.3f}" for c in results)
                if published:
                    m, sd = PUBLISHED[name]
                    row += f"{m:>8.3f} ± {sd:<5.3f}"
                out.append(row)
            out.append(f"{'click floor':<11}" + "".join(f"{c.click_floor:>8.3f}{'':8}" for c in results))
            out.append(f"{'actual CTR':<11}" + "".join(f"{c.actual:>10.5f}{'':6}" for c in results))
            out.append(f"{'source':<11}" + "".join(f"{f'{c.source_clicks} clicks':>14}{'':2}" for c in results))
            out.append(f"{'model L2':<11}" + "".join(f"{c.l2:>10g}{'':6}" for c in results))
            out.append("estimates on the full source log [95% bootstrap interval]:")
            for name in names:
                out.append(f"  {name:<9}" + "".join(
                    f"  {c.campaign} {c.estimates[name]:.5f} [{c.interval[name][0]:.5f}, {c.interval[name][1]:.5f}]"
                    for c in results))
            out.append("per slot (position-based), full log, slots 1/2/3:")
            for c in results:
                out.append(f"  {c.campaign}: actual {slots(c.actual_by_position)}, "
                           f"SNIPS {slots(c.by_position['SNIPS'])}, DR {slots(c.by_position['DR'])}; "
                           f"largest weight {c.max_weight:.1f}")
            for c in results:
                if c.policy_sensitivity:
                    alt = ", ".join(f"{k} {v:.5f}" for k, v in c.policy_sensitivity.items())
                    out.append(f"  {c.campaign}: IPS with BTS's distribution from its logged propensities by {alt} "
                               f"(actual {c.actual:.5f})")
        v = self.verdict()
        if v:
            above = f"; above the published figure: {', '.join(v['above_published'])}" if v["above_published"] else ""
            out += ["",
                    f"target (best on All, BTS from Random, mean relative error <= {TARGET}): "
                    f"{'met' if v['target_met'] else 'NOT met'} ({v['best']} {v['best_mean_relative_error']:.3f}, "
                    f"standard error {v['best_standard_error']:.3f})",
                    f"aim (<= {AIM}, and every estimator at or below its published figure): "
                    f"{'met' if v['aim_met'] else 'NOT met'}{above}"]
        return [line.rstrip() for line in out]


def evaluate_campaign(source: Logs, target: Logs, *, n_bootstrap: int, seed: int,
                      clip: float | None = None) -> CampaignResult:
    """Every estimator of the target's CTR from the source log, against the target's own CTR."""
    if target.policy == "bts":
        target_dist = logged_action_dist(target, "harmonic")
    else:
        target_dist = uniform_action_dist(source.n_items, source.n_positions)
    ests = estimators(clip)
    actual = float(target.reward.mean())
    n = source.action.shape[0]
    l2, cv_loss = select_l2(source.features, source.action, source.position, source.reward, grid=L2_GRID,
                            n_folds=N_FOLDS, seed=seed)
    model = LogisticRewardModel(l2=l2)
    full = logged_batch(source, target_dist, np.arange(n), model=model, seed=seed)

    def run(rows: np.ndarray) -> dict[str, float]:
        batch = logged_batch(source, target_dist, rows, model=model, seed=seed)
        return {name: est.value(batch) for name, est in ests.items()}

    resampled = bootstrap(n, run, n_resamples=n_bootstrap, seed=seed)
    clicks = np.array(bootstrap(n, lambda rows: float(source.reward[rows].sum()), n_resamples=n_bootstrap, seed=seed))
    rel_error: dict[str, tuple[float, float]] = {}
    interval: dict[str, tuple[float, float]] = {}
    for name in ests:
        values = np.array([r[name] for r in resampled])
        errors = np.abs(values - actual) / actual
        rel_error[name] = (float(errors.mean()), float(errors.std(ddof=1)))
        interval[name] = percentile_interval(values)
    sensitivity: dict[str, float] = {}
    if target.policy == "bts":
        for method in ("harmonic", "mean", "frequency"):
            dist = logged_action_dist(target, method)
            sensitivity[method] = IPS().value(
                LoggedBandit(source.reward, source.pscore, dist[source.action, source.position]))
    slot_ctr = {int(k) + 1: float(target.reward[target.position == k].mean()) for k in np.unique(target.position)}
    return CampaignResult(
        campaign=source.campaign, source_rows=n, source_clicks=int(source.reward.sum()), actual=actual,
        actual_by_position=slot_ctr,
        estimates={name: est.value(full) for name, est in ests.items()},
        by_position={name: {k + 1: v for k, v in est.by_position(full).items()} for name, est in ests.items()},
        rel_error=rel_error, interval=interval, max_weight=float(full.weights().max()),
        l2=l2, cv_log_loss=cv_loss, click_floor=float(np.mean(np.abs(clicks / source.reward.sum() - 1.0))),
        policy_sensitivity=sensitivity,
    )


def run_ope_eval(config: EngineConfig, dataset: str = "obd", data_dir: Path | None = None, *, bootstrap: int = 30,
                 seed: int = 0, campaigns: Sequence[str] = CAMPAIGNS, clip: float | None = None) -> OpeEvalReport:
    """Both directions (BTS from Random, Random from BTS) on each campaign; see the module docstring."""
    if dataset != "obd":
        raise InvalidQuery("--dataset", f"only 'obd' (the Open Bandit Dataset), got {dataset!r}")
    if bootstrap < 2:
        raise InvalidQuery("--bootstrap", f"needs at least 2 resamples for a standard deviation, got {bootstrap}")
    unknown = [c for c in campaigns if c not in CAMPAIGNS]
    if unknown or not campaigns:
        raise InvalidQuery("campaigns", f"one or more of {', '.join(CAMPAIGNS)}, got {list(campaigns)}")
    root = Path(data_dir or config.data_dir)
    logs = {(p, c): load_obd(root, p, c) for p in POLICY_NAMES for c in campaigns}
    directions = {
        (s, t): [evaluate_campaign(logs[s, c], logs[t, c], n_bootstrap=bootstrap, seed=seed, clip=clip)
                 for c in campaigns]
        for s, t in DIRECTIONS
    }
    return OpeEvalReport(dataset, bootstrap, seed, clip, directions)
