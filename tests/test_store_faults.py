"""A store that cannot write answers 503 ``store_unavailable``, keeps reads going and recovers without a
restart (issue 8, part 6).

The faults are real, on a private tmpfs: ``chattr +i`` on the database and its ``-wal``/``-shm`` (which
stops root too), the tmpfs remounted read-only, or the tmpfs filled up. They need root, ``mount`` and
``chattr``; without them these tests skip. Every test leaves no immutable flag and no mount behind, also
when it fails.
"""
from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest.mock import ANY

import pytest
import requests

from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.errors import StoreUnavailable
from engine.events import SQLiteEventStore, validate_many
from engine.events import store as store_mod
from engine.service import Engine
from tests.conftest import ADMIN_KEY, INGEST_KEY, make_config, start_server, stop_server

INGEST = {"Authorization": f"Bearer {INGEST_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ITEMS = ["fil-pla-red", "fil-pla-black", "goggles"]
READ_ONLY, DISK_FULL = store_mod.READ_ONLY, store_mod.DISK_FULL


def _run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60)


def _cannot_fault() -> str | None:
    if os.geteuid() != 0:
        return "needs root: chattr +i and mounting a tmpfs (as root, chmod does not stop writes)"
    missing = [tool for tool in ("mount", "umount", "chattr") if shutil.which(tool) is None]
    return f"needs {', '.join(missing)}" if missing else None


@pytest.fixture
def faultfs(tmp_path: Path) -> Iterator[Path]:
    """A private 16 MiB tmpfs for the event store; unmounted (immutable flags removed first) after the test."""
    reason = _cannot_fault()
    if reason:
        pytest.skip(reason)
    mnt = tmp_path / "faultfs"
    mnt.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", mnt)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        _run("mount", "-o", "remount,rw", mnt)
        for f in mnt.rglob("*"):
            _run("chattr", "-i", f)
        if _run("umount", mnt).returncode != 0:
            _run("umount", "-l", mnt)  # something still holds a file there: detach it anyway


@contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``chattr +i`` on those of ``paths`` that exist, ``chattr -i`` on leaving (whatever happened)."""
    done: list[Path] = []
    try:
        for p in paths:
            if p.exists():
                r = _run("chattr", "+i", p)
                if r.returncode != 0:
                    pytest.skip(f"chattr +i does not work here: {r.stderr.strip()}")
                done.append(p)
        yield
    finally:
        for p in done:
            _run("chattr", "-i", p)


@contextmanager
def disk_full(mnt: Path) -> Iterator[None]:
    """Fill the file system of ``mnt`` to the last byte; the filler goes on leaving."""
    filler = mnt / "filler"
    try:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for chunk in (1 << 20, 4096, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError:  # ENOSPC: go on with smaller pieces
                    pass
        finally:
            os.close(fd)
        st = os.statvfs(mnt)
        assert st.f_bfree == 0, "the tmpfs is not full"
        yield
    finally:
        filler.unlink(missing_ok=True)


@contextmanager
def read_only(mnt: Path) -> Iterator[None]:
    """Remount ``mnt`` read-only (nothing may hold a file there open for writing), then read-write again."""
    r = _run("mount", "-o", "remount,ro", mnt)
    assert r.returncode == 0, r.stderr
    try:
        yield
    finally:
        _run("mount", "-o", "remount,rw", mnt)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def event_objs(prefix: str, n: int, user: str = "u1") -> list[dict[str, Any]]:
    return [{"event_id": f"{prefix}-{i}", "user_id": user, "type": "view" if i % 3 else "click",
             "item_id": ITEMS[i % len(ITEMS)], "query": "x" * 200} for i in range(n)]


def events(prefix: str, n: int, user: str = "u1") -> list[Any]:
    return validate_many(event_objs(prefix, n, user), now=time.time())[0]


def db_files(db: Path) -> list[Path]:
    return [db, Path(f"{db}-wal"), Path(f"{db}-shm")]


def error_code(resp: Any) -> str:
    body = resp.get_json() if hasattr(resp, "get_json") else resp.json()
    return str(body["error"]["code"])


# --------------------------------------------------------------------------- the store


def test_immutable_store_refuses_writes_keeps_reads_and_recovers(
        faultfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "HEALTH_TTL_S", 0.0)  # no cached answers: see each change at once
    db = faultfs / "events.db"
    store = SQLiteEventStore(db)
    others: list[SQLiteEventStore] = []
    try:
        assert store.add_many(events("a", 12)).accepted and store.health() is None
        last = store.user_events("u1")[-1].seq or 0
        with immutable(*db_files(db)):
            assert store.health() == READ_ONLY
            with pytest.raises(StoreUnavailable) as err:
                store.add_many(events("b", 5))
            assert err.value.reason == READ_ONLY and str(err.value) == READ_ONLY
            with pytest.raises(StoreUnavailable):
                store.delete_user("u1")
            assert store.put_profile("u1", b"profile", last) is False  # a cache write fails soft
            assert store.count() == 12 and len(store.user_events("u1")) == 12
            assert store.get_event("a-0") is not None and store.get_event("b-0") is None
            assert store.item_stats("goggles")["counts"]["view"] + store.item_stats("goggles")["counts"]["click"] == 4
            assert store.user_stats("u1") and store.top_users(5)[0][0] == "u1"
            # Opened while immutable: SQLite opens the file read-only; the schema write at open fails soft.
            other = SQLiteEventStore(db)
            others.append(other)
            assert other.count() == 12 and other.health() == READ_ONLY
            with pytest.raises(StoreUnavailable):
                other.add_many(events("c", 5))
        # Fixed: the same objects write again (the read-only connection is replaced), nothing was half-done.
        assert store.health() is None and other.health() is None
        assert other.add_many(events("c", 5)).accepted == [f"c-{i}" for i in range(5)]
        assert store.add_many(events("b", 5)).accepted == [f"b-{i}" for i in range(5)]
        assert store.put_profile("u1", b"profile", last) is True
        assert store.count() == other.count() == 22
        assert store.delete_user("u1") == 22 and other.count() == 0
    finally:
        for s in [store, *others]:
            s.close()


def test_full_disk_rolls_back_every_batch_and_recovers(faultfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the free-space check off, SQLite itself meets the full disk: every batch of a group commit
    fails as StoreUnavailable (not "no such savepoint"), nothing of them is stored, and the connections
    work again once there is room."""
    monkeypatch.setattr(store_mod, "HEALTH_TTL_S", 0.0)
    monkeypatch.setattr(store_mod, "MIN_FREE_BYTES", 0)
    store = SQLiteEventStore(faultfs / "events.db")
    try:
        store.add_many(events("a", 3))
        last = store.user_events("u1")[-1].seq or 0
        with disk_full(faultfs):
            errors: list[BaseException] = []

            def add(prefix: str) -> None:
                try:
                    store.add_many(events(prefix, 300, user=prefix))
                except BaseException as e:  # noqa: BLE001 - collected and checked below
                    errors.append(e)

            threads = [threading.Thread(target=add, args=(f"t{i}",)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(errors) == 4 and all(isinstance(e, StoreUnavailable) for e in errors), errors
            assert {e.reason for e in errors if isinstance(e, StoreUnavailable)} == {DISK_FULL}
            assert store.count() == 3 and store.get_event("t0-0") is None
            assert store.health() == DISK_FULL
            assert store.put_profile("u1", b"p", last) is False
            assert len(store.user_events("u1")) == 3  # reads go on
        assert store.health() is None
        assert len(store.add_many(events("t0", 300, user="t0")).accepted) == 300
        assert store.count() == 303 and store.put_profile("u1", b"p", last) is True
    finally:
        store.close()


def test_a_fault_masked_by_a_failed_rollback_is_still_a_fault(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "events.db")
    try:
        masked: BaseException | None = None
        try:
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                store._conn().execute("ROLLBACK TO add_many")  # what _add_one's cleanup meets
        except sqlite3.OperationalError as e:
            masked = e
        assert masked is not None and "no such savepoint" in str(masked)
        assert store._fault_reason(masked) == DISK_FULL
        assert store._fault_reason(sqlite3.IntegrityError("UNIQUE constraint failed")) is None
    finally:
        store.close()


# --------------------------------------------------------------------------- the app (Flask test client)


def _app_client(config: EngineConfig, encoder: Encoder) -> tuple[Any, Engine]:
    from web import create_app

    engine = Engine(config, encoder=encoder)
    app = create_app({"TESTING": True, "ENGINE_CONFIG": config, "ENGINE": engine})
    return app.test_client(), engine


def test_read_only_mount_answers_503_on_writes_and_recovers(
        faultfs: Path, index_dir: Path, models_dir: Path, encoder: Encoder) -> None:
    """A read-only file system: SQLite cannot even open the (cleanly closed) WAL database, so routes that
    need shopper data answer 503 store_unavailable, search keeps answering, /healthz says degraded."""
    config = make_config(index_dir, models_dir, events_url=f"sqlite:///{faultfs / 'events.db'}")
    client, engine = _app_client(config, encoder)
    fresh: Engine | None = None
    try:
        assert client.post("/v1/events", json=event_objs("a", 4), headers=INGEST).status_code == 200
        engine.events.close()  # no file open for writing, or the remount is refused
        with read_only(faultfs):
            health = client.get("/healthz")
            assert health.status_code == 200
            assert health.get_json()["status"] == "degraded" and health.get_json()["reason"] == READ_ONLY
            assert health.get_json()["index_version"]
            resp = client.post("/v1/events", json=event_objs("b", 4), headers=INGEST)
            assert resp.status_code == 503 and error_code(resp) == "store_unavailable"
            assert READ_ONLY in resp.get_json()["error"]["message"] and resp.headers["Retry-After"]
            resp = client.delete("/v1/users/u1", headers=ADMIN)
            assert resp.status_code == 503 and error_code(resp) == "store_unavailable"
            resp = client.get("/v1/users/u1", headers=ADMIN)
            assert resp.status_code == 503 and error_code(resp) == "store_unavailable"
            assert client.get("/v1/search?q=pla+filament").status_code == 200
            # A server started now cannot open the store at all: the same answers.
            fresh_client, fresh = _app_client(config, encoder)
            assert fresh_client.get("/healthz").get_json() == health.get_json()
            resp = fresh_client.post("/v1/events", json=event_objs("b", 4), headers=INGEST)
            assert resp.status_code == 503 and error_code(resp) == "store_unavailable"
            assert fresh_client.get("/v1/search?q=pla+filament").status_code == 200
            for path in ("/v1/users/u1", "/v1/users/u1/recommendations", "/v1/items/goggles"):
                resp = fresh_client.get(path, headers=ADMIN)
                assert resp.status_code == 503 and error_code(resp) == "store_unavailable", path
        wait_until(lambda: client.post("/v1/events", json=event_objs("b", 4), headers=INGEST).status_code == 200,
                   "ingest to work again")
        wait_until(lambda: client.get("/healthz").get_json()["status"] == "ok", "healthz ok")
        assert client.get("/healthz").get_json().keys() == {"status", "index_version"}
        stats = client.get("/v1/users/u1", headers=ADMIN).get_json()
        assert sum(stats["counts"].values()) == 8, stats
    finally:
        engine.events.close()
        if fresh is not None:
            try:
                fresh.events.close()
            except StoreUnavailable:
                pass


# --------------------------------------------------------------------------- the real server


def test_server_answers_503_while_the_store_cannot_write_and_recovers_without_restart(
        faultfs: Path, config: EngineConfig) -> None:
    """gunicorn (2 workers), the store on a tmpfs: a full disk, then immutable files. Writes answer 503,
    reads 200, /healthz degraded with the reason; then the same processes take writes again, and every
    acknowledged event is on disk while no refused one is."""
    db = faultfs / "events.db"
    proc, base = start_server(config.replace(events_url=f"sqlite:///{db}"))
    acked: set[str] = set()
    refused: set[str] = set()
    batches = iter(range(10_000))

    def post() -> requests.Response:
        objs = event_objs(f"n{next(batches)}", 5)
        resp = requests.post(f"{base}/v1/events", json=objs, headers=INGEST, timeout=30)
        ids = {o["event_id"] for o in objs}
        if resp.status_code == 200:
            acked.update(resp.json()["accepted"])
        else:
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "store_unavailable", resp.text
            refused.update(ids)
        return resp

    def health() -> dict[str, Any]:
        resp = requests.get(f"{base}/healthz", timeout=30)
        assert resp.status_code == 200
        body: dict[str, Any] = resp.json()
        return body

    def reads_work() -> None:
        for path in ("/v1/search?q=pla+filament", "/v1/search?q=goggles&user=u1", "/v1/items/fil-pla-red",
                     "/v1/items/fil-pla-red/similar", "/v1/users/u1", "/v1/users/u1/recommendations",
                     "/", "/items/fil-pla-red"):
            resp = requests.get(f"{base}{path}", headers=ADMIN, timeout=30)
            assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])

    def faulted(reason: str) -> None:
        wait_until(lambda: post().status_code == 503, f"ingest to answer 503 ({reason})")
        time.sleep(store_mod.HEALTH_TTL_S + 0.1)  # by now no worker answers from a cache older than the fault
        for _ in range(4):  # whichever worker answers
            resp = post()
            assert resp.status_code == 503 and reason in resp.json()["error"]["message"]
            body = health()
            assert body == {"status": "degraded", "index_version": body["index_version"], "reason": reason}
            assert body["index_version"]
        resp = requests.delete(f"{base}/v1/users/u2", headers=ADMIN, timeout=30)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "store_unavailable"
        reads_work()

    def recovered() -> None:
        wait_until(lambda: post().status_code == 200, "ingest to work again")
        time.sleep(store_mod.HEALTH_TTL_S + 0.1)
        for _ in range(4):
            assert post().status_code == 200 and health() == {"status": "ok", "index_version": ANY}
        reads_work()

    try:
        for _ in range(3):  # 15 events for u1: a recommendation folds them and writes the profile back
            assert post().status_code == 200
        assert health()["status"] == "ok"
        with disk_full(faultfs):
            faulted(DISK_FULL)
        recovered()
        with immutable(*db_files(db)):
            faulted(READ_ONLY)
        recovered()
        user = requests.get(f"{base}/v1/users/u1", headers=ADMIN, timeout=30).json()
        assert sum(user["counts"].values()) == len(acked), user
    finally:
        stop_server(proc)
    assert refused and acked.isdisjoint(refused)
    store = SQLiteEventStore(db)
    try:
        assert store.count() == len(acked)
        assert all(store.get_event(i) is not None for i in acked)
        assert all(store.get_event(i) is None for i in refused)
    finally:
        store.close()
