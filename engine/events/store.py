"""Durable event storage: the :class:`EventStore` protocol and its SQLite implementation.

``open_event_store(url)`` picks a backend by URL prefix (``sqlite:///relative.db``,
``sqlite:////absolute/path.db``, ``postgresql://...``: engine/events/postgres.py, the same logic over
psycopg); :func:`register_backend` adds others.

SQLite settings: WAL journal, ``synchronous=FULL`` (a batch is on disk before ``add_many`` returns),
``secure_delete`` (deleted rows are overwritten), one connection per thread, ``BEGIN IMMEDIATE`` write
transactions with a busy timeout, so threads and processes (gunicorn workers) can share one file.
Writers also queue on a lock (a thread lock, then ``flock`` on ``<file>.lock`` across processes):
SQLite's own busy handler polls with sleeps of up to 100 ms, which made the batch p99 ten times worse.
``add_many`` calls that queue up in one process are committed together (group commit, one fsync).

Profiles are a cache derived from the events: each row holds a shopper's folded profile and the ``seq``
of the last event folded into it. Readers fold what came after (see ``Shoppers._profile`` in engine/shoppers.py) and may store
the result back with :meth:`SQLiteEventStore.put_profile`, which never waits for the write lock and
never re-creates the profile of a deleted shopper.

Faults: a store that cannot write (read-only or immutable file or folder, full disk, I/O errors) or cannot
be opened raises :class:`StoreUnavailable` from its public methods instead of SQLite's or the OS's error
(one translation, ``_guarded``); a failed transaction is rolled back and the thread's connection dropped,
so that the first call after the disk is fixed works, without a restart. Writes are refused up front while
the files are not writable or the disk is full (checked at most every ``HEALTH_TTL_S``: a connection
opened before ``chattr +i`` could still write through its open file), so every thread and process agrees.
Reads keep working while SQLite can read; the profile cache write and the schema upgrade at open fail
soft. :meth:`SQLiteEventStore.health` names the fault for a health check.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from engine.errors import ConfigError, StoreUnavailable
from engine.events import features
from engine.events.features import Categories, FeatureConfig
from engine.events.impressions import IMPRESSION_COLS, IMPRESSIONS_DDL, Impression
from engine.events.model import Event, EventType

SCHEMA_VERSION = "1"
BUSY_TIMEOUT_S = 30.0
# Checkpoint the WAL every 4000 pages (16 MB) instead of 1000: a batch dirties many scattered index
# pages, and fewer, larger checkpoints measured about 20% more events/s.
WAL_AUTOCHECKPOINT_PAGES = 4000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EVENT_COLS = "seq, event_id, user_id, type, item_id, value, query, ts, request_id, position"
# Experiments (engine.learn.experiments): one row each; ``variants`` is JSON [{name, policy, share}]. At most one
# runs per surface (a partial unique index backs add_experiment's check).
EXPERIMENTS_DDL = (
    "CREATE TABLE IF NOT EXISTS experiments (name TEXT PRIMARY KEY, surface TEXT NOT NULL, kind TEXT NOT NULL, "
    "variants TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL, stopped_at REAL, winner TEXT)"
)
_EXPERIMENT_COLS = "name, surface, kind, variants, state, created_at, stopped_at, winner"
# Off-policy estimates of candidate policies on the logged traffic (`vitrine eval ope --policy ... --record`),
# shown beside the live result of an experiment variant with the same policy.
OPE_DDL = (
    "CREATE TABLE IF NOT EXISTS ope_estimates (surface TEXT NOT NULL, policy TEXT NOT NULL, computed_at REAL NOT NULL, "
    "since REAL NOT NULL, rows INTEGER NOT NULL, estimates TEXT NOT NULL, PRIMARY KEY (surface, policy, computed_at))"
)
# Privacy (issue 12). A shopper's consent to personalization (absent: given); ``false`` keeps no profile and
# no shopper features, their events counting in the item aggregates only.
CONSENT_DDL = (
    "CREATE TABLE IF NOT EXISTS consent (user_id TEXT PRIMARY KEY, personalization INTEGER NOT NULL, "
    "updated_at REAL NOT NULL, source TEXT NOT NULL)"
)
# What a shopper's consent-off clears at once: the derived, personal state (their events stay, for aggregates).
PERSONAL_TABLES = ("profiles", "user_features", "user_categories")
# Deletion receipts: ``subject`` is an HMAC of the shopper id (key ``receipt_key`` in meta), never the id.
RECEIPTS_DDL = (
    "CREATE TABLE IF NOT EXISTS deletion_receipts (receipt TEXT PRIMARY KEY, subject TEXT NOT NULL, "
    "deleted_at REAL NOT NULL, removed TEXT NOT NULL, epoch INTEGER NOT NULL)"
)
# Tables other parts create in the event store that hold a shopper id, cleared by delete_user when present.
OPTIONAL_USER_TABLES = (("ads_clicks", "user_id"),)
# (name, surface, kind, variants JSON, state, created_at, stopped_at, winner)
ExperimentRow = tuple[str, str, str, str, str, float, float | None, str | None]

log = logging.getLogger(__name__)

# An event naming its list (request_id) may carry a timestamp this much earlier than the list's own (a
# client's clock behind the server's); attribution looks no further back for them.
CLOCK_SKEW_S = 86400.0
# health() and the check before each write (file access, free space) reuse their answer this long.
HEALTH_TTL_S = 1.0
# Less free space than this where the store lives counts as a full disk.
MIN_FREE_BYTES = 1 << 20
READ_ONLY = "event store is read-only"
DISK_FULL = "disk full"
_SQLITE_FAULTS = {  # primary result code -> reason
    sqlite3.SQLITE_READONLY: READ_ONLY, sqlite3.SQLITE_PERM: READ_ONLY, sqlite3.SQLITE_FULL: DISK_FULL,
    sqlite3.SQLITE_IOERR: "disk I/O error", sqlite3.SQLITE_CANTOPEN: "cannot open the event store",
    sqlite3.SQLITE_CORRUPT: "event store file is damaged", sqlite3.SQLITE_NOTADB: "event store file is damaged",
}
_OS_FAULTS = {errno.EROFS: READ_ONLY, errno.EACCES: READ_ONLY, errno.EPERM: READ_ONLY,
              errno.ENOSPC: DISK_FULL, errno.EDQUOT: DISK_FULL, errno.EIO: "disk I/O error"}
_EFFECTIVE_IDS = os.access in os.supports_effective_ids


@dataclass
class AddResult:
    """Event ids newly stored, and those already stored before (or earlier in the same batch)."""

    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


@dataclass
class _Pending:
    """An add_many call waiting for (or done by) the thread that commits the group."""

    events: Sequence[Event]
    categories: Categories | None
    result: AddResult | None = None
    error: BaseException | None = None


class EventStore(Protocol):
    path: Path  # the database file (side files, such as the impression spool, live beside it)

    def add_many(self, events: Sequence[Event], *, categories: Categories | None = None) -> AddResult: ...
    def get_event(self, event_id: str) -> Event | None: ...
    def add_impressions(self, rows: Sequence[Impression]) -> int: ...
    def prune_impressions(self, before: float) -> int: ...
    def get_impression(self, request_id: str) -> Impression | None: ...
    def count_impressions(self) -> int: ...
    def policy_impressions_after(self, rowid: int, prefix: str, limit: int = 5000) -> list[tuple[int, Impression]]: ...
    def exploration_counts(self, since: float, until: float | None = None) -> dict[str, tuple[int, int]]: ...
    def outcomes_after(self, seq: int, limit: int = 10000) -> tuple[list[tuple[int, str, str, float]], int]: ...
    def impressions(self, surface: str, since: float, until: float | None = None,
                    limit: int = 1_000_000) -> list[Impression]: ...
    def impression_shapes(self, since: float, until: float | None = None) -> list[tuple[str, int, int, int]]: ...
    def attributed_outcomes(self, since: float, until: float | None, *, window_s: float,
                            types: Sequence[EventType]) -> list[tuple[str, str, str, int, EventType]]: ...
    def policy_lists(self, prefix: str, since: float, until: float | None = None, *, feature: str | None = None,
                     ) -> list[tuple[str, str, str | None, int, int, list[float | None]]]: ...
    def add_experiment(self, row: ExperimentRow) -> str | None: ...
    def add_ope_estimate(self, surface: str, policy: str, computed_at: float, since: float, rows: int,
                         estimates: dict[str, Any]) -> None: ...
    def ensure_tables(self, ddls: Sequence[str]) -> None: ...
    def run_write(self, fn: Callable[[sqlite3.Connection], _R]) -> _R: ...
    def run_read(self, fn: Callable[[sqlite3.Connection], _R]) -> _R: ...
    def latest_ope_estimate(self, surface: str, policy: str) -> dict[str, Any] | None: ...
    def stop_experiment(self, name: str, stopped_at: float, winner: str | None = None) -> bool: ...
    def experiments(self, *, running: bool = False) -> list[ExperimentRow]: ...
    def get_experiment(self, name: str) -> ExperimentRow | None: ...
    def user_events(self, user_id: str, limit: int | None = None, after_seq: int = 0) -> list[Event]: ...
    def events_after(self, seq: int = 0, limit: int = 10000) -> list[Event]: ...
    def count(self) -> int: ...
    def item_stats(self, item_id: str, *, now: float | None = None) -> dict[str, Any]: ...
    def user_stats(self, user_id: str) -> dict[str, Any]: ...
    def popular_items(self, k: int, *, now: float | None = None) -> list[tuple[str, float]]: ...
    def counts_by_type_per_day(self, since: float | None = None) -> list[tuple[str, str, int]]: ...
    def count_users(self, since: float | None = None) -> int: ...
    def top_users(self, limit: int) -> list[tuple[str, int, str | None]]: ...
    def delete_user(self, user_id: str) -> int: ...
    def erase_user(self, user_id: str, receipt: tuple[str, float] | None = None) -> dict[str, int]: ...
    def get_receipt(self, receipt: str) -> dict[str, Any] | None: ...
    def receipt_traces(self, receipt: str) -> dict[str, int]: ...
    def set_consent(self, user_id: str, personalization: bool, source: str = "api") -> dict[str, Any]: ...
    def personalization(self, user_id: str) -> bool: ...
    def deletion_epoch(self) -> int: ...
    def get_profile(self, user_id: str) -> tuple[bytes, int] | None: ...
    def put_profile(self, user_id: str, data: bytes, seq: int) -> bool: ...
    def health(self) -> str | None: ...
    def close(self) -> None: ...


Opener = Callable[..., EventStore]
_BACKENDS: dict[str, Opener] = {}


def register_backend(prefix: str, opener: Opener) -> None:
    """``opener(url, config=...)`` serves every URL starting with ``prefix``."""
    _BACKENDS[prefix] = opener


def open_event_store(url: str, *, config: FeatureConfig | None = None) -> EventStore:
    """The store for ``url``; raises :class:`ConfigError` for an unknown scheme."""
    for prefix in sorted(_BACKENDS, key=len, reverse=True):
        if url.startswith(prefix):
            return _BACKENDS[prefix](url, config=config)
    raise ConfigError(f"event store: unknown URL {url!r}; use one of {', '.join(sorted(_BACKENDS))}")


_S = TypeVar("_S", bound="SQLiteEventStore")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """The store's boundary: a storage fault (read-only, full, I/O error, cannot open) leaves as
    :class:`StoreUnavailable`, after the thread's connection is dropped; other errors pass unchanged."""

    @functools.wraps(method)
    def guarded(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except self._errors as e:
            fault = self._fault(e)
            if fault is None:
                raise
            raise fault from e

    return guarded


def _upper(until: float | None) -> float:
    """An upper time bound for SQL: ``until``, or infinity for none."""
    return float("inf") if until is None else until


def _row_experiment(row: Sequence[Any]) -> ExperimentRow:
    name, surface, kind, variants, state, created_at, stopped_at, winner = row
    return (name, surface, kind, variants, state, float(created_at),
            None if stopped_at is None else float(stopped_at), winner)


class StoreTables:
    """The tables an extension of the event store keeps there (sponsored products, questions and answers):
    calling it returns the store, with ``ddl`` run once first (``CREATE ... IF NOT EXISTS``)."""

    def __init__(self, store: Callable[[], EventStore], ddl: Sequence[str]) -> None:
        self.store, self.ddl, self._ready = store, tuple(ddl), False

    def __call__(self) -> EventStore:
        events = self.store()
        if not self._ready:
            events.ensure_tables(self.ddl)
            self._ready = True
        return events


def _set_consent(conn: sqlite3.Connection, user_id: str, given: bool, source: str, now: float) -> None:
    conn.execute("INSERT INTO consent VALUES (?, ?, ?, ?) ON CONFLICT(user_id) DO UPDATE SET "
                 "personalization = excluded.personalization, updated_at = excluded.updated_at, "
                 "source = excluded.source", (user_id, int(given), now, source))
    if not given:
        for table in PERSONAL_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))


def _opted_out(conn: sqlite3.Connection, users: set[str]) -> set[str]:
    """Which of ``users`` said no to personalization."""
    out: set[str] = set()
    ids = sorted(users)
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        out.update(r[0] for r in conn.execute(
            f"SELECT user_id FROM consent WHERE personalization = 0 AND user_id IN ({','.join('?' * len(chunk))})",
            chunk))
    return out


def _row_event(row: Sequence[Any]) -> Event:
    seq, event_id, user_id, etype, item_id, value, query, ts, request_id, position = row
    return Event(event_id=event_id, user_id=user_id, type=EventType(etype), timestamp=ts,
                 item_id=item_id, value=value, query=query, seq=seq, request_id=request_id, position=position)


class SQLiteEventStore:
    """Events and their features in one SQLite file. Thread-safe and multi-process safe."""

    # The driver's errors that ``_guarded`` looks at, and those of them a cache write shrugs off (busy);
    # the PostgreSQL store (engine/events/postgres.py) swaps in psycopg's.
    _errors: tuple[type[Exception], ...] = (sqlite3.Error, OSError)
    _soft_errors: tuple[type[Exception], ...] = (sqlite3.OperationalError,)
    # How a read transaction starts (PostgreSQL: a repeatable-read, read-only snapshot).
    _begin_read = "BEGIN"

    def __init__(self, path: str | Path, *, config: FeatureConfig | None = None) -> None:
        """Open (creating it if need be) the store at ``path``; :class:`StoreUnavailable` when it cannot
        be read. One that can be read but not written opens read-only (see :meth:`_open`)."""
        self.path = Path(path)
        self.config = config or FeatureConfig()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._lock_fd = -1
        self._pending: list[_Pending] = []
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        # (table, column) pairs whose rows delete_user removes.
        self.user_tables: list[tuple[str, str]] = [("events", "user_id"), ("profiles", "user_id"),
                                                   ("impressions", "user_id"), ("consent", "user_id")]
        self.user_tables += [(t, "user_id") for t in features.USER_TABLES]
        self._schema_ok = False  # False: opened read-only, the schema is to be checked before writing
        self._os_checked: tuple[float, str | None] = (float("-inf"), None)
        self._health: tuple[float, str | None] = (float("-inf"), None)
        self._health_lock = threading.Lock()
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- connections and transactions

    def _connect(self) -> tuple[sqlite3.Connection, bool]:
        """A new connection, and whether the store was unwritable when it opened: SQLite then opens the
        file read-only, and that connection stays read-only after the file is writable again."""
        readonly = self._access_fault() is not None
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        except BaseException:
            conn.close()
            raise
        return conn, readonly

    def _conn(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:  # forked: never share the parent's connections or lock
            self._pid, self._local, self._conns, self._lock_fd = os.getpid(), threading.local(), [], -1
            self._pending = []
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "readonly", False) and self._os_fault() is None:
            self._drop_conn()  # opened while the store could not write; now it can
            conn = None
        if conn is None:
            conn, self._local.readonly = self._connect()
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _drop_conn(self) -> None:
        """Close this thread's connection (the next call opens a fresh one, which sees a repaired disk)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or os.getpid() != self._pid:
            return
        self._local.conn = None
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        with suppress(*self._errors):
            conn.close()

    def _rollback(self, conn: sqlite3.Connection) -> None:
        """End ``conn``'s failed transaction; a connection that cannot even roll back is dropped."""
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except self._errors:
                self._drop_conn()  # closing it rolls back

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the database write lock from its start."""
        with self._write_lock, self._transaction() as conn:
            yield conn

    @contextmanager
    def _transaction(self, *, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the cross-process lock; the caller holds ``_write_lock``.
        ``wait=False``: ``BlockingIOError`` when another process holds that lock."""
        conn = self._conn()
        if self._lock_fd < 0:
            self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement inside sees the same snapshot."""
        conn = self._conn()
        conn.execute(self._begin_read)
        try:
            yield conn
        except BaseException:
            self._rollback(conn)
            raise
        conn.execute("COMMIT")

    @_guarded
    def _open(self) -> None:
        """Create or upgrade the schema. A store that cannot write opens read-only when its schema is
        there (writes raise :class:`StoreUnavailable`, and the first one after the disk is fixed finishes
        the upgrade); one that cannot be read raises :class:`StoreUnavailable`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._init_schema()
        except StoreUnavailable as e:
            self._check_schema(e.reason)
            log.warning("event store %s opened read-only: %s", self.path, e.reason)

    @_guarded
    def _check_schema(self, reason: str) -> None:
        """Raise :class:`StoreUnavailable` (``reason``) unless a complete schema of this version is stored."""
        with self._read() as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
        if "features" not in meta:  # written last by _init_schema: without it the schema is incomplete
            raise StoreUnavailable(reason)
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ConfigError(f"{self.path}: event store schema {meta.get('schema_version')}, "
                              f"this version reads {SCHEMA_VERSION}")
        if meta["features"] != self.config.key():
            log.warning("event store %s: features were computed with other settings; they are recomputed "
                        "at the first write", self.path)

    @_guarded
    def _init_schema(self) -> None:
        with self._write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "event_id TEXT NOT NULL UNIQUE, user_id TEXT NOT NULL, type TEXT NOT NULL, item_id TEXT, "
                "value REAL, query TEXT, ts REAL NOT NULL, received_at REAL NOT NULL, request_id TEXT, position INTEGER)"
            )
            have = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
            for column, kind in (("request_id", "TEXT"), ("position", "INTEGER")):  # stores from before issue 9
                if column not in have:
                    conn.execute(f"ALTER TABLE events ADD COLUMN {column} {kind}")
            conn.execute("CREATE INDEX IF NOT EXISTS events_user ON events (user_id, ts, seq)")
            conn.execute("CREATE INDEX IF NOT EXISTS events_type_ts ON events (type, ts)")  # attribution's outcomes
            cols = [r[1] for r in conn.execute("PRAGMA table_info(profiles)")]
            if cols and "seq" not in cols:  # profiles of an earlier layout: a cache, so drop and refold
                conn.execute("DROP TABLE profiles")
            conn.execute("CREATE TABLE IF NOT EXISTS profiles (user_id TEXT PRIMARY KEY, data BLOB NOT NULL, "
                         "seq INTEGER NOT NULL, updated_at REAL NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute(IMPRESSIONS_DDL)
            if "context" not in {r[1] for r in conn.execute("PRAGMA table_info(impressions)")}:  # before issue 10
                conn.execute("ALTER TABLE impressions ADD COLUMN context TEXT")
            conn.execute("CREATE INDEX IF NOT EXISTS impressions_user ON impressions (user_id, ts)")
            conn.execute("CREATE INDEX IF NOT EXISTS impressions_ts ON impressions (ts)")
            conn.execute(EXPERIMENTS_DDL)
            conn.execute(OPE_DDL)
            conn.execute(CONSENT_DDL)
            conn.execute(RECEIPTS_DDL)
            conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS experiments_running ON experiments (surface) "
                         "WHERE state = 'running'")
            for ddl in features.SCHEMA:
                conn.execute(ddl)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if meta.setdefault("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
                raise ConfigError(f"{self.path}: event store schema {meta['schema_version']}, "
                                  f"this version reads {SCHEMA_VERSION}")
            if meta.get("features") != self.config.key():
                if "features" in meta:  # settings changed: stored scores use the old ones
                    self._rebuild(conn)
                meta["features"] = self.config.key()
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
        self._schema_ok = True

    def _require_writable(self) -> None:
        """Refuse a write now (:class:`StoreUnavailable`) while the store's files cannot be written or the
        disk is full; finish opening a store that was opened read-only."""
        reason = self._os_fault()
        if reason is not None:
            raise StoreUnavailable(reason)
        if not self._schema_ok:
            self._init_schema()

    @_guarded
    def register_user_table(self, table: str, ddl: str | None = None, column: str = "user_id") -> None:
        """Have :meth:`delete_user` also clear ``table`` (created with ``ddl`` if given) by ``column``."""
        if not (_IDENT.match(table) and _IDENT.match(column)):
            raise ValueError(f"not a plain SQL identifier: {table!r}.{column!r}")
        if ddl:
            self._require_writable()
            with self._write() as conn:
                conn.execute(ddl)
        if (table, column) not in self.user_tables:
            self.user_tables.append((table, column))

    # -- writes

    @_guarded
    def add_many(self, events: Sequence[Event], *, categories: Categories | None = None) -> AddResult:
        """Store ``events`` and update features in one durable transaction; idempotent on ``event_id``.

        A duplicate (stored before, or earlier in this batch) is reported and skipped, whatever its content.
        Calls that arrive while another thread writes are committed together (group commit: one fsync
        for all); each call still returns only once its own events are on disk.
        """
        self._conn()  # notices a fork
        self._require_writable()
        mine = _Pending(events, categories)
        with self._lock:
            self._pending.append(mine)
        with self._write_lock:
            if mine.result is None and mine.error is None:  # else a previous leader committed it
                with self._lock:
                    group, self._pending = self._pending, []
                try:
                    with self._transaction() as conn:
                        for p in group:
                            self._add_one(conn, p)
                except BaseException as e:
                    for p in group:
                        p.error = e
        if mine.error is not None:
            raise mine.error
        if mine.result is None:
            raise RuntimeError("add_many: the group commit left this batch without a result")
        return mine.result

    def _add_one(self, conn: sqlite3.Connection, p: _Pending) -> None:
        """One caller's batch, in a savepoint so that its failure does not undo the others'."""
        result, stored, now = AddResult(), [], time.time()
        conn.execute("SAVEPOINT add_many")
        try:
            consent = {e.user_id: e.personalization for e in p.events if e.personalization is not None}
            for user, given in consent.items():  # an event's consent applies to it and what follows
                _set_consent(conn, user, given, "event", now)
            for e, new in zip(p.events, self._insert_events(conn, p.events, now)):
                if new:
                    result.accepted.append(e.event_id)
                    stored.append(e)
                else:
                    result.duplicates.append(e.event_id)
            features.add(conn, stored, self.config, p.categories,
                         skip_users=_opted_out(conn, {e.user_id for e in stored}))
        except Exception as e:
            conn.execute("ROLLBACK TO add_many")
            conn.execute("RELEASE add_many")
            p.error = e
            return
        conn.execute("RELEASE add_many")
        p.result = result

    def _insert_events(self, conn: sqlite3.Connection, events: Sequence[Event], now: float) -> list[bool]:
        """Insert ``events`` in order, skipping those whose ``event_id`` is stored (or earlier in the list);
        whether each one was new."""
        new = []
        for e in events:
            cur = conn.execute(
                "INSERT INTO events (event_id, user_id, type, item_id, value, query, ts, received_at, request_id, "
                "position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                (e.event_id, e.user_id, e.type.value, e.item_id, e.value, e.query, e.timestamp, now,
                 e.request_id, e.position),
            )
            new.append(cur.rowcount == 1)
        return new

    @_guarded
    def delete_user(self, user_id: str) -> int:
        """Remove the user's events (also from the item features), features, profile and every row of a
        registered user table, in one transaction; returns the number of events removed."""
        return self.erase_user(user_id)["events"]

    @_guarded
    def erase_user(self, user_id: str, receipt: tuple[str, float] | None = None) -> dict[str, int]:
        """:meth:`delete_user`, returning the rows removed per table (``item_features`` counts the events
        taken out of the item counts) and, with ``receipt`` (its id and time), storing a deletion receipt in
        the same transaction (see :meth:`add_receipt`'s table)."""
        self._require_writable()
        with self._write() as conn:
            rows = conn.execute(f"SELECT {_EVENT_COLS} FROM events WHERE user_id = ?", (user_id,)).fetchall()
            events = [_row_event(r) for r in rows]
            features.subtract_items(conn, events, self.config)
            removed = {"item_features": sum(1 for e in events if e.item_id is not None)}
            for table, column in self._user_tables(conn):
                removed[table] = conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (user_id,)).rowcount
            conn.execute("INSERT INTO meta VALUES ('deletions', '1') "
                         "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")
            if receipt is not None:
                epoch = int(conn.execute("SELECT value FROM meta WHERE key = 'deletions'").fetchone()[0])
                conn.execute("INSERT INTO deletion_receipts VALUES (?, ?, ?, ?, ?)",
                             (receipt[0], self._subject(conn, user_id), receipt[1],
                              json.dumps(removed, sort_keys=True), epoch))
        self._fold_wal()
        return removed

    def _user_tables(self, conn: sqlite3.Connection) -> list[tuple[str, str]]:
        have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return [(t, c) for t, c in [*self.user_tables, *OPTIONAL_USER_TABLES] if t in have]

    def _subject(self, conn: sqlite3.Connection, user_id: str) -> str:
        """The receipt's name for a shopper: HMAC-SHA256 of the id under a random key kept in ``meta``."""
        row = conn.execute("SELECT value FROM meta WHERE key = 'receipt_key'").fetchone()
        key = row[0] if row else None
        if key is None:
            key = os.urandom(32).hex()
            conn.execute("INSERT INTO meta VALUES ('receipt_key', ?)", (key,))
        return hmac.new(bytes.fromhex(key), user_id.encode(), hashlib.sha256).hexdigest()

    @_guarded
    def get_receipt(self, receipt: str) -> dict[str, Any] | None:
        """A stored deletion receipt: ``receipt``, ``deleted_at``, ``removed`` (rows per table), ``epoch``."""
        with self._read() as conn:
            row = conn.execute("SELECT receipt, deleted_at, removed, epoch FROM deletion_receipts WHERE receipt = ?",
                               (receipt,)).fetchone()
        if row is None:
            return None
        return {"receipt": row[0], "deleted_at": row[1], "removed": json.loads(row[2]), "epoch": row[3]}

    @_guarded
    def receipt_traces(self, receipt: str) -> dict[str, int]:
        """Rows still naming the receipt's shopper, per table: every shopper id in every user table is
        hashed with the receipt key and compared with the receipt's subject (the id itself is not kept)."""
        with self._read() as conn:
            row = conn.execute("SELECT subject FROM deletion_receipts WHERE receipt = ?", (receipt,)).fetchone()
            key_row = conn.execute("SELECT value FROM meta WHERE key = 'receipt_key'").fetchone()
            if row is None or key_row is None:
                return {}
            subject, key = row[0], bytes.fromhex(key_row[0])
            found: dict[str, int] = {}
            for table, column in self._user_tables(conn):
                for (uid,) in conn.execute(f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL"):
                    if hmac.compare_digest(hmac.new(key, str(uid).encode(), hashlib.sha256).hexdigest(), subject):
                        found[table] = conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = ?",
                                                    (uid,)).fetchone()[0]
            return found

    @_guarded
    def set_consent(self, user_id: str, personalization: bool, source: str = "api") -> dict[str, Any]:
        """Record ``user_id``'s consent to personalization; ``False`` also clears their profile and shopper
        features at once (their events stay, counting in the item aggregates)."""
        self._require_writable()
        now = time.time()
        with self._write() as conn:
            _set_consent(conn, user_id, bool(personalization), source, now)
        return {"user_id": user_id, "personalization": bool(personalization), "updated_at": now, "source": source}

    @_guarded
    def personalization(self, user_id: str) -> bool:
        """Whether ``user_id`` may get personalized answers (true unless they said no)."""
        with self._read() as conn:
            row = conn.execute("SELECT personalization FROM consent WHERE user_id = ?", (user_id,)).fetchone()
        return row is None or bool(row[0])

    @_guarded
    def deletion_epoch(self) -> int:
        """Counts ``delete_user`` calls: a reader that folded events into a model of its own (the live
        recommenders) rebuilds when it changes, so a deleted shopper leaves no trace there either."""
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'deletions'").fetchone()
        return int(row[0]) if row else 0

    def _fold_wal(self) -> None:
        """Best effort (waits at most 1 s for readers): copy the WAL, which still holds the old pages,
        into the (securely deleted) database file and truncate it."""
        conn = self._conn()
        conn.execute("PRAGMA busy_timeout = 1000")
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError:
            pass  # busy: the next checkpoint (automatic, or at close) does it
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    def put_profile(self, user_id: str, data: bytes, seq: int) -> bool:
        """Store ``user_id``'s profile folded up to event ``seq``, unless the write lock is busy, a newer
        one is stored, or that event is gone (the shopper was deleted meanwhile). A cache write: not
        synced on its own (the next durable commit syncs it). Returns whether it was stored; a store that
        cannot write just says False (reads call this, and must not fail for it)."""
        if not self._schema_ok or self._os_fault() is not None:
            return False
        if not self._write_lock.acquire(blocking=False):
            return False
        conn: sqlite3.Connection | None = None
        try:
            conn = self._conn()
            conn.execute("PRAGMA synchronous = NORMAL")
            with self._transaction(wait=False) as tx:
                cur = tx.execute(
                    "INSERT INTO profiles SELECT ?, ?, ?, ? WHERE EXISTS "
                    "(SELECT 1 FROM events WHERE seq = ? AND user_id = ?) AND NOT EXISTS "
                    "(SELECT 1 FROM consent WHERE user_id = ? AND personalization = 0) "
                    "ON CONFLICT (user_id) DO UPDATE SET data = excluded.data, seq = excluded.seq, "
                    "updated_at = excluded.updated_at WHERE excluded.seq > profiles.seq",
                    (user_id, bytes(data), seq, time.time(), seq, user_id, user_id))
            return cur.rowcount == 1
        except BlockingIOError:  # another process writes
            return False
        except self._errors as e:  # SQLite is busy, or the store cannot write (dropped by _fault)
            if self._fault(e) is None and not isinstance(e, self._soft_errors):
                raise
            return False
        finally:
            if conn is not None:
                with suppress(*self._errors):  # closed if the failure dropped it
                    conn.execute("PRAGMA synchronous = FULL")
            self._write_lock.release()

    @_guarded
    def rebuild_features(self) -> None:
        """Recompute every feature from the events table (after changing categories, for instance)."""
        self._require_writable()
        with self._write() as conn:
            self._rebuild(conn)

    def _rebuild(self, conn: sqlite3.Connection) -> None:
        features.clear(conn)
        last = 0
        while True:
            rows = conn.execute(f"SELECT {_EVENT_COLS} FROM events WHERE seq > ? ORDER BY seq LIMIT 5000",
                                (last,)).fetchall()
            if not rows:
                return
            batch = [_row_event(r) for r in rows]
            features.add(conn, batch, self.config, None, skip_users=_opted_out(conn, {e.user_id for e in batch}))
            last = rows[-1][0]

    @_guarded
    def add_impressions(self, rows: Sequence[Impression]) -> int:
        """Store impression records in one durable transaction; one already stored (same ``request_id``) is
        skipped. Returns how many were new."""
        self._require_writable()
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(f"INSERT OR IGNORE INTO impressions ({IMPRESSION_COLS}) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [r.row() for r in rows])
            return conn.total_changes - before

    @_guarded
    def prune_impressions(self, before: float) -> int:
        """Delete the impressions logged before ``before`` (epoch seconds); returns how many."""
        self._require_writable()
        with self._write() as conn:
            return conn.execute("DELETE FROM impressions WHERE ts < ?", (before,)).rowcount

    # -- reads

    @_guarded
    def get_impression(self, request_id: str) -> Impression | None:
        row = self._conn().execute(f"SELECT {IMPRESSION_COLS} FROM impressions WHERE request_id = ?",
                                   (request_id,)).fetchone()
        return None if row is None else Impression.from_row(row)

    @_guarded
    def count_impressions(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM impressions").fetchone()[0])

    @_guarded
    def policy_impressions_after(self, rowid: int, prefix: str, limit: int = 5000) -> list[tuple[int, Impression]]:
        """``(rowid, impression)`` of the impressions stored after ``rowid`` whose policy starts with
        ``prefix``, in storage order (at most ``limit``): how a policy learning online tails its own lists."""
        with self._read() as conn:
            return [(int(r[0]), Impression.from_row(r[1:])) for r in conn.execute(
                f"SELECT rowid, {IMPRESSION_COLS} FROM impressions WHERE rowid > ? AND substr(policy, 1, ?) = ? "
                "ORDER BY rowid LIMIT ?", (rowid, len(prefix), prefix, limit))]

    @_guarded
    def exploration_counts(self, since: float, until: float | None = None) -> dict[str, tuple[int, int]]:
        """Per surface, over the impressions logged in ``[since, until)``: the lists a stochastic policy
        made (propensities logged) and their shown items placed off the greedy order (``context.explored``)."""
        with self._read() as conn:
            return {str(s): (int(n), int(e or 0)) for s, n, e in conn.execute(
                "SELECT surface, count(*), sum(coalesce(json_array_length(context, '$.explored'), 0)) "
                "FROM impressions WHERE ts >= ? AND ts < ? AND propensities IS NOT NULL GROUP BY surface",
                (since, _upper(until)))}

    @_guarded
    def outcomes_after(self, seq: int, limit: int = 10000) -> tuple[list[tuple[int, str, str, float]], int]:
        """``(seq, request_id, type, ts)`` of the stored events after ``seq`` that name the list they came
        from (``request_id``), in seq order (at most ``limit``), and the seq read up to (the next call's
        ``seq``: the last row's when ``limit`` was reached, else the store's last), from one snapshot."""
        with self._read() as conn:
            rows = [(int(q), str(rid), str(t), float(ts)) for q, rid, t, ts in conn.execute(
                "SELECT seq, request_id, type, ts FROM events WHERE seq > ? AND request_id IS NOT NULL "
                "ORDER BY seq LIMIT ?", (seq, limit))]
            if len(rows) == limit:
                return rows, rows[-1][0]
            top = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
            return rows, max(seq, int(top or 0))

    @_guarded
    def impressions(self, surface: str, since: float, until: float | None = None,
                    limit: int = 1_000_000) -> list[Impression]:
        """The impressions of ``surface`` logged in ``[since, until)``, oldest first (at most ``limit``)."""
        with self._read() as conn:
            return [Impression.from_row(r) for r in conn.execute(
                f"SELECT {IMPRESSION_COLS} FROM impressions WHERE ts >= ? AND ts < ? AND surface = ? "
                "ORDER BY ts, request_id LIMIT ?", (since, _upper(until), surface, limit))]

    @_guarded
    def impression_shapes(self, since: float, until: float | None = None) -> list[tuple[str, int, int, int]]:
        """``(surface, offset, items in the list, lists)`` of the impressions logged in ``[since, until)``
        (epoch seconds; no upper bound when None), grouped; the shown positions of a group are
        ``offset + 1 .. offset + items``. One pass over the ``ts`` index, no JSON unpacked but the length."""
        with self._read() as conn:
            return [(s, int(o), int(n), int(c)) for s, o, n, c in conn.execute(
                "SELECT surface, offset_, json_array_length(items) AS n, count(*) FROM impressions "
                "WHERE ts >= ? AND ts < ? GROUP BY surface, offset_, n ORDER BY surface, offset_, n",
                (since, _upper(until)))]

    @_guarded
    def attributed_outcomes(self, since: float, until: float | None, *, window_s: float,
                            types: Sequence[EventType]) -> list[tuple[str, str, str, int, EventType]]:
        """``(request_id, surface, item_id, position, type)`` once for every shown item of an impression
        logged in ``[since, until)`` that an event of one of ``types`` is attributed to, in that order.

        An event with a ``request_id`` belongs to that impression if the item is in it, however late it
        comes (and if it is timestamped at most ``CLOCK_SKEW_S`` before ``since``: a client's clock).
        One without belongs to the latest impression of the same ``user_id`` holding the item, logged at
        most ``window_s`` seconds before it (never after; ties by ``request_id``); an impression without a
        user gets none. ``position`` is the item's 1-based rank in the impression (``offset`` included; its
        first place if it is there twice). Reads the events through their ``(type, ts)`` index from about
        ``since`` on, and the impressions by ``request_id`` and ``(user_id, ts)``."""
        if not types:
            return []
        marks = ", ".join(f":t{k}" for k in range(len(types)))
        sql = f"""
            WITH explicit AS (
                SELECT e.request_id AS rid, e.item_id, e.type FROM events e
                JOIN impressions i ON i.request_id = e.request_id
                WHERE e.type IN ({marks}) AND e.ts >= :since - :skew AND e.item_id IS NOT NULL
                  AND i.ts >= :since AND i.ts < :until
            ), windowed AS MATERIALIZED (  -- once per event: its rid is read twice below
                SELECT (SELECT i.request_id FROM impressions i
                        WHERE i.user_id = e.user_id AND i.ts <= e.ts AND i.ts >= e.ts - :window
                          AND EXISTS (SELECT 1 FROM json_each(i.items) j WHERE j.value = e.item_id)
                        ORDER BY i.ts DESC, i.request_id DESC LIMIT 1) AS rid, e.item_id, e.type
                FROM events e
                WHERE e.type IN ({marks}) AND e.ts >= :since AND e.ts < :until + :window
                  AND e.request_id IS NULL AND e.item_id IS NOT NULL
            ), pairs AS (
                SELECT rid, item_id, type FROM explicit
                UNION SELECT rid, item_id, type FROM windowed WHERE rid IS NOT NULL
            )
            SELECT rid, surface, item_id, position, type FROM (
                SELECT p.rid, i.surface, p.item_id, i.offset_ + 1 +
                       (SELECT min(j.key) FROM json_each(i.items) j WHERE j.value = p.item_id) AS position, p.type
                FROM pairs p JOIN impressions i ON i.request_id = p.rid
                WHERE i.ts >= :since AND i.ts < :until) AS shown
            WHERE position IS NOT NULL
            ORDER BY rid, item_id, type"""
        args: dict[str, Any] = {"since": since, "until": _upper(until), "window": window_s, "skew": CLOCK_SKEW_S}
        args.update({f"t{k}": t.value for k, t in enumerate(types)})
        with self._read() as conn:
            return [(r, s, item, int(pos), EventType(t)) for r, s, item, pos, t in conn.execute(sql, args)]

    @_guarded
    def policy_lists(self, prefix: str, since: float, until: float | None = None, *, feature: str | None = None,
                     ) -> list[tuple[str, str, str | None, int, int, list[float | None]]]:
        """``(request_id, policy, user_id, offset, items in the list, values)`` of every impression logged
        in ``[since, until)`` whose policy starts with ``prefix``, oldest first. ``values``: with ``feature``
        (a plain name), each shown item's value of that feature in item order (None where it has none;
        empty when the list logged no features); else empty. Unpacks no item list, only the features asked."""
        if feature is not None and not _IDENT.match(feature):
            raise ValueError(f"not a plain feature name: {feature!r}")
        values = "NULL" if feature is None else (
            f"(SELECT json_group_object(f.key, json_extract(f.value, '$.{feature}')) FROM json_each(features) f)")
        sql = (f"SELECT request_id, policy, user_id, offset_, json_array_length(items), {values} FROM impressions "
               "WHERE ts >= ? AND ts < ? AND substr(policy, 1, ?) = ? ORDER BY ts, request_id")
        out: list[tuple[str, str, str | None, int, int, list[float | None]]] = []
        with self._read() as conn:
            for rid, policy, user, offset, n, vals in conn.execute(sql, (since, _upper(until), len(prefix), prefix)):
                by_index = json.loads(vals) if vals else {}
                out.append((rid, policy, user, int(offset), int(n),
                            [by_index.get(str(i)) for i in range(n)] if by_index else []))
        return out

    # -- other modules' tables (engine.ads): their own schema, this store's transactions and durability

    @_guarded
    def ensure_tables(self, ddls: Sequence[str]) -> None:
        """Create other modules' tables (``CREATE ... IF NOT EXISTS`` statements) in one write transaction."""
        self._require_writable()
        with self._write() as conn:
            for ddl in ddls:
                conn.execute(ddl)

    @_guarded
    def run_write(self, fn: Callable[[sqlite3.Connection], _R]) -> _R:
        """``fn(conn)`` inside one durable write transaction (``BEGIN IMMEDIATE``, the cross-process lock,
        ``synchronous = FULL``): a check and its write in ``fn`` are atomic across server processes."""
        self._require_writable()
        with self._write() as conn:
            return fn(conn)

    @_guarded
    def run_read(self, fn: Callable[[sqlite3.Connection], _R]) -> _R:
        """``fn(conn)`` inside one read transaction (one snapshot)."""
        with self._read() as conn:
            return fn(conn)

    @_guarded
    def add_ope_estimate(self, surface: str, policy: str, computed_at: float, since: float, rows: int,
                         estimates: dict[str, Any]) -> None:
        """Keep one off-policy estimate (``estimates``: estimator -> {value, low, high}) of ``policy``."""
        self._require_writable()
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO ope_estimates VALUES (?, ?, ?, ?, ?, ?)",
                         (surface, policy, computed_at, since, rows, json.dumps(estimates)))

    @_guarded
    def latest_ope_estimate(self, surface: str, policy: str) -> dict[str, Any] | None:
        """The newest estimate of ``policy`` on ``surface``: {computed_at, since, rows, estimates}, or None."""
        row = self._conn().execute(
            "SELECT computed_at, since, rows, estimates FROM ope_estimates WHERE surface = ? AND policy = ? "
            "ORDER BY computed_at DESC LIMIT 1", (surface, policy)).fetchone()
        return None if row is None else {"computed_at": row[0], "since": row[1], "rows": row[2],
                                         "estimates": json.loads(row[3])}

    @_guarded
    def add_experiment(self, row: ExperimentRow) -> str | None:
        """Store a new experiment, unless one of the same name exists or (for a running one) another runs on
        the same surface. None when stored; else the name of the experiment in the way (its own name when
        taken). Checked and written in one write transaction, so two processes cannot both start one."""
        self._require_writable()
        name, surface, state = row[0], row[1], row[4]
        with self._write() as conn:
            clash = conn.execute(
                "SELECT name FROM experiments WHERE name = ? OR (? = 'running' AND surface = ? AND state = 'running') "
                "ORDER BY name = ? DESC LIMIT 1", (name, state, surface, name)).fetchone()
            if clash is not None:
                return str(clash[0])
            conn.execute(f"INSERT INTO experiments ({_EXPERIMENT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        return None

    @_guarded
    def stop_experiment(self, name: str, stopped_at: float, winner: str | None = None) -> bool:
        """Mark the experiment stopped (a stopped one keeps its stop time) and record ``winner`` unless one
        is recorded already; False when there is no such experiment."""
        self._require_writable()
        with self._write() as conn:
            return conn.execute(
                "UPDATE experiments SET state = 'stopped', stopped_at = coalesce(stopped_at, ?), "
                "winner = coalesce(winner, ?) WHERE name = ?", (stopped_at, winner, name)).rowcount == 1

    @_guarded
    def experiments(self, *, running: bool = False) -> list[ExperimentRow]:
        """Every experiment (only the running ones with ``running``), newest first. None in a store opened
        read-only before it had the table."""
        where = "WHERE state = 'running'" if running else ""
        try:
            rows = self._conn().execute(f"SELECT {_EXPERIMENT_COLS} FROM experiments {where} "
                                        "ORDER BY created_at DESC, name").fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            raise
        return [_row_experiment(r) for r in rows]

    @_guarded
    def get_experiment(self, name: str) -> ExperimentRow | None:
        try:
            row = self._conn().execute(f"SELECT {_EXPERIMENT_COLS} FROM experiments WHERE name = ?",
                                       (name,)).fetchone()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return None
            raise
        return None if row is None else _row_experiment(row)

    @_guarded
    def get_event(self, event_id: str) -> Event | None:
        row = self._conn().execute(f"SELECT {_EVENT_COLS} FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return None if row is None else _row_event(row)

    @_guarded
    def user_events(self, user_id: str, limit: int | None = None, after_seq: int = 0) -> list[Event]:
        """The user's events stored after ``after_seq``, in (timestamp, seq) order; with ``limit``, only
        the most recent ``limit`` of them."""
        where = "WHERE user_id = ? AND seq > ?"
        if limit is None:
            rows = self._conn().execute(f"SELECT {_EVENT_COLS} FROM events {where} ORDER BY ts, seq",
                                        (user_id, after_seq)).fetchall()
            return [_row_event(r) for r in rows]
        rows = self._conn().execute(f"SELECT {_EVENT_COLS} FROM events {where} ORDER BY ts DESC, seq DESC LIMIT ?",
                                    (user_id, after_seq, max(limit, 0))).fetchall()
        return [_row_event(r) for r in reversed(rows)]

    @_guarded
    def events_after(self, seq: int = 0, limit: int = 10000) -> list[Event]:
        """Up to ``limit`` events with ``seq`` greater than ``seq``, in seq (storage) order."""
        rows = self._conn().execute(f"SELECT {_EVENT_COLS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (seq, limit)).fetchall()
        return [_row_event(r) for r in rows]

    @_guarded
    def count(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM events").fetchone()[0])

    @_guarded
    def item_stats(self, item_id: str, *, now: float | None = None) -> dict[str, Any]:
        """See :mod:`engine.events.features`; popularity is decayed to ``now`` (default: the clock)."""
        return features.item_stats(self._conn(), item_id, time.time() if now is None else now, self.config)

    @_guarded
    def user_stats(self, user_id: str) -> dict[str, Any]:
        with self._read() as conn:
            return features.user_stats(conn, user_id)

    @_guarded
    def popular_items(self, k: int, *, now: float | None = None) -> list[tuple[str, float]]:
        """The ``k`` items with the highest decayed popularity at ``now``, best first (scans every item)."""
        now = time.time() if now is None else now
        hl = self.config.half_life_s
        with self._read() as conn:
            scored = [(features.score_at(s, t, now, hl), i) for i, s, t in features.popularity_scan(conn) if s > 0]
        scored.sort(key=lambda x: (-x[0], x[1]))
        return [(i, s) for s, i in scored[:k]]

    @_guarded
    def counts_by_type_per_day(self, since: float | None = None) -> list[tuple[str, str, int]]:
        """(UTC day ``YYYY-MM-DD``, type, events) for every day and type with events timestamped at or
        after ``since`` (epoch seconds; every event when None), in order. One pass over the events."""
        where, args = ("WHERE ts >= ?", (since,)) if since is not None else ("", ())
        return [(d, t, int(n)) for d, t, n in self._conn().execute(
            f"SELECT date(ts, 'unixepoch') AS day, type, count(*) FROM events {where} "
            "GROUP BY day, type ORDER BY day, type", args)]

    @_guarded
    def count_users(self, since: float | None = None) -> int:
        """Distinct shoppers with an event timestamped at or after ``since`` (any event when None); one
        pass over the ``(user_id, ts)`` index."""
        where, args = ("WHERE ts >= ?", (since,)) if since is not None else ("", ())
        return int(self._conn().execute(f"SELECT count(DISTINCT user_id) FROM events {where}", args).fetchone()[0])

    @_guarded
    def top_users(self, limit: int) -> list[tuple[str, int, str | None]]:
        """``(user_id, item events, item id of their latest item event)`` of the ``limit`` shoppers with
        the most item events (events of the item types), most first, ties by user_id. Reads the per-user
        counts (one row per shopper), not the events."""
        total = " + ".join(f"n_{t.value}" for t in features.ITEM_COUNTS)
        out: list[tuple[str, int, str | None]] = []
        with self._read() as conn:
            top = conn.execute(f"SELECT user_id, {total} AS n FROM user_features WHERE {total} > 0 "
                               "ORDER BY n DESC, user_id LIMIT ?", (max(limit, 0),)).fetchall()
            for user, n in top:
                last = conn.execute("SELECT item_id FROM events WHERE user_id = ? AND item_id IS NOT NULL "
                                    "ORDER BY ts DESC, seq DESC LIMIT 1", (user,)).fetchone()
                out.append((user, int(n), last[0] if last else None))
        return out

    @_guarded
    def get_profile(self, user_id: str) -> tuple[bytes, int] | None:
        """The stored profile and the seq of the last event folded into it."""
        row = self._conn().execute("SELECT data, seq FROM profiles WHERE user_id = ?", (user_id,)).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]))

    # -- faults and health

    def health(self) -> str | None:
        """None when the store can write, else why not (``"event store is read-only"``, ``"disk full"``,
        ...). Checks the files' access and the free space, then commits a one-row write to ``meta``
        (skipped while another write runs: that one finds out). Cheap to call often: the answer is
        reused for ``HEALTH_TTL_S``, and a write that just failed sets it. Never raises."""
        with self._health_lock:
            checked, reason = self._health
            if time.monotonic() - checked < HEALTH_TTL_S:
                return reason
            reason = self._os_fault(fresh=True) or self._probe()
            self._health = (time.monotonic(), reason)
            return reason

    def _probe(self) -> str | None:
        """The fault a tiny write transaction meets, if any."""
        try:
            self._probe_write()
        except StoreUnavailable as e:
            return e.reason
        except BlockingIOError:  # another process writes
            return None
        except self._errors as e:
            if isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
                return None
            log.warning("event store %s: health probe failed: %s", self.path, e)
            return "event store error"
        return None

    @_guarded
    def _probe_write(self) -> None:
        if not self._schema_ok:
            self._init_schema()  # opened read-only: writing the schema is the probe
            return
        if not self._write_lock.acquire(blocking=False):
            return
        try:
            with self._transaction(wait=False) as conn:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('health_probe', ?)", (f"{time.time():.3f}",))
        finally:
            self._write_lock.release()

    def _os_fault(self, *, fresh: bool = False) -> str | None:
        """What the file system says against writing: unwritable files or folder, or a full disk
        (reused for ``HEALTH_TTL_S`` unless ``fresh``)."""
        checked, reason = self._os_checked
        now = time.monotonic()
        if fresh or now - checked >= HEALTH_TTL_S:
            reason = self._access_fault() or self._space_fault()
            self._os_checked = (now, reason)
        return reason

    def _access_fault(self) -> str | None:
        """``READ_ONLY`` when the folder or a file of the store exists but cannot be written: a read-only
        mount, an immutable file (``chattr +i`` stops root too) or permissions."""
        base = str(self.path)
        for p in (str(self.path.parent), base, base + "-wal", base + "-shm", base + ".lock"):
            if not os.access(p, os.W_OK, effective_ids=_EFFECTIVE_IDS) and os.path.exists(p):
                return READ_ONLY
        return None

    def _space_fault(self) -> str | None:
        """``DISK_FULL`` when less than ``MIN_FREE_BYTES`` are free where the store lives."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return None
        if st.f_blocks == 0:  # a file system that does not say
            return None
        free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
        return DISK_FULL if free < MIN_FREE_BYTES else None

    def _fault(self, exc: BaseException) -> StoreUnavailable | None:
        """``exc`` (or an error it chains, such as the one a failed rollback masks) as a storage fault,
        having dropped this thread's connection and noted the reason for :meth:`health`; None if it is
        not one."""
        reason = self._fault_reason(exc)
        if reason is None:
            return None
        self._drop_conn()
        self._health = (time.monotonic(), reason)
        log.warning("event store %s unavailable: %s (%s)", self.path, reason, exc)
        return StoreUnavailable(reason)

    def _fault_reason(self, exc: BaseException) -> str | None:
        seen: set[int] = set()
        e: BaseException | None = exc
        while e is not None and id(e) not in seen:
            seen.add(id(e))
            reason: str | None = None
            if isinstance(e, sqlite3.Error):
                reason = _SQLITE_FAULTS.get(getattr(e, "sqlite_errorcode", 0) & 0xFF)
            elif isinstance(e, OSError) and e.errno is not None:
                reason = _OS_FAULTS.get(e.errno)
            if reason is not None:
                if reason not in (READ_ONLY, DISK_FULL):  # vague: the file system may say more
                    reason = self._os_fault(fresh=True) or reason
                return reason
            e = e.__cause__ or e.__context__
        return None

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        with self._lock:
            conns, self._conns = self._conns, []
            self._local = threading.local()
        for conn in conns:
            conn.close()
        with self._write_lock:
            if self._lock_fd >= 0 and self._pid == os.getpid():
                os.close(self._lock_fd)
            self._lock_fd = -1


def _open_sqlite(url: str, *, config: FeatureConfig | None = None) -> SQLiteEventStore:
    path = url[len("sqlite:///"):]
    if not path or path == ":memory:":
        raise ConfigError(f"event store: {url!r} needs a file path (sqlite:///events.db or sqlite:////abs/events.db)")
    return SQLiteEventStore(path, config=config)


def _open_postgres(url: str, *, config: FeatureConfig | None = None) -> EventStore:
    """engine/events/postgres.py, imported (with psycopg) only for a PostgreSQL URL."""
    from engine.events.postgres import PostgresEventStore

    return PostgresEventStore(url, config=config)


register_backend("sqlite:///", _open_sqlite)
register_backend("postgresql://", _open_postgres)
register_backend("postgres://", _open_postgres)
