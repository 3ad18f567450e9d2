"""Issue 11, part 2 on search: targeted, relevant, paced sponsored results in extra slots, priced by GSP,
charged once per click through the signed ad token; the organic results unchanged."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.service import Engine
from tests.conftest import ADS_KEY

ADS = {"Authorization": f"Bearer {ADS_KEY}"}
GLOVES = ["gloves-nitrile-m", "gloves-nitrile-l", "gloves-latex"]
BIG = 1_000_000  # a daily budget far above the test's spend: the pacer lets every request in


def _campaign(engine: Engine, cid: str, items: list[str], bid: int, **extra: Any) -> dict[str, Any]:
    body = {"id": cid, "advertiser": "acme", "items": items, "bid": bid, "daily_budget": BIG,
            "start": time.time() - 3600, "targeting": {"keywords": [{"text": "gloves", "match": "broad"}]}, **extra}
    return engine.ads.create(body)


def test_sponsored_results_are_extra_targeted_relevant_and_priced_by_gsp(config: EngineConfig,
                                                                         encoder: Encoder) -> None:
    engine = Engine(config.replace(ads_search_slots="1", ads_match_organic=False, ads_relevance_power=0.0),
                    encoder=encoder)
    plain = engine.search("safety gloves", k=1)
    assert plain.sponsored == [] and plain.hits[0].id == "gloves-latex"
    _campaign(engine, "high", ["gloves-nitrile-m", "gloves-nitrile-l"], 80)  # -l is out of stock: never an ad
    _campaign(engine, "low", ["goggles"], 50)
    _campaign(engine, "off-topic", ["magnet-neodymium"], 500)  # the highest bid, under the relevance floor
    _campaign(engine, "on-page", ["gloves-latex"], 400)  # its only item is the organic hit: never an ad
    got = engine.search("safety gloves", k=1)
    # organic results exactly as without ads
    assert [(h.id, h.score) for h in got.hits] == [(h.id, h.score) for h in plain.hits]
    assert len(got.sponsored) == 1
    ad = got.sponsored[0]
    assert (ad.id, ad.campaign_id, ad.position) == ("gloves-nitrile-m", "high", 1)
    assert ad.relevance >= config.ads_relevance_floor and ad.to_dict()["sponsored"] is True
    assert ad.id not in {h.id for h in got.hits}
    # same predicted CTR (no events yet): GSP price = the next bid, 50
    first = engine.ads.server.click(ad.ad)
    assert first.charged and first.price == 50 and first.spend == 50
    assert engine.ads.server.click(ad.ad).reason == "duplicate"
    # nothing matches an untargeted query; an item on the page is never also an ad
    assert engine.search("pipette tips", k=3).sponsored == []


def test_relevance_weights_the_rank_score_and_so_the_price(config: EngineConfig, encoder: Encoder) -> None:
    engine = Engine(config.replace(ads_search_slots="1", ads_match_organic=False, ads_relevance_power=1.0),
                    encoder=encoder)
    _campaign(engine, "high", ["gloves-nitrile-m"], 80)
    _campaign(engine, "low", ["goggles"], 50)
    ad = engine.search("safety gloves", k=1).sponsored[0]
    snap = engine.snapshot()
    query = np.asarray(engine.embed_query("safety gloves"), np.float32)
    goggles = float(np.asarray(snap.vectors)[snap.catalog.row("goggles")] @ query)
    assert ad.id == "gloves-nitrile-m" and ad.relevance > goggles
    # rank score ctr x bid x relevance: the winner pays the least that keeps it ahead of goggles' 50 x relevance
    price = engine.ads.server.click(ad.ad).price
    least = 50 * goggles / ad.relevance
    assert least - 1e-6 <= price < least + 1 and price < 50


def test_paused_expired_and_future_campaigns_never_show(config: EngineConfig, encoder: Encoder) -> None:
    engine = Engine(config.replace(ads_search_slots="1,2", ads_match_organic=False), encoder=encoder)
    now = time.time()
    _campaign(engine, "paused", ["gloves-latex"], 90)
    engine.ads.pause("paused")
    _campaign(engine, "expired", ["gloves-nitrile-l"], 90, start=now - 7200, end=now - 3600)
    _campaign(engine, "future", ["gloves-nitrile-m"], 90, start=now + 3600)
    assert engine.search("gloves", k=1, offset=0).sponsored == []
    engine.ads.resume("paused")
    shown = engine.search("gloves", k=1).sponsored
    assert [s.campaign_id for s in shown] in ([], ["paused"])  # "gloves-latex" may be the organic hit
    assert all(s.campaign_id == "paused" for s in engine.search("nitrile gloves", k=1).sponsored)


def test_an_exhausted_budget_stops_the_ads(config: EngineConfig, encoder: Encoder) -> None:
    engine = Engine(config.replace(ads_search_slots="1", ads_reserve=40, ads_match_organic=False), encoder=encoder)
    engine.ads.create({"id": "small", "advertiser": "acme", "items": GLOVES, "bid": 40, "daily_budget": 40,
                       "targeting": {"keywords": [{"text": "gloves", "match": "broad"}]}})
    ad = engine.search("gloves", k=1).sponsored[0]
    assert ad.campaign_id == "small"
    charge = engine.ads.server.click(ad.ad)
    assert charge.charged and charge.price == 40  # alone in the auction: the reserve
    assert charge.spend == 40  # the budget reached
    assert engine.search("gloves", k=1).sponsored == []  # spent its day's budget


def test_an_ad_is_at_least_as_relevant_as_the_organic_result_it_sits_above(config: EngineConfig,
                                                                          encoder: Encoder) -> None:
    engine = Engine(config.replace(ads_search_slots="1,3", ads_match_organic=True), encoder=encoder)
    _campaign(engine, "g", ["goggles"], 80)
    got = engine.search("safety gloves", k=3)
    organic = [float(h.vector or 0) for h in got.hits]
    # goggles (vector score 0.44) is less relevant than the organic results at positions 1 to 3 (0.52-0.62)
    assert got.sponsored == [] and min(organic[:3]) > 0.44
    relaxed = Engine(config.replace(ads_search_slots="1,3", ads_match_organic=False), encoder=encoder)
    assert [s.id for s in relaxed.search("safety gloves", k=3).sponsored] == ["goggles"]


def test_ads_over_http_and_tampered_tokens(config: EngineConfig, encoder: Encoder) -> None:
    from web import create_app

    cfg = config.replace(ads_match_organic=False)
    client = create_app({"TESTING": True, "ENGINE_CONFIG": cfg, "ENGINE": Engine(cfg, encoder=encoder)}).test_client()
    made = client.post("/v1/ads/campaigns", headers=ADS, json={
        "advertiser": "acme", "items": GLOVES, "bid": 30, "daily_budget": BIG,
        "targeting": {"keywords": [{"text": "gloves", "match": "broad"}]}})
    assert made.status_code == 201
    body = client.get("/v1/search", query_string={"q": "gloves", "k": 2}).get_json()
    assert len(body["sponsored"]) == 1 and body["sponsored"][0]["sponsored"] is True
    token = body["sponsored"][0]["ad"]
    ok = client.post("/v1/ads/clicks", json={"ad": token})
    assert ok.status_code == 200 and ok.get_json()["charged"] is True
    assert client.post("/v1/ads/clicks", json={"ad": token}).get_json()["reason"] == "duplicate"
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    bad = client.post("/v1/ads/clicks", json={"ad": forged})
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "ad"
    assert client.post("/v1/ads/clicks", json={"ad": 5}).status_code == 400



def test_the_search_page_labels_sponsored_results(config: EngineConfig, encoder: Encoder) -> None:
    from web import create_app

    cfg = config.replace(ads_relevance_floor=-1.0, ads_match_organic=False)  # any item may be an ad here
    engine = Engine(cfg, encoder=encoder)
    client = create_app({"TESTING": True, "ENGINE_CONFIG": cfg, "ENGINE": engine}).test_client()
    organic = {h.id for h in engine.search("gloves", k=10).hits}
    item = next(i for i in ("magnet-neodymium", "screws-m3", "tape-kapton", "solder-wire") if i not in organic)
    _campaign(engine, "page", [item], 70)
    page = client.get("/", query_string={"q": "gloves"})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'class="card sponsored"' in html and "Sponsored" in html and f'data-item="{item}"' in html
    assert html.count(f'data-item="{item}"') == 2  # the card and its link: once on the page


@pytest.mark.parametrize(("slots", "ok"), [("1,5", True), ("5,1", False), ("0", False), ("x", False), ("", False)])
def test_slot_settings_are_checked(config: EngineConfig, slots: str, ok: bool) -> None:
    from engine.errors import ConfigError

    if ok:
        assert config.replace(ads_search_slots=slots).ad_slots == (1, 5)
    else:
        with pytest.raises(ConfigError, match="ads_search_slots"):
            config.replace(ads_search_slots=slots)


def test_item_page_and_recommendation_placements(config: EngineConfig, encoder: Encoder) -> None:
    cfg = config.replace(ads_similar_slots="1", ads_recommend_slots="1", ads_relevance_floor=-1.0,
                         ads_match_organic=False)
    engine = Engine(cfg, encoder=encoder)
    engine.ingest([{"event_id": "a1", "user_id": "ann", "type": "view", "item_id": "gloves-nitrile-m"},
                   {"event_id": "b1", "user_id": "bob", "type": "view", "item_id": "fil-pla-red"}])
    near = {"id": "near", "advertiser": "acme", "items": ["respirator"], "bid": 40, "daily_budget": BIG,
            "targeting": {"similar_to": ["gloves-latex"]}}
    magnets = {"id": "magnets", "advertiser": "acme", "items": ["calipers"], "bid": 90, "daily_budget": BIG,
               "targeting": {"categories": ["Industrial & Scientific > Magnets"]}}
    safety = {"id": "safety", "advertiser": "acme", "items": ["earplugs"], "bid": 30, "daily_budget": BIG,
              "targeting": {"audience": {"categories": ["Industrial & Scientific > Lab & Safety"]}}}
    for body in (near, magnets, safety):
        engine.ads.create(body)
    gloves_page = engine.similar("gloves-nitrile-m", k=3)
    ads = {s.campaign_id for s in gloves_page.sponsored}
    assert "magnets" not in ads and ads <= {"near", "safety"} and ads  # a neighbour of gloves-latex: near
    assert all(s.position == 1 and s.id not in {h.id for h in gloves_page.hits} for s in gloves_page.sponsored)
    magnet_page = engine.similar("magnet-neodymium", k=3)
    assert [s.campaign_id for s in magnet_page.sponsored] == ["magnets"]
    assert gloves_page.to_dict()["sponsored"][0]["sponsored"] is True
    # recommendations: the audience of lab-and-safety shoppers
    ann = engine.recommend("ann", k=4).sponsored
    assert [s.campaign_id for s in ann] in (["safety"], ["near"])
    assert all(s.campaign_id != "safety" for s in engine.recommend("bob", k=4).sponsored)
    assert engine.recommend("ann", k=4).to_dict()["sponsored"][0]["position"] == 1


def test_the_item_page_labels_its_sponsored_neighbour(config: EngineConfig, encoder: Encoder) -> None:
    from web import create_app

    cfg = config.replace(ads_similar_slots="2", ads_relevance_floor=-1.0, ads_match_organic=False)
    engine = Engine(cfg, encoder=encoder)
    client = create_app({"TESTING": True, "ENGINE_CONFIG": cfg, "ENGINE": engine}).test_client()
    engine.ads.create({"id": "m", "advertiser": "acme", "items": ["calipers"], "bid": 40, "daily_budget": BIG,
                       "targeting": {"categories": ["Industrial & Scientific > Magnets"]}})
    html = client.get("/items/magnet-neodymium").get_data(as_text=True)
    similar = html.split('id="similar"', 1)[1].split("</section>", 1)[0]
    assert 'class="card sponsored"' in similar and "Sponsored" in similar and 'data-item="calipers"' in similar


def test_recommendation_strips_draw_their_sponsored_items(client: Any) -> None:
    from flask import render_template_string

    organic = [{"id": f"i{n}", "title": f"Item {n}", "category": "A > B", "brand": "", "price": 1.0,
                "score_parts": {}} for n in range(3)]
    ad = {"id": "ad1", "title": "Ad item", "category": "A > C", "brand": "", "price": 2.0, "sponsored": True,
          "position": 2, "ad": "tok.en"}
    with client.application.test_request_context("/"):
        html = render_template_string('{% from "_cards.html" import strip %}{{ strip("s", "S", items, "none") }}',
                                      items=[organic[0], ad, *organic[1:]])
    cards = html.split('<li class="card')[1:]
    assert [c.split('data-item="')[1].split('"')[0] for c in cards] == ["i0", "ad1", "i1", "i2"]
    assert "Sponsored" in cards[1] and 'data-ad="tok.en"' in cards[1] and "data-position" not in cards[1]
    # organic positions skip the ad: i1 is the second organic item
    assert 'data-position="2"' in cards[2] and 'data-position="3"' in cards[3]


def test_another_listing_of_a_product_on_the_page_is_never_its_ad(config: EngineConfig, encoder: Encoder) -> None:
    # pla-dup-title is fil-pla-red under another seller, with the same title: the organic similar strip
    # leaves it out of fil-pla-red's page, and neither of them may be the ad beside the other.
    cfg = config.replace(ads_similar_slots="1", ads_search_slots="1", ads_relevance_floor=-1.0,
                         ads_match_organic=False, ads_relevance_power=0.0)
    engine = Engine(cfg, encoder=encoder)
    printing = {"categories": ["Industrial & Scientific > 3D Printing"],
                "keywords": [{"text": "filament", "match": "broad"}]}
    for cid, items, bid in (("dup", ["pla-dup-title"], 90), ("also-dup", ["fil-pla-red"], 80),
                            ("glass", ["glass-bed"], 10)):
        engine.ads.create({"id": cid, "advertiser": "acme", "items": items, "bid": bid, "daily_budget": BIG,
                           "start": time.time() - 3600, "targeting": printing})
    page = engine.similar("fil-pla-red", k=3)
    assert "pla-dup-title" not in {h.id for h in page.hits} and "glass-bed" not in {h.id for h in page.hits}
    assert [s.id for s in page.sponsored] == ["glass-bed"]  # the two higher bids are the page's own product
    found = engine.search("red pla filament spool", k=1)
    assert found.hits[0].id in {"fil-pla-red", "pla-dup-title"}
    assert [s.id for s in found.sponsored] == ["glass-bed"]
    # two listings of one product are one product to the auction: they never win two slots of one page
    two = Engine(cfg.replace(ads_search_slots="1,2"), encoder=encoder)
    bed = two.search("glass bed for ender 3", k=1)
    assert [h.id for h in bed.hits] == ["glass-bed"]
    assert [s.id for s in bed.sponsored] == ["pla-dup-title"]  # fil-pla-red (bid 80) is the same product


def test_a_pacer_follows_its_campaigns_bid_for_the_tolerance(config: EngineConfig, encoder: Encoder) -> None:
    """``ads_pacing_tolerance`` clicks at the campaign's bid; editing the bid re-plans the day's pacer."""
    engine = Engine(config.replace(ads_search_slots="1", ads_pacing_tolerance=2.0, reload_check_seconds=0.0),
                    encoder=encoder)
    _campaign(engine, "tol", GLOVES, 40)
    assert engine.search("gloves", k=1).sponsored

    def pacer() -> Any:
        return next(p for (cid, _), p in engine.ads.server._pacers.items() if cid == "tol")

    assert pacer().tolerance == 80
    engine.ads.update("tol", {"bid": 55})
    engine.ads.server._stamp = None  # an edit within the same second as the creation keeps the cache's stamp
    assert engine.search("gloves", k=1).sponsored
    assert pacer().tolerance == 110
    assert not engine.ads.server.throttled("tol", time.strftime("%Y-%m-%d", time.gmtime()))  # BIG budget
