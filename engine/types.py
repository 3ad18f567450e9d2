"""Plain value types shared across the engine: enums of the settings, nearest-neighbour answers."""
from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import numpy as np


class Fusion(str, Enum):
    """How hybrid search fuses its BM25 and vector scores (see :mod:`engine.ranking.fusion`)."""

    MINMAX = "minmax"
    ZSCORE = "zscore"
    RRF = "rrf"


class EncoderKind(str, Enum):
    """``onnx``: the fp32 ONNX export of the packaged weights; ``torch``: sentence-transformers;
    ``onnx-int8``: that export with int8 weights (dynamic quantization, see :mod:`engine.embedding.int8`),
    a different vector family (an index is queried by the kind that built it)."""

    ONNX = "onnx"
    TORCH = "torch"
    ONNX_INT8 = "onnx-int8"


class SearchHits(NamedTuple):
    """Nearest-neighbour answers for a batch of queries.

    ``rows`` int64 and ``scores`` float32, both of shape ``(n_queries, k)``; a query with fewer than
    ``k`` answers is padded with row ``-1`` and score ``-inf``. Rows are catalog positions: translate
    them to item ids with ``Catalog.ids`` before they leave the engine.
    """

    rows: np.ndarray
    scores: np.ndarray
