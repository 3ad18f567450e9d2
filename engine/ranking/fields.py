"""Per-field text statistics of a served version, for the learned search ranker's features.

``FieldTokens.of(snap)`` (one per version and process) gives each row's :class:`RowText`: its title,
description, brand and category tokens (the keyword index's recipe: lower case, stop words out, Snowball
stems) counted per term, its title's character trigrams and term pairs, all as integer keys of a
:class:`TextVocab`, and its normalized title, brand and leaf category. They are computed on demand and kept
(up to ``MAX_ROWS`` rows; then the rows and their vocabulary start over together). A catalog of at most
``MAX_ROWS`` rows is prepared whole by a background thread when its ``FieldTokens`` is made (about 0.25 ms
a row, in chunks that let requests in), so that at steady state no search prepares a row on its request
path; a larger one is prepared as searches reach its rows. It also gives
:class:`FieldStats`: the idf of every term as the BM25 index counts it (``log(1 + (N - df + 0.5) / (df +
0.5))``, Lucene's) and each field's mean token count over a fixed, evenly spaced sample of ``SAMPLE`` rows
(the same at training and at serving).
"""
from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np

from engine.index.keyword import tokenize
from engine.ranking.features import SEARCH_FIELDS, FieldStats, RowText, TextVocab, brand_key, unpack_counts
from engine.snapshot import Snapshot

MAX_ROWS = 50_000
SAMPLE = 2000
WARM_CHUNK = 64  # rows prepared at a time by the background thread, which then lets other threads run
_lock = threading.Lock()
_by_version: dict[str, "FieldTokens"] = {}


def field_texts(snap: Snapshot, row: int) -> tuple[str, str, str, str]:
    p = snap.catalog[row]
    return p.title, p.description, p.brand, " ".join(p.category)


class FieldTokens:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self._kept = _Kept()
        retriever = snap.keyword.retriever
        n = float(snap.keyword.n_docs)
        indptr = np.asarray(retriever.scores["indptr"], np.int64)
        df = np.diff(indptr).astype(np.float64)
        idf = np.log1p((n - df + 0.5) / (df + 0.5))
        vocab = retriever.vocab_dict or {}
        self.idf = {t: float(idf[i]) for t, i in vocab.items() if 0 <= i < len(idf)}
        sample = [int(r) for r in np.unique(np.linspace(0, len(snap) - 1, min(SAMPLE, len(snap))).astype(np.int64))]
        texts, _ = self.texts(sample)
        lens = unpack_counts(np.array([r.lens for r in texts], np.int64))
        avg = {f: float(np.mean(lens[:, j])) if texts else 1.0 for j, f in enumerate(SEARCH_FIELDS)}
        self.stats = FieldStats(self.idf, {f: max(v, 1.0) for f, v in avg.items()})
        self.prepared = threading.Event()  # set once every row is prepared (never, above MAX_ROWS)

    def _prepare_all(self) -> None:
        """Prepare every row (started by :meth:`of` only for catalogs within MAX_ROWS, which never start over)."""
        for lo in range(0, len(self.snap), WARM_CHUNK):
            if _by_version.get(self.snap.version) is not self:  # another version serves now
                return
            self.texts(range(lo, min(lo + WARM_CHUNK, len(self.snap))))
            time.sleep(0)  # let a request thread have the interpreter between chunks
        self.prepared.set()

    @classmethod
    def of(cls, snap: Snapshot) -> "FieldTokens":
        with _lock:
            ft = _by_version.get(snap.version)
            if ft is None or ft.snap is not snap:
                ft = cls(snap)
                _by_version.clear()  # one version at a time per process
                _by_version[snap.version] = ft
                if len(snap) <= MAX_ROWS:
                    threading.Thread(target=ft._prepare_all, name="vitrine-field-tokens", daemon=True).start()
            return ft

    def texts(self, rows: Sequence[int]) -> tuple[list[RowText], TextVocab]:
        """Each row's :class:`RowText` (in order), and the vocabulary of their ids."""
        kept = self._kept
        missing = [r for r in dict.fromkeys(rows) if r not in kept.rows]
        if missing:
            if len(kept.rows) + len(missing) > MAX_ROWS:  # start over; a search under way keeps its own
                kept = self._kept = _Kept()
                missing = list(dict.fromkeys(rows))
            texts = [t for r in missing for t in field_texts(self.snap, r)]
            flat = tokenize(texts)
            for i, r in enumerate(missing):
                p = self.snap.catalog[r]
                kept.rows[r] = RowText.of(flat[4 * i:4 * i + 4], norm(p.title), brand_key(p.brand),
                                          norm(p.category[-1]) if p.category else "", kept.vocab)
        return [kept.rows[r] for r in rows], kept.vocab


class _Kept:
    """The rows prepared so far and the vocabulary of their ids (replaced together when full)."""

    def __init__(self) -> None:
        self.rows: dict[int, RowText] = {}
        self.vocab = TextVocab()


def query_terms(query: str) -> list[str]:
    return tokenize([query])[0]


def norm(text: str) -> str:
    return " ".join(text.lower().split())

