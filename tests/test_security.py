"""Issue 8's security holes, each closed and tested over HTTP (Flask's test client on a real engine):
shopper identity and tokens, key scopes, rate limits, the admin login throttle, catalog directories,
rebuild jobs (409, pruning, errors that quote nothing) and the rollback history."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from engine import jobs
from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.limits import RateLimiter, backoff, open_limiter
from engine.service import Engine
from engine.tokens import ShopperToken
from tests.conftest import ADMIN_KEY, INGEST_KEY, READ_KEY, SHOPPER_SECRET

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
INGEST = {"Authorization": f"Bearer {INGEST_KEY}"}
READ = {"Authorization": f"Bearer {READ_KEY}"}


def make_client(config: EngineConfig, encoder: Encoder) -> Any:
    from web import create_app

    return create_app({"TESTING": True, "ENGINE_CONFIG": config, "ENGINE": Engine(config, encoder=encoder)}).test_client()


def shopper(user: str, ttl_s: int = 600, now: float | None = None) -> dict[str, str]:
    return {"X-Shopper-Token": ShopperToken.sign(SHOPPER_SECRET, user, ttl_s=ttl_s, now=now)}


def view(event_id: str, user: str, item: str = "goggles", etype: str = "view") -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "type": etype, "item_id": item}


# --------------------------------------------------------------------------- shopper tokens and scopes


def test_shopper_token_acts_for_its_shopper_only(client: Any) -> None:
    me = shopper("ann")
    assert client.post("/v1/events", json=view("t1", "ann"), headers=me).get_json()["accepted"] == ["t1"]
    other = client.post("/v1/events", json=[view("t2", "ann"), view("t3", "bob")], headers=me)
    assert other.status_code == 403 and other.get_json()["error"]["field"] == "user_id"
    assert client.get("/v1/users/ann", headers=me).get_json()["counts"]["view"] == 1
    assert client.get("/v1/users/bob", headers=me).status_code == 403
    assert client.get("/v1/users/ann/recommendations", headers=me).status_code == 200
    assert client.get("/v1/users/bob/recommendations", headers=me).status_code == 403
    assert client.get("/v1/search", query_string={"q": "gloves", "user": "ann"}, headers=me).status_code == 200
    assert client.get("/v1/search", query_string={"q": "gloves", "user": "bob"}, headers=me).status_code == 403


def test_bad_shopper_tokens_are_401(client: Any) -> None:
    expired = shopper("ann", ttl_s=60, now=time.time() - 3600)
    resp = client.get("/v1/users/ann", headers=expired)
    assert resp.status_code == 401 and "expired" in resp.get_json()["error"]["message"]
    good = ShopperToken.sign(SHOPPER_SECRET, "ann")
    other_shop = ShopperToken.sign("another-shops-secret-000", "ann")
    renamed = good.replace(good.split(".")[1], ShopperToken.sign(SHOPPER_SECRET, "bob").split(".")[1])
    for token in (other_shop, renamed, "v1.garbage", "", "x" * 5000):
        assert client.get("/v1/users/ann", headers={"X-Shopper-Token": token}).status_code == 401, token
        assert client.post("/v1/events", json=view("t9", "ann"), headers={"X-Shopper-Token": token}).status_code == 401
    assert ShopperToken.verify(SHOPPER_SECRET, good).user_id == "ann"


def test_shopper_data_needs_a_read_key_or_the_shoppers_own_token(client: Any) -> None:
    client.post("/v1/events", json=view("r1", "cy"), headers=INGEST)
    for path in ("/v1/users/cy", "/v1/users/cy/recommendations", "/v1/search?q=gloves&user=cy"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=INGEST).status_code == 401, path  # ingest is not read
        assert client.get(path, headers=READ).status_code == 200, path
        assert client.get(path, headers=ADMIN).status_code == 200, path  # admin may read
    # anonymous recommendations from an item list, and search without a shopper, stay public
    assert client.post("/v1/recommendations", json={"items": ["goggles"]}).status_code == 200
    assert client.get("/v1/search?q=gloves").status_code == 200


def test_a_scope_without_a_key_is_off(config: EngineConfig, encoder: Encoder) -> None:
    client = make_client(config.replace(read_key=None, admin_key=None), encoder)
    resp = client.get("/v1/users/cy", headers=READ)
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "read_disabled"


# --------------------------------------------------------------------------- rate limits


def trending(client: Any) -> list[str]:
    return [r["id"] for r in client.post("/v1/recommendations", json={"items": [], "k": 10}).get_json()["recommendations"]]


def test_a_flood_from_one_browser_is_rate_limited_and_does_not_move_trending(app: Any, client: Any,
                                                                             config: EngineConfig) -> None:
    """Issue 8: 10,000 purchases in a second from one browser must not move trending."""
    now = time.time()
    in_stock = [p.id for p in app.extensions["vitrine"].snapshot().catalog if p.in_stock is not False]
    popular, target = in_stock[:10], in_stock[10]
    background = [dict(view(f"bg{n}-{u}-{t}", f"shopper{u}", item, t), timestamp=now - 600 - n)
                  for n, item in enumerate(popular) for u in range(2 + n % 3) for t in ("view", "purchase")]
    assert client.post("/v1/events", json=background, headers=INGEST).status_code == 200
    before = trending(client)
    assert before == sorted(before, key=popular.index) or set(before) == set(popular)
    signed = shopper("flooder")
    statuses: list[int] = []
    retry_after: set[str] = set()
    started = time.monotonic()
    for n in range(10):  # 10 requests of 1,000 purchases, then single ones, all within about a second
        resp = client.post("/v1/events", headers=signed,
                           json=[view(f"f{n}-{i}", "flooder", target, "purchase") for i in range(1000)])
        statuses.append(resp.status_code)
        retry_after.add(resp.headers.get("Retry-After", ""))
    sent = 10_000
    while time.monotonic() - started < 1.0 and sent < 10_300:
        statuses.append(client.post("/v1/events", json=view(f"s{sent}", "flooder", target, "purchase"),
                                    headers=signed).status_code)
        sent += 1
    allowed = config.events_burst_session + int(config.events_per_second_session * (time.monotonic() - started + 1))
    assert statuses.count(429) >= len(statuses) - allowed and set(statuses) <= {200, 429}
    assert "" not in retry_after and all(int(r) >= 1 for r in retry_after)
    stored = client.get("/v1/users/flooder", headers=READ).get_json()["counts"]["purchase"]
    assert 1 <= stored <= allowed
    assert trending(client) == before  # one shopper counts once per item however often they send it


@pytest.fixture(params=["sqlite", "postgresql"])
def limits_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], RateLimiter]]:
    """A factory of limiters on one shared state: the SQLite file (the workers of one machine) or the
    event store's PostgreSQL database (every machine), as ``open_limiter`` picks from the settings."""
    opened: list[RateLimiter] = []
    url = "sqlite:///unused.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")

    def make() -> RateLimiter:
        limiter = open_limiter(url, tmp_path / "limits.db")
        opened.append(limiter)
        return limiter

    yield make
    for limiter in opened:
        limiter.close()


def test_rate_limits_are_per_session_and_per_ip(limits_backend: Callable[[], RateLimiter]) -> None:
    limiter = limits_backend()
    assert limiter.take("s1", 5, rate=1.0, burst=5, now=100.0) == 0.0
    assert limiter.take("s1", 1, rate=1.0, burst=5, now=100.0) == pytest.approx(1.0)
    assert limiter.take("s2", 5, rate=1.0, burst=5, now=100.0) == 0.0  # another bucket
    assert limiter.take("s1", 2, rate=1.0, burst=5, now=102.0) == 0.0  # refilled 2 in 2 s
    assert limiter.take("s1", 50, rate=1.0, burst=5, now=1000.0) == pytest.approx(1.0)  # over the burst: never
    other = limits_backend()  # another worker process (or, on PostgreSQL, another machine) sees the same buckets
    assert other.take("s2", 1, rate=1.0, burst=5, now=100.0) > 0
    for _ in range(6):
        limiter.failed("login:1.2.3.4", now=200.0)
    assert other.blocked_for("login:1.2.3.4", now=200.5) == pytest.approx(1.5)  # 6 failures: 2 s from the last
    other.succeeded("login:1.2.3.4")
    assert limiter.blocked_for("login:1.2.3.4", now=200.5) == 0.0


def test_concurrent_takers_never_overspend_a_bucket(limits_backend: Callable[[], RateLimiter]) -> None:
    """4 limiters (as 4 workers or machines) take 1 token at a time from one bucket of 20 at the same
    instant: exactly 20 takes pass, whatever the interleaving."""
    import threading

    passed: list[int] = []
    start = threading.Barrier(4)

    def worker() -> None:
        limiter = limits_backend()
        limiter.take("warm-up", 1, rate=1.0, burst=5, now=0.0)  # connect before the race
        start.wait()
        passed.append(sum(limiter.take("shared", 1, rate=0.001, burst=20, now=500.0) == 0.0 for _ in range(10)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(passed) == 20


# --------------------------------------------------------------------------- admin login throttle


def test_admin_login_is_throttled_per_ip(client: Any) -> None:
    html = client.get("/admin").get_data(as_text=True)
    token = html.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    for _ in range(5):
        assert client.post("/admin/login", data={"key": "wrong-key-123", "csrf": token}).status_code == 401
    client.post("/admin/login", data={"key": "wrong-key-123", "csrf": token})  # the 6th failure: backing off now
    assert client.post("/admin/login", data={"key": ADMIN_KEY, "csrf": token}).status_code == 429
    api = client.get("/v1/admin/stats", headers={"Authorization": "Bearer wrong-key-123"})
    assert api.status_code == 429 and int(api.headers["Retry-After"]) >= 1
    # while backing off, even the right key is not looked at: guessing gains nothing
    assert client.get("/v1/admin/stats", headers=ADMIN).status_code == 429


def test_another_scopes_key_is_not_counted_as_a_guess(client: Any) -> None:
    for _ in range(10):
        assert client.get("/v1/admin/stats", headers=INGEST).status_code == 401
    assert client.get("/v1/admin/stats", headers=ADMIN).status_code == 200
    assert [backoff(n) for n in (4, 5, 6, 7, 30)] == [0.0, 1.0, 2.0, 4.0, 900.0]


# --------------------------------------------------------------------------- catalog directories and jobs


def wait_job(client: Any, url: str) -> dict[str, Any]:
    deadline, state = time.time() + 180, {}
    while time.time() < deadline:
        state = client.get(url, headers=ADMIN).get_json()
        if state["state"] in ("succeeded", "failed"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"job did not finish: {state}")


def test_rebuild_reads_only_catalogs_inside_the_catalog_dirs(config: EngineConfig, encoder: Encoder,
                                                             tmp_path: Path) -> None:
    shop = tmp_path / "catalogs"
    shop.mkdir()
    (shop / "escape.jsonl").symlink_to("/etc/passwd")
    client = make_client(config.replace(catalog_dirs=(shop,)), encoder)
    messages = set()
    for path in ("/etc/passwd", "/etc/no-such-file", str(shop / "escape.jsonl"), str(shop / "../../x.jsonl"),
                 str(shop / "missing.jsonl"), str(shop)):
        resp = client.post("/v1/admin/rebuild", headers=ADMIN, json={"catalog": path})
        assert resp.status_code == 400 and resp.get_json()["error"]["field"] == "catalog", path
        messages.add(resp.get_json()["error"]["message"])
    assert len(messages) == 1 and "root" not in messages.pop()  # the same answer: existence is not revealed
    # a file inside that is not a catalog: the job fails without quoting it
    secret = shop / "secret.csv"
    secret.write_text("password,token\nhunter2,s3cr3t-value\n")
    resp = client.post("/v1/admin/rebuild", headers=ADMIN, json={"catalog": str(secret)})
    assert resp.status_code == 202
    state = wait_job(client, resp.get_json()["status_url"])
    assert state["state"] == "failed" and "s3cr3t" not in json.dumps(state) and "hunter2" not in json.dumps(state)
    assert "catalog" not in state or str(secret) not in json.dumps(state)


def test_second_rebuild_while_one_is_queued_answers_409(config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    client = make_client(config.replace(catalog_dirs=(tmp_path,)), encoder)
    catalog = tmp_path / "c.jsonl"
    catalog.write_text(json.dumps({"id": "n1", "title": "Ultrasonic Cleaner 2L"}) + "\n")
    first = client.post("/v1/admin/rebuild", headers=ADMIN, json={"catalog": str(catalog)})
    assert first.status_code == 202
    second = client.post("/v1/admin/rebuild", headers=ADMIN, json={"catalog": str(catalog)})
    assert second.status_code == 409 and second.get_json()["error"]["code"] == "build_in_progress"
    assert wait_job(client, first.get_json()["status_url"])["state"] == "succeeded"
    third = client.post("/v1/admin/rebuild", headers=ADMIN, json={"catalog": str(catalog)})
    assert third.status_code == 202  # free again once the first ended
    wait_job(client, third.get_json()["status_url"])


def test_finished_job_records_are_pruned(config: EngineConfig) -> None:
    folder = jobs.jobs_dir(config)
    folder.mkdir(parents=True)
    for n in range(60):
        path = folder / f"{n:032x}.json"
        jobs.write_job(path, {"job": path.stem, "state": "succeeded", "created_at": n})
        os.utime(path, (1_000_000 + n, 1_000_000 + n))
    jobs._prune(folder)
    left = sorted(p.stem for p in folder.glob("*.json"))
    assert len(left) == jobs.KEEP_JOBS and left[0] == f"{10:032x}"


def test_background_rebuilds_inherit_the_servers_settings(config: EngineConfig) -> None:
    env = jobs.child_env(config.replace(ivf_retrain_share=0.05, ivf_nprobe=7))
    child = EngineConfig.load(env=env)
    assert (child.ivf_retrain_share, child.ivf_nprobe, child.index_dir) == (0.05, 7, config.index_dir)


def test_rollback_over_http_walks_back_the_history(config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    """A -> build B -> rollback (A) -> build C -> rollback serves A."""
    client = make_client(config.replace(catalog_dirs=(tmp_path,)), encoder)
    a = client.get("/v1/info").get_json()["version"]
    built = []
    for name in ("b", "c"):
        catalog = tmp_path / f"{name}.jsonl"
        catalog.write_text(json.dumps({"id": name, "title": f"Catalog {name} beaker"}) + "\n")
        resp = client.post("/v1/admin/rebuild", headers=ADMIN, json={"catalog": str(catalog)})
        built.append(wait_job(client, resp.get_json()["status_url"])["version"])
        assert client.post("/v1/admin/rollback", headers=ADMIN).get_json() == {"previous": built[-1], "current": a}
    versions = client.get("/v1/admin/versions", headers=ADMIN).get_json()
    assert versions["current"] == a and versions["served"] == [a] and set(built) <= set(versions["on_disk"])
    assert client.post("/v1/admin/rollback", headers=ADMIN).status_code == 404
