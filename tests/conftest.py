"""Shared fixtures: the real model (ONNX export of the packaged MiniLM), real FAISS, real files.

The fixture catalog is indexed once per session; tests that change an index get their own copy.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import requests  # noqa: E402

from engine import pipeline  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.embedding.base import Encoder  # noqa: E402
from engine.embedding.factory import build_encoder  # noqa: E402
from engine.service import Engine  # noqa: E402
from flask import Flask  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402


class ReadOutClient(FlaskClient):
    """Flask's test client, reading each response out and closing it as a server does, unless asked not
    to (``buffered=False``): the app counts a request in flight until its response is closed (web._counted),
    and the impression flusher waits for a gap between requests."""

    def open(self, *args: Any, buffered: bool = True, **kwargs: Any) -> Any:
        return super().open(*args, buffered=buffered, **kwargs)


Flask.test_client_class = ReadOutClient

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_CATALOG = ROOT / "tests" / "fixtures" / "products.jsonl"
DEMO_CATALOG = ROOT / "data" / "demo" / "catalog.jsonl"
ADMIN_KEY = "test-admin-key-0123"
INGEST_KEY = "test-ingest-key-4567"
READ_KEY = "test-read-key-89ab"
ADS_KEY = "test-ads-key-cdef"
SHOPPER_SECRET = "test-shopper-secret-0123456789"
SECRET_KEY = "test-session-secret-0123456789"


def make_config(index_dir: Path, models_dir: Path, **overrides: Any) -> EngineConfig:
    values: dict[str, Any] = dict(
        index_dir=index_dir, models_dir=models_dir, admin_key=ADMIN_KEY, ingest_key=INGEST_KEY, read_key=READ_KEY,
        ads_key=ADS_KEY,
        secret_key=SECRET_KEY, shopper_secret=SHOPPER_SECRET,
        reload_check_seconds=0.0, events_url=f"sqlite:///{index_dir.parent / 'events.db'}",
        limits_path=index_dir.parent / "limits.db",
        data_dir=ROOT.parent / "shared" / "data",
    )
    values.update(overrides)
    return EngineConfig(**values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def encoder(models_dir: Path) -> Encoder:
    return build_encoder("onnx", cache_dir=models_dir)


@pytest.fixture(scope="session")
def built_index_dir(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, encoder: Encoder) -> Path:
    index_dir = tmp_path_factory.mktemp("built") / "indexes"
    pipeline.build(make_config(index_dir, models_dir), FIXTURE_CATALOG, encoder=encoder)
    return index_dir


@pytest.fixture
def index_dir(built_index_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the built fixture index (safe to rebuild or roll back)."""
    target = tmp_path / "indexes"
    shutil.copytree(built_index_dir, target, symlinks=True)
    return target


@pytest.fixture
def config(index_dir: Path, models_dir: Path) -> EngineConfig:
    return make_config(index_dir, models_dir)


@pytest.fixture(scope="session")
def shared_engine(built_index_dir: Path, models_dir: Path, encoder: Encoder) -> Engine:
    """Read-only engine over the session's fixture index: for tests that only query."""
    return Engine(make_config(built_index_dir, models_dir), encoder=encoder)


@pytest.fixture
def engine(config: EngineConfig, encoder: Encoder) -> Engine:
    return Engine(config, encoder=encoder)


@pytest.fixture
def app(config: EngineConfig, encoder: Encoder) -> Iterator[Any]:
    from web import create_app

    yield create_app({"TESTING": True, "ENGINE_CONFIG": config, "ENGINE": Engine(config, encoder=encoder)})


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def scientific_slice(tmp_path: Path, n_users: int) -> Path:
    """A data dir holding the first ``n_users`` shoppers of the shared Scientific set (and their items)."""
    import pandas as pd

    src = ROOT.parent / "shared" / "data" / "amazon_scientific_unisrec"
    inter = pd.read_csv(src / "interactions.csv.gz")
    part = inter[inter["user_index"].isin(sorted(inter["user_index"].unique())[:n_users])]
    items = pd.read_csv(src / "items.csv.gz", keep_default_na=False)
    out = tmp_path / "data" / "amazon_scientific_unisrec"
    out.mkdir(parents=True)
    part.to_csv(out / "interactions.csv.gz", index=False)
    items[items["item_id"].isin(set(part["item_id"]))].to_csv(out / "items.csv.gz", index=False)
    return tmp_path / "data"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test item (``item.rep_call``), so fixtures can tell a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


def start_server(config: EngineConfig) -> tuple[subprocess.Popen[str], str]:
    """`vitrine serve` (gunicorn, 2 workers) on a free port; returns once /healthz answers."""
    port = free_port()
    env = dict(os.environ, VITRINE_MODELS_DIR=str(config.models_path), VITRINE_ADMIN_KEY=ADMIN_KEY,
               VITRINE_INGEST_KEY=INGEST_KEY, VITRINE_READ_KEY=READ_KEY, VITRINE_ADS_KEY=ADS_KEY,
               VITRINE_EVENTS_URL=config.events_url, VITRINE_ADS_RELEVANCE_FLOOR=str(config.ads_relevance_floor),
               VITRINE_ADS_MATCH_ORGANIC=str(config.ads_match_organic),
               VITRINE_RELOAD_CHECK_SECONDS="0.1", VITRINE_SECRET_KEY=SECRET_KEY,
               VITRINE_SHOPPER_SECRET=SHOPPER_SECRET, VITRINE_LIMITS_PATH=str(config.limits_path),
               VITRINE_DEMO_SHOPPER_MENU="1" if config.demo_shopper_menu else "0",
               VITRINE_CATALOG_DIRS=",".join(str(d) for d in config.catalog_dirs))
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--index-dir", str(config.index_dir), "serve",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--threads", "4"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                return proc, base
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    pytest.fail("server did not start")


def stop_server(proc: subprocess.Popen[str]) -> str:
    """Terminate the server; returns what it printed, having checked it logged no traceback."""
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert "Traceback" not in (out or ""), out
    return out or ""


# --------------------------------------------------------------------------- PostgreSQL (issue 13)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The URL of a throwaway PostgreSQL: ``VITRINE_TEST_PG_URL`` (``make test`` starts one with
    scripts/pg_throwaway.sh), else one this session starts with the same script and stops at its end."""
    url = os.environ.get("VITRINE_TEST_PG_URL")
    if url:
        yield url
        return
    out = subprocess.run([str(ROOT / "scripts" / "pg_throwaway.sh"), "start"], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        pytest.fail(f"scripts/pg_throwaway.sh start failed: {out.stderr}")
    values = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    try:
        yield values["VITRINE_TEST_PG_URL"]
    finally:
        subprocess.run([str(ROOT / "scripts" / "pg_throwaway.sh"), "stop", values["PG_THROWAWAY_DIR"]], timeout=120)


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the throwaway server for one test (dropped after it)."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield pg_server.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
