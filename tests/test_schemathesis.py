"""Schema fuzzing: schemathesis against the live OpenAPI document of a real server (gunicorn).

Every operation of ``GET /v1/openapi.json`` is fuzzed once per key scope (``SCOPES``), in the coverage
phase (boundary values, missing and invalid parameters, other methods) and the fuzzing phase (positive and
negative cases). It fails on any 5xx, an undocumented status code or content type, a body that breaks the
documented schema, and a traceback in the server's log.

Seeded and bounded: a fixed seed and ``derandomize=True`` (the same cases every run), at most
``MAX_EXAMPLES`` fuzzed cases per operation and scope (about a minute a scope, 4 minutes for the file on 2
cores), no example database, no deadline.

Routes that would do real work with the admin key, all fuzzed as generated:
- ``POST /v1/admin/rebuild``: the server may read catalogs only inside ``NOWHERE`` (``catalog_dirs``), a
  folder that does not exist, so neither a generated catalog path nor the default one (no body, no
  ``catalog``: the served version's) is ever readable: the route must answer 400 (or 401/403/429), and a
  202, a build started, fails the test;
- ``POST /v1/admin/rollback``: the private copy of the fixture index holds one version, so the route can
  only answer 404 (no earlier version) and the other routes keep their index;
- ``DELETE /v1/users/{user_id}``: it deletes shoppers of the private event database.
Wrong keys back off per client address (429): the server has its own rate-limit file (``make_config``).
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from engine.tokens import ShopperToken
from tests.conftest import (
    ADMIN_KEY, ADS_KEY, FIXTURE_CATALOG, INGEST_KEY, READ_KEY, SHOPPER_SECRET, make_config, start_server,
    stop_server,
)

# Key scopes, by name: the headers each sends. Adding a scope is one line here.
SCOPES: dict[str, dict[str, str]] = {
    "anonymous": {},
    "ingest": {"Authorization": f"Bearer {INGEST_KEY}"},
    "read": {"Authorization": f"Bearer {READ_KEY}"},
    "admin": {"Authorization": f"Bearer {ADMIN_KEY}"},
    "ads": {"Authorization": f"Bearer {ADS_KEY}"},
    "shopper": {"X-Shopper-Token": ShopperToken.sign(SHOPPER_SECRET, "fuzz-shopper", ttl_s=86400)},
}
SEED = 20240901
MAX_EXAMPLES = 50  # 100 took 100 s a scope alone on 2026-12-06 (60: 65 s, 30: 45 s); CI nears its 20 minutes
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
NOWHERE = Path("/nonexistent-vitrine-fuzz")  # the only catalog directory: no such folder
# Half the generated item ids are real ones, so that item answers are checked too, not only 404s.
ITEM_IDS = [json.loads(line)["id"] for line in FIXTURE_CATALOG.read_text(encoding="utf-8").splitlines() if line]
ITEM_FIELDS = ("path.item_id", "body.items[*]")


class ServerLog:
    """Drains the server's output pipe in a thread (a full pipe would block the server), keeping it."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        self._chunks: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True, name="server-log")
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if ready:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    return
                self._chunks.append(chunk)

    def size(self) -> int:
        return sum(map(len, self._chunks))

    def text(self, start: int = 0) -> str:
        """What the server printed, from byte ``start`` on."""
        return b"".join(self._chunks)[start:].decode("utf-8", "replace")

    def detach(self) -> str:
        """Stop draining (the rest stays in the pipe for ``stop_server``); returns what was read."""
        self._stop.set()
        self._thread.join()
        return self.text()


@pytest.fixture(scope="module")
def server(built_index_dir: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[tuple[str, ServerLog]]:
    """A real server over a private copy of the fixture index; stopped (log checked) at the end."""
    index_dir = tmp_path_factory.mktemp("fuzz") / "indexes"
    shutil.copytree(built_index_dir, index_dir, symlinks=True)
    assert not NOWHERE.exists()
    with pytest.MonkeyPatch.context() as env:  # also in the environment, whatever start_server forwards
        env.setenv("VITRINE_CATALOG_DIRS", str(NOWHERE))
        proc, base = start_server(make_config(index_dir, models_dir, catalog_dirs=[NOWHERE]))
    log = ServerLog(proc)
    try:
        yield base, log
    finally:
        drained = log.detach()
        rest = stop_server(proc)
        assert "Traceback" not in drained + rest, drained + rest


@pytest.fixture(scope="module", params=list(SCOPES))
def scope(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def api_schema(server: tuple[str, ServerLog], scope: str) -> Any:
    """The live server's OpenAPI document, loaded by schemathesis, sending the scope's key."""
    base, _ = server
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "headers": SCOPES[scope],
        "dictionaries": {"items": {"values": ITEM_IDS}},
        "parameters": {field: {"dictionary": "items", "probability": 0.5} for field in ITEM_FIELDS},
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none",
                       "with-security-parameters": False},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
                   "stateful": {"enabled": False}},
    })
    return schemathesis.openapi.from_url(f"{base}/v1/openapi.json", config=config, timeout=30)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schemas read ``node._nodeid``, which pytest 9.2 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=False,
          suppress_health_check=list(HealthCheck))  # a live server is slow by Hypothesis's measures
def test_api_conforms_to_its_schema(case: Any, server: tuple[str, ServerLog]) -> None:
    """No 5xx, documented status codes and content types, bodies valid against the schema, no traceback."""
    _, log = server
    before = log.size()
    response = case.call(timeout=30)
    if response.status_code >= 500:
        time.sleep(0.3)  # the traceback is logged before the answer; let the drain thread catch up
    printed = log.text(before)
    assert "Traceback" not in printed, f"{case.as_curl_command()}\n{printed}"
    case.validate_response(response, checks=CHECKS)
    assert response.status_code != 202, f"a rebuild started from outside catalog_dirs: {case.as_curl_command()}"
