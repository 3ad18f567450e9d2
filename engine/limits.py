"""Rate limits shared by every server worker: token buckets and login back-off in one small SQLite file.

``take(key, cost, rate, burst)`` spends ``cost`` tokens from the bucket ``key`` (refilled at ``rate`` per
second up to ``burst``) or answers how long to wait. ``failed(key)`` / ``blocked_for(key)`` /
``succeeded(key)`` give exponential back-off after ``FREE_FAILURES`` failures (1 s, 2 s, 4 s, ... up to
``MAX_BACKOFF_S``). The file is a cache: it is not synced (``synchronous=OFF``), and when it cannot be
used at all the limiter lets requests through and logs why, rather than take the shop down.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

FREE_FAILURES = 5
MAX_BACKOFF_S = 900.0
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS failures (key TEXT PRIMARY KEY, n INTEGER NOT NULL, at REAL NOT NULL)",
)


class RateLimiter:
    """Thread- and process-safe (one SQLite connection per thread, ``BEGIN IMMEDIATE`` per decision)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._pid = os.getpid()

    def _conn(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:
            self._pid, self._local = os.getpid(), threading.local()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = OFF")
            for ddl in _SCHEMA:
                conn.execute(ddl)
            self._local.conn = conn
        return conn

    def _decide(self, what: str, fn: Callable[[sqlite3.Connection], float], *, write: bool = True) -> float:
        """``fn`` in one transaction: ``BEGIN IMMEDIATE`` when it may write, a plain read otherwise."""
        try:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as e:
            log.warning("rate limits unavailable (%s): letting %s through", e, what)
            self._local.conn = None
            return 0.0

    def take(self, key: str, cost: float, rate: float, burst: float, *, now: float | None = None) -> float:
        """0.0 when ``cost`` tokens were taken from ``key``'s bucket, else the seconds until they could be
        (nothing is taken then). A cost above ``burst`` can never pass: the wait is for a full bucket."""
        t = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> float:
            row = conn.execute("SELECT tokens, at FROM buckets WHERE key = ?", (key,)).fetchone()
            tokens = burst if row is None else min(burst, row[0] + (t - row[1]) * rate)
            if cost > tokens:
                return max((min(cost, burst) - tokens) / rate, 1.0 / rate)
            conn.execute("INSERT INTO buckets VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                         "tokens = excluded.tokens, at = excluded.at", (key, tokens - cost, t))
            return 0.0

        return self._decide("an event batch", work)

    def blocked_for(self, key: str, *, now: float | None = None) -> float:
        """Seconds ``key`` must still wait after its failures (0.0 when it may try)."""
        t = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> float:
            row = conn.execute("SELECT n, at FROM failures WHERE key = ?", (key,)).fetchone()
            if row is None or row[0] < FREE_FAILURES:
                return 0.0
            at: float = row[1]
            return max(0.0, at + backoff(row[0]) - t)

        return self._decide("a login", work, write=False)  # on every keyed request: a read, no write lock

    def failed(self, key: str, *, now: float | None = None) -> None:
        """Count one more failure of ``key`` (at ``now``)."""
        t = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> float:
            conn.execute("INSERT INTO failures VALUES (?, 1, ?) "
                         "ON CONFLICT (key) DO UPDATE SET n = n + 1, at = excluded.at", (key, t))
            return 0.0

        self._decide("a failure", work)

    def succeeded(self, key: str) -> None:
        """Forget ``key``'s failures."""

        def work(conn: sqlite3.Connection) -> float:
            conn.execute("DELETE FROM failures WHERE key = ?", (key,))
            return 0.0

        self._decide("a success", work)


def backoff(failures: int) -> float:
    """Seconds locked out after ``failures`` consecutive failures: none up to ``FREE_FAILURES``, then 1 s,
    doubling, at most ``MAX_BACKOFF_S``."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(MAX_BACKOFF_S, 2.0 ** (failures - FREE_FAILURES))

