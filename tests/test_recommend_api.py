"""Recommendations over HTTP: real time (an event changes the next answer), reasons, cold start."""
from __future__ import annotations

from typing import Any

import numpy as np

from tests.conftest import ADMIN_KEY, INGEST_KEY, READ_KEY

INGEST = {"Authorization": f"Bearer {INGEST_KEY}"}
READ = {"Authorization": f"Bearer {READ_KEY}"}


def events(client: Any, *evs: tuple[str, str, str, str]) -> None:
    body = [{"event_id": e, "user_id": u, "type": t, "item_id": i} for e, u, t, i in evs]
    resp = client.post("/v1/events", json=body, headers=INGEST).get_json()
    assert len(resp["accepted"]) == len(body), resp


def recs(client: Any, user: str, **params: Any) -> list[dict[str, Any]]:
    resp = client.get(f"/v1/users/{user}/recommendations", query_string=params, headers=READ)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    out: list[dict[str, Any]] = resp.get_json()["recommendations"]
    return out


def test_unknown_shopper_gets_cold_start_answers(client: Any) -> None:
    events(client, ("p1", "other", "purchase", "multimeter"), ("p2", "other2", "purchase", "multimeter"))
    got = recs(client, "never-seen", k=3)
    assert got and got[0]["id"] == "multimeter" and got[0]["reason"].startswith("trending")


def test_a_purchase_changes_the_next_answer(client: Any) -> None:
    # Others bought the soldering iron after the solder wire.
    for n in range(3):
        events(client, (f"o{n}a", f"o{n}", "purchase", "solder-wire"), (f"o{n}b", f"o{n}", "purchase", "solder-iron"))
    before = [r["id"] for r in recs(client, "shopper", k=5)]
    events(client, ("s1", "shopper", "purchase", "solder-wire"))
    after = recs(client, "shopper", k=5)
    ids = [r["id"] for r in after]
    assert ids != before
    assert ids[0] == "solder-iron"
    assert "solder-wire" not in ids  # purchased items are excluded
    top = after[0]
    assert top["reason"] in ("often bought after Lead-Free Solder Wire 0.8mm, 100g, Rosin Core",
                             "because you viewed Lead-Free Solder Wire 0.8mm, 100g, Rosin Core")
    assert top["because_item"] == "solder-wire"


def test_content_reason_and_filters(client: Any) -> None:
    events(client, ("c1", "fan", "view", "fil-pla-red"), ("c2", "fan", "click", "fil-pla-black"))
    got = recs(client, "fan", k=4, category="Industrial & Scientific > 3D Printing > Filament")
    assert got and all(r["category"].endswith("Filament") for r in got)
    assert any(r["reason"].startswith("because you viewed") for r in got)
    assert "fil-petg-green" not in [r["id"] for r in got]  # out of stock
    excluded = recs(client, "fan", k=4, exclude="fil-abs-white,fil-tpu-flex")
    assert not {"fil-abs-white", "fil-tpu-flex"} & {r["id"] for r in excluded}


def test_anonymous_session(client: Any) -> None:
    resp = client.post("/v1/recommendations", json={"items": ["gloves-nitrile-m"], "k": 3})
    got = resp.get_json()["recommendations"]
    assert resp.status_code == 200 and len(got) == 3
    assert "gloves-nitrile-m" in {r["because_item"] for r in got}
    bad = client.post("/v1/recommendations", json={"items": "x", "k": 0})
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "k"
    assert client.post("/v1/recommendations", json=[1]).get_json()["error"]["field"] == "body"
    assert client.post("/v1/recommendations", json={"items": [1]}).get_json()["error"]["field"] == "items"


def test_deleted_shopper_leaves_no_trace_in_recommendations(client: Any) -> None:
    for n in range(2):
        events(client, (f"d{n}a", f"d{n}", "purchase", "calipers"), (f"d{n}b", f"d{n}", "purchase", "scale-digital"))
    events(client, ("me1", "me", "purchase", "calipers"))
    assert recs(client, "me", k=1)[0]["id"] == "scale-digital"
    for user in ("d0", "d1"):
        assert client.delete(f"/v1/users/{user}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    after = recs(client, "me", k=3)
    assert all(r["source"] != "cooccurrence" for r in after)  # nobody else's sequence is left
    assert client.get("/v1/users/d0", headers=READ).get_json()["counts"]["purchase"] == 0


def test_personalized_search_reranks_for_the_shopper(client: Any) -> None:
    plain = client.get("/v1/search", query_string={"q": "gloves", "k": 4}).get_json()["hits"]
    events(client, ("g1", "latex-fan", "purchase", "gloves-latex"), ("g2", "latex-fan", "view", "gloves-latex"))
    mine = client.get("/v1/search", query_string={"q": "gloves", "k": 4, "user": "latex-fan",
                                                  "personalize": 1.0}, headers=READ).get_json()["hits"]
    assert mine[0]["id"] == "gloves-latex" and "personal" in mine[0]["score_parts"]
    off = client.get("/v1/search", query_string={"q": "gloves", "k": 4, "user": "latex-fan",
                                                 "personalize": 0}, headers=READ).get_json()["hits"]
    assert [h["id"] for h in off] == [h["id"] for h in plain]
    unknown = client.get("/v1/search", query_string={"q": "gloves", "k": 4, "user": "nobody"},
                         headers=READ).get_json()["hits"]
    assert [h["id"] for h in unknown] == [h["id"] for h in plain]  # no profile: plain order
    bad = client.get("/v1/search", query_string={"q": "gloves", "user": "x", "personalize": 2}, headers=READ)
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "personalize"


def test_similar_items_gain_also_bought(client: Any) -> None:
    for n in range(2):
        events(client, (f"ab{n}a", f"ab{n}", "purchase", "beaker-set"), (f"ab{n}b", f"ab{n}", "purchase", "ph-meter"))
    body = client.get("/v1/items/beaker-set/similar?k=3").get_json()
    assert body["also_bought"][0]["id"] == "ph-meter"
    assert "beaker-set" not in [a["id"] for a in body["also_bought"]]


def test_profile_is_the_fold_of_the_event_log_stored_back_as_a_cache(engine: Any) -> None:
    from engine.recommend.compose import Touch, profile_from
    from engine.shoppers import PROFILE_WRITE_BACK

    snap = engine.snapshot()
    items = list(snap.catalog.ids)
    evs = [{"event_id": f"f{n}", "user_id": "folder", "type": ("view", "click", "purchase")[n % 3],
            "item_id": items[n % len(items)], "timestamp": 1_700_000_000 + n} for n in range(PROFILE_WRITE_BACK + 3)]

    def same(a: Any, b: Any) -> None:
        assert a.anchors == b.anchors and a.n_events == b.n_events
        assert np.allclose(a.mass, b.mass) and np.allclose(a.centers, b.centers, atol=1e-5)

    def expected(n: int) -> Any:
        return profile_from([Touch(e["item_id"], e["type"], e["timestamp"]) for e in evs[:n]], snap)

    engine.ingest(evs[:3])
    same(engine.shoppers._profile("folder", snap), expected(3))
    assert engine.events.get_profile("folder") is None  # fewer than PROFILE_WRITE_BACK new events: not stored
    engine.ingest(evs[3:PROFILE_WRITE_BACK])
    same(engine.shoppers._profile("folder", snap), expected(PROFILE_WRITE_BACK))
    stored = engine.events.get_profile("folder")
    assert stored is not None and stored[1] == engine.events.user_events("folder")[-1].seq
    assert len(stored[0]) < 1000  # interests stored by reference to their items, not as 384 floats each
    engine.ingest(evs[PROFILE_WRITE_BACK:])  # folded onto the stored profile, O(1) each
    same(engine.shoppers._profile("folder", snap), expected(len(evs)))
    assert engine.delete_user("folder") == len(evs)
    assert engine.shoppers._profile("folder", snap) is None and engine.events.get_profile("folder") is None
