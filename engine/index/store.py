"""Index versions on disk: ``<index_dir>/<version>/`` folders and an atomic ``current`` pointer.

Layout of one version: ``manifest.json``, ``items.jsonl``, ``vectors.npy``, ``vectors.faiss``,
``bm25/``. A version folder is complete before it gets its final name (built as ``.staging-*``,
fsynced, renamed), and ``current`` is a symlink replaced with ``os.replace`` (atomic on POSIX),
so a reader sees either the old or the new version, never a half-written one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from engine.errors import IndexNotBuilt, NotFound

MANIFEST = "manifest.json"
CURRENT = "current"
STAGING_PREFIX = ".staging-"
_VERSION_RE = re.compile(r"^v\d{8}-\d{6}-\d{6}-[0-9a-f]{8}$")


def new_version_name(content_hash: str) -> str:
    """Sortable by creation time: ``vYYYYMMDD-HHMMSS-micros-<hash8>`` (UTC)."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"v{stamp}-{int(now % 1 * 1e6):06d}-{content_hash[:8]}"


def list_versions(index_dir: Path) -> list[str]:
    """Published versions, oldest first."""
    if not index_dir.is_dir():
        return []
    return sorted(p.name for p in index_dir.iterdir() if _VERSION_RE.match(p.name) and (p / MANIFEST).is_file())


def current_version(index_dir: Path) -> str | None:
    try:
        return os.readlink(index_dir / CURRENT)
    except (FileNotFoundError, OSError):
        return None


def current_dir(index_dir: Path) -> Path:
    version = current_version(index_dir)
    if version is None or not (index_dir / version / MANIFEST).is_file():
        raise IndexNotBuilt(f"no index published in {index_dir}; run `vitrine build --catalog FILE`")
    return index_dir / version


def read_manifest(version_dir: Path) -> dict[str, Any]:
    with (version_dir / MANIFEST).open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (and ``root`` itself)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(index_dir: Path, staging: Path, version: str) -> Path:
    """Make a fully written staging folder the new current version."""
    fsync_tree(staging)
    final = index_dir / version
    os.rename(staging, final)
    _fsync_dir(index_dir)
    switch_current(index_dir, version)
    return final


def switch_current(index_dir: Path, version: str) -> None:
    """Point ``current`` at ``version`` atomically (symlink + rename)."""
    if not (index_dir / version / MANIFEST).is_file():
        raise NotFound(f"version {version!r} does not exist in {index_dir}")
    tmp = index_dir / f".current-{os.getpid()}-{time.monotonic_ns()}"
    os.symlink(version, tmp)
    os.replace(tmp, index_dir / CURRENT)
    _fsync_dir(index_dir)


def rollback(index_dir: Path) -> tuple[str, str]:
    """Point ``current`` at the newest version older than it; returns (from, to)."""
    now = current_version(index_dir)
    versions = list_versions(index_dir)
    older = [v for v in versions if now is None or v < now]
    if now is None or not older:
        raise NotFound("no earlier version to roll back to")
    switch_current(index_dir, older[-1])
    return now, older[-1]


def prune(index_dir: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never the current one; also dead staging folders."""
    now = current_version(index_dir)
    versions = list_versions(index_dir)
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != now]
    for v in doomed:
        shutil.rmtree(index_dir / v, ignore_errors=True)
    return doomed


def remove_stale_staging(index_dir: Path) -> None:
    """Remove staging folders left by killed builds (call only while holding the build lock)."""
    if index_dir.is_dir():
        for p in index_dir.iterdir():
            if p.name.startswith(STAGING_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
