"""`vitrine eval recommend --dataset scientific|movielens100k`: next-item quality of every source and the blend.

Protocol (leave-one-out, the split of UniSRec and most sequential-recommendation papers):

- every user's interactions are ordered (Scientific: ``seq_pos``; MovieLens: timestamp, then item id);
- fit: co-occurrence, popularity and ALS see only each user's items but the last two, so no model ever
  contains a validation or test target of any user. The models are *not* refit for the test: the test
  only uses the longer history (the validation item is part of it), as a live system would;
- validation: target = the second-to-last item, history = everything before it. Every weight and
  hyper-parameter is chosen here, by coordinate search on R@10 + N@10: first each source alone (its
  own row in the table), then the blend's weights jointly with the sources' scoring-time parameters
  (recency decays, exponents, kernel sharpness), starting from the standalone optimum;
- test: target = the last item, history = everything before it. Reported, never tuned on;
- full ranking over every item of the catalog; the user's history items are excluded (a target that is
  itself in the history counts as a miss); ties are broken by catalog row, lowest first.

Metrics, one relevant item per user: Recall@k = share of users whose target is in the top k;
NDCG@k = mean of ``1 / log2(rank + 1)`` over those users (0 otherwise).

Sources: popularity (Scientific: counts; MovieLens: time-decayed trending over the training events
*before* the target's timestamp, half-life tuned), content (interest vectors from the served MiniLM item
vectors), co-occurrence (item-to-item counts from all training sequences) and the blend of the three
(:class:`engine.recommend.blend.Blender`). MovieLens adds implicit ALS (the `implicit` package) as the
collaborative peer. Scientific's item vectors are those of the demo catalog index, built by the real
pipeline into ``<index_dir>/eval/scientific`` (so they are exactly the served ones); MovieLens items are
embedded as "title. genres" with the configured encoder and the embedding cache.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from engine.config import EngineConfig
from engine.evaluation import ranker_eval
from engine.learn.sequence import SeqConfig, score_matrix, train_seq
from engine.ranking.features import RECOMMEND_FEATURES, brand_key
from engine.ranking.scores import zscore
from engine.recommend.blend import BlendWeights, Blender
from engine.recommend.categories import CategoryTransitions
from engine.recommend.content import InterestProfile, score_profiles
from engine.recommend.cooccurrence import CooccurrenceModel
from engine.recommend.popular import TrendingModel

DATASETS = ("scientific", "movielens100k")
KS = (10, 50)
METRICS = tuple(f"{m}@{k}" for k in KS for m in ("R", "N"))
ROOT = Path(__file__).resolve().parents[2]
DEMO_CATALOG = ROOT / "data" / "demo" / "catalog.jsonl"
DAY = 86400.0

PUBLISHED: dict[str, dict[str, Any]] = {
    "scientific": {
        "source": "UniSRec (Hou et al., KDD 2022), Table 2, Scientific; same data and leave-one-out split",
        "rows": {
            "SASRec (published)": {"R@10": 0.1080, "N@10": 0.0553},
            "UniSRec (published)": {"R@10": 0.1235, "N@10": 0.0641, "R@50": 0.2473},
        },
    },
}

# Search spaces (validation only). The first value of each list is the starting point.
CO_SPACE: dict[str, dict[str, list[Any]]] = {
    "scientific": {
        "window": [50], "distance_decay": [0.8, 0.6, 1.0], "backward_weight": [1.0, 0.5],
        "source_exponent": [0.5, 0.25, 0.75], "target_exponent": [0.0, 0.15, 0.3],
        "history_decay": [0.7, 0.5, 0.85, 1.0],
    },
    "movielens100k": {
        "window": [20, 5, 50], "distance_decay": [0.9, 0.8, 1.0], "backward_weight": [1.0, 0.5],
        "source_exponent": [0.5, 0.25, 0.75], "target_exponent": [0.0, 0.15],
        "history_decay": [0.95, 0.9, 0.98, 1.0],
    },
}
CONTENT_SPACE: dict[str, dict[str, list[Any]]] = {
    "scientific": {
        "position_decay": [0.7, 0.5, 0.35, 0.85], "beta": [10.0, 5.0, 2.5, 20.0],
        "interests": ["8@1.0", "1@0", "8@0.9", "16@1.0"], "half_life_days": [None],
    },
    "movielens100k": {
        "position_decay": [0.95, 0.9, 0.98, 1.0], "beta": [10.0, 5.0, 20.0],
        "interests": ["8@1.0", "1@0", "8@0.8"], "half_life_days": [None, 1.0, 30.0],
    },
}
POP_SPACE: dict[str, list[float | None]] = {"scientific": [None], "movielens100k": [None, 1.0, 7.0, 30.0]}
# The blend's joint search re-tunes these scoring-time parameters of the sources along with the weights.
JOINT_CO = ("history_decay", "source_exponent", "target_exponent")
JOINT_CONTENT = ("position_decay", "beta", "interests")
JOINT_INTERESTS = ["8@1.0", "8@0.9", "8@0.8"]  # the single vector ("1@0") is the standalone ablation row
BLEND_SPACE = {"content": [0.0, 0.2, 0.35, 0.5, 0.7, 1.0, 1.3, 1.7], "popular": [0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7]}
ALS_SPACE: dict[str, list[Any]] = {"factors": [128, 64, 256], "regularization": [5.0, 1.0, 20.0, 50.0], "alpha": [10.0, 5.0, 40.0],
             "iterations": [15]}


# -- data -----------------------------------------------------------------------------------------

@dataclass
class RecData:
    """One data set: the catalog (rows 0..n-1) and every user's ordered interactions as catalog rows."""

    name: str
    item_ids: list[str]
    titles: list[str]
    vectors: np.ndarray  # (n, dim) float32 unit rows
    seqs: list[np.ndarray]  # per user: int64 rows, oldest first
    times: list[np.ndarray] | None = None  # per user: float64 epoch seconds (None: no timestamps)
    index_version: str = ""
    item_vectors: str = ""  # where the vectors come from
    categories: list[str] = field(default_factory=list)  # per item, "" unknown
    brands: list[str] = field(default_factory=list)  # per item, normalized, "" unknown

    _gram: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def gram(self) -> np.ndarray:
        """Item-item cosines ``vectors @ vectors.T`` (n, n) float32, computed once."""
        if self._gram is None:
            self._gram = self.vectors @ self.vectors.T
        return self._gram


@dataclass
class Phase:
    """Validation or test: per user a history, its timestamps and the target."""

    name: str
    hists: list[np.ndarray]
    targets: np.ndarray
    hist_times: list[np.ndarray] | None
    target_times: np.ndarray | None
    excluded: np.ndarray  # (users, n) bool: history items

    @property
    def n_users(self) -> int:
        return len(self.targets)


def split(data: RecData) -> tuple[list[np.ndarray], list[np.ndarray] | None, Phase, Phase]:
    """Training sequences (all but the last two), their times, and the validation and test phases."""
    seqs = [s for s in data.seqs if len(s) >= 3]
    times = None if data.times is None else [t for s, t in zip(data.seqs, data.times) if len(s) >= 3]
    train = [s[:-2] for s in seqs]
    train_t = None if times is None else [t[:-2] for t in times]

    def phase(name: str, cut: int) -> Phase:
        hists = [s[:cut] for s in seqs]
        return Phase(
            name, hists, np.array([s[cut] for s in seqs], np.int64),
            None if times is None else [t[:cut] for t in times],
            None if times is None else np.array([t[cut] for t in times], np.float64),
            history_matrix(hists, data.n_items).toarray().astype(bool),
        )

    return train, train_t, phase("validation", -2), phase("test", -1)


def history_matrix(hists: Sequence[np.ndarray], n: int, weights: Sequence[np.ndarray] | None = None) -> sp.csr_matrix:
    """(users, n) CSR: 1 (or the given weight) per history event, summed over repeats."""
    lengths = [len(h) for h in hists]
    r = np.repeat(np.arange(len(hists)), lengths)
    c = np.concatenate(hists) if hists else np.empty(0, np.int64)
    v = np.ones(len(c)) if weights is None else np.concatenate(weights)
    m = sp.csr_matrix((v, (r, c)), shape=(len(hists), n))
    m.sum_duplicates()
    return m


def position_weights(hists: Sequence[np.ndarray], decay: float) -> list[np.ndarray]:
    """``decay ** age`` per history event, age 0 = the most recent."""
    return [decay ** np.arange(len(h) - 1, -1, -1, dtype=np.float64) for h in hists]


def load_scientific(config: EngineConfig, data_dir: Path, encoder: Any = None) -> RecData:
    import pandas as pd

    from engine import pipeline
    from engine.catalog import load_catalog_jsonl
    src = data_dir / "amazon_scientific_unisrec"
    if not (src / "interactions.csv.gz").is_file():
        raise FileNotFoundError(f"{src / 'interactions.csv.gz'} not found; set data_dir (VITRINE_DATA_DIR) to the shared data folder")
    items = pd.read_csv(src / "items.csv.gz", keep_default_na=False)
    inter = pd.read_csv(src / "interactions.csv.gz").sort_values(["user_index", "seq_pos"], kind="stable")
    wanted = set(items["item_id"])
    eval_dir = config.index_dir / "eval" / "scientific"
    eval_dir.mkdir(parents=True, exist_ok=True)
    with DEMO_CATALOG.open(encoding="utf-8") as f:
        demo_ids = [json.loads(line)["id"] for line in f if line.strip()]
    missing = wanted - set(demo_ids)
    if missing:
        raise ValueError(f"{len(missing)} Scientific items are not in {DEMO_CATALOG}, e.g. {sorted(missing)[:3]}")
    if wanted == set(demo_ids):
        catalog_file = DEMO_CATALOG
    else:  # a slice (tests): the demo catalog rows of the slice's items only
        catalog_file = eval_dir / "catalog.jsonl"
        with DEMO_CATALOG.open(encoding="utf-8") as f:
            lines = [ln for ln in f if ln.strip() and json.loads(ln)["id"] in wanted]
        catalog_file.write_text("".join(lines), encoding="utf-8")
    eval_config = config.replace(index_dir=eval_dir, models_dir=config.models_path, keep_versions=2)
    version = _reusable_version(eval_dir, catalog_file)
    if version is None:
        version = pipeline.build(eval_config, catalog_file, encoder=encoder).version
    vdir = eval_dir / version
    catalog = load_catalog_jsonl(vdir / "items.jsonl")
    vectors = np.load(vdir / "vectors.npy", allow_pickle=False).astype(np.float32)
    ids = list(catalog.ids)
    row = {x: i for i, x in enumerate(ids)}
    seqs = [np.array([row[x] for x in g], np.int64) for _, g in inter.groupby("user_index", sort=True)["item_id"]]
    return RecData("scientific", ids, [p.title for p in catalog], vectors, seqs, None, version,
                   f"vectors.npy of index version {version} in {eval_dir} (the demo catalog, served vectors)",
                   [p.category_path for p in catalog], [brand_key(p.brand) for p in catalog])


def _reusable_version(eval_dir: Path, catalog_file: Path) -> str | None:
    """The current version of ``eval_dir`` if it was built from a file with exactly this content."""
    from engine.index import versions

    version = versions.current_version(eval_dir)
    if version is None or not (eval_dir / version / versions.MANIFEST).is_file():
        return None
    manifest = versions.read_manifest(eval_dir / version)
    return version if manifest.get("catalog", {}).get("file_sha256") == _sha256(catalog_file) else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


ML_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
             "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


def load_movielens(config: EngineConfig, data_dir: Path, encoder: Any = None) -> RecData:
    from engine.embedding.cache import EmbeddingCache, text_hash

    src = data_dir / "movielens_100k"
    if not (src / "u.data").is_file():
        raise FileNotFoundError(f"{src / 'u.data'} not found; set data_dir (VITRINE_DATA_DIR) to the shared data folder")
    ids, titles, texts = [], [], []
    for line in (src / "u.item").read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        f = line.split("|")
        genres = [g for g, flag in zip(ML_GENRES, f[5:24]) if flag == "1"]
        ids.append(f[0])
        titles.append(f[1])
        texts.append(f"{f[1]}. {', '.join(genres)}" if genres else f[1])
    row = {x: i for i, x in enumerate(ids)}
    raw = np.loadtxt(src / "u.data", dtype=np.int64, ndmin=2)
    users, items, stamps = raw[:, 0], raw[:, 1], raw[:, 3]
    item_rows = np.array([row[str(i)] for i in items], np.int64)
    order = np.lexsort((items, stamps, users))  # per user by time, ties by item id
    users, item_rows, stamps = users[order], item_rows[order], stamps[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    seqs = np.split(item_rows, cuts)
    times = [t.astype(np.float64) for t in np.split(stamps, cuts)]

    if encoder is None:
        from engine.embedding.factory import build_encoder

        encoder = build_encoder(config.encoder, cache_dir=config.models_path, max_seq_length=config.max_seq_length)
    cache = EmbeddingCache(config.index_dir / "eval" / "movielens100k" / "cache" / "embeddings.sqlite", encoder.family, encoder.dim)
    try:
        hashes = [text_hash(t) for t in texts]
        known = cache.get_many(sorted(set(hashes)))
        todo = sorted({h: i for i, h in enumerate(hashes) if h not in known}.values())
        if todo:
            vecs = encoder.encode([texts[i] for i in todo], batch_size=config.encode_batch_size)
            cache.put_many((hashes[i], v) for i, v in zip(todo, vecs))
            known.update({hashes[i]: v for i, v in zip(todo, vecs)})
    finally:
        cache.close()
    vectors = np.ascontiguousarray(np.stack([known[h] for h in hashes]), np.float32)
    return RecData("movielens100k", ids, titles, vectors, seqs, times, "",
                   f"{encoder.name} embeddings of 'title. genres' (cached in <index_dir>/eval/movielens100k/cache)")


# -- metrics --------------------------------------------------------------------------------------

def target_ranks(scores: np.ndarray, targets: np.ndarray, excluded: np.ndarray, chunk: int = 512) -> np.ndarray:
    """1-based rank of each user's target among the rows not excluded for that user, ties broken by
    row (lowest first). A target that is itself excluded gets rank ``n + 1`` (a miss at every k)."""
    users, n = scores.shape
    out = np.empty(users, np.int64)
    cols = np.arange(n)
    for lo in range(0, users, chunk):
        hi = min(lo + chunk, users)
        s = np.where(excluded[lo:hi], -np.inf, scores[lo:hi])
        t = targets[lo:hi]
        st = s[np.arange(hi - lo), t][:, None]
        r = 1 + (s > st).sum(axis=1) + ((s == st) & (cols[None, :] < t[:, None])).sum(axis=1)
        r[excluded[np.arange(lo, hi), t]] = n + 1
        out[lo:hi] = r
    return out


def loo_metrics(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k and NDCG@k for one relevant item per user, from its 1-based rank."""
    ranks = np.asarray(ranks, np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks <= k
        out[f"R@{k}"] = round(float(hit.mean()), 4) if len(ranks) else 0.0
        out[f"N@{k}"] = round(float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean()), 4) if len(ranks) else 0.0
    return out


def objective(m: Mapping[str, float]) -> float:
    return m["R@10"] + m["N@10"]


def coordinate_search(
    space: Mapping[str, Sequence[Any]], evaluate: Callable[[dict[str, Any]], dict[str, float]], rounds: int = 2,
    start: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, float], list[dict[str, Any]]]:
    """Improve one parameter at a time over its grid (others fixed) until a round changes nothing.
    Returns the best parameters, their metrics and every evaluated point (memoised)."""
    best = dict(start) if start else {k: v[0] for k, v in space.items()}
    seen: dict[tuple[Any, ...], dict[str, float]] = {}
    trace: list[dict[str, Any]] = []

    def ev(p: dict[str, Any]) -> dict[str, float]:
        key = tuple(p[k] for k in space)
        if key not in seen:
            seen[key] = evaluate(p)
            trace.append({"params": dict(p), "metrics": seen[key]})
        return seen[key]

    best_m = ev(best)
    for _ in range(rounds):
        changed = False
        for name, values in space.items():
            for v in values:
                cand = {**best, name: v}
                m = ev(cand)
                if objective(m) > objective(best_m) + 1e-9:
                    best, best_m, changed = cand, m, True
        if not changed:
            break
    return best, best_m, trace


# -- sources --------------------------------------------------------------------------------------

class CoSource:
    """Co-occurrence models fit on the training sequences, cached by their fit parameters."""

    def __init__(self, data: RecData, train: list[np.ndarray]) -> None:
        self.data, self.train = data, train
        self.rows = {i: i for i in range(data.n_items)}
        self._models: dict[tuple[Any, ...], tuple[CooccurrenceModel, sp.csr_matrix]] = {}
        self._sims: dict[tuple[Any, ...], sp.csr_matrix] = {}

    def model(self, p: Mapping[str, Any]) -> tuple[CooccurrenceModel, sp.csr_matrix]:
        key = (p["window"], p["distance_decay"], p["backward_weight"])
        if key not in self._models:
            m = CooccurrenceModel(window=p["window"], distance_decay=p["distance_decay"], backward_weight=p["backward_weight"])
            m.add_sequences([s.tolist() for s in self.train])
            self._models = {key: (m, m.count_csr(self.rows, self.data.n_items))}  # keep one: memory
        return self._models[key]

    def similarity(self, p: Mapping[str, Any]) -> sp.csr_matrix:
        key = (p["window"], p["distance_decay"], p["backward_weight"], p["source_exponent"], p["target_exponent"])
        if key not in self._sims:
            m, counts = self.model(p)
            self._sims = {key: m.to_csr(self.rows, self.data.n_items, source_exponent=p["source_exponent"],
                                         target_exponent=p["target_exponent"], counts=counts)}
        return self._sims[key]

    def scores(self, p: Mapping[str, Any], phase: Phase) -> np.ndarray:
        H = history_matrix(phase.hists, self.data.n_items, position_weights(phase.hists, p["history_decay"]))
        return np.asarray((H.astype(np.float32) @ self.similarity(p)).toarray(), np.float32)


class _Lru:
    """Memoises ``fn(params)`` for the last two parameter sets (each value is a users x items matrix)."""

    def __init__(self, fn: Callable[[Mapping[str, Any]], np.ndarray]) -> None:
        self.fn = fn
        self.cache: dict[tuple[Any, ...], np.ndarray] = {}

    def __call__(self, p: Mapping[str, Any]) -> np.ndarray:
        key = tuple(sorted(p.items(), key=lambda kv: kv[0]))
        if key not in self.cache:
            if len(self.cache) >= 2:
                del self.cache[next(iter(self.cache))]
            self.cache[key] = self.fn(p)
        else:
            self.cache[key] = self.cache.pop(key)
        return self.cache[key]


def _with(values: Sequence[Any], first: Any) -> list[Any]:
    """``values`` with ``first`` moved to the front (added if missing)."""
    return [first] + [v for v in values if v != first]


def interests(spec: str) -> tuple[int, float]:
    k, thr = spec.split("@")
    return int(k), float(thr)


def build_profiles(data: RecData, phase: Phase, p: Mapping[str, Any]) -> list[InterestProfile]:
    k, thr = interests(p["interests"])
    hl = None if p["half_life_days"] is None else float(p["half_life_days"]) * DAY
    out = []
    for u, hist in enumerate(phase.hists):
        prof = InterestProfile(data.vectors.shape[1], max_interests=k, merge_threshold=thr,
                               position_decay=p["position_decay"], half_life_s=hl)
        ts = None if phase.hist_times is None else phase.hist_times[u]
        for i, r in enumerate(hist.tolist()):
            prof.add(data.vectors[r], 1.0, item=r, timestamp=None if ts is None else float(ts[i]))
        out.append(prof)
    return out


def content_scores(data: RecData, phase: Phase, p: Mapping[str, Any]) -> np.ndarray:
    return score_profiles(build_profiles(data, phase, p), data.vectors, beta=p["beta"], item_gram=data.gram)


def popularity_scores(data: RecData, train: list[np.ndarray], train_t: list[np.ndarray] | None, phase: Phase,
                      half_life_days: float | None) -> np.ndarray:
    """Scientific (no timestamps): training counts. With timestamps: the trending model fed the training
    events in time order and read, for each user, just before the target's timestamp."""
    n = data.n_items
    rows = {i: i for i in range(n)}
    if train_t is None or phase.target_times is None:
        m = TrendingModel(None)
        for s in train:
            for r in s.tolist():
                m.add_event(r)
        return np.tile(m.scores_dense(rows, n).astype(np.float32), (phase.n_users, 1))
    ev_items = np.concatenate(train)
    ev_t = np.concatenate(train_t)
    order = np.lexsort((ev_items, ev_t))
    ev_items, ev_t = ev_items[order], ev_t[order]
    m = TrendingModel(None if half_life_days is None else half_life_days * DAY)
    out = np.zeros((phase.n_users, n), np.float32)
    pos = 0
    for u in np.argsort(phase.target_times, kind="stable").tolist():
        t = phase.target_times[u]
        while pos < len(ev_t) and ev_t[pos] < t:
            m.add_event(int(ev_items[pos]), 1.0, float(ev_t[pos]))
            pos += 1
        out[u] = m.scores_dense(rows, n, now=t)
    return out


def _zscores(scores: np.ndarray, excluded: np.ndarray, chunk: int = 2048) -> np.ndarray:
    out = np.empty(scores.shape, np.float32)
    for lo in range(0, len(scores), chunk):
        out[lo:lo + chunk] = zscore(scores[lo:lo + chunk], ~excluded[lo:lo + chunk])
    return out


def als_scores(data: RecData, train: list[np.ndarray], phases: Sequence[Phase], p: Mapping[str, Any]) -> list[np.ndarray]:
    """Implicit ALS fit on the training sequences; each phase's user factors are recomputed from its
    history with the fitted item factors (``recalculate_user``), so the test uses the longer history."""
    from implicit.cpu.als import AlternatingLeastSquares  # imported first: it loads BLAS libraries
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit's advice (and its warning otherwise): BLAS single-threaded
        model = AlternatingLeastSquares(factors=p["factors"], regularization=p["regularization"], alpha=p["alpha"],
                                        iterations=p["iterations"], random_state=0, num_threads=2)
        X = history_matrix(train, data.n_items).astype(np.float32)
        X.data[:] = 1.0
        model.fit(X.tocsr(), show_progress=False)
        out = []
        for ph in phases:
            H = history_matrix(ph.hists, data.n_items).astype(np.float32).tocsr()
            H.data[:] = 1.0
            uf = model.recalculate_user(np.arange(ph.n_users), H)
            out.append(np.asarray(uf @ np.asarray(model.item_factors).T, np.float32))
    return out


# -- the learned ranker over the blend's candidates (see engine.evaluation.ranker_eval) -----------

def served_params() -> tuple[dict[str, Any], dict[str, Any]]:
    """The co-occurrence and content parameters the server uses (the tuned values, as in the sources'
    defaults): what the bootstrap ranker must see to match serving."""
    from engine.recommend.compose import BETA, HISTORY_DECAY

    m = CooccurrenceModel()
    co = {"window": m.window, "distance_decay": m.distance_decay, "backward_weight": m.backward_weight,
          "source_exponent": 0.25, "target_exponent": 0.15, "history_decay": HISTORY_DECAY}
    p = InterestProfile(1)
    ct = {"position_decay": p.position_decay, "beta": BETA, "interests": f"{p.max_interests}@{p.merge_threshold}",
          "half_life_days": None}
    return co, ct


def ranker_rows(data: RecData, train: list[np.ndarray], val: Phase, test: Phase, co_p: Mapping[str, Any],
                ct_p: Mapping[str, Any], weights: BlendWeights, pool: int = ranker_eval.POOL,
                depths: Sequence[int] = ranker_eval.TRAIN_DEPTHS,
                seq_config: SeqConfig | None = SeqConfig()) -> ranker_eval.RankerRows:
    """Training lists (for each depth ``d``: target = each user's d-th item from the end, history = all
    before it, feature models fit on each user's items but the last ``d``, so none has seen the target),
    validation and test lists; each re-ranks the blend's best ``pool`` candidates. ``seq_config``: the
    sequence model behind the ``seq`` features, fit like the other feature models (one per depth, and one
    on ``train`` for validation and test, which is also the one published); None leaves them 0."""
    n = data.n_items
    categories = data.categories or [""] * n
    phases: list[tuple[Phase, list[np.ndarray]]] = []
    for d in depths:
        seqs = [s for s in data.seqs if len(s) >= d + 1]
        hists = [s[:-d] for s in seqs]
        phases.append((Phase(f"train-{d}", hists, np.array([s[-d] for s in seqs], np.int64), None, None,
                             history_matrix(hists, n).toarray().astype(bool)), hists))
    phases += [(val, train), (test, train)]
    out = []
    seq_models: dict[int, Any] = {}  # id(fit) -> its sequence model (validation and test share train's)
    seq_info: list[dict[str, Any]] = []
    for phase, fit in phases:
        seq_scores = None
        if seq_config is not None:
            if id(fit) not in seq_models:
                seq_models[id(fit)] = train_seq(fit, data.vectors, data.item_ids, seq_config)
                seq_info.append({"fit": phase.name, **(seq_models[id(fit)].info or {})})
            seq_scores = score_matrix(seq_models[id(fit)], phase.hists, data.vectors, data.item_ids)
        co = CoSource(data, fit)
        sim = co.similarity(co_p)
        counts = np.bincount(np.concatenate(fit), minlength=n).astype(np.float64)
        transitions = CategoryTransitions()
        transitions.add_sequences([[categories[r] for r in s.tolist()] for s in fit])
        raw = {"content": content_scores(data, phase, ct_p), "cooccurrence": co.scores(co_p, phase),
               "popular": np.broadcast_to(counts.astype(np.float32), (phase.n_users, n))}

        def cooc_last(r: int, sim: sp.csr_matrix = sim) -> np.ndarray:
            return np.asarray(sim[r].toarray()).ravel()

        pairs = np.concatenate([np.stack([s[:-1], s[1:]], axis=1) for s in fit if len(s) > 1] or [np.empty((0, 2), np.int64)])
        nxt = sp.csr_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        nxt.sum_duplicates()

        def follows(r: int, nxt: sp.csr_matrix = nxt) -> np.ndarray:
            return np.asarray(nxt[r].toarray()).ravel()

        out.append(ranker_eval.recommend_lists(
            hists=phase.hists, targets=phase.targets, excluded=phase.excluded, raw=raw, weights=weights,
            vectors=data.vectors, categories=categories, brands=data.brands or [""] * n,
            cooc_last=cooc_last, counts=counts,
            transitions=transitions, follows=follows, pool=pool, seq_scores=seq_scores))
        del raw, seq_scores
    joined = ranker_eval.Lists.concat([x.with_positive() for x in out[:-2]])
    return ranker_eval.RankerRows(joined, out[-2], out[-1], RECOMMEND_FEATURES,
                                  {"pool": pool, "train_depths": list(depths), "sequence_models": seq_info},
                                  seq_models.get(id(train)))


# -- report ---------------------------------------------------------------------------------------

@dataclass
class RecommendEvalReport:
    dataset: str
    users: int
    items: int
    interactions: int
    validation: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    tuned: dict[str, Any]
    published: dict[str, Any]
    timings: dict[str, float]
    targets_in_history: dict[str, int]
    index_version: str = ""
    item_vectors: str = ""
    search: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def target_check(self) -> dict[str, Any] | None:
        """The blend's test figures against the best published row (+10% required on R@10 and N@10)."""
        rows = self.published.get("rows", {})
        if not rows:
            return None
        best = {m: max(r.get(m, 0.0) for r in rows.values()) for m in ("R@10", "N@10")}
        blend = self.test["blend"]
        gain = {m: round(blend[m] / best[m] - 1.0, 4) for m in best}
        return {"best_published": best, "blend_gain": gain, "passes_plus_10pct": all(g >= 0.10 for g in gain.values())}

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "protocol": ("leave-one-out; fit on each user's items but the last two; tune on the second to last "
                         "(history = all before it); report on the last (history = all before it, fit unchanged); "
                         "full ranking over all items, history items excluded, ties by catalog row"),
            "tuning": "coordinate search on validation R@10 + N@10",
            "counts": {"users": self.users, "items": self.items, "interactions": self.interactions,
                       "targets_in_history": self.targets_in_history},
            "metrics": list(METRICS),
            "test": self.test,
            "validation": self.validation,
            "published": self.published,
            "target_check": self.target_check(),
            "tuned": self.tuned,
            "timings_s": self.timings,
            "index_version": self.index_version,
            "item_vectors": self.item_vectors,
        }

    def lines(self) -> list[str]:
        out = [
            f"recommendation quality on {self.dataset}: {self.users} users, {self.items} items, "
            f"{self.interactions} interactions",
            "leave-one-out: fit on all but each user's last two items, tune on the second to last, report on the last;",
            "full ranking over all items, history items excluded (targets already in the history count as misses: "
            f"validation {self.targets_in_history['validation']}, test {self.targets_in_history['test']})",
            "",
            f"{'TEST (last item)':<26}" + "".join(f"{m:>9}" for m in METRICS),
        ]
        for name, m in self.test.items():
            out.append(f"{name:<26}" + "".join(f"{m[x]:>9.4f}" for x in METRICS))
        for name, m in self.published.get("rows", {}).items():
            out.append(f"{name:<26}" + "".join(f"{m[x]:>9.4f}" if x in m else f"{'-':>9}" for x in METRICS))
        out += ["", f"{'VALIDATION (tuned here)':<26}" + "".join(f"{m:>9}" for m in METRICS)]
        for name, m in self.validation.items():
            out.append(f"{name:<26}" + "".join(f"{m[x]:>9.4f}" for x in METRICS))
        check = self.target_check()
        if check:
            out += ["", f"published: {self.published['source']}",
                    f"blend vs best published row: R@10 {check['blend_gain']['R@10']:+.1%}, "
                    f"N@10 {check['blend_gain']['N@10']:+.1%} (target: +10% on both: "
                    f"{'met' if check['passes_plus_10pct'] else 'NOT met'})"]
        t = self.tuned
        out += ["", f"blend weights (z-scored sources): {t['blend']['weights']}",
                f"blend's co-occurrence: {t['blend']['cooccurrence']}", f"blend's content: {t['blend']['content']}",
                f"co-occurrence alone: {t['cooccurrence']}", f"content alone: {t['content']}",
                f"popularity: {t['popular']}"]
        if "als" in t:
            out.append(f"ALS: {t['als']}")
        if "ranker" in t:
            r = t["ranker"]
            out.append(f"learned ranker: MLP over the blend's best {r['pool']} (train lists {r['train_lists']}, "
                       f"targets at depths {r['train_depths']}, early stop on validation); test R@10 / N@10 per "
                       "seed: " + ", ".join(f"{m['R@10']:.4f} / {m['N@10']:.4f}" for m in r["test_per_seed"]))
        out.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        return out


# -- the run --------------------------------------------------------------------------------------

def run_recommend_eval(
    config: EngineConfig, dataset: str = "scientific", data_dir: Path | None = None, *, encoder: Any = None
) -> RecommendEvalReport:
    """Tune every source and the blend on validation, report validation and test figures."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    clock: dict[str, float] = {}
    t0 = time.time()
    data_dir = Path(data_dir or config.data_dir)
    data = load_scientific(config, data_dir, encoder) if dataset == "scientific" else load_movielens(config, data_dir, encoder)
    train, train_t, val, test = split(data)
    clock["load"] = time.time() - t0
    n = data.n_items

    def evaluate(scores: np.ndarray, phase: Phase) -> dict[str, float]:
        return loo_metrics(target_ranks(scores, phase.targets, phase.excluded))

    # Co-occurrence.
    t = time.time()
    co = CoSource(data, train)
    co_p, _, co_trace = coordinate_search(CO_SPACE[dataset], lambda p: evaluate(co.scores(p, val), val))
    clock["tune_cooccurrence"] = time.time() - t

    # Content.
    t = time.time()
    ct_p, _, ct_trace = coordinate_search(CONTENT_SPACE[dataset], lambda p: evaluate(content_scores(data, val, p), val))
    clock["tune_content"] = time.time() - t

    # Popularity.
    t = time.time()
    pop_trace = []
    best_hl, best_pm = None, None
    for hl in POP_SPACE[dataset]:
        m = evaluate(popularity_scores(data, train, train_t, val, hl), val)
        pop_trace.append({"params": {"half_life_days": hl}, "metrics": m})
        if best_pm is None or objective(m) > objective(best_pm) + 1e-9:
            best_hl, best_pm = hl, m
    clock["tune_popular"] = time.time() - t

    # Blend: a joint coordinate search over the weights (co-occurrence fixed at 1) and the scoring-time
    # parameters of both sources, from their standalone optimum; fit parameters stay as tuned above.
    t = time.time()
    z_pop = _zscores(popularity_scores(data, train, train_t, val, best_hl), val.excluded)
    z_co = _Lru(lambda p: _zscores(co.scores(p, val), val.excluded))
    z_ct = _Lru(lambda p: _zscores(content_scores(data, val, p), val.excluded))
    space: dict[str, list[Any]] = {f"w.{k}": v for k, v in BLEND_SPACE.items()}
    space.update({f"co.{k}": _with(CO_SPACE[dataset][k], co_p[k]) for k in JOINT_CO})
    space.update({f"ct.{k}": _with(CONTENT_SPACE[dataset][k], ct_p[k]) for k in JOINT_CONTENT if k != "interests"})
    space["ct.interests"] = _with(JOINT_INTERESTS, ct_p["interests"])
    begin = {"w.content": 1.0, "w.popular": 0.0, **{f"co.{k}": co_p[k] for k in JOINT_CO},
             **{f"ct.{k}": ct_p[k] for k in JOINT_CONTENT}}

    def unpack(q: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], BlendWeights]:
        cp = {**co_p, **{k[3:]: v for k, v in q.items() if k.startswith("co.")}}
        tp = {**ct_p, **{k[3:]: v for k, v in q.items() if k.startswith("ct.")}}
        return cp, tp, BlendWeights(content=q["w.content"], cooccurrence=1.0, popular=q["w.popular"])

    def blend_eval(q: Mapping[str, Any]) -> dict[str, float]:
        cp, tp, w = unpack(q)
        terms = [(1.0, z_co(cp))]
        if w.content:
            terms.append((w.content, z_ct(tp)))
        if w.popular:
            terms.append((w.popular, z_pop))
        ranks = np.empty(val.n_users, np.int64)
        for lo in range(0, val.n_users, 512):  # chunk by chunk: no users x items temporaries
            hi = min(lo + 512, val.n_users)
            total = terms[0][1][lo:hi].copy()
            for x, z in terms[1:]:
                total += np.float32(x) * z[lo:hi]
            ranks[lo:hi] = target_ranks(total, val.targets[lo:hi], val.excluded[lo:hi])
        return loo_metrics(ranks)

    bq, _, blend_trace = coordinate_search(space, blend_eval, rounds=2, start=begin)
    del z_pop, z_co, z_ct
    bco_p, bct_p, weights = unpack(bq)
    blender = Blender(weights)
    single = {**ct_p, "interests": "1@0"}

    def all_rows(phase: Phase) -> dict[str, dict[str, float]]:
        """Every row of the report on one phase: each source alone and the blend."""
        raw = {"cooccurrence": co.scores(bco_p, phase), "content": content_scores(data, phase, bct_p),
               "popular": popularity_scores(data, train, train_t, phase, best_hl)}
        return {
            "popularity": evaluate(raw["popular"], phase),
            "content": evaluate(content_scores(data, phase, ct_p), phase),
            "content, 1 vector": evaluate(content_scores(data, phase, single), phase),
            "co-occurrence": evaluate(co.scores(co_p, phase), phase),
            "blend": evaluate(blender.combine(raw, ~phase.excluded), phase),
        }

    validation = all_rows(val)
    clock["tune_blend"] = time.time() - t

    # Test: the same fitted models and parameters, the longer history.
    t = time.time()
    results = all_rows(test)
    clock["test"] = time.time() - t

    tuned: dict[str, Any] = {
        "blend": {"weights": weights.as_dict(), "cooccurrence": bco_p, "content": bct_p},
        "cooccurrence": co_p, "content": ct_p, "popular": {"half_life_days": best_hl},
    }
    search = {"cooccurrence": co_trace, "content": ct_trace, "popular": pop_trace, "blend": blend_trace}
    if dataset == "movielens100k":
        t = time.time()
        best_als, _, als_trace = coordinate_search(ALS_SPACE, lambda p: evaluate(als_scores(data, train, [val], p)[0], val))
        s_val, s_test = als_scores(data, train, [val, test], best_als)
        validation["ALS (implicit)"] = evaluate(s_val, val)
        results["ALS (implicit)"] = evaluate(s_test, test)
        tuned["als"] = best_als
        search["als"] = als_trace
        clock["als"] = time.time() - t
    if dataset == "scientific":  # the learned ranker and LambdaMART over the blend's candidates
        t = time.time()
        rows = ranker_rows(data, train, val, test, bco_p, bct_p, weights)
        scores, facts = ranker_eval.train_and_score(rows, seeds=ranker_eval.SEEDS)
        for i, (phase, table, lists) in enumerate(((val, validation, rows.val), (test, results, rows.test))):
            blend_ranks = target_ranks(blender.combine(
                {"cooccurrence": co.scores(bco_p, phase), "content": content_scores(data, phase, bct_p),
                 "popular": popularity_scores(data, train, train_t, phase, best_hl)}, ~phase.excluded),
                phase.targets, phase.excluded)
            for name, label in (("mlp", "learned ranker (MLP)"), ("merged", f"MLP, {len(ranker_eval.SEEDS)} seeds merged"),
                                ("lambdamart", "LambdaMART")):
                table[label] = loo_metrics(ranker_eval.reranked_ranks(lists, scores[name][i], phase.targets,
                                                                      blend_ranks))
            if i == 1:
                per_seed = [loo_metrics(ranker_eval.reranked_ranks(lists, r.model.score(lists.X), phase.targets,
                                                                   blend_ranks)) for r in facts["mlp_models"]]
                tuned["ranker"] = {k: v for k, v in facts.items() if k not in ("mlp_models", "merged_model")} | {
                    "pool": rows.info["pool"], "train_depths": rows.info["train_depths"],
                    "sequence_models": rows.info["sequence_models"],
                    "test_per_seed": per_seed,
                    "position_bias": "no display positions in these lists: the position feature is 0 throughout"}
        clock["ranker"] = time.time() - t
    clock["total"] = time.time() - t0
    interactions = sum(len(s) for s in data.seqs)
    in_hist = {ph.name: int(ph.excluded[np.arange(ph.n_users), ph.targets].sum()) for ph in (val, test)}
    return RecommendEvalReport(
        dataset, val.n_users, n, interactions, validation, results, tuned, PUBLISHED.get(dataset, {"rows": {}}),
        {k: round(v, 1) for k, v in clock.items()}, in_hist, data.index_version, data.item_vectors, search,
    )
