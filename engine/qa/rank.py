"""The answer scorer: a calibrated probability that a past answer answers a new question.

One function, :func:`features`, feeds training (``engine.evaluation.qa_eval``) and serving, so the
served ranking is the evaluated one. Features per (question, candidate answer) pair, from the answer's
text only (never the question it answered):

- ``cos``: cosine of the *adapted* question vector (``q @ W``, normalised; ``W`` is 384x384, trained with
  in-batch softmax on the tune half, initialised to the identity) with the answer's MiniLM vector;
- ``bm25``, ``log_bm25``: BM25 (k1 1.2, b 0.75) of the question's tokens in the answer, with the IDF of
  the answer corpus in hand (the stored answers when serving, the data set's when evaluating);
- ``overlap``: share of the question's distinct tokens found in the answer;
- ``log_len``: log(1 + answer tokens);
- ``yn_match``/``yn_open``: the answer starts with yes/no and the question is / is not a yes-no question;
- ``yn_question``, ``yn_answer``.

A logistic regression over them gives the probability; its weights, the adapter and the "no good answer"
threshold are a plain artifact (``qa_model.json`` + ``adapter.npy``, no pickle). Thread-safe: read-only.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.index.keyword import tokenize

FEATURES = ("cos", "bm25", "log_bm25", "overlap", "log_len", "yn_match", "yn_open", "yn_question", "yn_answer")
K1 = 1.2
B = 0.75
PACKAGED = Path(__file__).parent / "model"
_YN_QUESTION = re.compile(r"^\W*(is|are|does|do|can|will|would|could|should|has|have|did|was|were|am)\b", re.I)
_YN_ANSWER = re.compile(r"^\W*(yes|no|yep|nope|yeah)\b", re.I)


def is_yes_no_question(text: str) -> bool:
    return bool(_YN_QUESTION.match(text))


@dataclass(frozen=True)
class AnswerTexts:
    """The candidate answers' side of the features, computed once per corpus.

    ``vectors``: float32 (n, 384) unit MiniLM vectors; ``tokens``: the stemmed tokens of each answer;
    ``idf``: BM25 IDF of the corpus; ``avgdl``: mean answer length in tokens."""

    vectors: np.ndarray
    tokens: list[list[str]]
    idf: dict[str, float]
    avgdl: float
    yes_no: np.ndarray  # float (n,): 1.0 where the answer starts with yes/no

    @classmethod
    def build(cls, answers: Sequence[str], vectors: np.ndarray) -> "AnswerTexts":
        tokens = tokenize(answers)
        df: Counter[str] = Counter()
        for t in tokens:
            df.update(set(t))
        n = len(tokens)
        idf = {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}
        avgdl = float(np.mean([len(t) for t in tokens])) if tokens else 1.0
        yn = np.array([1.0 if _YN_ANSWER.match(a) else 0.0 for a in answers], np.float64)
        vecs = np.asarray(vectors, np.float32)
        vecs = vecs.reshape(n, -1) if n else vecs.reshape(0, vecs.shape[-1] if vecs.ndim == 2 else 0)
        return cls(vecs, tokens, idf, max(avgdl, 1.0), yn)

    def __len__(self) -> int:
        return len(self.tokens)


def features(question: str, q_vec: np.ndarray, texts: AnswerTexts, rows: np.ndarray, adapter: np.ndarray | None
             ) -> np.ndarray:
    """Feature matrix of shape (len(rows), len(FEATURES)) for one question against the answers ``rows``."""
    rows = np.asarray(rows, np.int64)
    q = np.asarray(q_vec, np.float32)
    if adapter is not None:
        q = q @ adapter
        q = q / max(float(np.linalg.norm(q)), 1e-12)
    cos = texts.vectors[rows] @ q if len(rows) else np.zeros(0, np.float32)
    q_tokens = set(tokenize([question])[0])
    bm25 = np.zeros(len(rows))
    overlap = np.zeros(len(rows))
    length = np.zeros(len(rows))
    for j, r in enumerate(rows):
        doc = texts.tokens[r]
        length[j] = math.log1p(len(doc))
        if not q_tokens or not doc:
            continue
        tf = Counter(doc)
        norm = K1 * (1 - B + B * len(doc) / texts.avgdl)
        bm25[j] = sum(texts.idf.get(w, 0.0) * tf[w] * (K1 + 1) / (tf[w] + norm) for w in q_tokens if w in tf)
        overlap[j] = sum(1 for w in q_tokens if w in tf) / len(q_tokens)
    qyn = 1.0 if is_yes_no_question(question) else 0.0
    ayn = texts.yes_no[rows]
    return np.column_stack([cos.astype(np.float64), bm25, np.log1p(bm25), overlap, length, qyn * ayn,
                            (1 - qyn) * ayn, np.full(len(rows), qyn), ayn])


@dataclass(frozen=True)
class QaModel:
    """Logistic regression over :data:`FEATURES` (standardised by ``mean``/``scale``), the question adapter
    (None: the identity) and the "no good answer" threshold chosen on the tune half."""

    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    adapter: np.ndarray | None
    threshold: float
    metrics: dict[str, object]
    top_layer: Path | None = None  # the fine-tuned top layer of the question/answer encoder (None: MiniLM's own)

    def probability(self, x: np.ndarray) -> np.ndarray:
        """P(answer answers the question) for a feature matrix from :func:`features`: shape (n,)."""
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return np.asarray(1.0 / (1.0 + np.exp(-z)), np.float64)

    def score(self, question: str, q_vec: np.ndarray, texts: AnswerTexts, rows: np.ndarray) -> np.ndarray:
        return self.probability(features(question, q_vec, texts, rows, self.adapter))

    def save(self, folder: Path) -> None:
        """``qa_model.json``, ``adapter.npy`` and a copy of the top layer (unless it is already there)."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.top_layer is not None and self.top_layer.resolve() != (folder / self.top_layer.name).resolve():
            shutil.copyfile(self.top_layer, folder / self.top_layer.name)
            shutil.copyfile(self.top_layer.with_suffix(".json"), folder / self.top_layer.with_suffix(".json").name)
        if self.adapter is not None:
            np.save(folder / "adapter.npy", self.adapter.astype(np.float32), allow_pickle=False)
        (folder / "qa_model.json").write_text(json.dumps({
            "features": list(FEATURES), "coef": self.coef.tolist(), "intercept": self.intercept,
            "mean": self.mean.tolist(), "scale": self.scale.tolist(), "threshold": self.threshold,
            "adapter": "adapter.npy" if self.adapter is not None else None,
            "top_layer": self.top_layer.name if self.top_layer is not None else None,
            "metrics": self.metrics}, indent=1) + "\n",
            encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "QaModel":
        meta = json.loads((folder / "qa_model.json").read_text(encoding="utf-8"))
        if list(meta["features"]) != list(FEATURES):
            raise ValueError(f"{folder}: QA model features {meta['features']} differ from {list(FEATURES)}; "
                             "retrain with `vitrine eval qa`")
        adapter = np.load(folder / meta["adapter"], allow_pickle=False) if meta.get("adapter") else None
        top = folder / meta["top_layer"] if meta.get("top_layer") else None
        if top is not None and not top.is_file():
            raise ValueError(f"{folder}: QA model names the encoder layer {top.name}, which is missing")
        return cls(np.array(meta["coef"], np.float64), float(meta["intercept"]), np.array(meta["mean"], np.float64),
                   np.array(meta["scale"], np.float64), adapter, float(meta["threshold"]), dict(meta.get("metrics", {})),
                   top)


def load_model(models_path: Path) -> QaModel:
    """The model trained by ``vitrine eval qa`` (``<models_path>/qa``), else the packaged one."""
    own = models_path / "qa"
    return QaModel.load(own if (own / "qa_model.json").exists() else PACKAGED)
