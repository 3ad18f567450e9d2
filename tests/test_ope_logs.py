"""Issue 10, part 1 (own logs) and part 4 (Q-learning served): a candidate evaluated on the engine's logged
traffic before it serves, the estimate beside the experiment's live result, and the Q table trained from
logged sessions and served."""
from __future__ import annotations

import json
import time
from typing import Any

import pytest

from engine.cli import main
from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.errors import InvalidQuery
from engine.learn.online import logged_episodes, save_qtable
from engine.learn.ope_logs import evaluate_logged, parse_since, record
from engine.learn.qlearning import QLearner, QSettings, Rewards, encode_state
from engine.recommend.strategies import STRATEGIES
from engine.service import Engine

K = 4
USERS = [f"s{i}" for i in range(6)]


def _serve_strategy_lists(config: EngineConfig, encoder: Encoder, rounds: int = 12) -> tuple[Engine, dict[str, int]]:
    """Lists chosen by an epsilon-greedy strategy policy (epsilon 1: every strategy equally likely, so the
    logged probabilities are 1/6); shoppers click the first item of every trending list, nothing else."""
    engine = Engine(config.replace(strategy_policy="epsilon", strategy_epsilon=1.0), encoder=encoder,
                    log_impressions=True)
    engine.ingest([{"event_id": f"h-{u}", "user_id": u, "type": "view", "item_id": "goggles"} for u in USERS])
    arms = {a: 0 for a in STRATEGIES}
    for r in range(rounds):
        for u in USERS:
            recs = engine.recommend(u, k=K)
            assert engine.impressions is not None
            engine.impressions.flush()
            imp = engine.events.get_impression(recs.request_id)
            assert imp is not None and imp.context is not None
            arm = imp.context["arm"]
            assert imp.context["p"] == pytest.approx(1 / len(STRATEGIES))
            arms[arm] += 1
            if arm == "trending" and recs.recommendations:
                engine.ingest([{"event_id": f"c-{recs.request_id}", "user_id": u, "type": "click",
                                "item_id": recs.recommendations[0].id, "request_id": recs.request_id}])
    return engine, arms


def test_strategy_candidates_estimated_from_the_log(config: EngineConfig, encoder: Encoder) -> None:
    engine, arms = _serve_strategy_lists(config, encoder)
    assert arms["trending"] > 0
    common: dict[str, Any] = {"since": time.time() - 3600, "window_s": 1800.0, "rankers_root": config.rankers_path,
                              "n_bootstrap": 50}
    trending = evaluate_logged(engine.events, "recommend", "strategy/trending", **common)
    # IPS by hand: each trending list (weight 1 / (1/6) = 6) has CTR 1/K, every other list weight 0
    n = sum(arms.values())
    assert trending.rows == n
    assert trending.estimates["IPS"].value == pytest.approx(arms["trending"] * 6 * (1 / K) / n)
    assert trending.estimates["SNIPS"].value == pytest.approx(1 / K)
    content = evaluate_logged(engine.events, "recommend", "strategy/content", **common)
    assert content.estimates["IPS"].value == 0.0 and content.estimates["SNIPS"].value == 0.0
    assert trending.logged_ctr == pytest.approx(arms["trending"] * (1 / K) / n)
    lo, hi = trending.estimates["DR"].low, trending.estimates["DR"].high
    assert lo <= trending.estimates["DR"].value <= hi
    with pytest.raises(InvalidQuery, match="strategy"):
        evaluate_logged(engine.events, "recommend", "strategy/nope", **common)


def test_ranking_candidate_needs_exploring_lists_then_is_recorded_for_the_experiment(
        config: EngineConfig, encoder: Encoder, client: Any) -> None:
    common: dict[str, Any] = {"window_s": 1800.0, "rankers_root": config.rankers_path, "n_bootstrap": 30}
    plain = Engine(config, encoder=encoder, log_impressions=True)
    plain.recommend(None, recent=["goggles"], k=K)
    assert plain.impressions is not None
    plain.impressions.flush()
    with pytest.raises(InvalidQuery, match="explore_recommend"):
        evaluate_logged(plain.events, "recommend", "blend", since=time.time() - 60, **common)
    engine = Engine(config.replace(explore_recommend="epsilon:0.5,positions=2,pool=8"), encoder=encoder,
                    log_impressions=True)
    clicks = 0
    for i in range(30):
        recs = engine.recommend(None, recent=["goggles"], k=K, viewer=f"v{i}")
        if recs.recommendations:
            engine.ingest([{"event_id": f"e{i}", "user_id": f"v{i}", "type": "click",
                            "item_id": recs.recommendations[0].id, "request_id": recs.request_id}])
            clicks += 1
    assert engine.impressions is not None
    engine.impressions.flush()
    report = evaluate_logged(engine.events, "recommend", "blend", since=time.time() - 60, **common)
    assert report.kind == "ranking" and report.lists == 30 and report.rows == 30 * K
    assert report.logged_ctr == pytest.approx(clicks / (30 * K))
    assert 0.0 <= report.estimates["SNIPS"].value <= 1.0
    record(engine.events, report)
    # an experiment with a blend variant shows the estimate beside its live result
    from tests.conftest import ADMIN_KEY

    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    made = client.post("/v1/admin/experiments", headers=admin, json={
        "name": "blend-vs-ranker", "surface": "recommend",
        "variants": [{"name": "a", "policy": "blend"}, {"name": "b", "policy": "ranker"}]})
    assert made.status_code in (200, 201), made.get_json()
    # a variant names its policy: blend-vs-ranker/a is the blend
    by_variant = evaluate_logged(engine.events, "recommend", "blend-vs-ranker/a", since=time.time() - 60, **common)
    assert by_variant.policy == "blend" and by_variant.estimates["SNIPS"].value == report.estimates["SNIPS"].value
    with pytest.raises(InvalidQuery, match="no variant"):
        evaluate_logged(engine.events, "recommend", "blend-vs-ranker/zz", since=time.time() - 60, **common)
    listed = client.get("/v1/admin/experiments", headers=admin).get_json()["experiments"][0]["stats"]["variants"]
    a, b = listed
    assert a["ope"]["estimates"]["SNIPS"]["value"] == pytest.approx(report.estimates["SNIPS"].value)
    assert b["ope"] is None


def test_since_spans() -> None:
    assert parse_since("7d") == 7 * 86400 and parse_since("12h") == 43200 and parse_since("2") == 2 * 86400
    for bad in ("x", "-1d", "0"):
        with pytest.raises(InvalidQuery, match="since"):
            parse_since(bad)


def test_qlearning_trained_from_logged_sessions_and_served(config: EngineConfig, encoder: Encoder,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    engine, arms = _serve_strategy_lists(config, encoder, rounds=6)
    episodes, vocab = logged_episodes(engine.events, since=0.0, window_s=1800.0, rewards=Rewards())
    assert len(episodes) == len(USERS) and sum(map(len, episodes)) == sum(arms.values())
    assert all(r == (1.0 if a == "trending" else 0.0) for e in episodes for _, a, r in e)
    monkeypatch.setenv("VITRINE_EVENTS_URL", config.events_url)
    assert main(["--index-dir", str(config.index_dir), "train", "qlearning", "--data", "logs", "--epochs", "20",
                 "--gamma", "0"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == len(USERS) and "written" in info
    table = json.loads((config.rankers_path / "qlearning" / "current.json").read_text())
    learner = QLearner.from_dict(table["q"])
    # gamma 0: Q is the mean immediate reward, so wherever trending was shown it is the greedy choice
    tried = {state for e in episodes for state, a, _ in e if a == "trending"}
    assert tried and all(learner.greedy(state) == "trending" for state in tried)
    served = Engine(config.replace(strategy_policy="qlearning", strategy_epsilon=0.0), encoder=encoder,
                    log_impressions=True)
    ctx = served._context("recommend", "s0", None)
    state = encode_state(ctx.session_step, ctx.last_category, ctx.cart, ctx.recent_clicks, table["categories"])
    recs = served.recommend("s0", k=K)
    assert served.impressions is not None
    served.impressions.flush()
    imp = served.events.get_impression(recs.request_id)
    assert imp is not None and imp.policy == f"strategy:qlearning/{learner.greedy(state)}"
    # a Q table written later is reloaded; a corrupt one is refused and the loaded one kept
    other = QLearner(STRATEGIES, QSettings(alpha=1.0, epsilon=0.0))
    other.update(encode_state(0, None, False, 0, table["categories"]), "content", 5.0, None)
    save_qtable(config.rankers_path / "qlearning" / "current.json", other, table["categories"], {})
    time.sleep(0.01)
    assert served.strategy is not None
    served.strategy.refresh(force=True)
    assert served.strategy.choose(served._context("recommend", "newcomer", None), "ab" * 16)[0] == "content"
    assert served.strategy.choose(ctx, "ab" * 16)[0] == "blend"  # unseen in the new table: ties, the first
    (config.rankers_path / "qlearning" / "current.json").write_text("{not json")
    served.strategy.refresh(force=True)
    assert served.strategy.choose(served._context("recommend", "newcomer", None), "ab" * 16)[0] == "content"
