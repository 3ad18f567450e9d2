"""The learned ranker as served: an MLP's exported weights run in numpy (no torch at serving).

``MlpRanker.score(X)`` standardizes the features with the training means and scales, runs the hidden
layers (``ReLU(x W + b)``) and returns the output logit per row; the sigmoid of the design is monotone, so
the logit orders candidates exactly as the probability does and is not applied. Weights are saved as a
plain ``.npz`` (no pickle) next to a JSON manifest (:mod:`engine.learn.registry`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.learn.sequence import SeqModel, SeqModelError

WEIGHTS = "weights.npz"


class ModelError(ValueError):
    """A model file that cannot be served (missing, corrupt, or made for other features)."""


@dataclass
class MlpRanker:
    features: tuple[str, ...]
    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,), 1 where the training std was 0
    layers: list[tuple[np.ndarray, np.ndarray]]  # (W (in, out), b (out,)); the last has out = 1
    # The sequence model behind the ``seq`` features (engine.learn.sequence), saved in the same file; None:
    # those features are 0 wherever this model serves.
    seq: SeqModel | None = None
    # Per feature, the least and greatest value of the training rows ((F,) each), when the trainer kept them:
    # a served value outside is moved to the nearer end, so that a feature that hardly varied in training (a
    # tiny scale) cannot swing the score when it varies at serving. None: no bounds (the models before them).
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None

    def score(self, X: np.ndarray) -> np.ndarray:
        """Logit per row of ``X`` ``(m, F)`` (higher ranks first); float64 ``(m,)``."""
        X = np.asarray(X, np.float32)
        if self.lo is not None and self.hi is not None:
            X = np.clip(X, self.lo, self.hi)
        h = (X - self.mean) / self.scale
        for W, b in self.layers[:-1]:
            h = np.maximum(h @ W + b, 0.0)
        W, b = self.layers[-1]
        return np.asarray(h @ W + b, np.float64)[:, 0]

    def save(self, folder: Path) -> str:
        """Write ``weights.npz`` into ``folder``; returns its SHA-256."""
        arrays: dict[str, np.ndarray] = {"mean": self.mean, "scale": self.scale,
                                         "features": np.array(self.features, dtype="U64")}
        for i, (W, b) in enumerate(self.layers):
            arrays[f"W{i}"], arrays[f"b{i}"] = W, b
        if self.seq is not None:
            arrays.update(self.seq.arrays())
        if self.lo is not None and self.hi is not None:
            arrays["lo"], arrays["hi"] = self.lo, self.hi
        path = folder / WEIGHTS
        with path.open("wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    @classmethod
    def load(cls, folder: Path, *, sha256: str | None = None, features: Sequence[str] | None = None) -> "MlpRanker":
        """Load and check a saved model: the file hash (when given), shapes, finite weights and the feature
        names (when given). Raises :class:`ModelError` naming what is wrong."""
        path = folder / WEIGHTS
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ModelError(f"cannot read {path.name}: {e.strerror or e}") from e
        if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
            raise ModelError(f"{path.name} does not match the manifest's sha256 (corrupt or replaced)")
        try:
            import io

            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as e:  # numpy raises many kinds for a damaged archive
            raise ModelError(f"{path.name} is not a readable weights archive: {e}") from e
        try:
            names = tuple(str(x) for x in data["features"])
            layers = []
            i = 0
            while f"W{i}" in data:
                layers.append((data[f"W{i}"].astype(np.float32), data[f"b{i}"].astype(np.float32)))
                i += 1
            bounds = [data[k].astype(np.float32) if k in data else None for k in ("lo", "hi")]
            model = cls(names, data["mean"].astype(np.float32), data["scale"].astype(np.float32), layers,
                        SeqModel.from_arrays(data), bounds[0], bounds[1])
        except KeyError as e:
            raise ModelError(f"{path.name} lacks the array {e}") from e
        except SeqModelError as e:
            raise ModelError(f"{path.name}: {e}") from e
        model.check(features)
        return model

    def check(self, features: Sequence[str] | None = None) -> None:
        if features is not None and tuple(features) != self.features:
            raise ModelError(f"the model's features {list(self.features)} are not this engine's {list(features)}")
        if not self.layers:
            raise ModelError("the model has no layers")
        width = len(self.features)
        if self.mean.shape != (width,) or self.scale.shape != (width,):
            raise ModelError("the standardization arrays do not match the feature count")
        if (self.lo is None) != (self.hi is None):
            raise ModelError("the model holds only one of the training bounds lo and hi")
        if self.lo is not None and self.hi is not None:
            if self.lo.shape != (width,) or self.hi.shape != (width,):
                raise ModelError("the training bounds do not match the feature count")
            if not (np.isfinite(self.lo).all() and np.isfinite(self.hi).all()) or (self.lo > self.hi).any():
                raise ModelError("the training bounds are not finite or lo exceeds hi")
        for W, b in self.layers:
            if W.ndim != 2 or W.shape[0] != width or b.shape != (W.shape[1],):
                raise ModelError(f"layer shapes do not chain: {W.shape} after width {width}")
            width = W.shape[1]
        if width != 1:
            raise ModelError("the last layer must have one output")
        arrays = [self.mean, self.scale] + [a for layer in self.layers for a in layer]
        if not all(np.isfinite(a).all() for a in arrays) or (self.scale <= 0).any():
            raise ModelError("the model holds non-finite weights or a non-positive scale")

    def describe(self) -> dict[str, Any]:
        return {"kind": "mlp", "features": list(self.features),
                "layers": [int(W.shape[1]) for W, _ in self.layers[:-1]],
                "sequence_model": None if self.seq is None else self.seq.describe()}


def merge_mlps(models: Sequence[MlpRanker]) -> MlpRanker:
    """One MLP whose logit is the mean of ``models``' logits (same features, standardization and depth):
    each hidden layer is theirs side by side (the first) or block-diagonal (the next), so no member sees
    another's units, and the output layer averages them. Scores as the members' mean to float32 rounding."""
    first = models[0]
    if any(m.features != first.features or len(m.layers) != len(first.layers)
           or not np.array_equal(m.mean, first.mean) or not np.array_equal(m.scale, first.scale)
           or not _same(m.lo, first.lo) or not _same(m.hi, first.hi) for m in models):
        raise ValueError("only MLPs of the same features, standardization, bounds and depth can be merged")
    n = len(models)
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for depth in range(len(first.layers)):
        Ws = [m.layers[depth][0] for m in models]
        bs = [m.layers[depth][1] for m in models]
        if depth == len(first.layers) - 1:  # (sum_i h_i W_i + b_i) / n
            W = np.concatenate(Ws, axis=0) / n
            b = np.mean(bs, axis=0)
        elif depth == 0:
            W, b = np.concatenate(Ws, axis=1), np.concatenate(bs)
        else:
            W = np.zeros((sum(w.shape[0] for w in Ws), sum(w.shape[1] for w in Ws)), np.float32)
            r = c = 0
            for w in Ws:
                W[r:r + w.shape[0], c:c + w.shape[1]] = w
                r, c = r + w.shape[0], c + w.shape[1]
            b = np.concatenate(bs)
        layers.append((np.asarray(W, np.float32), np.asarray(b, np.float32)))
    return MlpRanker(first.features, first.mean, first.scale, layers, first.seq, first.lo, first.hi)


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def manifest_json(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True, default=str)
