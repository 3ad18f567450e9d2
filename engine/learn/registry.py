"""Published learned rankers on disk, one line of versions per surface, like the index's versions.

Layout under the root (``EngineConfig.rankers_path``, default ``<index_dir>/rankers``)::

    <root>/<surface>/                      surface: "recommend" or "search"
        <surface>-<yyyymmddTHHMMSSZ>-<6 hex of the weights' sha256>/
            weights.npz  manifest.json
        current                            symlink to the served version's folder name
        history.json                       {"served": [...]}: versions in the order served, current last
        .lock                              held (fcntl) by a publisher or a rollback

A version folder is complete before it gets its final name (written as ``.staging-*``, fsynced, renamed),
and ``current`` is a symlink replaced with ``os.replace``, so a reader sees the old or the new version,
never a half-written one. :func:`publish` and :func:`rollback` take the surface's lock, so two writers do
not interleave; readers (:mod:`engine.learn.serve`) take no lock. Only the last :data:`KEEP` versions are
kept, never pruning the current one or the one a rollback would go back to.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from engine.durable import fsync_dir, fsync_tree
from engine.errors import NotFound
from engine.learn.model import WEIGHTS, MlpRanker, ModelError, manifest_json

Surface = Literal["recommend", "search"]
SURFACES: tuple[Surface, ...] = ("recommend", "search")
MANIFEST = "manifest.json"
CURRENT = "current"
HISTORY = "history.json"
LOCK = ".lock"
STAGING_PREFIX = ".staging-"
KEEP = 3
MAX_HISTORY = 100
# Keys that publish() writes itself; a caller's manifest may repeat them only with the same value.
RESERVED = ("sha256", "features", "created_at", "surface", "version")


def check_surface(surface: str) -> Surface:
    """``surface`` itself, or ValueError naming the allowed ones."""
    for s in SURFACES:
        if surface == s:
            return s
    raise ValueError(f"unknown ranker surface {surface!r}; use one of {', '.join(SURFACES)}")


def _version_re(surface: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(surface)}-\d{{8}}T\d{{6}}Z-[0-9a-f]{{6}}$")


def is_version(surface: str, name: str) -> bool:
    """Whether ``name`` is a well-formed version name of ``surface`` (no path tricks)."""
    return bool(_version_re(check_surface(surface)).match(name))


def surface_dir(root: Path, surface: str) -> Path:
    return Path(root) / check_surface(surface)


def current_version(root: Path, surface: str) -> str | None:
    """The version ``current`` points at, as written (not checked); None when nothing is published."""
    try:
        return os.readlink(surface_dir(root, surface) / CURRENT)
    except OSError:
        return None


def version_dir(root: Path, surface: str, version: str) -> Path:
    """The folder of ``version``; ValueError for a name that is not one of ``surface``'s versions."""
    if not is_version(surface, version):
        raise ValueError(f"{version!r} is not a {surface} ranker version name")
    return surface_dir(root, surface) / version


def read_manifest(root: Path, surface: str, version: str) -> dict[str, Any]:
    """The manifest of ``version``. NotFound when it is not on disk; ValueError for a bad name or a
    manifest that is not a JSON object; OSError when it cannot be read."""
    path = version_dir(root, surface, version) / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"ranker version {version!r} of {surface} does not exist") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{version}/{MANIFEST} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{version}/{MANIFEST} is not a JSON object")
    return data


def load_version(root: Path, surface: str, version: str,
                 features: Sequence[str] | None = None) -> tuple[MlpRanker, dict[str, Any]]:
    """Load ``version`` and check it: its manifest, the weights' sha256 against the manifest's, and the
    feature names (``features`` when given, and the manifest's). Raises :class:`ModelError` (a wrong or
    corrupt model), ``NotFound``, ``ValueError`` (bad name or manifest) or ``OSError``."""
    folder = version_dir(root, surface, version)
    manifest = read_manifest(root, surface, version)
    sha = manifest.get("sha256")
    if not isinstance(sha, str):
        raise ModelError(f"{version}/{MANIFEST} has no sha256 of the weights")
    if manifest.get("surface", surface) != surface or manifest.get("version", version) != version:
        raise ModelError(f"{version}/{MANIFEST} describes {manifest.get('surface')}/{manifest.get('version')}")
    model = MlpRanker.load(folder, sha256=sha, features=features)
    if manifest.get("features") != list(model.features):
        raise ModelError(f"{version}/{MANIFEST} lists other features than {WEIGHTS}")
    return model, manifest


def served_history(root: Path, surface: str) -> list[str]:
    """Versions in the order they were served, the current one last, keeping only those still on disk."""
    folder = surface_dir(root, surface)
    on_disk = set(_on_disk(root, surface))
    try:
        raw = json.loads((folder / HISTORY).read_text(encoding="utf-8"))
        served = [v for v in raw.get("served", []) if isinstance(v, str) and v in on_disk]
    except (OSError, ValueError, AttributeError):
        served = []
    current = current_version(root, surface)
    if current is not None and current in on_disk and (not served or served[-1] != current):
        served.append(current)
    return served


def list_versions(root: Path, surface: str) -> list[dict[str, Any]]:
    """Every version on disk, oldest first: its manifest plus ``version`` and ``current`` (bool); a version
    whose manifest cannot be read has ``error`` instead of the manifest's keys."""
    now = current_version(root, surface)
    out: list[dict[str, Any]] = []
    for v in _on_disk(root, surface):
        try:
            entry = read_manifest(root, surface, v)
        except (OSError, ValueError, NotFound) as e:
            entry = {"error": str(e)}
        entry.update(version=v, current=v == now)
        out.append(entry)
    return out


def publish(root: Path, surface: str, model: MlpRanker, manifest: dict[str, Any]) -> str:
    """Publish ``model`` as the new current version of ``surface``; returns the version name.

    ``manifest`` holds the caller's keys (``training``: span, rows, lists, data; ``metrics``; ...), to
    which ``sha256``, ``features``, ``created_at``, ``surface``, ``version`` and ``model`` are added. The
    version is loaded back and checked before ``current`` moves; ModelError if that fails (nothing is
    published then). Then all but the last :data:`KEEP` versions are deleted. Safe across threads and
    processes (the surface's lock)."""
    surface = check_surface(surface)
    model.check()
    for key in RESERVED:
        if key in manifest and key != "features":
            raise ValueError(f"manifest key {key!r} is set by publish(); leave it out")
    if "features" in manifest and list(manifest["features"]) != list(model.features):
        raise ValueError("manifest 'features' differ from the model's features")
    folder = surface_dir(root, surface)
    folder.mkdir(parents=True, exist_ok=True)
    with _lock(folder):
        _remove_staging(folder)
        staging = folder / f"{STAGING_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
        staging.mkdir()
        try:
            sha = model.save(staging)
            when = datetime.now(timezone.utc)
            version = f"{surface}-{when:%Y%m%dT%H%M%SZ}-{sha[:6]}"
            while (folder / version).exists():  # the same weights again within a second: next free second
                when = when.replace(microsecond=0) + timedelta(seconds=1)
                version = f"{surface}-{when:%Y%m%dT%H%M%SZ}-{sha[:6]}"
            full: dict[str, Any] = {"model": model.describe(), **manifest, "sha256": sha,
                                    "features": list(model.features), "surface": surface, "version": version,
                                    "created_at": when.isoformat(timespec="microseconds")}
            (staging / MANIFEST).write_text(manifest_json(full), encoding="utf-8")
            fsync_tree(staging)
            os.rename(staging, folder / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(folder)
        try:
            load_version(root, surface, version, model.features)
        except (ModelError, ValueError, OSError) as e:
            shutil.rmtree(folder / version, ignore_errors=True)
            raise ModelError(f"the published {version} does not load back, not serving it: {e}") from e
        _switch(folder, version, served_history(root, surface) + [version])
        _prune(root, surface)
    return version


def rollback(root: Path, surface: str) -> str:
    """Serve the version served before the current one (one step back in the history); returns it.
    NotFound when there is no earlier version; ModelError when it no longer loads (nothing changes)."""
    surface = check_surface(surface)
    folder = surface_dir(root, surface)
    folder.mkdir(parents=True, exist_ok=True)
    with _lock(folder):
        served = served_history(root, surface)
        if len(served) < 2:
            raise NotFound(f"no earlier {surface} ranker to roll back to")
        target = served[-2]
        load_version(root, surface, target)
        _switch(folder, target, served[:-1])
    return target


# -- helpers -------------------------------------------------------------------------------------
def _on_disk(root: Path, surface: str) -> list[str]:
    """Version folders with a manifest, oldest first (names sort by creation second; the manifest's
    ``created_at`` orders versions made within the same second)."""
    folder = surface_dir(root, surface)
    if not folder.is_dir():
        return []
    pattern = _version_re(surface)
    names = [p.name for p in folder.iterdir() if pattern.match(p.name) and (p / MANIFEST).is_file()]

    def created(name: str) -> tuple[str, str]:
        try:
            stamp = json.loads((folder / name / MANIFEST).read_text(encoding="utf-8")).get("created_at", "")
        except (OSError, ValueError, AttributeError):
            stamp = ""
        return name.split("-")[1], str(stamp)

    return sorted(names, key=created)


@contextmanager
def _lock(folder: Path) -> Iterator[None]:
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _switch(folder: Path, version: str, history: list[str]) -> None:
    """Record ``history`` (ending with ``version``), then point ``current`` at ``version`` atomically."""
    tmp = folder / f".{HISTORY}.{os.getpid()}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump({"served": history[-MAX_HISTORY:]}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / HISTORY)
    link = folder / f".{CURRENT}-{os.getpid()}-{time.monotonic_ns()}"
    os.symlink(version, link)
    os.replace(link, folder / CURRENT)
    fsync_dir(folder)


def _prune(root: Path, surface: str) -> list[str]:
    """Delete all but :data:`KEEP` versions: the latest of the history first (the current one and the one a
    rollback goes to), then the newest others."""
    versions = _on_disk(root, surface)
    kept: list[str] = []
    for v in reversed(served_history(root, surface)):
        if len(kept) < KEEP and v not in kept:
            kept.append(v)
    for v in reversed(versions):
        if len(kept) < KEEP and v not in kept:
            kept.append(v)
    now = current_version(root, surface)
    doomed = [v for v in versions if v not in kept and v != now]
    folder = surface_dir(root, surface)
    for v in doomed:
        shutil.rmtree(folder / v, ignore_errors=True)
    return doomed


def _remove_staging(folder: Path) -> None:
    """Staging folders left by killed publishers (call only while holding the lock)."""
    for p in folder.iterdir():
        if p.name.startswith(STAGING_PREFIX):
            shutil.rmtree(p, ignore_errors=True)


