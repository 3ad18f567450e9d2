"""Issue 12, part 4: consent to personalization and deletion receipts, on the real engine and store."""
from __future__ import annotations

import time
from typing import Any

from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.service import Engine
from tests.conftest import ADMIN_KEY, INGEST_KEY, READ_KEY, SHOPPER_SECRET

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
INGEST = {"Authorization": f"Bearer {INGEST_KEY}"}
READ = {"Authorization": f"Bearer {READ_KEY}"}
HISTORY = ["gloves-nitrile-m", "gloves-latex", "goggles", "fil-pla-red"]


def _events(user: str, items: list[str], start: int = 0, **extra: Any) -> list[dict[str, Any]]:
    now = time.time() - 600
    return [{"event_id": f"{user}-{start + i}", "user_id": user, "type": "view", "item_id": item,
             "timestamp": now + start + i, **extra} for i, item in enumerate(items)]


def _answer(recs: Any) -> list[tuple[str, float]]:
    return [(r.id, round(r.score, 9)) for r in recs.recommendations]


def test_a_consent_off_shopper_gets_exactly_the_non_personalized_answer_and_keeps_no_profile(
        config: EngineConfig, encoder: Encoder) -> None:
    engine = Engine(config, encoder=encoder, log_impressions=True)
    engine.ingest(_events("ann", HISTORY))
    personal = engine.recommend("ann", k=5)
    plain = engine.recommend("nobody-at-all", k=5)  # a shopper without history: the non-personalized answer
    assert _answer(personal) != _answer(plain)
    store = engine.shoppers.events
    assert store.user_stats("ann")["counts"]["view"] == len(HISTORY)

    engine.set_consent("ann", False)
    assert engine.consent("ann")["personalization"] is False
    assert store.get_profile("ann") is None and store.user_stats("ann")["counts"]["view"] == 0
    assert _answer(engine.recommend("ann", k=5)) == _answer(engine.recommend("nobody-at-all", k=5))
    # the recent items of a session are not used either
    assert _answer(engine.recommend("ann", recent=["goggles"], k=5)) == _answer(plain)
    # search: the same hits and scores as without a shopper, however strong the personalization asked
    with_user = engine.search("gloves", k=5, user="ann", personalize=1.0)
    without = engine.search("gloves", k=5)
    assert [(h.id, h.score) for h in with_user.hits] == [(h.id, h.score) for h in without.hits]

    # new events count in the aggregates only: item statistics move, no shopper features or profile appear
    before = store.item_stats("goggles")["counts"]["view"]
    engine.ingest(_events("ann", ["goggles"] * 3, start=100))
    assert store.item_stats("goggles")["counts"]["view"] == before + 3
    assert store.user_stats("ann")["counts"]["view"] == 0 and store.get_profile("ann") is None
    engine.shoppers._profile("ann", engine.snapshot())  # a read that would write the profile cache back
    assert store.get_profile("ann") is None

    # impressions record the fact
    recs = engine.recommend("ann", k=3)
    hits = engine.search("gloves", k=3, user="ann")
    assert engine.impressions is not None
    engine.impressions.flush()
    for rid in (recs.request_id, hits.request_id):
        shown = store.get_impression(rid)
        assert shown is not None and shown.user_id == "ann" and (shown.context or {}).get("personalization") is False
    assert "personalization" not in (store.get_impression(personal.request_id).context or {})  # type: ignore[union-attr]

    # consent given back: personalized again, from the events kept
    engine.set_consent("ann", True)
    assert _answer(engine.recommend("ann", k=5)) != _answer(engine.recommend("nobody-at-all", k=5))


def test_consent_by_event_applies_to_that_event_and_after(config: EngineConfig, encoder: Encoder) -> None:
    engine = Engine(config, encoder=encoder)
    store = engine.shoppers.events
    engine.ingest(_events("bob", HISTORY[:2]))
    assert store.user_stats("bob")["counts"]["view"] == 2
    result = engine.ingest(_events("bob", ["goggles"], start=10, personalization=False))
    assert result.accepted and not result.rejected
    assert engine.consent("bob")["personalization"] is False and store.user_stats("bob")["counts"]["view"] == 0
    bad = engine.ingest([{"event_id": "x1", "user_id": "bob", "type": "view", "item_id": "goggles",
                          "personalization": "no"}])
    assert [r.field for r in bad.rejected] == ["personalization"]


def test_a_deletion_receipt_verifies_and_stops_verifying_when_a_trace_is_planted_back(
        config: EngineConfig, encoder: Encoder) -> None:
    engine = Engine(config, encoder=encoder, log_impressions=True)
    engine.ingest(_events("zq-shopper-77", HISTORY) + [{"event_id": "zq-buy", "user_id": "zq-shopper-77", "type": "purchase",
                                              "item_id": "goggles"}])
    engine.recommend("zq-shopper-77", k=3)
    assert engine.impressions is not None
    engine.impressions.flush()
    engine.also_bought("goggles")  # the live models hold the shopper's events
    receipt = engine.erase_user("zq-shopper-77")
    removed = receipt["removed"]
    assert removed["events"] == 5 and removed["impressions"] == 1 and removed["features"] >= 1
    assert removed["co_occurrence_and_trending"] == 5 and receipt["deleted_at"] <= time.time()
    check = engine.verify_deletion(receipt["receipt"])
    assert check["verified"] is True and check["remaining"] == {} and check["live_models_rebuilt"] is True
    # the receipt does not keep the shopper's id
    store = engine.shoppers.events
    rows = store.run_read(lambda c: c.execute("SELECT * FROM deletion_receipts").fetchall())
    assert rows and all("zq-shopper-77" not in str(v) for row in rows for v in row if not isinstance(v, float))
    # a trace planted back makes it fail, naming the table
    engine.ingest(_events("zq-shopper-77", ["goggles"], start=50))
    check = engine.verify_deletion(receipt["receipt"])
    assert check["verified"] is False and check["remaining"]["events"] == 1


def test_privacy_over_http(client: Any) -> None:
    from engine.tokens import ShopperToken

    client.post("/v1/events", json=_events("dan", HISTORY[:2]), headers=INGEST)
    assert client.get("/v1/users/dan/consent", headers=READ).get_json()["personalization"] is True
    bad = client.put("/v1/users/dan/consent", json={"personalization": "off"}, headers=INGEST)
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "personalization"
    missing = client.put("/v1/users/dan/consent", json={}, headers=INGEST)
    assert missing.status_code == 400 and missing.get_json()["error"]["field"] == "personalization"
    other = {"X-Shopper-Token": ShopperToken.sign(SHOPPER_SECRET, "eve")}
    assert client.put("/v1/users/dan/consent", json={"personalization": False}, headers=other).status_code == 403
    own = {"X-Shopper-Token": ShopperToken.sign(SHOPPER_SECRET, "dan")}
    got = client.put("/v1/users/dan/consent", json={"personalization": False}, headers=own)
    assert got.status_code == 200 and got.get_json()["source"] == "shopper"
    assert client.get("/v1/users/dan/consent", headers=READ).get_json()["personalization"] is False

    deleted = client.delete("/v1/users/dan", headers=ADMIN).get_json()
    assert deleted["deleted_events"] == 2 and deleted["removed"]["consent"] == 1 and len(deleted["receipt"]) == 32
    check = client.get(f"/v1/admin/deletions/{deleted['receipt']}", headers=ADMIN)
    assert check.status_code == 200 and check.get_json()["verified"] is True
    assert client.get(f"/v1/admin/deletions/{deleted['receipt']}").status_code == 401
    unknown = client.get("/v1/admin/deletions/nope", headers=ADMIN)
    assert unknown.status_code == 404


def test_private_trending_caps_each_shopper_and_releases_laplace_noise_of_the_stated_scale(
        config: EngineConfig, encoder: Encoder) -> None:
    import numpy as np

    from engine.recommend.live import LiveModels

    engine = Engine(config, encoder=encoder)
    catalog = engine.snapshot().catalog
    items = [p.id for p in catalog][:8]
    engine.ingest(_events("fay", items) + _events("gus", items[:2]))
    live = LiveModels(engine.shoppers.events, dp_epsilon=0.5, dp_items=3, dp_interval_s=60.0,
                      dp_rng=np.random.default_rng(7))
    with live.current() as m:
        counted = {i for i in items if m.dp_trending.score(i) > 0}
        assert counted == set(items[:3])  # fay's first 3 items only; gus's 2 are among them
        assert m.dp_sensitivity == 3 * max(m.event_weights.values())
        now = time.time() // 60.0 * 60.0 + 5.0  # early in an interval: now + 1 is still in it
        first = m.trending_release(catalog, now=now)
        assert m.trending_release(catalog, now=now + 1) is first  # frozen within its interval
        row = catalog.row(items[7])  # an item with no private score: its release is the noise alone
        draws = np.array([m.trending_release(catalog, now=now + 60.0 * (i + 1))[row] for i in range(2000)])
    expected = 2 * (m.dp_sensitivity / 0.5) ** 2
    assert abs(draws.var() / expected - 1) < 0.1
    assert len(m.trending_dense(catalog)) == len(catalog)
