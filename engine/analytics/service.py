"""The analytics facade the Engine holds: what ``web/analytics.py`` and ``vitrine analytics`` call."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from engine.analytics.dp import Laplace, PrivacyBudget, secure_rng
from engine.analytics.mirror import Mirror
from engine.analytics.reports import REPORTS, RUN, SENSITIVITY, Report, parse_params
from engine.errors import IndexNotBuilt, WarmingUp
from engine.events import EventStore
from engine.snapshot import Snapshot

log = logging.getLogger(__name__)
CatalogSource = Callable[[], tuple[str, Callable[[], Iterable[tuple[str, str]]]]]


class Analytics:
    """Reports over a columnar copy of the event store, optionally differentially private.

    ``catalog()`` gives ``(version, items)`` with ``items()`` yielding ``(item_id, category path)``.
    Thread-safe (one lock around the copy). ``rng``: the noise generator (default: seeded from
    ``os.urandom`` per request); tests pass a seeded one.

    The first report of a process copies the whole store (146 s at 10M events on the bench machine); the
    server starts that copy in the background at start-up (:meth:`warm`, setting ``analytics_warm``). A report
    asked while it runs waits up to ``warm_wait_s``, then gets :class:`WarmingUp` (HTTP 503 with the rows
    copied so far) instead of holding a request thread for minutes.
    """

    reports = REPORTS

    def __init__(self, store: Callable[[], EventStore], catalog: CatalogSource, *, daily_budget: float,
                 cache_path: Path | None = None, rng: Callable[[], np.random.Generator] = secure_rng,
                 window_s: float = 1800.0, warm_wait_s: float = 5.0) -> None:
        self._store = store
        self._warming: threading.Thread | None = None
        self._warm_lock = threading.Lock()
        self._warm_wait_s = warm_wait_s
        self._catalog = catalog
        self._rng = rng
        self._cache_path = cache_path
        self._mirror: Mirror | None = None
        self._window_s = window_s  # attribution_window_minutes: events without a request_id
        self.budget = PrivacyBudget(store, daily_budget)

    @property
    def mirror(self) -> Mirror:
        if self._mirror is None:
            self._mirror = Mirror(self._cache_path, window_s=self._window_s)
        return self._mirror

    def warm(self) -> threading.Thread:
        """Start copying the store in a background thread (once); reports wait for it (see the class)."""
        with self._warm_lock:
            if self._warming is None:
                def run() -> None:
                    started = time.perf_counter()
                    try:
                        copied = self.refresh()
                        log.info("analytics copy warm: %d events in %.1f s", copied, time.perf_counter() - started)
                    except Exception as e:  # noqa: BLE001 - the first report retries and raises it to its caller
                        log.warning("analytics warm-up failed (the first report will retry): %s", e)
                self._warming = threading.Thread(target=run, name="analytics-warm", daemon=True)
                self._warming.start()
            return self._warming

    def _wait_warm(self) -> None:
        thread = self._warming
        if thread is None or not thread.is_alive():
            return
        thread.join(self._warm_wait_s)
        if thread.is_alive():
            copied = self.mirror.copied
            raise WarmingUp(f"the analytics copy of the event store is still warming up ({copied} rows copied so "
                            "far); retry shortly", {"rows_copied": copied})

    def refresh(self, *, show_progress: bool = False) -> int:
        """Copy new events (and drop deleted shoppers' ones); returns the number of events copied."""
        version, items = self._catalog()
        self.mirror.set_catalog(version, items)
        return self.mirror.sync(self._store(), show_progress=show_progress)

    def report(self, name: str, args: Mapping[str, Any], *, key: str = "admin", now: float | None = None) -> Report:
        """Validate ``args`` (``InvalidQuery`` naming the field), spend the DP budget if ``dp_epsilon`` is
        given (``PrivacyBudgetExhausted`` when short), then compute the report on fresh data.
        ``WarmingUp`` while the start-up copy runs, before any budget is spent."""
        params = parse_params(name, args, now=now)
        self._wait_warm()
        spent = None
        if params.dp_epsilon is not None:
            spent = self.budget.spend(key, params.dp_epsilon, now=now)
        return self.compute(params, budget=spent)

    def compute(self, params: Any, *, budget: dict[str, Any] | None = None,
                rng: np.random.Generator | None = None) -> Report:
        """The report of already validated ``params``; no budget is spent here (see :meth:`report`)."""
        self.refresh()
        lap = None
        if params.dp_epsilon is not None:
            lap = Laplace(params.dp_epsilon, SENSITIVITY[params.report](params), rng or self._rng())
        m = self.mirror
        with m.lock:
            started = time.perf_counter()
            report = RUN[params.report](m.con, params, lap, m.categories())
            elapsed = time.perf_counter() - started
        if report.dp is not None and budget is not None:
            report.dp["budget"] = budget
        report.notes.append(f"computed in {elapsed * 1000:.0f} ms over events up to seq {m.last_seq}")
        return report

    def privacy(self, key: str = "admin", *, now: float | None = None) -> dict[str, Any]:
        """The key's budget today, its history, and each report's stated sensitivity."""
        body = self.budget.status(key, now=now)
        body["sensitivity"] = {
            "funnel": SENSITIVITY["funnel"](None),  # type: ignore[arg-type]
            "search": SENSITIVITY["search"](None),  # type: ignore[arg-type]
            "cohorts": "weeks (default 8)", "rfm": 1.0, "movers": SENSITIVITY["movers"](None),  # type: ignore[arg-type]
        }
        return body

    def close(self) -> None:
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None


def snapshot_catalog(snapshot: Callable[[], Snapshot]) -> CatalogSource:
    """The served catalog's ``(version, items)``; an empty catalog while no index is built."""
    def source() -> tuple[str, Callable[[], Iterable[tuple[str, str]]]]:
        try:
            snap = snapshot()
        except IndexNotBuilt:
            return "", lambda: ()
        return snap.version, lambda: ((p.id, p.category_path) for p in snap.catalog)
    return source
