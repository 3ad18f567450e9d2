"""Off-policy estimators (engine/learn/ope.py) and the Open Bandit validation (issue 10, part 1)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from engine.cli import _parser
from engine.config import EngineConfig
from engine.errors import InvalidQuery
from engine.evaluation.ope_eval import ESTIMATORS, PUBLISHED, run_ope_eval
from engine.learn import ope
from engine.learn.ope import (
    DM, DR, IPS, SNDR, SNIPS, DRos, LoggedBandit, LogisticRewardModel, RewardFeatures, SwitchDR,
)
from tests.conftest import ROOT

DATA_DIR = ROOT.parent / "shared" / "data"


@pytest.fixture
def tiny() -> LoggedBandit:
    # weights w = pi / p = [0.25/0.5, 0.5/0.25, 0.4/0.2, 0.5/0.5] = [0.5, 2, 2, 1]; sum(w) = 5.5
    # residuals r - q = [0.4, -0.2, 0.6, -0.2]; w (r - q) = [0.2, -0.4, 1.2, -0.2], sum 0.8
    return LoggedBandit(
        reward=np.array([1.0, 0.0, 1.0, 0.0]),
        pscore=np.array([0.5, 0.25, 0.2, 0.5]),
        target_prob=np.array([0.25, 0.5, 0.4, 0.5]),
        position=np.array([0, 1, 0, 1]),
        q_logged=np.array([0.6, 0.2, 0.4, 0.2]),
        q_target=np.array([0.5, 0.3, 0.4, 0.2]),
    )


@pytest.mark.parametrize("estimator, expected", [
    (IPS(), (0.5 + 2.0) / 4),                       # mean(w r) = (0.5 * 1 + 2 * 1) / 4 = 0.625
    (SNIPS(), 2.5 / 5.5),                           # sum(w r) / sum(w)
    (IPS(clip=1.5), (0.5 + 1.5) / 4),               # w = [0.5, 1.5, 1.5, 1]
    (SNIPS(clip=1.5), 2.0 / 4.5),
    (DM(), (0.5 + 0.3 + 0.4 + 0.2) / 4),            # mean(qpi) = 0.35
    (DR(), 0.35 + 0.8 / 4),                         # 0.55
    (SNDR(), 0.35 + 0.8 / 5.5),
    (DR(clip=1.5), 0.35 + (0.2 - 0.3 + 0.9 - 0.2) / 4),   # 0.5
    (SNDR(clip=1.5), 0.35 + 0.6 / 4.5),
    (SwitchDR(tau=1.0), 0.35 + (0.2 - 0.2) / 4),    # rows 0 and 3 have w <= 1
    (SwitchDR(tau=10.0), 0.55),                     # every row: DR
    (DRos(lam=1.0), 0.35 + (0.4 * 0.4 - 0.4 * 0.2 + 0.4 * 0.6 - 0.5 * 0.2) / 4),  # w/(w^2+1) = [.4,.4,.4,.5]
])
def test_estimators_on_a_hand_computed_batch(tiny: LoggedBandit, estimator: ope.Estimator, expected: float) -> None:
    assert estimator.value(tiny) == pytest.approx(expected, abs=1e-12)


def test_plain_functions_match_the_estimators(tiny: LoggedBandit) -> None:
    arrays = (tiny.reward, tiny.pscore, tiny.target_prob)
    assert tiny.q_logged is not None and tiny.q_target is not None
    assert ope.ips(*arrays) == pytest.approx(0.625)
    assert ope.ips(*arrays, clip=1.5) == pytest.approx(0.5)
    assert ope.snips(*arrays) == pytest.approx(2.5 / 5.5)
    assert ope.dm(tiny.q_target) == pytest.approx(0.35)
    assert ope.dr(*arrays, tiny.q_logged, tiny.q_target) == pytest.approx(0.55)
    assert ope.dr(*arrays, tiny.q_logged, tiny.q_target, clip=1.5) == pytest.approx(0.5)
    assert ope.sndr(*arrays, tiny.q_logged, tiny.q_target) == pytest.approx(0.35 + 0.8 / 5.5)


def test_position_based_breakdown(tiny: LoggedBandit) -> None:
    # slot 0: rows 0 and 2, IPS (0.5 + 2) / 2; slot 1: rows 1 and 3, no clicks
    assert IPS().by_position(tiny) == pytest.approx({0: 1.25, 1: 0.0})
    # slot 0: DM (0.5 + 0.4) / 2 + (0.2 + 1.2) / 2; slot 1: (0.3 + 0.2) / 2 + (-0.4 - 0.2) / 2
    assert DR().by_position(tiny) == pytest.approx({0: 1.15, 1: -0.05})
    with pytest.raises(InvalidQuery, match="position"):
        IPS().by_position(LoggedBandit(tiny.reward, tiny.pscore, tiny.target_prob))


def test_bad_batches_say_what_is_wrong(tiny: LoggedBandit) -> None:
    with pytest.raises(InvalidQuery, match="pscore"):
        LoggedBandit(np.array([1.0, 0.0]), np.array([0.5, 0.0]), np.array([0.5, 0.5]))
    with pytest.raises(InvalidQuery, match="target_prob"):
        LoggedBandit(np.array([1.0]), np.array([0.5]), np.array([1.5]))
    with pytest.raises(InvalidQuery, match="one value per logged row"):
        LoggedBandit(np.array([1.0, 0.0]), np.array([0.5]), np.array([0.5, 0.5]))
    with pytest.raises(InvalidQuery, match="finite"):
        LoggedBandit(np.array([np.nan]), np.array([0.5]), np.array([0.5]))
    with pytest.raises(InvalidQuery, match="reward model"):
        DR().value(LoggedBandit(tiny.reward, tiny.pscore, tiny.target_prob))
    with pytest.raises(InvalidQuery, match="clip"):
        IPS(clip=0.0)


def test_estimate_has_a_bootstrap_interval_around_the_value(tiny: LoggedBandit) -> None:
    est = DR().estimate(tiny, n_bootstrap=300, seed=1)
    assert est.value == pytest.approx(0.55)
    assert est.low <= est.value <= est.high
    assert est.to_dict()["interval"] == [est.low, est.high]
    assert DR().estimate(tiny, n_bootstrap=300, seed=1) == est  # seeded


def _synthetic_bandit(rng: np.random.Generator, n: int) -> tuple[LoggedBandit, float]:
    """3 contexts, 4 actions, Bernoulli rewards with known means; returns a log and the target's true value."""
    p_x = np.array([0.5, 0.3, 0.2])
    mu = np.array([[0.10, 0.30, 0.50, 0.05], [0.60, 0.20, 0.10, 0.40], [0.25, 0.25, 0.70, 0.15]])
    behavior = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    target = np.array([[0.1, 0.1, 0.7, 0.1], [0.7, 0.1, 0.1, 0.1], [0.0, 0.1, 0.8, 0.1]])
    truth = float(np.sum(p_x[:, None] * target * mu))
    x = rng.choice(3, size=n, p=p_x)
    u = rng.random(n)
    a = np.minimum((u[:, None] > np.cumsum(behavior[x], axis=1)).sum(axis=1), 3)
    r = (rng.random(n) < mu[x, a]).astype(np.float64)
    wrong_q = np.full((n, 4), 0.3)  # a deliberately wrong reward model
    return LoggedBandit(r, behavior[x, a], target[x, a], q_logged=wrong_q[:, 0],
                        q_target=np.sum(target[x] * wrong_q, axis=1)), truth


def test_ips_and_dr_are_unbiased_on_a_synthetic_bandit() -> None:
    rng = np.random.default_rng(0)
    runs = [_synthetic_bandit(rng, 1000) for _ in range(200)]
    truth = runs[0][1]
    for estimator in (IPS(), DR()):
        values = np.array([estimator.value(batch) for batch, _ in runs])
        se = values.std(ddof=1) / math.sqrt(len(values))
        assert abs(values.mean() - truth) <= 2 * se, (estimator, values.mean(), truth, se)
    # The wrong model alone is biased (DM = 0.3), which DR corrects.
    assert abs(DM().value(runs[0][0]) - truth) > 0.1


def test_reward_model_predicts_every_item_and_slot_consistently() -> None:
    rng = np.random.default_rng(3)
    n, n_items = 3000, 5
    row = np.eye(2)[rng.integers(0, 2, n)]
    item = np.eye(n_items)
    affinity = rng.random((n, n_items))
    action, position = rng.integers(0, n_items, n), rng.integers(0, 3, n)
    logit = -2.0 + 1.5 * (action == 4) + 2.0 * affinity[np.arange(n), action] - 0.5 * position
    reward = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    features = RewardFeatures(row, item, 3, affinity)
    fitted = LogisticRewardModel(l2=1.0).fit(features, action, position, reward)
    z = fitted.intercept + features.design(action, position) @ fitted.coef
    q_all = fitted.predict_all(features)
    assert q_all.shape == (n, n_items, 3)
    assert np.allclose(q_all[np.arange(n), action, position], 1 / (1 + np.exp(-z)))
    assert q_all[:, 4, 0].mean() > q_all[:, 0, 0].mean()  # item 4 is better
    assert q_all[:, :, 0].mean() > q_all[:, :, 2].mean()  # slot 1 beats slot 3
    pi = np.full((n_items, 3), 1 / n_items)
    q_logged, q_target = ope.model_terms(q_all, pi, action, position)
    assert np.allclose(q_target, q_all[np.arange(n), :, position].mean(axis=1))
    assert np.allclose(q_logged, q_all[np.arange(n), action, position])


def test_cross_fitting_keeps_copies_of_a_row_in_one_fold() -> None:
    rng = np.random.default_rng(4)
    n = 400
    rows = rng.integers(0, n, n)  # a bootstrap resample: some rows appear more than once
    features = RewardFeatures(rng.random((n, 3))[rows], np.eye(4), 1)
    action, reward = rng.integers(0, 4, n)[rows], (rng.random(n) < 0.3).astype(np.float64)[rows]
    position = np.zeros(n, np.int64)
    q = ope.cross_fit_rewards(features, action, position, reward, groups=rows, seed=0)
    first: dict[int, int] = {}
    for i, r in enumerate(rows.tolist()):
        if r in first:  # same features, same fold, so the same model: the same prediction
            assert np.array_equal(q[i], q[first[r]])
        first.setdefault(r, i)
    l2, losses = ope.select_l2(features, action, position, reward, grid=(1.0, 100.0))
    assert l2 in losses and set(losses) == {1.0, 100.0}


def test_open_bandit_validation_on_one_campaign() -> None:
    config = EngineConfig(data_dir=DATA_DIR)
    report = run_ope_eval(config, "obd", bootstrap=2, campaigns=["all"], seed=0)
    data = report.to_dict()
    json.dumps(data)
    assert [(d["source"], d["target"]) for d in data["directions"]] == [("random", "bts"), ("bts", "random")]
    for direction in data["directions"]:
        (camp,) = direction["campaigns"]
        assert camp["campaign"] == "all" and camp["source_rows"] == 10_000
        assert set(camp["relative_error"]) == set(ESTIMATORS)
        for name, err in camp["relative_error"].items():
            assert math.isfinite(err["mean"]) and math.isfinite(err["std"]) and err["mean"] >= 0, name
            low, high = camp["interval_95"][name]
            assert low <= high
        assert set(camp["estimates_by_position"]["DR"]) == {1, 2, 3}
    bts = data["directions"][0]["campaigns"][0]
    assert bts["actual_ctr"] == pytest.approx(42 / 10_000)  # BTS's own CTR on All (SOURCE.md)
    assert set(data["verdict"]) >= {"best", "target_met", "aim_met"}
    lines = report.lines()
    assert any("OBP (all)" in line for line in lines)
    assert any(f"{PUBLISHED['DM'][0]:.3f}" in line for line in lines)


def test_ope_eval_is_on_the_command_line() -> None:
    args = _parser().parse_args(["eval", "ope", "--dataset", "obd", "--bootstrap", "5"])
    assert (args.what, args.dataset, args.bootstrap) == ("ope", "obd", 5)
    assert args.clip is None
    assert _parser().parse_args(["eval", "ope", "--clip", "100"]).clip == 100.0
    with pytest.raises(InvalidQuery, match="--dataset"):
        run_ope_eval(EngineConfig(data_dir=DATA_DIR), "crowdflower")
    with pytest.raises(InvalidQuery, match="--bootstrap"):
        run_ope_eval(EngineConfig(data_dir=DATA_DIR), bootstrap=1)


def test_missing_data_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="VITRINE_DATA_DIR"):
        run_ope_eval(EngineConfig(data_dir=tmp_path), bootstrap=2, campaigns=["men"])
