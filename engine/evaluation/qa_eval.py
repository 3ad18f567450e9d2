"""`vitrine eval qa`: answer ranking on the Amazon QA "Appliances" set (issue 12).

Protocol: repeated (asin, question) pairs are deduplicated (the first answer kept); products with at
least 5 questions; for each question, every answer of the same product is ranked and the right one's
reciprocal rank is taken (MRR, recall@1). Split: ``zlib.crc32(question.encode())`` even is the tune half,
odd the report half; nothing is fitted or chosen on the odd half. Inside the tune half, bit 1 of the CRC
splits it again: the question adapter is trained on one part (in-batch softmax, torch, training only),
the logistic regression and the "no good answer" threshold are fitted on the other, so the regression
sees the adapter's cosine as it will be on unseen questions.
"""
from __future__ import annotations

import csv
import gzip
import logging
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.config import EngineConfig
from engine.qa.rank import FEATURES, PACKAGED, AnswerTexts, QaModel, features

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
SECTION = "eval-qa"
DATASETS = {"appliances": ("amazon_qa", "qa_appliances.csv.gz")}
MIN_QUESTIONS = 5
TARGET_PRECISION = 0.75  # of the answers shown above qa_min_score, on the tune half
TARGET_MRR, AIM_MRR = 0.75, 0.78  # issue 12, on the report half


@dataclass
class QaSet:
    asins: list[str]
    questions: list[str]
    answers: list[str]
    groups: dict[str, list[int]]

    def split(self, half: int) -> list[int]:
        return [i for i, q in enumerate(self.questions) if zlib.crc32(q.encode()) % 2 == half]


def load_qa_set(data_dir: Path, dataset: str = "appliances") -> QaSet:
    folder, name = DATASETS[dataset]
    path = data_dir / folder / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; set data_dir (VITRINE_DATA_DIR) to the shared data folder")
    seen: set[tuple[str, str]] = set()
    rows: list[tuple[str, str, str]] = []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            key = (r["asin"], r["question"])
            if key not in seen:
                seen.add(key)
                rows.append((r["asin"], r["question"], r["answer"]))
    count = Counter(a for a, _, _ in rows)
    rows = [r for r in rows if count[r[0]] >= MIN_QUESTIONS]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (a, _, _) in enumerate(rows):
        groups[a].append(i)
    return QaSet([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], dict(groups))


def ranks(data: QaSet, idx: list[int], score: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """Rank (1 = best; ties count against) of each question's own answer among its product's answers."""
    out = np.zeros(len(idx), np.int64)
    for j, i in enumerate(idx):
        g = np.array(data.groups[data.asins[i]], np.int64)
        s = score(i, g)
        out[j] = 1 + int(np.sum(s > s[int(np.flatnonzero(g == i)[0])]))
    return out


def mrr_r1(r: np.ndarray) -> tuple[float, float]:
    return (float(np.mean(1.0 / r)), float(np.mean(r == 1))) if len(r) else (0.0, 0.0)


def train_adapter(q: np.ndarray, a: np.ndarray, *, epochs: int = 20, lr: float = 1e-3, temperature: float = 0.05,
                  ridge: float = 1e-2, batch: int = 128, seed: int = 0) -> np.ndarray:
    """W (dim x dim, from the identity) so that normalise(q @ W) . a ranks each pair's answer first among the
    batch's answers (in-batch softmax), with an L2 pull back to the identity. Torch: training only."""
    import torch

    torch.manual_seed(seed)
    dim = q.shape[1]
    eye = torch.eye(dim)
    w = eye.clone().requires_grad_(True)
    qt, at = torch.tensor(q), torch.tensor(a)
    opt = torch.optim.Adam([w], lr=lr)
    order = np.arange(len(q))
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        rng.shuffle(order)
        for b in range(0, len(order), batch):
            bi = torch.tensor(order[b:b + batch])
            qb = torch.nn.functional.normalize(qt[bi] @ w, dim=1)
            logits = qb @ at[bi].T / temperature
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(bi))) + ridge * ((w - eye) ** 2).sum()
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    return np.asarray(w.detach().numpy(), np.float32)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """L2-regularised logistic regression (scipy L-BFGS) on standardised features: coef, intercept, mean, scale."""
    from scipy.optimize import minimize

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (x - mean) / scale

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        m = z @ theta[:-1] + theta[-1]
        p = 1.0 / (1.0 + np.exp(-m))
        nll = float(np.sum(np.logaddexp(0, m) - y * m)) + 0.5 * l2 * float(theta[:-1] @ theta[:-1])
        g = p - y
        return nll, np.concatenate([z.T @ g + l2 * theta[:-1], [g.sum()]])

    res = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B")
    return res.x[:-1], float(res.x[-1]), mean, scale


def choose_threshold(top_prob: np.ndarray, top_right: np.ndarray, precision: float = TARGET_PRECISION) -> float:
    """The lowest probability at which the top answers shown (top probability >= it) are right at least
    ``precision`` of the time on the tune half: below it the API says "no good answer"."""
    order = np.argsort(-top_prob)
    right = np.cumsum(top_right[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(right >= precision)
    return float(top_prob[order][ok[-1]]) if len(ok) else 1.0


@dataclass
class QaEvalReport:
    dataset: str
    rows: dict[str, dict[str, float]]
    threshold: float
    tune: dict[str, Any]
    seconds: float
    started_at: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "report_half": self.rows, "threshold": self.threshold, "tune": self.tune,
                "seconds": round(self.seconds, 1), "started_at": self.started_at} | self.extra

    def lines(self) -> list[str]:
        out = [f"QA answer ranking, {self.dataset}: report half (crc32 odd), answers of the same product ranked",
               "", "| method | MRR | R@1 | questions |", "|---|---|---|---|"]
        for name, m in self.rows.items():
            out.append(f"| {name} | {m['mrr']:.4f} | {m['r1']:.4f} | {int(m['n'])} |")
        t = self.tune
        fit = (f" (cross-fitted: with top layers trained on the {t['adapter_n']} only, as on new questions)"
               if t.get("cross_fit") else "")
        out += ["", f"tune half (crc32 even, {t['n']} questions): adapter trained on {t['adapter_n']}, logistic "
                f"regression and threshold fitted on {t['fit_n']}{fit}; held-out part of tune: vector MRR "
                f"{t['vector_mrr']:.4f}, adapter only {t['adapter_mrr']:.4f}, tuned {t['tuned_mrr']:.4f}",
                f"qa_min_score (chosen on tune: lowest with >= {TARGET_PRECISION:.0%} of shown top answers right): "
                f"{self.threshold:.3f}; on the report half "
                f"{self.extra['shown_share']:.1%} of questions get an answer, {self.extra['shown_right']:.1%} of those "
                "are right"]
        served = list(self.rows.values())[-1]["mrr"]  # the tuned scorer, the last row
        out.append(f"Target MRR >= {TARGET_MRR}: {'met' if served >= TARGET_MRR else 'NOT met'} ({served:.4f}; "
                   f"aim {AIM_MRR} {'reached' if served >= AIM_MRR else 'not reached'}).")
        return out


def run_qa_eval(config: EngineConfig, dataset: str = "appliances", data_dir: Path | None = None,
                encoder: Any = None, save_to: Path | None = None, *, top_layer: Path | None = None,
                fit_layer: Path | None = None, finetune_epochs: int = 0, finetune_layers: int = 2) -> QaEvalReport:
    """Measure BM25, vector and the tuned scorer; write the tuned model to ``save_to`` (default
    ``<models_path>/qa``), where the server picks it up.

    ``finetune_epochs``: first fine-tune MiniLM's top ``finetune_layers`` on the whole tune half
    (engine.qa.finetune, 5 to 25 minutes an epoch a layer on 2 cores, with load) into ``save_to/top_layer.npz``;
    else ``top_layer`` (an
    ``.npz`` from an earlier run; None: the packaged one, if any). With a top layer, the tuned scorer ranks
    with its vectors and no adapter.

    Cross-fitting: the served layers have seen every tune question, so their cosine on the tune half is
    better than it will be on new questions, and a regression fitted on it would trust it too much. With
    ``finetune_epochs`` the same recipe first trains layers on the first tune part only (``fit_layer.npz``);
    the regression and the threshold are fitted on the second part with *those* layers' vectors, as the
    served layers will meet new questions. ``fit_layer``: such a file from an earlier run (default: the
    ``fit_layer.npz`` beside ``top_layer``, if any; else the regression sees the served layers' cosine)."""
    started = time.time()
    data = load_qa_set(Path(data_dir or config.data_dir), dataset)
    if encoder is None:
        from engine.embedding.factory import build_encoder

        encoder = build_encoder(config.encoder, cache_dir=config.models_path, threads=config.torch_threads)
    folder = save_to or config.models_path / "qa"
    tune, report = data.split(0), data.split(1)
    part = {i: (zlib.crc32(data.questions[i].encode()) >> 1) & 1 for i in tune}
    adapter_idx = [i for i in tune if part[i] == 0]
    fit_idx = [i for i in tune if part[i] == 1]
    if finetune_epochs:
        from engine.qa.finetune import finetune_top_layer, save_top_layer

        def train(rows: list[int], name: str, what: str) -> Path:
            weights = finetune_top_layer(data.questions, data.answers, data.asins, rows, epochs=finetune_epochs,
                                         layers=finetune_layers)
            return save_top_layer(weights, folder / name, {
                "trained_on": f"{dataset} {what}, {len(rows)} questions", "epochs": finetune_epochs,
                "layers": finetune_layers, "lr": 5e-5, "batch": 64, "temperature": 0.05, "seed": 0,
                "hard_negatives": "one other answer of the same product per question, from the training rows",
                "recipe": "engine/qa/finetune.py finetune_top_layer",
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

        fit_layer = train(adapter_idx, "fit_layer.npz", "tune half (crc32 even), first part (crc32 bit 1 = 0)")
        top_layer = train(tune, "top_layer.npz", "tune half (crc32 even)")
    elif top_layer is None and (PACKAGED / "top_layer.npz").is_file():
        top_layer = PACKAGED / "top_layer.npz"
    if fit_layer is None and top_layer is not None and (top_layer.parent / "fit_layer.npz").is_file():
        fit_layer = top_layer.parent / "fit_layer.npz"
    q_vecs = encoder.encode(data.questions, batch_size=64)
    texts = AnswerTexts.build(data.answers, encoder.encode(data.answers, batch_size=64))
    ft_texts, ft_q = texts, q_vecs
    if top_layer is not None:
        from engine.qa.service import qa_encoder

        qa_enc = qa_encoder(encoder, top_layer, config.models_path)
        ft_q = qa_enc.encode(data.questions, batch_size=64)
        ft_texts = AnswerTexts.build(data.answers, qa_enc.encode(data.answers, batch_size=64))
    fit_texts, fit_q = ft_texts, ft_q  # what the regression and the threshold are fitted on
    if top_layer is not None and fit_layer is not None:
        from engine.qa.service import qa_encoder

        fit_enc = qa_encoder(encoder, fit_layer, config.models_path)
        fit_q = fit_enc.encode(data.questions, batch_size=64)
        fit_texts = AnswerTexts.build(data.answers, fit_enc.encode(data.answers, batch_size=64))
    adapter = train_adapter(q_vecs[adapter_idx], texts.vectors[adapter_idx])
    model_adapter: np.ndarray | None = adapter if top_layer is None else None
    x, y = [], []
    for i in fit_idx:
        g = np.array(data.groups[data.asins[i]], np.int64)
        x.append(features(data.questions[i], fit_q[i], fit_texts, g, model_adapter))
        y.append((g == i).astype(np.float64))
    coef, intercept, mean, scale = fit_logistic(np.vstack(x), np.concatenate(y))
    model = QaModel(coef, intercept, mean, scale, model_adapter, 0.5, {}, top_layer)

    def vector(i: int, g: np.ndarray) -> np.ndarray:
        return np.asarray(texts.vectors[g] @ q_vecs[i])

    def bm25(i: int, g: np.ndarray) -> np.ndarray:
        return features(data.questions[i], q_vecs[i], texts, g, None)[:, FEATURES.index("bm25")]

    def adapted(i: int, g: np.ndarray) -> np.ndarray:
        return features(data.questions[i], q_vecs[i], texts, g, adapter)[:, FEATURES.index("cos")]

    def fine_tuned(i: int, g: np.ndarray) -> np.ndarray:
        return np.asarray(ft_texts.vectors[g] @ ft_q[i])

    def tuned(i: int, g: np.ndarray) -> np.ndarray:
        return model.score(data.questions[i], ft_q[i], ft_texts, g)

    def tuned_fit(i: int, g: np.ndarray) -> np.ndarray:  # on the second tune part: as on new questions
        return model.score(data.questions[i], fit_q[i], fit_texts, g)

    def top(idx: list[int], score: Callable[[int, np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        probs, right = [], []
        for i in idx:
            g = np.array(data.groups[data.asins[i]], np.int64)
            p = score(i, g)
            probs.append(float(p.max()))
            right.append(bool(g[int(np.argmax(p))] == i))
        return np.array(probs), np.array(right)

    tp, tr = top(fit_idx, tuned_fit)
    threshold = choose_threshold(tp, tr)
    model = QaModel(coef, intercept, mean, scale, model_adapter, threshold, {}, top_layer)
    rows: dict[str, dict[str, float]] = {}
    methods: list[tuple[str, Callable[[int, np.ndarray], np.ndarray]]] = [
        ("BM25", bm25), ("vector (MiniLM cosine)", vector), ("vector + adapter", adapted)]
    if top_layer is not None:
        methods += [("vector, MiniLM with the fine-tuned top layers", fine_tuned),
                    ("tuned (fine-tuned top layers + BM25 + features, logistic)", tuned)]
    else:
        methods.append(("tuned (adapter + BM25 + features, logistic)", tuned))
    for name, fn in methods:
        m, r1 = mrr_r1(ranks(data, report, fn))
        rows[name] = {"mrr": m, "r1": r1, "n": float(len(report))}
    all_m, _ = mrr_r1(ranks(data, list(range(len(data.questions))), vector))
    rp, rr = top(report, tuned)
    shown = rp >= threshold
    tune_info = {"n": len(tune), "adapter_n": len(adapter_idx), "fit_n": len(fit_idx),
                 "vector_mrr": mrr_r1(ranks(data, fit_idx, vector))[0],
                 "adapter_mrr": mrr_r1(ranks(data, fit_idx, adapted))[0],
                 "tuned_mrr": mrr_r1(ranks(data, fit_idx, tuned_fit))[0], "cross_fit": fit_layer is not None}
    report_obj = QaEvalReport(dataset, rows, threshold, tune_info, time.time() - started,
                              time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
                              {"zero_shot_all_mrr": all_m, "shown_share": float(shown.mean()),
                               "shown_right": float(rr[shown].mean()) if shown.any() else 0.0,
                               "questions": len(data.questions), "products": len(data.groups)})
    metrics = {k: v for k, v in report_obj.to_dict().items() if k in ("dataset", "report_half", "threshold", "tune")}
    QaModel(coef, intercept, mean, scale, model_adapter, threshold, metrics, top_layer).save(folder)
    return report_obj


def record_results(report: QaEvalReport, command: str, *, results: Path = ROOT / "bench" / "RESULTS.md") -> None:
    from engine.evaluation.simulate import replace_section, run_lines

    body = "\n".join([
        "### Shopper questions: answer ranking (`vitrine eval qa`)", "",
        *run_lines(command, report.started_at, report.seconds),
        f"- data: Amazon QA Appliances, {report.extra['questions']} deduplicated questions on {report.extra['products']}"
        f" products with >= {MIN_QUESTIONS} questions; zero-shot MiniLM MRR on all of them "
        f"{report.extra['zero_shot_all_mrr']:.4f}", "",
        *report.lines()[2:],
    ])
    replace_section(results, SECTION, body)
