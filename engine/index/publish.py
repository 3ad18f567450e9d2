"""The writers of ``index_dir``: publish a staged version, switch ``current``, roll back, prune.

Only :mod:`engine.pipeline` calls these, under its build lock. A version folder is complete before it
gets its final name (built as ``.staging-*``, fsynced, renamed), and ``current`` is a symlink replaced with
``os.replace`` (atomic on POSIX), so a reader sees either the old or the new version, never a half-written
one. Every switch appends to ``history.json`` (see :mod:`engine.index.versions`), and a rollback pops it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from engine.durable import fsync_dir, fsync_tree
from engine.errors import NotFound
from engine.index.versions import (CURRENT, HISTORY, MANIFEST, STAGING_PREFIX, current_version, list_versions,
                                   served_history)

MAX_HISTORY = 100


def new_version_name(content_hash: str) -> str:
    """Sortable by creation time: ``vYYYYMMDD-HHMMSS-micros-<hash8>`` (UTC)."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"v{stamp}-{int(now % 1 * 1e6):06d}-{content_hash[:8]}"


def publish(index_dir: Path, staging: Path, version: str) -> Path:
    """Make a fully written staging folder the new current version."""
    fsync_tree(staging)
    final = index_dir / version
    os.rename(staging, final)
    fsync_dir(index_dir)
    switch_current(index_dir, version, served_history(index_dir) + [version])
    return final


def switch_current(index_dir: Path, version: str, history: list[str]) -> None:
    """Point ``current`` at ``version`` atomically (symlink + rename) and record ``history`` (ending with it)."""
    if not (index_dir / version / MANIFEST).is_file():
        raise NotFound(f"version {version!r} does not exist")
    _write_history(index_dir, history[-MAX_HISTORY:])
    tmp = index_dir / f".current-{os.getpid()}-{time.monotonic_ns()}"
    os.symlink(version, tmp)
    os.replace(tmp, index_dir / CURRENT)
    fsync_dir(index_dir)


def _write_history(index_dir: Path, served: list[str]) -> None:
    tmp = index_dir / f".{HISTORY}.{os.getpid()}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump({"served": served}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, index_dir / HISTORY)


def rollback(index_dir: Path) -> tuple[str, str]:
    """Serve the version served before the current one (one step back in the history); returns (from, to)."""
    served = served_history(index_dir)
    if len(served) < 2:
        raise NotFound("no earlier version to roll back to")
    switch_current(index_dir, served[-2], served[:-1])
    return served[-1], served[-2]


def prune(index_dir: Path, keep: int) -> list[str]:
    """Delete all but ``keep`` versions: the current one and the latest history first (so that rollbacks
    keep working), then the newest others."""
    versions = list_versions(index_dir)
    kept: list[str] = []
    for v in reversed(served_history(index_dir)):
        if len(kept) < keep and v not in kept:
            kept.append(v)
    for v in reversed(versions):
        if len(kept) < keep and v not in kept:
            kept.append(v)
    now = current_version(index_dir)
    doomed = [v for v in versions if v not in kept and v != now]
    for v in doomed:
        shutil.rmtree(index_dir / v, ignore_errors=True)
    return doomed


def remove_stale_staging(index_dir: Path) -> None:
    """Remove staging folders left by killed builds (call only while holding the build lock)."""
    if index_dir.is_dir():
        for p in index_dir.iterdir():
            if p.name.startswith(STAGING_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
