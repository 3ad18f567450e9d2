"""Issue 11, part 1 (campaigns over the API, the ads scope, validation) and part 3's charging (idempotent
clicks, a budget never exceeded by more than one click's price, across processes)."""
from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine.ads.campaigns import Campaigns, parse_campaign, utc_day
from engine.errors import InvalidQuery
from engine.events import open_event_store
from tests.conftest import ADMIN_KEY, ADS_KEY

ADS = {"Authorization": f"Bearer {ADS_KEY}"}
GOOD: dict[str, Any] = {"advertiser": "acme", "name": "Gloves week", "items": ["gloves-nitrile-m", "gloves-latex"],
                        "bid": 40, "daily_budget": 5000, "start": "2026-01-01T00:00:00Z",
                        "targeting": {"keywords": [{"text": "nitrile gloves", "match": "phrase"}],
                                      "categories": ["Industrial & Scientific > Lab & Safety"]}}


def test_campaigns_over_the_api(client: Any) -> None:
    made = client.post("/v1/ads/campaigns", json=GOOD, headers=ADS)
    assert made.status_code == 201, made.get_json()
    c = made.get_json()
    assert (c["bid"], c["daily_budget"], c["state"], c["spend_today"]) == (40, 5000, "active", 0)
    assert c["items"] == GOOD["items"] and c["start"] == "2026-01-01T00:00:00Z" and c["end"] is None
    assert c["targeting"]["keywords"] == [{"text": "nitrile gloves", "match": "phrase"}]
    cid = c["id"]
    listed = client.get("/v1/ads/campaigns", headers=ADS).get_json()
    assert [x["id"] for x in listed["campaigns"]] == [cid]
    assert client.get("/v1/ads/campaigns?advertiser=other", headers=ADS).get_json()["campaigns"] == []
    patched = client.patch(f"/v1/ads/campaigns/{cid}", json={"bid": 55, "end": "2027-01-01T00:00:00Z"}, headers=ADS)
    assert patched.status_code == 200 and patched.get_json()["bid"] == 55
    assert patched.get_json()["targeting"] == c["targeting"]  # untouched fields stay
    assert client.post(f"/v1/ads/campaigns/{cid}/pause", headers=ADS).get_json()["state"] == "paused"
    assert client.get(f"/v1/ads/campaigns/{cid}", headers=ADS).get_json()["state"] == "paused"
    assert client.post(f"/v1/ads/campaigns/{cid}/resume", headers=ADS).get_json()["state"] == "active"
    assert client.get("/v1/ads/campaigns/nope", headers=ADS).status_code == 404
    again = client.post("/v1/ads/campaigns", json={**GOOD, "id": cid}, headers=ADS)
    assert again.status_code == 400 and again.get_json()["error"]["field"] == "id"


def test_the_ads_scope_is_its_own(client: Any, app: Any) -> None:
    assert client.get("/v1/ads/campaigns").status_code == 401
    assert client.get("/v1/ads/campaigns", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 401
    from web import create_app

    off = create_app({"TESTING": True, "ENGINE_CONFIG": app.config["ENGINE_CONFIG"].replace(ads_key=None)})
    denied = off.test_client().get("/v1/ads/campaigns", headers=ADS)
    assert denied.status_code == 403 and denied.get_json()["error"]["code"] == "ads_disabled"


@pytest.mark.parametrize(("change", "field"), [
    ({"bid": -5}, "bid"),
    ({"bid": 1.5}, "bid"),
    ({"bid": True}, "bid"),
    ({"daily_budget": 0}, "daily_budget"),
    ({"bid": 6000}, "bid"),  # above the daily budget
    ({"start": "2026-02-01", "end": "2026-01-01"}, "end"),
    ({"start": "yesterday"}, "start"),
    ({"items": ["gloves-latex", "no-such-item"]}, "items[1]"),
    ({"items": []}, "items"),
    ({"targeting": {"keywords": [{"text": "gloves", "match": "fuzzy"}]}}, "targeting.keywords[0].match"),
    ({"colour": "red"}, "colour"),
    ({"state": "deleted"}, "state"),
    ({"frequency_cap": 0}, "frequency_cap"),
    ({"advertiser": ""}, "advertiser"),
])
def test_bad_campaigns_name_the_field(client: Any, change: dict[str, Any], field: str) -> None:
    bad = client.post("/v1/ads/campaigns", json={**GOOD, **change}, headers=ADS)
    assert bad.status_code == 400, bad.get_json()
    assert bad.get_json()["error"]["field"] == field


def test_patch_is_validated_and_cannot_move_the_advertiser(client: Any) -> None:
    cid = client.post("/v1/ads/campaigns", json=GOOD, headers=ADS).get_json()["id"]
    for body, field in (({"advertiser": "evil"}, "advertiser"), ({"bid": 0}, "bid"), ({"end": "2025-01-01"}, "end")):
        r = client.patch(f"/v1/ads/campaigns/{cid}", json=body, headers=ADS)
        assert r.status_code == 400 and r.get_json()["error"]["field"] == field


def _store(tmp_path: Path) -> Campaigns:
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    return Campaigns(lambda: store, dedupe_window_s=600.0)


def test_a_click_is_charged_once(tmp_path: Path) -> None:
    ads = _store(tmp_path)
    c = ads.create(parse_campaign({**GOOD, "id": "c1"}, known_item=lambda i: True))
    now = time.time() // 86400 * 86400 + 43200  # today's UTC noon: now + 601 s stays on the same budget day
    first = ads.charge("k1", c, "gloves-latex", "ann", 30, now=now)
    assert first.charged and first.spend == 30
    assert ads.charge("k1", c, "gloves-latex", "ann", 30, now=now + 1).reason == "duplicate"
    assert ads.charge("k2", c, "gloves-latex", "ann", 30, now=now + 5).reason == "repeat_click"  # same shopper
    assert ads.charge("k3", c, "gloves-latex", "ann", 30, now=now + 601).charged  # after the window
    assert ads.charge("k4", c, "gloves-latex", "bob", 30, now=now + 2).charged
    assert ads.spend("c1", utc_day(now)) == (90, 3)
    with pytest.raises(InvalidQuery, match="price"):
        ads.charge("k5", c, "gloves-latex", "cy", 0)


def _clicker(path: str, worker: int, clicks: int, price: int) -> None:
    store = open_event_store(f"sqlite:///{path}")
    ads = Campaigns(lambda: store)
    c = ads.get("c1")
    threads = [threading.Thread(target=lambda t=t: [ads.charge(f"w{worker}-t{t}-{i}", c, "gloves-latex",
                                                               f"w{worker}-t{t}-{i}", price)
                                                    for i in range(clicks)]) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def test_budget_never_exceeded_across_processes(tmp_path: Path) -> None:
    ads = _store(tmp_path)
    ads.create(parse_campaign({**GOOD, "id": "c1", "bid": 70, "daily_budget": 1000}, known_item=lambda i: True))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_clicker, args=(str(tmp_path / "events.db"), w, 10, 70)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    spend, clicks = ads.spend("c1", utc_day(time.time()))
    # 80 clicks of 70 were attempted against a budget of 1000: charged while they fit in it
    assert spend == clicks * 70 and 1000 - 70 < spend <= 1000


def test_budget_holds_under_8_concurrent_clients_across_2_server_workers(
        tmp_path: Path, built_index_dir: Path, models_dir: Path) -> None:
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from tests.conftest import make_config, start_server, stop_server

    index_dir = tmp_path / "indexes"
    shutil.copytree(built_index_dir, index_dir, symlinks=True)
    proc, base = start_server(make_config(index_dir, models_dir, ads_match_organic=False))  # gunicorn, 2 workers
    try:
        made = requests.post(f"{base}/v1/ads/campaigns", headers=ADS, timeout=10, json={
            "id": "c8", "advertiser": "acme", "items": ["goggles"], "bid": 60, "daily_budget": 100,
            "targeting": {"keywords": [{"text": "gloves", "match": "broad"}]}})
        assert made.status_code == 201, made.text
        time.sleep(0.5)  # both workers reload the campaigns
        tokens = []
        for _ in range(60):
            ads = requests.get(f"{base}/v1/search", params={"q": "safety gloves", "k": 1}, timeout=10).json()["sponsored"]
            tokens += [a["ad"] for a in ads]
        assert len(tokens) >= 30  # each search a new ad impression (the spend is still 0: the pacer lets it in)

        def click(token: str) -> dict[str, Any]:
            r = requests.post(f"{base}/v1/ads/clicks", json={"ad": token}, timeout=30)
            assert r.status_code == 200, r.text
            return dict(r.json())

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(click, tokens + tokens[:10]))  # and 10 repeats
        charged = [r for r in results if r["charged"]]
        price = charged[0]["price"]
        spend = requests.get(f"{base}/v1/ads/campaigns/c8", headers=ADS, timeout=10).json()["spend_today"]
        assert spend == sum(r["price"] for r in charged) and 100 - price < spend <= 100
        assert {r["reason"] for r in results if not r["charged"]} <= {"budget", "duplicate"}
    finally:
        stop_server(proc)
