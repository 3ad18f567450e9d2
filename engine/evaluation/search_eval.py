"""`vitrine eval search --dataset crowdflower`: nDCG@10 of BM25, vector and hybrid re-ranking.

Data: CrowdFlower Search Results Relevance (Kaggle 2015), 261 real queries with ~39 judged
products each (`median_relevance` 1-4; gain = median_relevance - 1). Every distinct
(title, description) becomes one catalog item, built with the real pipeline (cleaning, MiniLM
embeddings, BM25), and each query re-ranks its own judged products.

Split: queries whose ``zlib.crc32`` of the UTF-8 text is even tune the fusion (method and weight);
the figures reported are on the odd queries, never seen while tuning.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import EngineConfig
from engine.evaluation.metrics import ndcg_at_k
from engine.ranking.fusion import fuse
from engine.types import Fusion

K = 10
WEIGHTS = [round(w, 2) for w in np.arange(0.0, 1.0001, 0.05)]


@dataclass
class QueryData:
    query: str
    gains: np.ndarray  # per judged product
    bm25: np.ndarray
    vector: np.ndarray
    rows: np.ndarray | None = None  # catalog rows of the judged products
    title: np.ndarray | None = None  # the query's cosine to their title vectors (None: the version has none)

    @property
    def tune(self) -> bool:
        return zlib.crc32(self.query.encode("utf-8")) % 2 == 0

    @property
    def early_stop(self) -> bool:
        """Tune queries held out of the ranker's training for its early stopping (a fifth of them)."""
        return self.tune and (zlib.crc32(self.query.encode("utf-8")) // 2) % 5 == 0


@dataclass
class SearchEvalReport:
    dataset: str
    n_tune: int
    n_report: int
    fusion: str
    weight: float
    report: dict[str, float]
    tune: dict[str, float]
    grid: list[dict[str, Any]] = field(default_factory=list)
    index_version: str = ""
    served: tuple[str, float] = ("", 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "metric": f"nDCG@{K}, gain = median_relevance - 1",
            "split": "tune on queries with even zlib.crc32(utf-8 text), report on odd",
            "queries": {"tune": self.n_tune, "report": self.n_report},
            "tuned": {"fusion": self.fusion, "weight": self.weight},
            "served": {"fusion": self.served[0], "weight": self.served[1]},
            "report": self.report,
            "tune": self.tune,
            "index_version": self.index_version,
        }

    def lines(self) -> list[str]:
        out = [
            f"search quality on {self.dataset}: nDCG@{K} (gain = median_relevance - 1), re-ranking each query's judged products",
            f"split: tuned on {self.n_tune} queries with even crc32, reported on the other {self.n_report} (odd crc32)",
            f"tuned fusion: {self.fusion}, vector weight {self.weight} "
            f"(the server uses fusion={self.served[0]}, hybrid_weight={self.served[1]})",
            "",
            f"{'ranker':<22} {'report (odd)':>13} {'tune (even)':>12}",
        ]
        for name in self.report:
            out.append(f"{name:<22} {self.report[name]:>13.4f} {self.tune[name]:>12.4f}")
        out.append("learned rankers: trained on the tune queries but a fifth (early stopping); 'tune' is partly "
                   "their training data")
        return out


def load_crowdflower(data_dir: Path) -> tuple[list[dict[str, Any]], list[tuple[str, list[int], list[float]]]]:
    """Products (deduplicated by title + description) and per query (text, product rows, gains)."""
    import pandas as pd

    path = data_dir / "crowdflower_search_relevance" / "train.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; set data_dir (VITRINE_DATA_DIR) to the shared data folder")
    df = pd.read_csv(path, keep_default_na=False)
    key_to_row: dict[tuple[str, str], int] = {}
    products: list[dict[str, Any]] = []
    queries: dict[str, tuple[list[int], list[float]]] = {}
    for q, title, desc, rel in df[["query", "product_title", "product_description", "median_relevance"]].itertuples(
        index=False
    ):
        key = (title, desc)
        if key not in key_to_row:
            key_to_row[key] = len(products)
            products.append({"id": f"cf{len(products)}", "title": title or "(untitled)", "description": desc})
        rows, gains = queries.setdefault(q, ([], []))
        if key_to_row[key] not in rows:
            rows.append(key_to_row[key])
            gains.append(float(rel) - 1.0)
    return products, [(q, r, g) for q, (r, g) in sorted(queries.items())]


def crowdflower_queries(config: EngineConfig, data_dir: Path | None = None, dataset: str = "crowdflower"
                        ) -> tuple[Any, list[QueryData]]:
    """The CrowdFlower catalog built by the real pipeline (under ``<index_dir>/eval/crowdflower``), its
    snapshot, and every query's judged products with their BM25 and vector scores."""
    from engine import pipeline
    from engine.service import Engine

    data_dir = data_dir or config.data_dir
    products, queries = load_crowdflower(data_dir)
    eval_dir = config.index_dir / "eval" / dataset
    eval_dir.mkdir(parents=True, exist_ok=True)
    catalog_file = eval_dir / "catalog.jsonl"
    catalog_file.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in products), encoding="utf-8")
    eval_config = config.replace(index_dir=eval_dir, models_dir=config.models_path, keep_versions=2)
    pipeline.build(eval_config, catalog_file)
    engine = Engine(eval_config)
    snap = engine.snapshot()
    data: list[QueryData] = []
    for q, rows, gains in queries:
        rows_arr = np.array([snap.catalog.row(products[r]["id"]) for r in rows], np.int64)
        bm25_all = snap.keyword.scores(q)
        qvec = engine.embed_query(q)
        data.append(QueryData(q, np.array(gains), bm25_all[rows_arr], snap.vector_index.score(qvec, rows_arr),
                              rows_arr, snap.title_scores(qvec, rows_arr)))
    return snap, data


def run_search_eval(config: EngineConfig, dataset: str = "crowdflower", data_dir: Path | None = None) -> SearchEvalReport:
    snap, data = crowdflower_queries(config, data_dir, dataset)
    tune = [d for d in data if d.tune]
    report = [d for d in data if not d.tune]
    grid: list[dict[str, Any]] = []
    for method in Fusion:
        for w in WEIGHTS:
            grid.append({"fusion": method.value, "weight": w, "ndcg": mean_ndcg(tune, lambda d: fuse(d.bm25, d.vector, w, method))})
    best = max(grid, key=lambda g: (g["ndcg"], -abs(g["weight"] - 0.5)))
    method, weight = Fusion(best["fusion"]), float(best["weight"])

    def scores(split: list[QueryData]) -> dict[str, float]:
        return {
            "bm25": mean_ndcg(split, lambda d: d.bm25),
            "vector": mean_ndcg(split, lambda d: d.vector),
            "hybrid": mean_ndcg(split, lambda d: fuse(d.bm25, d.vector, weight, method)),
        }

    rep, tun = scores(report), scores(tune)
    learned = ranker_scores(snap, data, method, weight)
    for name, by_query in learned.items():
        rep[name] = mean_ndcg(report, lambda d: by_query[d.query])
        tun[name] = mean_ndcg(tune, lambda d: by_query[d.query])
    return SearchEvalReport(dataset, len(tune), len(report), method.value, weight, rep, tun, grid,
                            snap.version, (config.fusion.value, config.hybrid_weight))


# The search MLP is the mean of this many seeds' MLPs (merged into one, engine.learn.model.merge_mlps): chosen
# by 5-fold cross-validation on the tune queries (nDCG@10 0.9040 for one seed, 0.9084 for five).
SEARCH_ENSEMBLE = 5


def ranker_lists(snap: Any, data: list[QueryData], method: Fusion, weight: float) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The search ranker's features of every query's judged products (the serving function), their gains
    and the list sizes, in ``data`` order."""
    from engine.ranking.features import search_features
    from engine.search import search_inputs

    X, y, groups = [], [], []
    for d in data:
        assert d.rows is not None
        fused = fuse(d.bm25, d.vector, weight, method)
        X.append(search_features(search_inputs(snap, d.query, d.rows, d.bm25, d.vector, fused, None, title=d.title)))
        y.append(d.gains.astype(np.float32))
        groups.append(len(d.rows))
    return np.concatenate(X), np.concatenate(y), groups


def ranker_scores(snap: Any, data: list[QueryData], method: Fusion, weight: float, seed: int = 0,
                  keep: dict[str, Any] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Train the MLP (labels gain / 3) and LambdaMART (grades = gains) on the tune queries but the early-stop
    fifth, early-stopped on that fifth; score every query. ``{"learned ranker (MLP)": {query: scores}, ...}``"""
    from engine.learn.train import TrainConfig, list_rows, offsets, train_lambdamart, train_mlp
    from engine.ranking.features import SEARCH_FEATURES

    X, y, groups = ranker_lists(snap, data, method, weight)
    off = offsets(groups)

    def part(pick: list[int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        idx = list_rows(groups, pick)
        return X[idx], y[idx], [groups[i] for i in pick]

    fit_ids = [i for i, d in enumerate(data) if d.tune and not d.early_stop]
    stop_ids = [i for i, d in enumerate(data) if d.early_stop]
    if not stop_ids and len(fit_ids) > 1:  # tiny slices (tests): the last tune query stops early
        stop_ids = fit_ids[-1:]
        fit_ids = fit_ids[:-1]
    if not fit_ids or not stop_ids:
        return {}
    fit, stop = part(fit_ids), part(stop_ids)
    mlp = train_mlp(fit[0], fit[1] / 3.0, fit[2], stop[0], stop[1] / 3.0, stop[2], SEARCH_FEATURES,
                    TrainConfig(hidden=(32, 16), seed=seed, batch_size=128, ensemble=SEARCH_ENSEMBLE))
    if keep is not None:
        keep.update(mlp=mlp, fit_lists=len(fit[2]), fit_rows=int(len(fit[1])), stop_lists=len(stop[2]))
    booster = train_lambdamart(fit[0], fit[1], fit[2], stop[0], stop[1], stop[2], seed=seed)
    out: dict[str, dict[str, np.ndarray]] = {"learned ranker (MLP)": {}, "LambdaMART": {}}
    s_mlp, s_lm = mlp.model.score(X), np.asarray(booster.predict(X), np.float64)
    for i, d in enumerate(data):
        out["learned ranker (MLP)"][d.query] = s_mlp[off[i]:off[i + 1]]
        out["LambdaMART"][d.query] = s_lm[off[i]:off[i + 1]]
    return out


def mean_ndcg(split: list[QueryData], score: Any) -> float:
    """Mean nDCG@10; ties broken by judged-list order (deterministic)."""
    vals = []
    for d in split:
        s = np.asarray(score(d), np.float64)
        order = np.lexsort((np.arange(len(s)), -s))
        vals.append(ndcg_at_k(d.gains[order].tolist(), d.gains.tolist(), K))
    return round(float(np.mean(vals)), 4) if vals else 0.0
