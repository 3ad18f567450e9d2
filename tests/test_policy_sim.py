"""`vitrine simulate --policies` (issue 10, parts 4-6): the exact expected reward behind the regret, the
policies on hand-made lists, and a tiny run on real Scientific shoppers with the real engine's lists."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.embedding.base import Encoder
from engine.evaluation.policy_sim import (POLICIES, Lists, PolicySimSettings, _expected, per_decision,
                                          record_results, run_policy, run_policy_simulation, write_outputs)
from engine.evaluation.simulate import ClickModel
from engine.errors import InvalidQuery
from engine.learn.bandits import Rewards
from engine.recommend.strategies import STRATEGIES
from tests.conftest import make_config, scientific_slice


def test_expected_reward_is_the_mean_of_the_click_models_outcomes() -> None:
    c, r = ClickModel(), Rewards()
    rel = np.array([False, True, False, True, False])
    eta = c.examination(5)
    rng = np.random.default_rng(3)
    n = 60_000
    outs = []
    for _ in range(n):
        d = c.draw(rel, rng)
        outs.append(r.purchase if d.bought.any() else r.click if d.clicked.any() else 0.0)
    expected = _expected(rel, eta, c, r)
    assert abs(np.mean(outs) - expected) <= 4 * np.std(outs) / np.sqrt(n)
    # by hand: no relevant item -> click reward times P(some click)
    none = np.zeros(2, bool)
    p = eta[:2] * c.noise_click
    assert _expected(none, eta[:2], c, r) == pytest.approx(1 - (1 - p[0]) * (1 - p[1]))


def _lists(n_users: int = 4) -> Lists:
    """Items 0..39; each user's targets are 2 items that only the "content" strategy ranks first."""
    rows, targets, scores = [], [], []
    for u in range(n_users):
        t = [100 + 2 * u, 101 + 2 * u]
        per = []
        for s in STRATEGIES:
            base = np.arange(20, dtype=np.int64) + 10 * STRATEGIES.index(s)
            per.append(np.array(t + base.tolist(), np.int64) if s == "content" else base)
        rows.append(per)
        targets.append(frozenset(t))
        scores.append(-np.arange(20, dtype=np.float64))
    n_items = 200
    return Lists([f"u{u}" for u in range(n_users)], rows, scores, targets, [None] * n_users, ["new"] * n_users,
                 ["c"] * n_items, np.zeros(n_items, bool), ("c",))


def test_a_policy_always_choosing_the_best_strategy_has_no_regret_and_bandits_find_it() -> None:
    lists = _lists()
    s = PolicySimSettings(rounds=6, sessions=60, steps=1, users=10, seeds=(0,), k=5, depth=20)
    blend, _ = run_policy("blend", lists, s, 0)
    assert sum(blend.regret) > 0 and sum(blend.reward) < 0.2 * sum(blend.lists)
    thompson, _ = run_policy("thompson", lists, s, 0)
    assert thompson.arms["content"] > 0.6 * sum(thompson.lists)  # learnt that content pays here
    assert sum(thompson.reward) > 2 * sum(blend.reward) and sum(thompson.regret) < sum(blend.regret)
    assert all(x >= -1e-9 for x in thompson.regret)  # regret is measured against the best strategy


def test_per_decision_importance_sampling_by_hand() -> None:
    # two sessions of two steps; weights pi/p: session 1: 2, 0.5; session 2: 1, 4
    step = np.array([0, 1, 0, 1])
    reward = np.array([1.0, 2.0, 0.0, 1.0])
    pscore = np.array([0.5, 0.5, 0.25, 0.25])
    pi = np.array([1.0, 0.25, 0.25, 1.0])
    got = per_decision(step, reward, pscore, pi)
    rho = np.array([2.0, 1.0, 1.0, 4.0])  # cumulative products within each session
    assert got["PDIS"] == pytest.approx(np.sum(rho * reward) / 2 / 2)
    assert got["WPDIS"] == pytest.approx((2 * 1 / 3 + (1 * 2 + 4 * 1) / 5) / 2)


def test_settings_are_checked() -> None:
    with pytest.raises(InvalidQuery, match="depth"):
        PolicySimSettings(k=10, depth=5)
    with pytest.raises(InvalidQuery, match="cold_share"):
        PolicySimSettings(cold_share=0)


def test_tiny_policy_simulation_on_real_shoppers(tmp_path: Path, models_dir: Path, encoder: Encoder) -> None:
    data_dir = scientific_slice(tmp_path, 120)
    config = make_config(tmp_path / "indexes", models_dir)
    s = PolicySimSettings(rounds=2, sessions=20, steps=3, users=40, seeds=(0,))
    report = run_policy_simulation(config, s, out_dir=tmp_path / "out", data_dir=data_dir, encoder=encoder,
                                   show_progress=False)
    assert [r.policy for r in report.runs] == list(POLICIES)
    for run in report.runs:
        assert run.lists == [60, 60] and sum(run.arms.values()) == 120 and run.shown[0] > 0
        assert min(run.regret) >= 0
    blend = report.of("blend")[0]
    assert blend.arms["blend"] == 120
    # the other policies, frozen, are estimated from epsilon-greedy's log and also run one more round
    assert report.of("epsilon")[0].ope == {}
    assert set(report.of("thompson")[0].ope) == {"IPS", "SNIPS", "DR", "PDIS", "WPDIS"}
    assert all(r.frozen_reward >= 0 for r in report.runs)
    png, js = write_outputs(report, tmp_path / "out")
    assert png.stat().st_size > 1000 and json.loads(js.read_text())["summary"][0]["policy"] == "blend"
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    record_results(report, png, "vitrine simulate --policies (test)", results=results, image=None)
    text = results.read_text()
    assert "<!-- simulate-policies -->" in text and "| qlearning |" in text
