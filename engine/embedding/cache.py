"""On-disk embedding cache: SQLite table keyed by (encoder family, sha256 of the text).

A rebuild looks every item text up here and embeds only the misses, so changing 1% of a
catalog re-embeds 1% of it. Vectors are stored as raw float32 bytes (no pickle).
"""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Not shared between threads; open one per build."""

    def __init__(self, path: Path, family: str, dim: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.family, self.dim = family, dim
        self.db = sqlite3.connect(str(path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS embeddings (family TEXT NOT NULL, hash TEXT NOT NULL, "
            "vector BLOB NOT NULL, PRIMARY KEY (family, hash)) WITHOUT ROWID"
        )

    def get_many(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), 500):
            chunk = list(hashes[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT hash, vector FROM embeddings WHERE family = ? AND hash IN ({marks})",
                [self.family, *chunk],
            )
            for h, blob in rows:
                vec = np.frombuffer(blob, dtype=np.float32)
                if vec.shape == (self.dim,):
                    found[h] = vec
        return found

    def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO embeddings (family, hash, vector) VALUES (?, ?, ?)",
                [(self.family, h, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for h, v in items],
            )

    def close(self) -> None:
        self.db.close()
