"""The encoder contract: texts in, L2-normalised float32 vectors out."""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384


class Encoder(Protocol):
    """Turns texts into unit vectors of shape ``(len(texts), dim)``, dtype float32.

    ``name`` identifies the exact numeric recipe (model, runtime, precision): vectors from two
    encoders with the same ``family`` are interchangeable (checked, see ``compatibility``), so the
    embedding cache and the manifest key on ``family``.
    """

    name: str
    family: str
    dim: int

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray: ...
