"""A columnar copy of the event store for the reports: DuckDB tables ``events``, ``impressions`` and
``items`` (the served catalog's categories), with ``users`` (a dense integer ``uid`` per shopper: the reports
group by it) and ``totals`` (each shopper's events per funnel step over the whole copy: the DP weights).

Refreshed by :meth:`Mirror.sync` before each report: new events (by ``seq``) and impressions (by rowid)
are appended; an event's ``surface`` is that of the impression its ``request_id`` names (``direct``
when it names none). Deletions: when the store's :meth:`deletion_epoch` changes, every row of a shopper
no longer in the store is deleted from the copy (and the copy checkpointed) before any report reads it;
a copy of another store (or one that lost rows otherwise) is rebuilt from scratch. The copy lives in
memory unless a ``path`` is given (the benchmark caches it under bench/out/): DuckDB reuses the freed
blocks of a file but does not zero them, so a file copy must stay on the same protected disk as the store.

Thread-safe: one lock around DuckDB's connection.
"""
from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import duckdb
import pyarrow as pa

from engine.catalog import category_key
from engine.events import EventStore

log = logging.getLogger(__name__)

CHUNK = 250_000
LAYOUT = "3"  # a file copy made by another layout is rebuilt
SOURCE_DDL = "CREATE TABLE IF NOT EXISTS analytics_source (id TEXT NOT NULL)"
_DDL = [
    "CREATE TABLE IF NOT EXISTS events (seq BIGINT, user_id VARCHAR, uid INTEGER, type VARCHAR, step TINYINT, "
    "item_id VARCHAR, value DOUBLE, query VARCHAR, ts DOUBLE, day INTEGER, request_id VARCHAR, position INTEGER, "
    "surface VARCHAR)",
    # Each shopper's count of events of each funnel step (uk = uid * 8 + step) and of all four (step 4), over
    # the whole copy: the DP reports' clipping weights (engine.analytics.reports).
    "CREATE TABLE IF NOT EXISTS totals (uk BIGINT PRIMARY KEY, n BIGINT NOT NULL)",
    # a dense integer per shopper: the reports group and clip by it (hashing strings costs more)
    "CREATE SEQUENCE IF NOT EXISTS uid_seq",
    "CREATE TABLE IF NOT EXISTS users (user_id VARCHAR PRIMARY KEY, uid INTEGER DEFAULT nextval('uid_seq'))",
    "CREATE TABLE IF NOT EXISTS impressions (rid BIGINT, request_id VARCHAR, ts DOUBLE, day INTEGER, surface VARCHAR, "
    "user_id VARCHAR, query VARCHAR, n INTEGER, offset_ INTEGER)",
    "CREATE TABLE IF NOT EXISTS items (item_id VARCHAR, ckey VARCHAR, top VARCHAR)",
    # every item of every impression with a shopper: the window attribution of events without a request_id
    "CREATE TABLE IF NOT EXISTS shown (request_id VARCHAR, user_id VARCHAR, item_id VARCHAR, ts DOUBLE, surface VARCHAR)",
    "CREATE TABLE IF NOT EXISTS state (key VARCHAR PRIMARY KEY, value VARCHAR)",
]
_EVENT_SQL = ("SELECT e.seq, e.user_id, e.type, e.item_id, e.value, e.query, e.ts, e.request_id, e.position, "
              "coalesce(i.surface, 'direct') FROM events e LEFT JOIN impressions i ON i.request_id = e.request_id "
              "WHERE e.seq > ? ORDER BY e.seq LIMIT ?")
_IMPRESSION_SQL = ("SELECT rowid, request_id, ts, surface, user_id, query, json_array_length(items), offset_, items "
                   "FROM impressions WHERE rowid > ? ORDER BY rowid LIMIT ?")
STEP = ("CASE c.type WHEN 'view' THEN 0 WHEN 'click' THEN 1 WHEN 'add_to_cart' THEN 2 WHEN 'purchase' THEN 3 "
        "ELSE NULL END")
_EVENT_COLS = ["seq", "user_id", "type", "item_id", "value", "query", "ts", "request_id", "position", "surface"]
_EVENT_TYPES = [pa.int64(), pa.string(), pa.string(), pa.string(), pa.float64(), pa.string(), pa.float64(),
                pa.string(), pa.int64(), pa.string()]
_IMP_COLS = ["rid", "request_id", "ts", "surface", "user_id", "query", "n", "offset_", "items"]
_IMP_TYPES = [pa.int64(), pa.string(), pa.float64(), pa.string(), pa.string(), pa.string(), pa.int64(), pa.int64(),
              pa.string()]


def store_source_id(store: EventStore) -> str:
    """The store's random identity (made once, kept in ``analytics_source``): a copy of another store is rebuilt."""
    store.ensure_tables([SOURCE_DDL])

    def fn(conn: Any) -> str:
        row = conn.execute("SELECT id FROM analytics_source").fetchone()
        if row:
            return str(row[0])
        made = uuid.uuid4().hex
        conn.execute("INSERT INTO analytics_source VALUES (?)", (made,))
        return made

    return store.run_write(fn)


def top_depth(paths: list[list[str]]) -> int:
    """How many path segments name a report's category: one past the prefix every item shares (a catalog
    whose items all sit under "Industrial & Scientific" is grouped by its second level)."""
    if not paths:
        return 1
    shared = 0
    while (any(len(p) > shared + 1 for p in paths)
           and len({p[shared] for p in paths if len(p) > shared}) == 1):
        shared += 1
    return shared + 1


class Mirror:
    def __init__(self, path: Path | None = None, *, window_s: float = 1800.0) -> None:
        self.path = path
        self.window_s = window_s
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(path) if path else ":memory:")
        self.lock = threading.RLock()
        for ddl in _DDL:
            self.con.execute(ddl)
        self._source: str | None = None
        self.copied = 0  # rows copied by this process (events and impressions): the warm-up's progress
        self._catalog_key: str | None = None

    # -- state

    def _get(self, key: str, default: str = "") -> str:
        row = self.con.execute("SELECT value FROM state WHERE key = ?", [key]).fetchone()
        return str(row[0]) if row else default

    def _set(self, **values: Any) -> None:
        for k, v in values.items():
            self.con.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", [k, str(v)])

    @property
    def last_seq(self) -> int:
        return int(self._get("seq", "0"))

    # -- refresh

    def sync(self, store: EventStore, *, show_progress: bool = False) -> int:
        """Bring the copy up to the store; returns the number of new events copied."""
        with self.lock:
            if self._source is None:
                self._source = store_source_id(store)
            epoch = store.deletion_epoch()
            if self._get("source") != self._source or self._get("layout") != LAYOUT:
                for table in ("events", "impressions", "users", "totals", "shown"):
                    self.con.execute(f"DELETE FROM {table}")
                self._set(source=self._source, layout=LAYOUT, seq=0, rowid=0, epoch=epoch)
            elif self._get("epoch") != str(epoch):
                self._purge(store)
                self._set(epoch=epoch)
            self._pull(store, "impressions", _IMPRESSION_SQL, "rowid", _IMP_COLS, _IMP_TYPES, show_progress)
            added = self._pull(store, "events", _EVENT_SQL, "seq", _EVENT_COLS, _EVENT_TYPES, show_progress)
            if added and self.path is not None:
                self.con.execute("CHECKPOINT")
            return added

    def _pull(self, store: EventStore, table: str, sql: str, mark: str, cols: list[str], types: list[Any],
              show_progress: bool) -> int:
        total = 0
        while True:
            last = int(self._get(mark, "0"))
            rows = store.run_read(lambda c: c.execute(sql, (last, CHUNK)).fetchall())
            if not rows:
                return total
            arrays = [pa.array(list(col), type=t) for col, t in zip(zip(*rows), types)]
            chunk = pa.Table.from_arrays(arrays, names=cols)  # noqa: F841  (read by DuckDB by name)
            day = "CAST(floor(ts / 86400) AS INTEGER)"
            if table == "events":
                self.con.execute("INSERT INTO users (user_id) SELECT DISTINCT user_id FROM chunk "
                                 "WHERE user_id NOT IN (SELECT user_id FROM users)")
                self.con.execute(f"INSERT INTO events SELECT c.seq, c.user_id, u.uid, c.type, {STEP}, c.item_id, "
                                 f"c.value, c.query, c.ts, {day}, c.request_id, c.position, c.surface FROM chunk c "
                                 "JOIN users u USING (user_id) ORDER BY c.seq")
                self._add_totals(f"seq > {int(last)}")
                self._attribute(int(last))
            else:
                self.con.execute(f"INSERT INTO impressions SELECT rid, request_id, ts, {day}, surface, user_id, "
                                 "query, n, offset_ FROM chunk")
                self.con.execute("INSERT INTO shown SELECT request_id, user_id, unnest(CAST(json_extract_string(items, "
                                 "'$[*]') AS VARCHAR[])), ts, surface FROM chunk WHERE user_id IS NOT NULL AND n > 0")
            self._set(**{mark: rows[-1][0]})
            total += len(rows)
            self.copied += len(rows)
            if show_progress:
                log.info("analytics copy: %s %s rows", total, table)

    def _attribute(self, after_seq: int) -> None:
        """Events after ``after_seq`` without a ``request_id``: the surface of the shopper's latest impression
        holding the item, logged at most ``window_s`` before the event (never after), as the learning loop's
        attribution (engine.learn.attribution) joins them; ``direct`` when there is none. Impressions logged
        after the event was copied are not looked at again."""
        self.con.execute(
            "UPDATE events SET surface = a.surface FROM (SELECT e.seq, s.surface FROM (SELECT seq, user_id, item_id, ts "
            f"FROM events WHERE seq > {after_seq} AND request_id IS NULL AND item_id IS NOT NULL) e "
            "ASOF JOIN shown s ON s.user_id = e.user_id AND s.item_id = e.item_id AND e.ts >= s.ts "
            f"WHERE e.ts - s.ts <= {float(self.window_s)}) a WHERE events.seq = a.seq")

    def _add_totals(self, where: str) -> None:
        self.con.execute(
            "INSERT INTO totals SELECT uk, count(*) FROM (SELECT uid * 8 + step AS uk FROM events WHERE step IS NOT NULL "
            f"AND {where} UNION ALL SELECT uid * 8 + 4 FROM events WHERE step IS NOT NULL AND {where}) GROUP BY uk "
            "ON CONFLICT (uk) DO UPDATE SET n = n + excluded.n")

    def _purge(self, store: EventStore) -> None:
        """Delete the rows of every shopper the store no longer holds (``delete_user``)."""
        for table in ("events", "impressions"):
            keep = store.run_read(lambda c: [r[0] for r in c.execute(
                f"SELECT DISTINCT user_id FROM {table} WHERE user_id IS NOT NULL")])  # noqa: B023
            kept = pa.table({"user_id": pa.array(keep, type=pa.string())})  # noqa: F841
            self.con.execute(f"DELETE FROM {table} WHERE user_id IS NOT NULL AND user_id NOT IN "
                             "(SELECT user_id FROM kept)")
            if table == "impressions":
                self.con.execute("DELETE FROM shown WHERE user_id NOT IN (SELECT user_id FROM kept)")
            if table == "events":
                self.con.execute("DELETE FROM users WHERE user_id NOT IN (SELECT user_id FROM kept)")
                self.con.execute("DELETE FROM totals")
                self._add_totals("TRUE")
        self.con.execute("CHECKPOINT")

    def set_catalog(self, key: str, items: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """Load ``(item_id, category path)`` pairs unless the catalog ``key`` (its version) is loaded."""
        with self.lock:
            if key == self._catalog_key:
                return
            pairs = [(item_id, [s.strip() for s in path.split(">")] if path else []) for item_id, path in items()]
            depth = top_depth([segs for _, segs in pairs if segs])
            ids = [item_id for item_id, _ in pairs]
            keys = [category_key(segs) if segs else "" for _, segs in pairs]
            tops = [" > ".join(segs[:depth]) if segs else "(none)" for _, segs in pairs]
            catalog_rows = pa.table({"item_id": ids, "ckey": keys, "top": tops})  # noqa: F841
            self.con.execute("DELETE FROM items")
            self.con.execute("INSERT INTO items SELECT item_id, ckey, top FROM catalog_rows")
            self._catalog_key = key

    def categories(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.con.execute("SELECT DISTINCT top FROM items ORDER BY top").fetchall()]

    def close(self) -> None:
        with self.lock:
            self.con.close()
