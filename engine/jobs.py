"""Background rebuilds for the HTTP admin API: a child ``vitrine build`` process per job.

The child writes its progress to ``<index_dir>/jobs/<job>.json`` (atomically replaced), so any
server worker can report it, and a job whose process died is reported as failed, not running.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.errors import InvalidQuery, NotFound
from engine.pipeline import build_lock

_JOB_RE = re.compile(r"^[0-9a-f]{32}$")
# Settings a child build must share with the server that started it.
_INHERITED = (
    "index_dir", "models_dir", "encoder", "approx_threshold", "ivf_nprobe", "target_recall",
    "keep_versions", "max_seq_length", "encode_batch_size",
)


def jobs_dir(config: EngineConfig) -> Path:
    return config.index_dir / "jobs"


def write_job(path: Path, state: dict[str, Any]) -> None:
    """Replace the job file atomically (write, fsync, rename)."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def start_rebuild(config: EngineConfig, catalog: Path, *, full: bool = False) -> dict[str, Any]:
    """Start a build of ``catalog`` in a child process; returns the job's first state.

    Raises ``BuildInProgress`` if a build holds the lock right now.
    """
    if not catalog.is_file():
        raise InvalidQuery("catalog", f"no such file on the server: {catalog}")
    with build_lock(config.index_dir):
        pass  # fail fast with 409 instead of starting a child that would
    job = uuid.uuid4().hex
    folder = jobs_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job}.json"
    state = {"job": job, "state": "queued", "catalog": str(catalog), "full": full, "created_at": time.time()}
    write_job(path, state)
    env = dict(os.environ)
    for key in _INHERITED:
        if getattr(config, key) is not None:
            env[f"VITRINE_{key.upper()}"] = str(getattr(config, key))
    cmd = [sys.executable, "-m", "engine.cli", "build", "--catalog", str(catalog), "--job-file", str(path)]
    if full:
        cmd.append("--full")
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state.update(pid=proc.pid)
    write_job(path, state)
    _reap_later(proc)
    return state


def read_job(config: EngineConfig, job: str) -> dict[str, Any]:
    if not _JOB_RE.match(job):
        raise NotFound(f"unknown job {job!r}")
    path = jobs_dir(config) / f"{job}.json"
    try:
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise NotFound(f"unknown job {job!r}") from e
    if state.get("state") in ("queued", "running") and state.get("pid") and not _alive(int(state["pid"])):
        time.sleep(0.2)  # the child may have just written its final state
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("state") in ("queued", "running"):
            state.update(state="failed", error="the build process ended without finishing")
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def _reap_later(proc: subprocess.Popen[bytes]) -> None:
    import threading

    threading.Thread(target=proc.wait, daemon=True, name=f"reap-{proc.pid}").start()
