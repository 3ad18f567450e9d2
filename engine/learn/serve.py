"""The learned rankers a server process serves, hot-reloaded from :mod:`engine.learn.registry`.

``Rankers.get(surface)`` looks at the surface's ``current`` pointer at most every ``check_s`` seconds and
loads the version it names when it moved. A version that does not load (corrupt or replaced weights, a bad
manifest, features other than this engine's) is refused with a warning and the model loaded before keeps
serving; the refusal is kept (:meth:`Rankers.last_error`) and not retried until the pointer moves again.
With nothing published ``get`` returns None and the caller serves the tuned blend. Removing the pointer
turns the model off the same way.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from engine.errors import NotFound
from engine.learn import registry
from engine.learn.model import MlpRanker, ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedRanker:
    """One loaded, checked version: never changes once made (a reload makes a new one)."""

    version: str
    model: MlpRanker
    manifest: dict[str, Any]


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    loaded: LoadedRanker | None = None
    checked_at: float | None = None
    refused: str | None = None  # the pointer's value whose load failed (not retried while it stays)
    error: str | None = None


class Rankers:
    """The served model of each surface in one process. Thread-safe: ``get`` never waits for a load;
    while another thread loads, it answers the model loaded before (or None)."""

    def __init__(self, root: Path, *, features: Mapping[str, Sequence[str]], check_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``root``: ``EngineConfig.rankers_path``. ``features``: surface -> this engine's feature names
        (``RECOMMEND_FEATURES``, ``SEARCH_FEATURES``); a model made for other features is refused.
        ``check_s``: at most this often (seconds) the pointer is looked at (``reload_check_seconds``)."""
        if check_s < 0:
            raise ValueError(f"check_s must be >= 0, got {check_s}")
        self.root = Path(root)
        self.check_s = check_s
        self._features = {registry.check_surface(s): tuple(names) for s, names in features.items()}
        self._clock = clock
        self._states = {s: _State() for s in self._features}

    def get(self, surface: str) -> LoadedRanker | None:
        """The model to rank ``surface`` with, or None (nothing published: serve the blend)."""
        state = self._state(surface)
        now = self._clock()
        if state.checked_at is not None and now - state.checked_at < self.check_s:
            return state.loaded
        if not state.lock.acquire(blocking=False):
            return state.loaded  # another thread is checking or loading
        try:
            state.checked_at = now
            self._refresh(surface, state)
            return state.loaded
        finally:
            state.lock.release()

    def last_error(self, surface: str) -> str | None:
        """Why the version ``current`` names was refused, or None when it serves (or nothing is published)."""
        return self._state(surface).error

    def _state(self, surface: str) -> _State:
        try:
            return self._states[registry.check_surface(surface)]
        except KeyError:
            raise ValueError(f"no features were given for the {surface} ranker") from None

    def _refresh(self, surface: str, state: _State) -> None:
        version = registry.current_version(self.root, surface)
        if version is None:
            if state.loaded is not None:
                log.info("no %s ranker published any more; serving the blend", surface)
            state.loaded, state.refused, state.error = None, None, None
            return
        if state.loaded is not None and version == state.loaded.version:
            state.refused, state.error = None, None  # e.g. rolled back from a refused version
            return
        if version == state.refused:
            return
        try:
            features = self._features[registry.check_surface(surface)]
            model, manifest = registry.load_version(self.root, surface, version, features)
        except (ModelError, NotFound, OSError, ValueError) as e:
            served = state.loaded.version if state.loaded is not None else "the blend"
            state.refused = version
            state.error = f"{surface} ranker {version} refused: {e}"
            log.warning("cannot serve %s ranker %s, still serving %s: %s", surface, version, served, e)
            return
        state.loaded = LoadedRanker(version, model, manifest)
        state.refused, state.error = None, None
        log.info("serving %s ranker %s", surface, version)
