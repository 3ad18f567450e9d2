"""The questions-and-answers facade the engine holds (``Engine.qa``): import past pairs, answer a new
question about one item or the whole catalog. Thread-safe: the store serialises writes, the corpus and
the model are read-only once loaded."""
from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from engine.catalog import Product
from engine.embedding.base import Encoder
from engine.errors import InvalidQuery
from engine.events import EventStore
from engine.index.keyword import tokenize
from engine.qa.importer import ImportReport, parse_row, raw_rows
from engine.qa.rank import QaModel, load_model
from engine.qa.store import Corpus, Pair, QaStore

log = logging.getLogger(__name__)
MAX_QUESTION = 500
MAX_K = 20
CATALOG_POOL = 200  # catalog-wide: the pairs scored, taken by the adapted cosine first
# Question words that name a field in other words ("how much does it weigh" asks for the weight).
_SYNONYMS = {"weigh": "weight", "heavi": "weight", "cost": "price", "wide": "width", "tall": "height",
             "high": "height", "long": "length", "color": "colour", "colour": "color", "made": "brand",
             "manufactur": "brand", "make": "brand"}
_BUILT_IN = ("brand", "price", "category")


def _iso_day(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).date().isoformat() if ts is not None else None


def attribute_answers(question: str, product: Product) -> list[dict[str, Any]]:
    """The item's own fields the question names (every word of the key, stemmed, or a synonym), in the
    catalog's order: attributes first, then brand, price and category."""
    words = set(tokenize([question])[0])
    words |= {_SYNONYMS[w] for w in words if w in _SYNONYMS}
    fields: list[tuple[str, str, str]] = [(k, str(v), f"catalog attribute '{k}'")
                                          for k, v in product.attributes.items() if str(v).strip()]
    if product.brand:
        fields.append(("brand", product.brand, "catalog field 'brand'"))
    if product.price is not None:
        fields.append(("price", f"{product.price:.2f}", "catalog field 'price'"))
    if product.category:
        fields.append(("category", product.category_path, "catalog field 'category'"))
    out, seen = [], set()
    for key, value, source in fields:
        key_words = set(tokenize([re.sub(r"[_\-]+", " ", key)])[0])
        if key_words and key_words <= words and key not in seen:
            seen.add(key)
            out.append({"item_id": product.id, "answer": value, "question": None, "score": 1.0, "date": None,
                        "source": source, "field": key})
    return out


def qa_encoder(base: Encoder, top_layer: Path | None, models_path: Path) -> Encoder:
    """The encoder of questions and stored answers: MiniLM with the QA model's fine-tuned top layer (an ONNX
    export made once into ``models_path``, keyed by the layer's hash), or ``base`` when the model has none."""
    if top_layer is None:
        return base
    import hashlib

    from engine.embedding.onnx_encoder import OnnxEncoder, export_onnx

    digest = hashlib.sha256(top_layer.read_bytes()).hexdigest()[:12]
    enc = OnnxEncoder(export_onnx(models_path / f"minilm-onnx-qa-{digest}", top_layer=top_layer),
                      threads=int(getattr(base, "threads", 1) or 1))
    enc.name = f"{enc.name}+qa-top-layer-{digest}"
    enc.family = f"{enc.family}+qa-{digest}"  # not interchangeable with the index's vectors
    return enc


class QA:
    """``store``: the event store (tables made on first use); ``encoder``: MiniLM, built on first use (the
    index's; questions and answers use :func:`qa_encoder` of it); ``product``: an item by id (raises
    NotFound); ``min_score``: below it no past answer is shown."""

    def __init__(self, store: Callable[[], EventStore], encoder: Callable[[], Encoder],
                 product: Callable[[str], Product], known_item: Callable[[str], bool], *, models_path: Path,
                 min_score: float) -> None:
        self.store = QaStore(store)
        self._encoder = encoder
        self._product = product
        self._known_item = known_item
        self._models_path = models_path
        self.min_score = min_score
        self._model: QaModel | None = None
        self._model_lock = threading.RLock()  # encoder() builds the model first, under the same lock
        self._qa_encoder: Encoder | None = None
        self._current: str | None = None  # the encoder name the stored vectors were checked against

    def encoder(self) -> Encoder:
        """The QA encoder (see :func:`qa_encoder`), built on first use."""
        if self._qa_encoder is None:
            with self._model_lock:
                if self._qa_encoder is None:
                    self._qa_encoder = qa_encoder(self._encoder(), self.model.top_layer, self._models_path)
        return self._qa_encoder

    def _vectors_current(self) -> None:
        """Re-embed the stored pairs once if they come from another encoder (a new QA model, or pairs
        stored before the QA encoder existed: those were embedded by the index's encoder)."""
        enc = self.encoder()
        if self._current == enc.name:
            return
        stored = self.store.encoder()
        if stored is None:
            stored = self._encoder().name  # recorded by nothing: the index's encoder embedded them
        if stored != enc.name and self.store.count():
            started = time.monotonic()
            n = self.store.reembed(lambda texts: enc.encode(texts, batch_size=64), enc.name)
            log.warning("qa: re-embedded %d stored pairs with %s (were %s) in %.0f s", n, enc.name, stored,
                        time.monotonic() - started)
        elif self.store.encoder() != enc.name:
            self.store.set_encoder(enc.name)
        self._current = enc.name

    @property
    def model(self) -> QaModel:
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    self._model = load_model(self._models_path)
        return self._model

    # -- import ---------------------------------------------------------------------------------
    def import_file(self, path: Path, *, batch_size: int = 256, show_progress: bool = False) -> ImportReport:
        """Store the file's pairs of known items (see :mod:`engine.qa.importer`); idempotent."""
        started = time.monotonic()
        report = ImportReport(str(path))
        pairs: list[Pair] = []
        seen: set[str] = set()
        for line, row in raw_rows(Path(path)):
            report.read += 1
            pair = parse_row(row)
            if isinstance(pair, str):
                report.skip(pair, line)
            elif not self._known_item(pair.item_id):
                report.skip("unknown item id (not in the served catalog)", line)
            elif pair.key in seen:
                report.skip("repeated in the file (same item, question and answer)", line)
            else:
                seen.add(pair.key)
                pairs.append(pair)
        stored = self.store.known([p.key for p in pairs])
        report.already_stored = sum(1 for p in pairs if p.key in stored)
        new = [p for p in pairs if p.key not in stored]
        self._vectors_current()
        encoder = self.encoder()
        for b in range(0, len(new), batch_size):
            chunk = new[b:b + batch_size]
            q = encoder.encode([p.question for p in chunk], show_progress=show_progress)
            a = encoder.encode([p.answer for p in chunk], show_progress=show_progress)
            added = self.store.add(chunk, q, a, time.time())
            report.stored += added
            report.already_stored += len(chunk) - added  # stored meanwhile by another process
        report.seconds = time.monotonic() - started
        log.info("qa import %s: %d read, %d stored", path, report.read, report.stored)
        return report

    # -- answers --------------------------------------------------------------------------------
    def answers(self, question: Any, item_id: str | None = None, k: int = 5) -> dict[str, Any]:
        """The best answers to ``question``: about ``item_id`` (its catalog fields the question names
        first, then past answers), or across the catalog. ``score`` of a past answer: the calibrated
        probability that it answers the question; below ``min_score`` none is shown and ``no_answer``
        is true."""
        if not isinstance(question, str) or not question.strip():
            raise InvalidQuery("q", "required: the shopper's question, e.g. q=what+is+the+weight")
        question = " ".join(question.split())
        if len(question) > MAX_QUESTION:
            raise InvalidQuery("q", f"must be at most {MAX_QUESTION} characters, got {len(question)}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InvalidQuery("k", f"must be an integer in 1..{MAX_K}, got {k!r}")
        found: list[dict[str, Any]] = []
        if item_id is not None:
            found = attribute_answers(question, self._product(item_id))  # NotFound for an unknown item
        self._vectors_current()
        corpus = self.store.corpus()
        rows = corpus.by_item.get(item_id, np.zeros(0, np.int64)) if item_id is not None else np.arange(len(corpus))
        past = self._past(question, corpus, rows, k) if len(rows) else []
        found = (found + past)[:k]
        out: dict[str, Any] = {"question": question, "item_id": item_id, "answers": found,
                               "no_answer": not found, "min_score": self.min_score, "candidates": int(len(rows))}
        if not found:
            where = "about this item" if item_id is not None else "in the catalog"
            out["message"] = (f"No good answer found among {len(rows)} past answers {where}: none reaches the "
                              f"minimum score {self.min_score:g}." if len(rows) else
                              f"No past answers {where} yet.")
        return out

    def _past(self, question: str, corpus: Corpus, rows: np.ndarray, k: int) -> list[dict[str, Any]]:
        model = self.model
        q_vec = self.encoder().encode([question])[0]
        if len(rows) > CATALOG_POOL:
            q = q_vec @ model.adapter if model.adapter is not None else q_vec
            cos = corpus.texts.vectors[rows] @ q
            rows = rows[np.argsort(-cos, kind="stable")[:CATALOG_POOL]]
        scores = model.score(question, q_vec, corpus.texts, rows)
        order = np.argsort(-scores, kind="stable")
        return [{"item_id": corpus.items[r], "answer": corpus.answers[r], "question": corpus.questions[r],
                 "score": round(float(scores[j]), 4), "date": _iso_day(corpus.answered_at[r]), "source": "past answer"}
                for j in order[:k] if scores[j] >= self.min_score for r in (int(rows[j]),)]

    def stats(self) -> Mapping[str, Any]:
        return {"pairs": self.store.count(), "min_score": self.min_score}
