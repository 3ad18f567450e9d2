"""The operator's side of a running engine: versions and their history, the full manifest, rollback, and
background rebuilds restricted to the configured catalog directories.

``Admin`` reads ``index_dir`` and changes it only through :mod:`engine.pipeline` (rollback under the build
lock) and :mod:`engine.jobs` (a child ``vitrine build``). Safe to share between threads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import jobs, pipeline
from engine.config import EngineConfig
from engine.errors import IndexNotBuilt, InvalidQuery
from engine.index import versions

MAX_PATH_CHARS = 4096


@dataclass(frozen=True)
class Versions:
    """``current``: the served version; ``served``: the history a rollback walks back, oldest first (the
    current one last); ``on_disk``: every published version kept, oldest first."""

    current: str | None
    served: list[str]
    on_disk: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"current": self.current, "served": self.served, "on_disk": self.on_disk}


@dataclass(frozen=True)
class Rollback:
    previous: str
    current: str

    def to_dict(self) -> dict[str, Any]:
        return {"previous": self.previous, "current": self.current}


class Admin:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config

    def versions(self) -> Versions:
        index_dir = self.config.index_dir
        return Versions(versions.current_version(index_dir), versions.served_history(index_dir),
                        versions.list_versions(index_dir))

    def manifest(self) -> dict[str, Any]:
        """The served version's whole manifest (paths, hashes, build figures): for the admin key only."""
        return versions.read_manifest(versions.current_dir(self.config.index_dir))

    def rollback(self) -> Rollback:
        """Serve the version served before the current one (``NotFound`` without one, 409 during a build)."""
        old, new = pipeline.rollback(self.config)
        return Rollback(old, new)

    def catalog_dirs(self) -> list[Path]:
        """Where rebuilds may read catalogs: ``catalog_dirs``, else the folder of the catalog the current
        version was built from and ``data/``; resolved (symlinks followed)."""
        dirs = list(self.config.catalog_dirs)
        if not dirs:
            current = self._current_catalog()
            dirs = ([current.parent] if current is not None else []) + [Path("data")]
        return [Path(os.path.realpath(d)) for d in dirs]

    def check_catalog(self, catalog: str | None) -> Path:
        """The catalog a rebuild reads: ``catalog`` resolved inside a catalog directory, or the current
        version's catalog (or the ``catalog`` setting) when None. Anything else is ``InvalidQuery`` with the
        same message whether or not the file exists."""
        if catalog is None:
            default = self._current_catalog() or self.config.catalog
            if default is None:
                raise InvalidQuery("catalog", "give the catalog file (no index published yet to take it from)")
            catalog = str(default)
        refused = InvalidQuery("catalog", "must name a catalog file inside the configured catalog directories "
                                          "(catalog_dirs)")
        if not isinstance(catalog, str) or not catalog.strip() or len(catalog) > MAX_PATH_CHARS or "\0" in catalog:
            raise refused
        try:
            path = Path(os.path.realpath(catalog))
        except (OSError, ValueError):
            raise refused from None
        if not any(path.is_relative_to(d) for d in self.catalog_dirs()) or not path.is_file():
            raise refused
        return path

    def start_rebuild(self, catalog: str | None = None, *, full: bool = False) -> dict[str, Any]:
        """Start a background build (see :mod:`engine.jobs`); 409 while another is queued or running."""
        return jobs.start_rebuild(self.config, self.check_catalog(catalog), full=full)

    def job(self, job_id: str) -> dict[str, Any]:
        return jobs.read_job(self.config, job_id)

    def _current_catalog(self) -> Path | None:
        try:
            return Path(self.manifest()["catalog"]["path"])
        except (OSError, ValueError, KeyError, TypeError, IndexNotBuilt):
            return None
