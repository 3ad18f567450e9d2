"""Index versions on disk, read-only: ``<index_dir>/<version>/`` folders, the ``current`` pointer and the
history of versions served.

Layout of one version: ``manifest.json``, ``items.jsonl``, ``vectors.npy``, ``vectors.faiss``, ``bm25/``.
``history.json`` lists the versions in the order they were served (the last is current); a rollback goes
back one step in it. Only :mod:`engine.index.publish` (used by ``engine.pipeline``) writes any of this.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from engine.errors import IndexNotBuilt

MANIFEST = "manifest.json"
CURRENT = "current"
HISTORY = "history.json"
STAGING_PREFIX = ".staging-"
VERSION_RE = re.compile(r"^v\d{8}-\d{6}-\d{6}-[0-9a-f]{8}$")


def list_versions(index_dir: Path) -> list[str]:
    """Published versions on disk, oldest first."""
    if not index_dir.is_dir():
        return []
    return sorted(p.name for p in index_dir.iterdir() if VERSION_RE.match(p.name) and (p / MANIFEST).is_file())


def current_version(index_dir: Path) -> str | None:
    try:
        return os.readlink(index_dir / CURRENT)
    except OSError:
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


def served_history(index_dir: Path) -> list[str]:
    """Versions in the order they were served, the current one last, keeping only those still on disk.

    An index directory from before the history was kept starts from its versions up to the current one."""
    on_disk = set(list_versions(index_dir))
    current = current_version(index_dir)
    try:
        raw = json.loads((index_dir / HISTORY).read_text(encoding="utf-8"))
        served = [v for v in raw.get("served", []) if isinstance(v, str)]
    except (OSError, ValueError, AttributeError):
        served = sorted(v for v in on_disk if current is not None and v <= current)
    served = [v for v in served if v in on_disk]
    if current is not None and (not served or served[-1] != current):
        served.append(current)
    return served
