"""`vitrine simulate ads` (issue 11, part 5): a tiny day on real demo shoppers, with the real ad server and
charging, on a Scientific slice of the catalog."""
from __future__ import annotations

import json
from pathlib import Path

from engine.embedding.base import Encoder
from engine.evaluation.ads_sim import FLOORS, _click_draw, AdSimSettings, record_results, run_ads_simulation, write_outputs
from tests.conftest import make_config, scientific_slice


def test_tiny_ads_day(tmp_path: Path, models_dir: Path, encoder: Encoder) -> None:
    data_dir = scientific_slice(tmp_path, 400)
    config = make_config(tmp_path / "indexes", models_dir)
    report = run_ads_simulation(config, AdSimSettings(requests=400, campaigns=6, seed=0), out_dir=tmp_path / "out",
                                data_dir=data_dir, encoder=encoder)
    assert report.campaigns and len(report.runs) == 1 + len(FLOORS)
    t = report.target()
    assert t["overspend"] == 0  # the charging rule: a click that does not fit is never charged
    for row in report.pacing():
        assert row["spend"] <= row["budget"]
    floors = [r for r in report.runs if not r.unlimited]
    assert [r.floor for r in floors] == sorted(r.floor for r in floors)
    assert all(min(r.ad_relevance, default=1.0) >= r.floor for r in floors)  # the floor holds
    png, js = write_outputs(report, tmp_path / "out")
    assert png.stat().st_size > 1000 and "pacing" in json.loads(js.read_text())
    results = tmp_path / "RESULTS.md"
    record_results(report, png, "vitrine simulate ads (test)", results=results, image=None)
    assert "<!-- simulate-ads -->" in results.read_text()


def test_click_draws_are_common_to_every_run_and_uniform() -> None:
    draws = [_click_draw(0, n, "item-7") for n in range(20_000)]
    assert draws[:50] == [_click_draw(0, n, "item-7") for n in range(50)]  # the same request, the same luck
    assert _click_draw(0, 3, "item-7") != _click_draw(1, 3, "item-7") != _click_draw(0, 3, "item-8")
    assert 0.0 <= min(draws) and max(draws) < 1.0
    assert abs(sum(draws) / len(draws) - 0.5) < 0.01 and abs(sum(d < 0.1 for d in draws) / len(draws) - 0.1) < 0.01
