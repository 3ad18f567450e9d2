"""Issue 11, part 4: per campaign and day, impressions (the impression log), charged clicks and spend, purchases
attributed within 24 h of a click, ROAS; the CSV export; frequency caps counted from the same log."""
from __future__ import annotations

import csv
import io
import time
from typing import Any

import pytest

from engine.ads.campaigns import utc_day
from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.service import Engine
from tests.conftest import ADS_KEY

ADS = {"Authorization": f"Bearer {ADS_KEY}"}


def _engine(config: EngineConfig, encoder: Encoder, **settings: Any) -> Engine:
    return Engine(config.replace(ads_search_slots="1", ads_match_organic=False, **settings), encoder=encoder,
                  log_impressions=True)


def _flush(engine: Engine) -> None:
    assert engine.impressions is not None
    engine.impressions.flush()


def test_daily_report_counts_impressions_clicks_spend_and_attributed_purchases(config: EngineConfig,
                                                                               encoder: Encoder) -> None:
    engine = _engine(config, encoder)
    engine.ads.create({"id": "g", "advertiser": "acme", "items": ["goggles"], "bid": 30, "daily_budget": 100000,
                       "targeting": {"keywords": [{"text": "gloves", "match": "broad"}]}})
    shown = [engine.search("safety gloves", k=1, user=f"u{i}").sponsored for i in range(3)]
    assert all(len(s) == 1 and s[0].id == "goggles" for s in shown)
    _flush(engine)
    now = time.time()
    for i in (0, 1):  # two of the three shoppers click; u0 then buys the item, u1 buys something else
        assert engine.ads.server.click(shown[i][0].ad, now=now).charged
    engine.ingest([{"event_id": "b0", "user_id": "u0", "type": "purchase", "item_id": "goggles", "value": 12.5,
                    "timestamp": now + 60},
                   {"event_id": "b1", "user_id": "u1", "type": "purchase", "item_id": "beaker-set",
                    "timestamp": now + 60}])
    rows = engine.ads.report(campaign="g", price_of=lambda i: engine.item(i).price)
    assert len(rows) == 1
    r = rows[0]
    assert (r.campaign_id, r.day, r.impressions, r.clicks, r.spend, r.purchases, r.revenue) == (
        "g", utc_day(now), 3, 2, 2 * shown[0][0].cpc, 1, 1250)
    assert r.ctr == pytest.approx(2 / 3) and r.avg_cpc == shown[0][0].cpc
    assert r.roas == pytest.approx(1250 / r.spend)
    text = engine.ads.csv(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed[0]["campaign_id"] == "g" and parsed[0]["clicks"] == "2" and parsed[0]["revenue"] == "1250"
    hourly = engine.ads.hourly("g")
    assert sum(h["clicks"] for h in hourly["hours"]) == 2 and len(hourly["hours"]) == 24


def test_frequency_cap_per_shopper_and_day(config: EngineConfig, encoder: Encoder) -> None:
    engine = _engine(config, encoder)
    engine.ads.create({"id": "cap", "advertiser": "acme", "items": ["goggles"], "bid": 30, "daily_budget": 100000,
                       "frequency_cap": 2, "targeting": {"keywords": [{"text": "gloves", "match": "broad"}]}})
    seen = []
    for _ in range(4):
        seen.append(len(engine.search("safety gloves", k=1, user="ann").sponsored))
        _flush(engine)
    assert seen == [1, 1, 0, 0]
    assert len(engine.search("safety gloves", k=1, user="bob").sponsored) == 1  # per shopper


def test_reports_over_http(client: Any) -> None:
    made = client.post("/v1/ads/campaigns", headers=ADS, json={
        "id": "h", "advertiser": "acme", "items": ["goggles"], "bid": 30, "daily_budget": 100000,
        "targeting": {"keywords": [{"text": "gloves", "match": "broad"}]}})
    assert made.status_code == 201
    assert client.get("/v1/ads/reports", headers=ADS).get_json() == {"rows": []}
    got = client.get("/v1/ads/reports?format=csv&campaign=h", headers=ADS)
    assert got.status_code == 200 and got.mimetype == "text/csv" and got.get_data(as_text=True).startswith("campaign_id,")
    for query, field in (("from=2026-13-01", "from"), ("format=xml", "format"), ("from=2026-02-01&to=2026-01-01", "from")):
        bad = client.get(f"/v1/ads/reports?{query}", headers=ADS)
        assert bad.status_code == 400 and bad.get_json()["error"]["field"] == field
    assert client.get("/v1/ads/reports?campaign=nope", headers=ADS).status_code == 404
    assert client.get("/v1/ads/reports/hourly", headers=ADS).get_json()["error"]["field"] == "campaign"
    assert client.get("/v1/ads/reports/hourly?campaign=h", headers=ADS).get_json()["daily_budget"] == 100000
    assert client.get("/ads").status_code == 200
