"""BM25 keyword index (bm25s, Lucene variant) with English stop words and a Snowball stemmer.

Saved as bm25s' plain ``.npy`` + JSON files (no pickle); loaded memory-mapped.
Thread-safety: ``scores`` is read-only and may run in many threads.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

log = logging.getLogger(__name__)
# bm25s sets its own logger to DEBUG when imported (so the root handler prints every index build);
# put it back to inheriting the application's level.
logging.getLogger("bm25s").setLevel(logging.NOTSET)

K1 = 1.2
B = 0.75
_stemmer = Stemmer.Stemmer("english")


_token = re.compile(r"(?u)\b\w\w+\b")  # bm25s' default token pattern
_stopwords = frozenset(STOPWORDS_EN)


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased, stop words removed, stemmed word tokens (the same recipe for documents and queries).

    Exactly ``bm25s.tokenize(texts, stopwords="en", stemmer=<english Snowball>, return_ids=False)`` (a test
    checks it on the demo catalog), without its per-call set-up: a query or ten titles take microseconds."""
    out = []
    for text in texts:
        words = [w for w in _token.findall(text.lower()) if w not in _stopwords]
        out.append(_stemmer.stemWords(words) if words else [])
    return out


class KeywordIndex:
    """BM25 over one text per catalog row."""

    def __init__(self, retriever: bm25s.BM25, n_docs: int) -> None:
        self.retriever = retriever
        self.n_docs = n_docs
        self._vocab: dict[str, int] = retriever.vocab_dict or {}

    @classmethod
    def build(cls, texts: Sequence[str]) -> "KeywordIndex":
        retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
        retriever.index(tokenize(texts), show_progress=False)
        return cls(retriever, len(texts))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every row for ``query``: float32 array of shape (n_docs,), 0 where no term matches."""
        tokens = [t for t in tokenize([query])[0] if t in self._vocab]
        if not tokens:
            return np.zeros(self.n_docs, np.float32)
        return np.asarray(self.retriever.get_scores(tokens), dtype=np.float32)

    def save(self, path: Path) -> None:
        self.retriever.save(str(path), show_progress=False)

    @classmethod
    def load(cls, path: Path, n_docs: int) -> "KeywordIndex":
        retriever = bm25s.BM25.load(str(path), mmap=True, show_progress=False)
        return cls(retriever, n_docs)
