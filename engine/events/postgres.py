"""The event store on PostgreSQL (psycopg 3): ``events_url = postgresql://user@host:port/db``.

It is :class:`~engine.events.store.SQLiteEventStore`'s logic, unchanged, over a different connection:
every method, the schema, the features (engine/events/features.py) and the extensions' tables
(``ensure_tables``, ``run_write``, ``run_read``: engine/ads, engine/qa, engine/analytics) send the same
sqlite-flavoured SQL, and :class:`PgConnection` offers the small part of ``sqlite3.Connection`` they use
(``execute`` returning a cursor with ``fetchone``/``fetchall``/``rowcount``/iteration, ``executemany``,
``total_changes``, ``in_transaction``, ``close``), rewriting each statement once by the rules of
:func:`translate` (cached). What this module owns: the connection layer, the SQL translation, the
SQLite functions PostgreSQL lacks (:data:`COMPAT_FUNCTIONS`) and the fault translation of the server.

Ordering: every write transaction first takes one transaction-level advisory lock
(``pg_advisory_xact_lock(WRITE_LOCK_KEY)``), held until it commits or rolls back. Writers are therefore
serialised across every process sharing the database, as SQLite's ``BEGIN IMMEDIATE`` and file lock
serialise them: an event's ``seq`` (an identity column) and an impression's ``rowid`` are drawn under
the lock, so their order is the commit order, and a reader tailing with ``events_after(seq)`` can never
see seq 11 committed while seq 10 is still to come (PostgreSQL releases the lock only after the commit
is visible). A rolled-back transaction may leave a hole in the numbers; nothing is ever inserted into it.
Group commit (``add_many`` calls queued in one process share one transaction) works as with SQLite.

Durability: ``synchronous_commit`` stays on (a batch is on the server's disk before ``add_many``
returns); the profile cache write turns it off for its own transaction, as SQLite's does
``synchronous = NORMAL``. Erasure: deleted rows become dead tuples until autovacuum reclaims them
(SQLite's ``secure_delete`` and WAL truncation have no equivalent to call per transaction).

Faults: a refused or lost connection, a server shutting down, a full disk or a read-only server leave
the public methods as :class:`~engine.errors.StoreUnavailable` (``_guarded``), after this thread's
connection is dropped; the next call connects again, so the store works again once the server is back.
A statement outside a transaction (a plain read) that finds its connection broken reconnects and runs
once more at once. ``path`` is a local folder name (``instance/postgres-<host>-<port>-<db>``) for the
side files, such as the impression spool of this machine's processes.
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg import ClientCursor, errors as pg_errors, sql
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.types.string import TextLoader

from engine.errors import StoreUnavailable
from engine.events.features import FeatureConfig
from engine.events.model import Event
from engine.events.store import DISK_FULL, READ_ONLY, SQLiteEventStore, _guarded

log = logging.getLogger(__name__)

# The advisory lock every write transaction holds (any constant: "vitrine" in ASCII).
WRITE_LOCK_KEY = 0x76697472696E65
CONNECT_TIMEOUT_S = 10
LOCK_TIMEOUT_MS = 30_000  # as SQLite's busy timeout
UNREACHABLE = "event store server unreachable"
BUSY = "event store busy"

# SQLite's functions that the store's and the extensions' SQL use, defined in the database's schema
# (``CREATE OR REPLACE``, at open). ``json_each`` reads arrays only (key: the 0-based index, value: the
# element, strings unquoted, as SQLite's); ``date``/``strftime`` know the ``'unixepoch'`` modifier only and
# the ``%Y %m %d %H %M %S`` formats; ``json_extract`` returns json (it is read inside ``json_object_agg``).
COMPAT_FUNCTIONS = (
    """CREATE OR REPLACE FUNCTION vitrine_json_path(doc text, path text) RETURNS json LANGUAGE sql IMMUTABLE AS $$
        SELECT CASE WHEN path = '$' THEN doc::json
                    ELSE json_extract_path(doc::json, VARIADIC string_to_array(substr(path, 3), '.')) END $$""",
    """CREATE OR REPLACE FUNCTION json_array_length(doc text, path text) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
        SELECT CASE WHEN j IS NULL THEN NULL WHEN json_typeof(j) = 'array' THEN json_array_length(j) ELSE 0 END
        FROM (SELECT vitrine_json_path(doc, path) AS j) s $$""",
    """CREATE OR REPLACE FUNCTION json_array_length(doc text) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
        SELECT json_array_length(doc, '$') $$""",
    """CREATE OR REPLACE FUNCTION json_extract(doc text, path text) RETURNS json LANGUAGE sql IMMUTABLE AS $$
        SELECT vitrine_json_path(doc, path) $$""",
    """CREATE OR REPLACE FUNCTION json_each(doc text) RETURNS TABLE (key integer, value text)
        LANGUAGE sql IMMUTABLE AS $$
        SELECT (n - 1)::integer, v FROM json_array_elements_text(doc::json) WITH ORDINALITY AS t (v, n) $$""",
    """CREATE OR REPLACE FUNCTION date(ts double precision, modifier text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
        SELECT to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD') $$""",
    """CREATE OR REPLACE FUNCTION strftime(fmt text, ts double precision, modifier text) RETURNS text
        LANGUAGE sql IMMUTABLE AS $$
        SELECT to_char(to_timestamp(ts) AT TIME ZONE 'UTC', replace(replace(replace(replace(replace(replace(
            fmt, '%Y', 'YYYY'), '%m', 'MM'), '%d', 'DD'), '%H', 'HH24'), '%M', 'MI'), '%S', 'SS')) $$""",
)


# --------------------------------------------------------------------------- SQL translation

_LITERAL = re.compile(r"'(?:[^']|'')*'")
_CREATE_TABLE = re.compile(r"^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s*\(", re.I)
_ALTER_ADD = re.compile(r"^\s*ALTER\s+TABLE\s+\w+\s+ADD\s+COLUMN\b", re.I)
_INSERT_OR = re.compile(r"^\s*INSERT\s+OR\s+(IGNORE|REPLACE)\s+INTO\s+(\w+)\s*(\(([^)]*)\))?", re.I)
_PRAGMA_SYNC = re.compile(r"^\s*PRAGMA\s+synchronous\s*=\s*(\w+)\s*$", re.I)
_PRAGMA_TABLE_INFO = re.compile(r"^\s*PRAGMA\s+table_info\s*\(\s*(\w+)\s*\)\s*$", re.I)
_SQLITE_MASTER = re.compile(r"^\s*SELECT\s+name\s+FROM\s+sqlite_master\s+WHERE\s+type\s*=\s*'table'\s*$", re.I)
_UPSERT_SET = re.compile(r"\bDO\s+UPDATE\s+SET\b", re.I)
_INSERT_INTO = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)", re.I)
_IDENT = re.compile(r"[A-Za-z_]\w*")
_ONE_ROW_INSERT = re.compile(r"^(\s*INSERT\s+INTO\s+\w+\s*(?:\(([^)]*)\))?\s*VALUES\s*)(\(\s*%s(?:\s*,\s*%s)*\s*\))(.*)$",
                             re.I | re.S)
_CONFLICT_KEY = re.compile(r"^\s*ON\s+CONFLICT\s*\(([^)]*)\)\s*DO\s+UPDATE\b", re.I)

# Rules on whole statements (first match wins): sqlite form -> PostgreSQL form.
# - CREATE TABLE / ALTER TABLE ADD COLUMN: types by _TYPE_RULES; a table that is neither WITHOUT ROWID nor
#   keyed by an INTEGER PRIMARY KEY gets a last column ``rowid`` (an identity), which SQLite has implicitly
#   (``SELECT rowid``/``ORDER BY rowid`` tail impressions and QA pairs); ``INSERT ... VALUES`` without a
#   column list fills the first N columns, so it stays unset there.
# - PRAGMA synchronous = NORMAL | FULL -> SET synchronous_commit = off | on
# - PRAGMA table_info(t) -> its columns from information_schema, ``(cid, name, type)`` like SQLite's
# - SELECT name FROM sqlite_master WHERE type = 'table' -> the tables of the current schema
# - BEGIN IMMEDIATE -> BEGIN (the store's own transactions take the write lock instead: see the module doc)
# Rules on DML, in order:
# - INSERT OR IGNORE INTO ... -> INSERT INTO ... ON CONFLICT DO NOTHING
# - INSERT OR REPLACE INTO t ... -> INSERT INTO t ... ON CONFLICT (t's primary key) DO UPDATE SET every
#   other inserted column = EXCLUDED.column
# - min(a, b) / max(a, b) (two arguments: SQLite's scalar forms) -> LEAST(a, b) / GREATEST(a, b)
# - json_group_object( -> json_object_agg(
# - x LIKE y -> x ILIKE y (SQLite's LIKE ignores ASCII case)
# - in ``ON CONFLICT ... DO UPDATE SET``, a bare column of the target table on the right of ``=`` (or in
#   the WHERE) is qualified with the table's name (PostgreSQL finds ``n`` ambiguous beside ``excluded.n``)
# Parameters last: ``?`` -> ``%s``, ``:name`` -> ``%(name)s``, and a literal ``%`` -> ``%%`` (only when the
# statement has parameters: psycopg formats it only then). String literals are otherwise never rewritten.
_TYPE_RULES = (
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),  # byte order, as SQLite's BINARY collation
)
_DML_RULES = (
    (re.compile(r"\b(min|max)\(\s*([^(),]+?)\s*,\s*([^(),]+?)\s*\)", re.I),
     lambda m: f"{'LEAST' if m.group(1).lower() == 'min' else 'GREATEST'}({m.group(2)}, {m.group(3)})"),
    (re.compile(r"\bjson_group_object\(", re.I), lambda m: "json_object_agg("),
    (re.compile(r"\bLIKE\b", re.I), lambda m: "ILIKE"),
)
_KEYWORDS = {"excluded", "and", "or", "not", "null", "is", "as", "cast", "where", "case", "when", "then", "else",
             "end", "in", "between", "like", "ilike", "true", "false", "integer", "bigint", "text", "real"}


def _dml_rules(part: str) -> str:
    for pattern, repl in _DML_RULES:
        part = pattern.sub(repl, part)
    return part


def _outside_literals(sql: str, fn: Callable[[str], str]) -> str:
    """``sql`` with ``fn`` applied to every stretch outside its string literals."""
    out, pos = [], 0
    for m in _LITERAL.finditer(sql):
        out += [fn(sql[pos:m.start()]), m.group(0)]
        pos = m.end()
    out.append(fn(sql[pos:]))
    return "".join(out)


Schema = Callable[[str], tuple[list[str], list[str]]]  # table -> (its columns, its primary key)


def _ddl(sql: str) -> str:
    def types(part: str) -> str:
        for pattern, repl in _TYPE_RULES:
            part = pattern.sub(repl, part)
        return part

    create = _CREATE_TABLE.match(sql)
    without_rowid = re.search(r"\)\s*WITHOUT\s+ROWID\s*$", sql, re.I)
    if without_rowid:
        sql = sql[:without_rowid.start()] + ")"
    out = _outside_literals(sql, types)
    if create and not without_rowid and not re.search(r"\bINTEGER\s+PRIMARY\s+KEY\b", sql, re.I):
        end = out.rstrip().rstrip(";").rstrip()
        if end.endswith(")"):
            out = end[:-1] + ", rowid BIGINT GENERATED BY DEFAULT AS IDENTITY)"
    return out


def _qualify_upsert(sql: str, table: str, columns: set[str]) -> str:
    """Qualify the target table's bare columns after ``DO UPDATE SET``, except the assigned ones."""
    m = _UPSERT_SET.search(sql)
    if m is None:
        return sql
    head, tail = sql[:m.end()], sql[m.end():]

    def qualify(part: str) -> str:
        out, pos = [], 0
        for t in _IDENT.finditer(part):
            name, start, end = t.group(0), t.start(), t.end()
            before, after = part[:start].rstrip(), part[end:].lstrip()
            assigned = after.startswith("=") and (before == "" or before.endswith(",")) and not (
                after.startswith("=="))
            if (name.lower() in columns and name.lower() not in _KEYWORDS and not before.endswith(".")
                    and not after.startswith("(") and not after.startswith(".") and not assigned):
                out += [part[pos:start], f"{table}.{name}"]
                pos = end
        out.append(part[pos:])
        return "".join(out)

    return head + _outside_literals(tail, qualify)


def _params(sql: str) -> str:
    """``?`` and ``:name`` placeholders to psycopg's, ``%`` doubled (outside and inside literals)."""
    sql = _outside_literals(sql, lambda part: re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s",
                                                     part.replace("%", "%%")).replace("?", "%s"))
    return _LITERAL.sub(lambda m: m.group(0).replace("%", "%%"), sql)


def translate(sql: str, has_params: bool, schema: Schema) -> str:
    """One sqlite-flavoured statement in PostgreSQL's dialect (the rules above); ``schema`` gives a table's
    columns and primary key (for ``INSERT OR REPLACE`` and upserts)."""
    if _CREATE_TABLE.match(sql) or _ALTER_ADD.match(sql):
        out = _ddl(sql)
    elif m := _PRAGMA_SYNC.match(sql):
        out = f"SET synchronous_commit = {'on' if m.group(1).upper() in ('FULL', 'EXTRA', '2', '3') else 'off'}"
    elif m := _PRAGMA_TABLE_INFO.match(sql):
        out = ("SELECT ordinal_position - 1, column_name, data_type FROM information_schema.columns "
               f"WHERE table_schema = current_schema() AND table_name = '{m.group(1).lower()}' "
               "ORDER BY ordinal_position")
    elif _SQLITE_MASTER.match(sql):
        out = ("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
               "AND table_type = 'BASE TABLE'")
    elif re.match(r"^\s*BEGIN\s+IMMEDIATE\s*$", sql, re.I):
        out = "BEGIN"
    elif re.match(r"^\s*PRAGMA\b", sql, re.I):
        raise ValueError(f"PostgreSQL event store: no translation for {sql.strip()!r}")
    else:
        out = sql
        table: str | None = None
        if m := _INSERT_OR.match(out):
            kind, table, listed = m.group(1).upper(), m.group(2), m.group(4)
            out = f"INSERT INTO {table}{' (' + listed + ')' if listed else ''} " + out[m.end():].lstrip()
            if kind == "IGNORE":
                out = out.rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
            else:
                columns, key = schema(table)
                inserted = [c.strip().lower() for c in listed.split(",")] if listed else columns
                rest = [c for c in inserted if c not in key]
                action = ("DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in rest)) if rest else "DO NOTHING"
                out = out.rstrip().rstrip(";") + f" ON CONFLICT ({', '.join(key)}) {action}"
        out = _outside_literals(out, _dml_rules)
        if _UPSERT_SET.search(out):
            table = table or (m.group(1) if (m := _INSERT_INTO.match(out)) else None)
            if table is not None:
                out = _qualify_upsert(out, table, set(schema(table)[0]))
    return _params(out) if has_params else out


# --------------------------------------------------------------------------- the connection


class _NumericLoader(Loader):
    """``numeric`` (what ``sum`` of a bigint column gives) as int when whole, else float: SQLite's types."""

    def load(self, data: Any) -> int | float:
        d = Decimal(bytes(data).decode())
        return int(d) if d == d.to_integral_value() else float(d)


class PgConnection:
    """The part of ``sqlite3.Connection`` the store and its extensions use, on one psycopg connection
    (autocommit: transactions are the explicit ``BEGIN``/``COMMIT`` the store sends, as with SQLite)."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], translator: Callable[[str, bool], str],
                 schema: Schema) -> None:
        self._connect = connect
        self._translate = translator
        self._schema = schema
        self.raw = connect()
        self.total_changes = 0
        self._pid = os.getpid()

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def _count(self, cur: psycopg.Cursor[Any]) -> None:
        status = (cur.statusmessage or "").split(" ", 1)[0]
        if status in ("INSERT", "UPDATE", "DELETE") and cur.rowcount > 0:
            self.total_changes += cur.rowcount

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> psycopg.Cursor[Any]:
        query = self._translate(sql, bool(params))
        idle = not self.in_transaction
        try:
            cur = self.raw.execute(query, params or None)
        except psycopg.OperationalError:
            if not (idle and self.raw.broken):
                raise
            # Outside a transaction (a plain read, or BEGIN) on a connection the server dropped since: once more
            with suppress(psycopg.Error):
                self.raw.close()
            self.raw = self._connect()
            cur = self.raw.execute(query, params or None)
        self._count(cur)
        return cur

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> psycopg.Cursor[Any]:
        """``sql`` once per row. An ``INSERT ... VALUES (one row)`` runs as multi-row INSERTs (a statement per
        row cost several times the ingest rate): in waves when it upserts (``ON CONFLICT (key) DO UPDATE``),
        so that no key repeats in one statement and a repeated key is applied in order, as row by row."""
        cur = self.raw.cursor()
        rows = list(rows)
        if not rows:
            return cur
        query = self._translate(sql, True)
        m = _ONE_ROW_INSERT.match(query)
        if m is None:
            cur.executemany(query, rows)
            self._count(cur)
            return cur
        head, marks, tail = m.group(1), m.group(3), m.group(4)
        key = _CONFLICT_KEY.search(tail)
        waves: list[list[Sequence[Any]]] = [rows]
        if key is not None:
            listed = m.group(2)
            columns = [c.strip().lower() for c in listed.split(",")] if listed else self._columns(m.group(0))
            at = [columns.index(c.strip().lower()) for c in key.group(1).split(",")]
            waves = []
            seen: dict[tuple[Any, ...], int] = {}
            for row in rows:
                k = tuple(row[i] for i in at)
                n = seen[k] = seen.get(k, -1) + 1
                if n == len(waves):
                    waves.append([])
                waves[n].append(row)
        tail = tail.replace("%%", "%")  # the statement goes without parameters: its values are literals
        for wave in waves:
            for i in range(0, len(wave), 1000):
                values = ", ".join("(" + ", ".join(self.literal(v) for v in r) + ")" for r in wave[i:i + 1000])
                cur = self.raw.execute((head + values + tail).encode())
                self._count(cur)
        return cur

    def literal(self, value: Any) -> str:
        """``value`` as an SQL literal (the connection has ``standard_conforming_strings`` on: a backslash is
        an ordinary character, a quote is doubled). Building multi-row statements from literals skips
        psycopg's parsing of a long query with thousands of placeholders, which cost more than the server."""
        if value is None:
            return "NULL"
        if isinstance(value, bool):
            return "TRUE" if value else "FALSE"
        if type(value) is int:
            return str(value)
        if isinstance(value, float):
            return float.__repr__(value) if math.isfinite(value) else f"'{value}'::float8"
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        if isinstance(value, (bytes, bytearray, memoryview)):
            return "'\\x" + bytes(value).hex() + "'::bytea"
        return sql.Literal(value).as_string(self.raw)

    def _columns(self, insert: str) -> list[str]:
        table = _INSERT_INTO.match(insert)
        assert table is not None
        return self._schema(table.group(1))[0]

    def close(self) -> None:
        self.raw.close()

    def __del__(self) -> None:
        """Closed when dropped, as a sqlite3 connection is (silently), except in a forked child: closing
        there would end the parent's session on the shared socket."""
        with suppress(Exception):
            if self._pid == os.getpid() and not self.raw.closed:
                self.raw.close()


# --------------------------------------------------------------------------- the store


class PostgresEventStore(SQLiteEventStore):
    """Events, features, profiles, impressions, experiments, consent, receipts and the extensions' tables in
    one PostgreSQL database, shared by any number of processes and machines. Thread-safe (one connection per
    thread; a thread that ended gives its connection back when another one opens)."""

    _errors: tuple[type[Exception], ...] = (psycopg.Error, OSError)
    _soft_errors: tuple[type[Exception], ...] = (psycopg.OperationalError,)
    _begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"  # one snapshot for every statement inside

    def __init__(self, url: str, *, config: FeatureConfig | None = None) -> None:
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        self.url = url
        info = conninfo_to_dict(url)
        self._label = f"postgresql://{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        self._owners: dict[int, threading.Thread] = {}
        self._schema_cache: dict[str, tuple[list[str], list[str]]] = {}
        self._sql_cache: dict[tuple[str, bool], str] = {}
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{info.get('host', 'localhost')}-{info.get('port', 5432)}-"
                                                  f"{info.get('dbname', '')}")
        super().__init__(Path("instance") / f"postgres-{safe}", config=config)

    def __repr__(self) -> str:
        return f"PostgresEventStore({self._label})"

    # -- connections

    def _raw_connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.url, autocommit=True, cursor_factory=ClientCursor,
                               connect_timeout=CONNECT_TIMEOUT_S, options=f"-c lock_timeout={LOCK_TIMEOUT_MS} -c standard_conforming_strings=on")
        conn.adapters.register_loader("json", TextLoader)  # JSON comes back as text, as from SQLite
        conn.adapters.register_loader("jsonb", TextLoader)
        conn.adapters.register_loader("numeric", _NumericLoader)
        return conn

    def _connect(self) -> tuple[Any, bool]:
        with self._lock:  # give back the connections of threads that ended
            dead = [c for c in self._conns if not self._owners.get(id(c), threading.current_thread()).is_alive()]
            for c in dead:
                self._conns.remove(c)
                self._owners.pop(id(c), None)
        for c in dead:
            with suppress(psycopg.Error):
                c.close()
        conn = PgConnection(self._raw_connect, self._translate, self._table_schema)
        self._owners[id(conn)] = threading.current_thread()
        return cast(Any, conn), False

    def _translate(self, sql: str, has_params: bool) -> str:
        key = (sql, has_params)
        out = self._sql_cache.get(key)
        if out is None:
            if len(self._sql_cache) > 20_000:  # statements are few; this only bounds a caller inlining values
                self._sql_cache.clear()
            out = self._sql_cache[key] = translate(sql, has_params, self._table_schema)
        return out

    def _table_schema(self, table: str) -> tuple[list[str], list[str]]:
        """``table``'s columns (``rowid`` left out) and primary key, read once."""
        known = self._schema_cache.get(table)
        if known is None:
            raw = cast(PgConnection, self._conn()).raw
            columns = [r[0] for r in raw.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = %s AND column_name <> 'rowid' ORDER BY ordinal_position", (table.lower(),))]
            key = [r[0] for r in raw.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
                "ORDER BY array_position(i.indkey, a.attnum)", (table.lower(),))]
            if not columns or not key:
                raise ValueError(f"PostgreSQL event store: table {table!r} has no primary key to replace on")
            known = self._schema_cache[table] = (columns, key)
        return known

    def _insert_events(self, conn: Any, events: Sequence[Event], now: float) -> list[bool]:
        """One multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING event_id`` per 1,000 events (a round
        trip per event cost 4x the ingest rate); rows are inserted, and seqs drawn, in list order, so the
        first of two equal ids in a batch is the one stored."""
        raw = cast(PgConnection, conn).raw
        stored: set[str] = set()
        for i in range(0, len(events), 1000):
            chunk = events[i:i + 1000]
            lit = cast(PgConnection, conn).literal
            values = ", ".join("(" + ", ".join(lit(v) for v in (
                e.event_id, e.user_id, e.type.value, e.item_id, e.value, e.query, e.timestamp, now, e.request_id,
                e.position)) + ")" for e in chunk)
            stored.update(r[0] for r in raw.execute((
                "INSERT INTO events (event_id, user_id, type, item_id, value, query, ts, received_at, request_id, "
                f"position) VALUES {values} ON CONFLICT (event_id) DO NOTHING RETURNING event_id").encode()))
        new = []
        for e in events:
            new.append(e.event_id in stored)
            stored.discard(e.event_id)  # a later copy in the same list is a duplicate
        return new

    # -- transactions

    @contextmanager
    def _transaction(self, *, wait: bool = True) -> Iterator[Any]:
        """``BEGIN`` and the write lock (``pg_advisory_xact_lock``: see the module docstring) ... ``COMMIT``.
        ``wait=False``: ``BlockingIOError`` when another transaction holds the lock."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            if wait:
                conn.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")
            elif not conn.execute(f"SELECT pg_try_advisory_xact_lock({WRITE_LOCK_KEY})").fetchone()[0]:
                raise BlockingIOError("another transaction holds the event store's write lock")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise

    def _init_schema(self) -> None:
        with self._write() as conn:
            for ddl in COMPAT_FUNCTIONS:
                cast(PgConnection, conn).raw.execute(ddl)
        super()._init_schema()

    @_guarded
    def _open(self) -> None:
        """Create or upgrade the schema; :class:`StoreUnavailable` when the server cannot be reached."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    def _fold_wal(self) -> None:
        """Nothing to fold: PostgreSQL reclaims the deleted rows by (auto)vacuum."""

    # -- faults

    def _os_fault(self, *, fresh: bool = False) -> str | None:
        """The server says what stops a write when it stops one; nothing to check on this machine."""
        return None

    def _fault_reason(self, exc: BaseException) -> str | None:
        seen: set[int] = set()
        e: BaseException | None = exc
        while e is not None and id(e) not in seen:
            seen.add(id(e))
            if isinstance(e, pg_errors.DiskFull):
                return DISK_FULL
            if isinstance(e, (pg_errors.ReadOnlySqlTransaction, pg_errors.InsufficientPrivilege)):
                return READ_ONLY
            if isinstance(e, pg_errors.LockNotAvailable):
                return BUSY
            if isinstance(e, (pg_errors.AdminShutdown, pg_errors.CrashShutdown, pg_errors.CannotConnectNow,
                              pg_errors.TooManyConnections, psycopg.InterfaceError)):
                return UNREACHABLE
            if isinstance(e, psycopg.OperationalError) and getattr(e, "sqlstate", None) in (None, "08000", "08001",
                                                                                              "08003", "08006"):
                return UNREACHABLE  # no SQLSTATE: the client could not reach the server or lost it
            if isinstance(e, (ConnectionError, TimeoutError)):
                return UNREACHABLE
            e = e.__cause__ or e.__context__
        return None

    def _fault(self, exc: BaseException) -> StoreUnavailable | None:
        fault = super()._fault(exc)
        if fault is not None:
            log.warning("event store %s: %s", self._label, exc)
        return fault
