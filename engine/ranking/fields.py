"""Per-field text statistics of a served version, for the learned search ranker's features.

``FieldTokens.of(snap)`` (one per version and process) gives each row's title, description, brand and
category tokens (the keyword index's recipe: lower case, stop words out, Snowball stems), computed on
demand and kept (up to ``MAX_ROWS`` rows; then the cache starts over), and :class:`FieldStats`: the idf of
every term as the BM25 index counts it (``log(1 + (N - df + 0.5) / (df + 0.5))``, Lucene's) and each
field's mean token count over a fixed, evenly spaced sample of ``SAMPLE`` rows (the same at training and
at serving).
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from engine.index.keyword import tokenize
from engine.ranking.features import SEARCH_FIELDS, FieldStats
from engine.snapshot import Snapshot

MAX_ROWS = 50_000
SAMPLE = 2000
_lock = threading.Lock()
_by_version: dict[str, "FieldTokens"] = {}


def field_texts(snap: Snapshot, row: int) -> tuple[str, str, str, str]:
    p = snap.catalog[row]
    return p.title, p.description, p.brand, " ".join(p.category)


class FieldTokens:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self._rows: dict[int, tuple[list[str], ...]] = {}
        retriever = snap.keyword.retriever
        n = float(snap.keyword.n_docs)
        indptr = np.asarray(retriever.scores["indptr"], np.int64)
        df = np.diff(indptr).astype(np.float64)
        idf = np.log1p((n - df + 0.5) / (df + 0.5))
        vocab = retriever.vocab_dict or {}
        self.idf = {t: float(idf[i]) for t, i in vocab.items() if 0 <= i < len(idf)}
        sample = [int(r) for r in np.unique(np.linspace(0, len(snap) - 1, min(SAMPLE, len(snap))).astype(np.int64))]
        toks = self.tokens(sample)
        avg = {f: float(np.mean([len(t) for t in toks[f]])) if len(sample) else 1.0 for f in SEARCH_FIELDS}
        self.stats = FieldStats(self.idf, {f: max(v, 1.0) for f, v in avg.items()})

    @classmethod
    def of(cls, snap: Snapshot) -> "FieldTokens":
        with _lock:
            ft = _by_version.get(snap.version)
            if ft is None or ft.snap is not snap:
                ft = cls(snap)
                _by_version.clear()  # one version at a time per process
                _by_version[snap.version] = ft
            return ft

    def tokens(self, rows: Sequence[int]) -> dict[str, list[list[str]]]:
        """Per field, the tokens of each row in ``rows`` (in order)."""
        missing = [r for r in dict.fromkeys(rows) if r not in self._rows]
        if missing:
            if len(self._rows) + len(missing) > MAX_ROWS:
                self._rows = {}
            texts = [t for r in missing for t in field_texts(self.snap, r)]
            flat = tokenize(texts)
            for i, r in enumerate(missing):
                self._rows[r] = tuple(flat[4 * i:4 * i + 4])
        got = [self._rows[r] for r in rows]
        return {f: [g[j] for g in got] for j, f in enumerate(SEARCH_FIELDS)}


def query_terms(query: str) -> list[str]:
    return tokenize([query])[0]


def norm(text: str) -> str:
    return " ".join(text.lower().split())

