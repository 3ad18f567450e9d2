"""QA pairs in the event store (SQLite, through its extension API), with their MiniLM vectors as BLOBs.

A pair's key is the SHA-256 of (item id, question, answer), so importing a file twice stores nothing new.
:meth:`QaStore.corpus` keeps the whole table in memory, reloaded when the table changes (its row count
or last rowid moved). Thread-safe: every call is one store transaction; the corpus is swapped whole.
"""
from __future__ import annotations

import hashlib
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from engine.events import EventStore, StoreTables
from engine.qa.rank import AnswerTexts

DDL = [
    "CREATE TABLE IF NOT EXISTS qa_pairs (hash TEXT PRIMARY KEY, item_id TEXT NOT NULL, question TEXT NOT NULL, "
    "answer TEXT NOT NULL, answered_at REAL, imported_at REAL NOT NULL, q_vec BLOB NOT NULL, a_vec BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS qa_pairs_item ON qa_pairs (item_id)",
    # ``encoder``: the name of the encoder the stored vectors come from (absent: the index's encoder, before
    # the QA encoder existed); a different QA encoder re-embeds them (QA._vectors_current).
    "CREATE TABLE IF NOT EXISTS qa_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]


def pair_hash(item_id: str, question: str, answer: str) -> str:
    return hashlib.sha256("\x1f".join((item_id, question, answer)).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Pair:
    item_id: str
    question: str
    answer: str
    answered_at: float | None = None

    @property
    def key(self) -> str:
        return pair_hash(self.item_id, self.question, self.answer)


@dataclass(frozen=True)
class Corpus:
    """Every stored pair, row-aligned: ``texts`` holds the answers' vectors and tokens, ``q_vecs`` the
    questions' vectors, float32 of shape (n, dim); ``by_item`` maps an item id to its rows."""

    items: list[str]
    questions: list[str]
    answers: list[str]
    answered_at: list[float | None]
    q_vecs: np.ndarray
    texts: AnswerTexts
    by_item: dict[str, np.ndarray]
    version: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class QaStore:
    store: Callable[[], EventStore]
    dim: int = 384
    _corpus: Corpus | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _tables: StoreTables = field(init=False)

    def __post_init__(self) -> None:
        self._tables = StoreTables(self.store, DDL)

    def events(self) -> EventStore:
        """The event store, with the QA table created on first use."""
        return self._tables()

    def known(self, keys: Sequence[str]) -> set[str]:
        """Which of these pair keys are stored already."""
        def read(conn: sqlite3.Connection) -> set[str]:
            out: set[str] = set()
            for b in range(0, len(keys), 500):
                chunk = list(keys[b:b + 500])
                out.update(r[0] for r in conn.execute(
                    f"SELECT hash FROM qa_pairs WHERE hash IN ({','.join('?' * len(chunk))})", chunk))
            return out

        return self.events().run_read(read)

    def add(self, pairs: Sequence[Pair], q_vecs: np.ndarray, a_vecs: np.ndarray, now: float) -> int:
        """Insert the pairs not stored yet (one transaction); returns how many were new."""
        def write(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO qa_pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(p.key, p.item_id, p.question, p.answer, p.answered_at, now,
                  np.asarray(q, np.float32).tobytes(), np.asarray(a, np.float32).tobytes())
                 for p, q, a in zip(pairs, q_vecs, a_vecs)])
            return int(conn.total_changes - before)

        return self.events().run_write(write)

    def encoder(self) -> str | None:
        """The name of the encoder the stored vectors come from; None when never recorded."""
        row = self.events().run_read(lambda conn: conn.execute(
            "SELECT value FROM qa_meta WHERE key = 'encoder'").fetchone())
        return str(row[0]) if row else None

    def set_encoder(self, name: str) -> None:
        self.events().run_write(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO qa_meta VALUES ('encoder', ?)", (name,)))

    def reembed(self, encode: Callable[[list[str]], np.ndarray], name: str, batch: int = 512) -> int:
        """Replace every stored pair's vectors by ``encode``'s and record ``name``; returns the pairs done."""
        rows = self.events().run_read(lambda conn: conn.execute(
            "SELECT hash, question, answer FROM qa_pairs ORDER BY rowid").fetchall())
        for b in range(0, len(rows), batch):
            chunk = rows[b:b + batch]
            q = encode([r[1] for r in chunk])
            a = encode([r[2] for r in chunk])

            def write(conn: sqlite3.Connection, chunk: list[tuple[str, str, str]] = chunk, q: np.ndarray = q,
                      a: np.ndarray = a) -> None:
                conn.executemany("UPDATE qa_pairs SET q_vec = ?, a_vec = ? WHERE hash = ?",
                                 [(np.asarray(qv, np.float32).tobytes(), np.asarray(av, np.float32).tobytes(), r[0])
                                  for r, qv, av in zip(chunk, q, a)])

            self.events().run_write(write)
        self.set_encoder(name)
        with self._lock:
            self._corpus = None  # the row count and last rowid did not move: drop the cached vectors
        return len(rows)

    def count(self) -> int:
        return int(self.events().run_read(lambda conn: conn.execute("SELECT count(*) FROM qa_pairs").fetchone()[0]))

    def corpus(self) -> Corpus:
        """All pairs, cached; reloaded when the table changed since the last call."""
        version = self.events().run_read(lambda conn: tuple(
            int(v or 0) for v in conn.execute("SELECT count(*), max(rowid) FROM qa_pairs").fetchone()))
        corpus = self._corpus
        if corpus is not None and corpus.version == version:
            return corpus
        with self._lock:
            if self._corpus is not None and self._corpus.version == version:
                return self._corpus
            rows = self.events().run_read(lambda conn: conn.execute(
                "SELECT item_id, question, answer, answered_at, q_vec, a_vec FROM qa_pairs ORDER BY rowid").fetchall())
            n = len(rows)
            q = np.frombuffer(b"".join(r[4] for r in rows), np.float32).reshape(n, self.dim) if n else np.zeros(
                (0, self.dim), np.float32)
            a = np.frombuffer(b"".join(r[5] for r in rows), np.float32).reshape(n, self.dim) if n else np.zeros(
                (0, self.dim), np.float32)
            by_item: dict[str, list[int]] = {}
            for i, r in enumerate(rows):
                by_item.setdefault(r[0], []).append(i)
            self._corpus = Corpus([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                                  [r[3] for r in rows], q, AnswerTexts.build([r[2] for r in rows], a),
                                  {k: np.array(v, np.int64) for k, v in by_item.items()}, version)  # type: ignore[arg-type]
            return self._corpus
