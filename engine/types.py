"""Plain result types shared across the engine."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class SearchHits(NamedTuple):
    """Nearest-neighbour answers for a batch of queries.

    ``rows`` int64 and ``scores`` float32, both of shape ``(n_queries, k)``; a query with fewer than
    ``k`` answers is padded with row ``-1`` and score ``-inf``. Rows are catalog positions: translate
    them to item ids with ``Catalog.ids`` before they leave the engine.
    """

    rows: np.ndarray
    scores: np.ndarray
