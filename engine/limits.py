"""Rate limits shared by every server worker: token buckets and login back-off, in one small SQLite file
or, when the event store is PostgreSQL, in two tables of that database, shared by every server machine.

``take(key, cost, rate, burst)`` spends ``cost`` tokens from the bucket ``key`` (refilled at ``rate`` per
second up to ``burst``) or answers how long to wait. ``failed(key)`` / ``blocked_for(key)`` /
``succeeded(key)`` give exponential back-off after ``FREE_FAILURES`` failures (1 s, 2 s, 4 s, ... up to
``MAX_BACKOFF_S``). The state is a cache: the SQLite file is not synced (``synchronous=OFF``), the
PostgreSQL tables are ``UNLOGGED``; when it cannot be used at all the limiter lets requests through and
logs why, rather than take the shop down. :func:`open_limiter` picks the backend from the settings.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FREE_FAILURES = 5
MAX_BACKOFF_S = 900.0
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS failures (key TEXT PRIMARY KEY, n INTEGER NOT NULL, at REAL NOT NULL)",
)
# On PostgreSQL: unlogged (a cache, as the SQLite file), prefixed so as not to meet the event store's tables.
_PG_SCHEMA = (
    "CREATE UNLOGGED TABLE IF NOT EXISTS rate_buckets (key TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, "
    "at DOUBLE PRECISION NOT NULL)",
    "CREATE UNLOGGED TABLE IF NOT EXISTS rate_failures (key TEXT PRIMARY KEY, n INTEGER NOT NULL, "
    "at DOUBLE PRECISION NOT NULL)",
)


class RateLimiter:
    """Thread- and process-safe (one SQLite connection per thread, ``BEGIN IMMEDIATE`` per decision)."""

    BUCKETS, FAILURES, P = "buckets", "failures", "?"  # table names and the parameter placeholder
    WRITE = "BEGIN IMMEDIATE"
    ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)

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

    def _lock(self, conn: Any, key: str) -> None:
        """Serialise the decisions on ``key`` (SQLite: ``BEGIN IMMEDIATE`` has already locked the file)."""

    def _decide(self, what: str, key: str, fn: Callable[[Any], float], *, write: bool = True) -> float:
        """``fn`` in one transaction: ``WRITE`` when it may write, a plain read otherwise."""
        try:
            conn = self._conn()
            conn.execute(self.WRITE if write else "BEGIN")
            try:
                if write:
                    self._lock(conn, key)
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except self.ERRORS as e:
            log.warning("rate limits unavailable (%s): letting %s through", e, what)
            self._drop()
            return 0.0

    def close(self) -> None:
        """Close this thread's connection (a later decision opens it again)."""
        self._drop()

    def _drop(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            with suppress(*self.ERRORS):
                conn.close()

    def take(self, key: str, cost: float, rate: float, burst: float, *, now: float | None = None) -> float:
        """0.0 when ``cost`` tokens were taken from ``key``'s bucket, else the seconds until they could be
        (nothing is taken then). A cost above ``burst`` can never pass: the wait is for a full bucket."""
        t = time.time() if now is None else now

        b, p = self.BUCKETS, self.P

        def work(conn: Any) -> float:
            row = conn.execute(f"SELECT tokens, at FROM {b} WHERE key = {p}", (key,)).fetchone()
            tokens = burst if row is None else min(burst, row[0] + (t - row[1]) * rate)
            if cost > tokens:
                return max((min(cost, burst) - tokens) / rate, 1.0 / rate)
            conn.execute(f"INSERT INTO {b} VALUES ({p}, {p}, {p}) ON CONFLICT (key) DO UPDATE SET "
                         "tokens = excluded.tokens, at = excluded.at", (key, tokens - cost, t))
            return 0.0

        return self._decide("an event batch", key, work)

    def blocked_for(self, key: str, *, now: float | None = None) -> float:
        """Seconds ``key`` must still wait after its failures (0.0 when it may try)."""
        t = time.time() if now is None else now

        f, p = self.FAILURES, self.P

        def work(conn: Any) -> float:
            row = conn.execute(f"SELECT n, at FROM {f} WHERE key = {p}", (key,)).fetchone()
            if row is None or row[0] < FREE_FAILURES:
                return 0.0
            at: float = row[1]
            return max(0.0, at + backoff(row[0]) - t)

        return self._decide("a login", key, work, write=False)  # on every keyed request: a read, no write lock

    def failed(self, key: str, *, now: float | None = None) -> None:
        """Count one more failure of ``key`` (at ``now``)."""
        t = time.time() if now is None else now

        f, p = self.FAILURES, self.P

        def work(conn: Any) -> float:
            conn.execute(f"INSERT INTO {f} VALUES ({p}, 1, {p}) "
                         f"ON CONFLICT (key) DO UPDATE SET n = {f}.n + 1, at = excluded.at", (key, t))
            return 0.0

        self._decide("a failure", key, work)

    def succeeded(self, key: str) -> None:
        """Forget ``key``'s failures."""

        f, p = self.FAILURES, self.P

        def work(conn: Any) -> float:
            conn.execute(f"DELETE FROM {f} WHERE key = {p}", (key,))
            return 0.0

        self._decide("a success", key, work)


class PostgresRateLimiter(RateLimiter):
    """The same buckets and back-off in the event store's PostgreSQL database, so that every server
    machine counts against one bucket per session, IP and login key. Each write decision takes a
    transaction-level advisory lock on the key's hash, which serialises the decisions on one key across
    machines (as ``BEGIN IMMEDIATE`` does on one SQLite file) and lets other keys go on in parallel."""

    BUCKETS, FAILURES, P = "rate_buckets", "rate_failures", "%s"
    WRITE = "BEGIN"

    def __init__(self, url: str) -> None:
        import psycopg

        super().__init__(Path("."))
        self.url = url
        self.ERRORS = (psycopg.Error, OSError)
        self._opened: list[Any] = []  # every thread's connection, closed by close()
        self._opened_lock = threading.Lock()

    def close(self) -> None:
        """Close every thread's connection (a later decision connects again)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            with suppress(*self.ERRORS):
                conn.close()
        self._local = threading.local()

    def __del__(self) -> None:
        with suppress(Exception):
            self.close()

    def _conn(self) -> Any:
        import psycopg

        if os.getpid() != self._pid:
            self._pid, self._local = os.getpid(), threading.local()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                   options="-c lock_timeout=5000 -c statement_timeout=5000")
            with self._opened_lock:
                self._opened = [c for c in self._opened if not c.closed] + [conn]
            for ddl in _PG_SCHEMA:
                conn.execute(ddl)
            self._local.conn = conn
        return conn

    def _lock(self, conn: Any, key: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"vitrine-rate:{key}",))


def open_limiter(events_url: str, limits_path: Path) -> RateLimiter:
    """PostgreSQL's tables when the event store is PostgreSQL (shared by every machine), else the SQLite file
    ``limits_path`` (shared by the workers of this machine)."""
    if events_url.startswith(("postgresql://", "postgres://")):
        return PostgresRateLimiter(events_url)
    return RateLimiter(limits_path)


def backoff(failures: int) -> float:
    """Seconds locked out after ``failures`` consecutive failures: none up to ``FREE_FAILURES``, then 1 s,
    doubling, at most ``MAX_BACKOFF_S``."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(MAX_BACKOFF_S, 2.0 ** (failures - FREE_FAILURES))

