"""`vitrine simulate` (issue 9, "the loop, closed and measured"): the click model by its formula, and a tiny
run against real servers, real stores and the real trainer, end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.embedding.base import Encoder
from engine.errors import InvalidQuery
from engine.evaluation.simulate import (WARMUP_USER, ClickModel, SimReport, SimSettings, record_results, run_simulation,
                                       write_outputs)
from engine.events import EventType, open_event_store
from engine.learn import registry
from engine.learn.attribution import outcomes
from engine.ranking.features import RECOMMEND_FEATURES
from tests.conftest import make_config, scientific_slice


# -- the click model ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [1.0, 0.5, 2.0])
def test_click_model_examines_clicks_and_buys_by_the_documented_formula(bias: float) -> None:
    model = ClickModel(bias=bias, rel_click=0.9, noise_click=0.02, buy=0.5)
    k, n = 10, 40_000
    relevant = np.arange(k) % 3 == 0  # positions 1, 4, 7, 10 hold true next items
    eta = (1.0 / np.arange(1, k + 1)) ** bias
    np.testing.assert_allclose(model.examination(k), eta)
    p_click = eta * np.where(relevant, 0.9, 0.02)
    np.testing.assert_allclose(model.click_probability(relevant), p_click)
    rng = np.random.default_rng(7)
    draws = [model.draw(relevant, rng) for _ in range(n)]
    for name, p in (("examined", eta), ("clicked", p_click), ("bought", p_click * relevant * 0.5)):
        freq = np.mean([getattr(d, name) for d in draws], axis=0)
        tol = 4.5 * np.sqrt(p * (1 - p) / n) + 1e-9  # 4.5 standard errors per position
        assert np.all(np.abs(freq - p) <= tol), (name, freq, p)
    # A click needs an examination, a purchase a click on a true item.
    assert all(not (d.clicked & ~d.examined).any() and not (d.bought & ~(d.clicked & relevant)).any() for d in draws)


def test_click_model_and_settings_refuse_bad_values() -> None:
    with pytest.raises(InvalidQuery, match="rel_click"):
        ClickModel(rel_click=1.5)
    with pytest.raises(InvalidQuery, match="holdout"):
        SimSettings(holdout=0)
    with pytest.raises(InvalidQuery, match="seeds"):
        SimSettings(seeds=())
    with pytest.raises(InvalidQuery, match="bootstrap"):
        SimSettings(bootstrap="scientific")


@pytest.mark.parametrize("args", [["--seeds", "a,b"], ["--holdout", "0"], ["--rounds", "0"]])
def test_cli_bad_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *args]) == 2
    assert "vitrine: error" in capsys.readouterr().err


def test_cli_refuses_an_unknown_bootstrap(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["simulate", "--bootstrap", "all"])
    assert e.value.code == 2 and "--bootstrap: invalid choice" in capsys.readouterr().err


# -- a tiny run, end to end ----------------------------------------------------------------------------

def test_tiny_simulation_logs_through_the_api_retrains_and_serves_the_new_model(
    tmp_path: Path, models_dir: Path, encoder: Encoder
) -> None:
    data_dir = scientific_slice(tmp_path, 80)
    config = make_config(tmp_path / "indexes", models_dir)
    # Generous clicks, so that round 1 gives the trainer its 20 lists with an outcome.
    # force_publish: 42 lists may not beat the served order; this test is about the loop's mechanics.
    settings = SimSettings(rounds=2, shoppers=30, seeds=(0,), lists_per_round=2, concurrency=1, force_publish=True,
                           clicks=ClickModel(bias=0.5, rel_click=1.0, noise_click=0.3, buy=0.5))
    out = tmp_path / "sim"
    report = run_simulation(config, settings, out_dir=out, data_dir=data_dir, keep_stores=True, encoder=encoder,
                            show_progress=False)
    runs = {r.arm: r for r in report.runs}
    assert set(runs) == {"blend", "learned"} and all(len(r.rounds) == 2 for r in runs.values())
    for run in runs.values():
        for rnd in run.rounds:
            assert rnd.lists == 60 and rnd.shown == 600 and rnd.clicks > 0
            # The click model's expectation on the lists served: between all-noise and all-relevant lists.
            eta = ClickModel(bias=0.5).examination(10).sum()
            assert 60 * 0.3 * eta <= rnd.expected_clicks <= 60 * 1.0 * eta
            # Every click sent through POST /v1/events was joined to its list by request_id.
            assert rnd.attributed_clicks == rnd.clicks
            assert sum(rnd.policies.values()) == 60
    # Round 1 is the blend in both arms, with the same lists and the same draws (common random numbers).
    b1, l1 = runs["blend"].rounds[0], runs["learned"].rounds[0]
    assert b1.policies == l1.policies == {"blend": 60}
    assert (b1.clicks, b1.relevant_clicks, b1.purchases) == (l1.clicks, l1.relevant_clicks, l1.purchases)
    assert runs["blend"].rounds[1].policies == {"blend": 60} and runs["blend"].rounds[0].trained is None
    # The learned arm published a model after round 1, and its server served it in round 2.
    trained = l1.trained
    assert trained is not None and "version" in trained, trained
    version = trained["version"]
    assert runs["learned"].rounds[1].policies == {f"ranker:{version}": 60}
    assert runs["learned"].rounds[1].trained is None  # nothing is trained after the last round
    assert registry.current_version(out / "runs" / "0-learned" / "rankers", "recommend") == version
    assert registry.current_version(out / "runs" / "0-blend" / "rankers", "recommend") is None
    # The learned arm's store: the impressions, and clicks logged with their request_id and position.
    store = open_event_store(f"sqlite:///{out / 'runs' / '0-learned' / 'events.db'}")
    try:
        assert store.count_impressions() >= 120
        # Each round served a new cohort of 30 shoppers (the default), the same cohorts in both arms.
        lists = [i for i in store.impressions("recommend", 0.0) if i.user_id != WARMUP_USER]
        cohorts = [{i.user_id for i in lists[:60]}, {i.user_id for i in lists[60:]}]
        assert len(lists) == 120 and [len(c) for c in cohorts] == [30, 30] and not cohorts[0] & cohorts[1]
        got = outcomes(store, since=0.0, window_s=1800.0)
        clicks = sum(EventType.CLICK in types for items in got.values() for types in items.values())
        assert clicks == sum(r.clicks for r in runs["learned"].rounds)
        events = [e for e in store.events_after(0, limit=100_000) if e.type == EventType.CLICK]
        assert events and all(e.request_id and e.position and 1 <= e.position <= 10 for e in events)
        imp = store.get_impression(events[0].request_id or "")
        assert imp is not None and imp.items[(events[0].position or 0) - 1] == events[0].item_id
    finally:
        store.close()

    png, js = write_outputs(report, out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    data = json.loads(js.read_text())
    assert [r["round"] for r in data["summary"]["learned"]] == [1, 2]
    assert data["summary"]["blend"][0]["mean"] == pytest.approx(b1.ctr)
    assert set(data["target"]) >= {"met", "final_lift", "learned_rises", "expected_lift_by_round"}
    assert len(data["target"]["expected_lift_by_round"]) == 2 and data["target"]["expected_lift_by_round"][0] == 0.0
    assert any(line.startswith("target") for line in report.lines())
    _check_record(report, png, tmp_path)


def _check_record(report: SimReport, png: Path, tmp_path: Path) -> None:
    """The RESULTS.md section is written between its markers, and replaced (not repeated) the next time."""
    results, image = tmp_path / "RESULTS.md", tmp_path / "simulate.png"
    results.write_text("# Benchmark results\n\n<!-- other -->\nkept\n<!-- /other -->\n", encoding="utf-8")
    record_results(report, png, "vitrine simulate --record", results=results, image=image)
    record_results(report, png, "vitrine simulate --record", results=results, image=image)
    text = results.read_text(encoding="utf-8")
    assert text.count("<!-- simulate -->") == 1 and text.count("<!-- /simulate -->") == 1
    assert "kept" in text and "| round | blend CTR" in text and "](simulate.png)" in text
    assert image.read_bytes() == png.read_bytes()


def test_tiny_simulation_with_the_history_bootstrap_serves_its_sequence_model(
    tmp_path: Path, models_dir: Path, encoder: Encoder
) -> None:
    data_dir = scientific_slice(tmp_path, 80)
    config = make_config(tmp_path / "indexes", models_dir)
    settings = SimSettings(rounds=2, shoppers=20, seeds=(0,), concurrency=1, force_publish=True, bootstrap="history",
                           clicks=ClickModel(bias=0.5, rel_click=1.0, noise_click=0.3, buy=0.5))
    out = tmp_path / "sim"
    report = run_simulation(config, settings, out_dir=out, data_dir=data_dir, keep_stores=True, encoder=encoder,
                            show_progress=False)
    learned = next(r for r in report.runs if r.arm == "learned")
    trained = learned.rounds[0].trained
    assert trained is not None and trained["data"] == "logs+history" and "version" in trained, trained
    # More lists than the round logged: the histories' next-item lists joined them.
    assert trained["train_lists"] + trained["val_lists"] > trained["lists_used"]
    model, _ = registry.load_version(out / "runs" / "0-learned" / "rankers", "recommend", trained["version"],
                                     RECOMMEND_FEATURES)
    assert model.seq is not None and model.lo is not None
    assert learned.rounds[1].policies == {f"ranker:{trained['version']}": 20}
    assert "bootstrap lists of the stored histories" in "\n".join(report.lines())
