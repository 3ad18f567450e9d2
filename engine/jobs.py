"""Background rebuilds for the HTTP admin API: a child ``vitrine build`` process per job.

The child writes its progress to ``<index_dir>/jobs/<job>.json`` (atomically replaced), so any
server worker can report it, and a job whose process died is reported as failed, not running. At most
one job is queued or running at a time (checked under a lock on the jobs folder, across workers), and
the records of the last ``KEEP_JOBS`` jobs are kept. The child's own log goes to ``<job>.log`` beside
the record, never into it: a job's ``error`` is written for the admin page and does not quote files.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.errors import BuildInProgress, CatalogError, NotFound
from engine.pipeline import build_lock
from engine.process import process_alive

KEEP_JOBS = 50
ACTIVE = ("queued", "running")

_JOB_RE = re.compile(r"^[0-9a-f]{32}$")
# Settings a child build must share with the server that started it.
_INHERITED = (
    "index_dir", "models_dir", "encoder", "approx_threshold", "ivf_nprobe", "target_recall", "index_bytes_per_item",
    "keep_versions", "max_seq_length", "encode_batch_size", "ivf_retrain_share",
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


@contextmanager
def _jobs_lock(folder: Path) -> Iterator[None]:
    """Serialises starting jobs across threads and worker processes."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def start_rebuild(config: EngineConfig, catalog: Path, *, full: bool = False) -> dict[str, Any]:
    """Start a build of ``catalog`` (already checked by the caller) in a child process; returns the job's
    first state. Raises ``BuildInProgress`` if a job is queued or running, or a build holds the lock."""
    folder = jobs_dir(config)
    with _jobs_lock(folder):
        for other in _job_files(folder):
            state = _read_state(config, other.stem)
            if state is not None and state.get("state") in ACTIVE:
                raise BuildInProgress(f"rebuild job {other.stem} is {state['state']}; wait for it to finish")
        with build_lock(config.index_dir):
            pass  # a build started from the command line: fail fast with 409 instead of a failed job
        job = uuid.uuid4().hex
        path = folder / f"{job}.json"
        state = {"job": job, "state": "queued", "full": full, "created_at": time.time()}
        write_job(path, state)
        env = child_env(config)
        cmd = [sys.executable, "-m", "engine.cli", "build", "--quiet", "--catalog", str(catalog),
               "--job-file", str(path)]
        if full:
            cmd.append("--full")
        with (folder / f"{job}.log").open("wb") as log:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        state.update(pid=proc.pid)
        write_job(path, state)
        _prune(folder)
    threading.Thread(target=proc.wait, daemon=True, name=f"reap-{proc.pid}").start()
    return state


def job_error(e: BaseException) -> str:
    """What a failed job says to the admin API: the kind of failure, never the file's content (the child's
    log, ``<job>.log`` on the server, has the details)."""
    if isinstance(e, CatalogError):
        return "the catalog file could not be read as a catalog (see `vitrine catalog check` on the server)"
    if isinstance(e, BuildInProgress):
        return "another build was running"
    return f"the build failed ({type(e).__name__}); see the job's log on the server"


def child_env(config: EngineConfig) -> dict[str, str]:
    """The environment of a child build: the server's own, with the settings a build must share with it."""
    env = dict(os.environ)
    for key in _INHERITED:
        value = getattr(config, key)
        if value is not None:
            env[f"VITRINE_{key.upper()}"] = str(getattr(value, "value", value))
    return env


def _job_files(folder: Path) -> list[Path]:
    """Job records, oldest first."""
    files = [p for p in folder.glob("*.json") if _JOB_RE.match(p.stem)]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


def _prune(folder: Path) -> None:
    """Keep the records (and logs) of the last ``KEEP_JOBS`` jobs."""
    for old in _job_files(folder)[:-KEEP_JOBS]:
        old.unlink(missing_ok=True)
        old.with_suffix(".log").unlink(missing_ok=True)


def _read_state(config: EngineConfig, job: str) -> dict[str, Any] | None:
    try:
        return read_job(config, job)
    except (NotFound, ValueError):
        return None


def read_job(config: EngineConfig, job: str) -> dict[str, Any]:
    """The job's state (see ``Job`` in web/openapi.py); a job whose process died is ``failed``."""
    if not _JOB_RE.match(job):
        raise NotFound(f"unknown job {job!r}")
    path = jobs_dir(config) / f"{job}.json"
    try:
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise NotFound(f"unknown job {job!r}") from e
    if state.get("state") in ACTIVE and not state.get("pid") and time.time() - state.get("created_at", 0) > 60:
        state.update(state="failed", error="the build process never started")
    if state.get("state") in ACTIVE and state.get("pid") and not process_alive(int(state["pid"])):
        time.sleep(0.2)  # the child may have just written its final state
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("state") in ACTIVE:
            state.update(state="failed", error="the build process ended without finishing")
    return state
