"""`vitrine eval encoder-agreement`: the int8 encoder against fp32, for agreement and for speed.

Owns the comparison of ``onnx-int8`` with ``onnx`` (fp32) on real texts:

- cosine int8 vs fp32 per text (mean, 1st percentile, min) on the CrowdFlower queries, the CrowdFlower
  product texts (the embedding recipe of a build) and the Amazon Scientific item texts;
- top-10 overlap of exact vector search over the CrowdFlower products, each query searched with the
  int8 query vector over the int8 corpus against the fp32 query over the fp32 corpus (and, for the
  record, int8 queries over the fp32 corpus, which a server refuses);
- CrowdFlower nDCG@10: the search eval (``engine.evaluation.search_eval``) run twice, unchanged, with
  ``encoder`` set to each kind; the int8 run builds its own eval index under
  ``<index_dir>/eval/onnx-int8/`` so that the fp32 one is left alone;
- build throughput (texts/s encoding the Scientific item texts with the build's threads, every core,
  and with one thread) and query encoding time (median ms of one query alone, with the server's
  ``torch_threads``), fp32 and int8 interleaved A/B/B/A... in one process, medians over the rounds.

The CrowdFlower product vectors of both kinds come from the two eval builds (their published
``vectors.npy``), so they are exactly what a build of each kind serves.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.types import EncoderKind

ROOT = Path(__file__).resolve().parents[2]
SECTION = "eval-encoder-agreement"
K = 10
# The targets of issue 13, part 3.
TARGET_SPEEDUP = 2.0  # build throughput, int8 / fp32
TARGET_QUERY_RATIO = 0.5  # query encoding time, int8 / fp32
TARGET_OVERLAP = 0.95  # mean top-10 overlap
TARGET_NDCG_DELTA = 0.005  # |hybrid nDCG@10 int8 - fp32| on CrowdFlower


@dataclass
class Agreement:
    texts: int
    mean: float
    p1: float
    min: float


@dataclass
class EncoderAgreementReport:
    started_at: str
    seconds: float = 0.0
    machine: str = ""
    threads_build: int = 1
    threads_query: int = 1
    rounds: int = 0
    agreement: dict[str, Agreement] = field(default_factory=dict)
    overlap: float = 0.0
    overlap_min: float = 0.0
    overlap_mixed: float = 0.0
    corpus: int = 0
    queries: int = 0
    # "fp32"/"int8": median texts/s with the build's threads; "fp32 1t"/"int8 1t": with one thread (per core).
    build_tps: dict[str, float] = field(default_factory=dict)
    build_tps_rounds: dict[str, list[float]] = field(default_factory=dict)
    query_ms: dict[str, float] = field(default_factory=dict)  # kind -> median ms
    query_ms_rounds: dict[str, list[float]] = field(default_factory=dict)
    ndcg: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> ranker -> report nDCG@10
    fusion: dict[str, str] = field(default_factory=dict)  # kind -> "zscore 0.9"
    export: dict[str, Any] = field(default_factory=dict)  # the int8 export.json
    load: str = ""  # load average (1, 5, 15 min) at the end
    load_start: str = ""  # ... when the speed rounds start

    @property
    def speedup(self) -> float:
        return self.build_tps.get("int8", 0.0) / max(self.build_tps.get("fp32", 0.0), 1e-12)

    @property
    def speedup_1t(self) -> float | None:
        if "int8 1t" not in self.build_tps:
            return None
        return self.build_tps["int8 1t"] / max(self.build_tps["fp32 1t"], 1e-12)

    @property
    def query_ratio(self) -> float:
        return self.query_ms.get("int8", 0.0) / max(self.query_ms.get("fp32", 0.0), 1e-12)

    @property
    def ndcg_delta(self) -> float | None:
        a, b = self.ndcg.get("fp32", {}).get("hybrid"), self.ndcg.get("int8", {}).get("hybrid")
        return None if a is None or b is None else round(b - a, 4)

    def targets(self) -> dict[str, bool | None]:
        delta = self.ndcg_delta
        return {
            f"build throughput >= {TARGET_SPEEDUP:g}x fp32 ({self.threads_build} threads)": (
                self.speedup >= TARGET_SPEEDUP if self.build_tps else None),
            **({f"build throughput >= {TARGET_SPEEDUP:g}x fp32 (1 thread)": self.speedup_1t >= TARGET_SPEEDUP}
               if self.speedup_1t is not None else {}),
            f"query encoding <= {TARGET_QUERY_RATIO:g}x fp32": (self.query_ratio <= TARGET_QUERY_RATIO
                                                                 if self.query_ms else None),
            f"top-{K} overlap >= {TARGET_OVERLAP}": self.overlap >= TARGET_OVERLAP if self.queries else None,
            f"CrowdFlower hybrid nDCG@10 within {TARGET_NDCG_DELTA} of fp32": (abs(delta) <= TARGET_NDCG_DELTA
                                                                                if delta is not None else None),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(speedup=round(self.speedup, 3), query_ratio=round(self.query_ratio, 3), ndcg_delta=self.ndcg_delta,
                 targets=self.targets())
        return d

    def lines(self) -> list[str]:
        out = [f"int8 encoder (onnx-int8) against fp32 (onnx), all-MiniLM-L6-v2; {self.machine}", "",
               f"{'texts':<34} {'n':>6} {'mean cos':>9} {'p1 cos':>8} {'min cos':>8}"]
        for name, a in self.agreement.items():
            out.append(f"{name:<34} {a.texts:>6} {a.mean:>9.5f} {a.p1:>8.4f} {a.min:>8.4f}")
        if self.queries:
            out += ["", f"top-{K} overlap, exact vector search of {self.queries} CrowdFlower queries over its "
                        f"{self.corpus} products: mean {self.overlap:.4f}, worst query {self.overlap_min:.1f} "
                        f"(int8 queries over the fp32 corpus, refused by the server: {self.overlap_mixed:.4f})"]
        if self.ndcg:
            out += ["", f"CrowdFlower nDCG@{K} (report half, odd crc32; each kind tunes its own fusion on the even half)",
                    f"{'ranker':<22} {'fp32':>8} {'int8':>8} {'int8 - fp32':>12}"]
            for name in self.ndcg.get("fp32", {}):
                x, y = self.ndcg["fp32"][name], self.ndcg.get("int8", {}).get(name, float("nan"))
                out.append(f"{name:<22} {x:>8.4f} {y:>8.4f} {y - x:>+12.4f}")
            out.append("tuned fusion: " + ", ".join(f"{k} {v}" for k, v in self.fusion.items()))
        if self.build_tps:
            r = self.build_tps_rounds
            out += ["", f"speed, fp32 and int8 interleaved in one process, {self.rounds} rounds, medians "
                        f"(load average at the start {self.load_start}, at the end {self.load})",
                    f"build throughput ({self.threads_build} threads, Scientific item texts): fp32 "
                    f"{self.build_tps['fp32']:.1f} texts/s, int8 {self.build_tps['int8']:.1f} texts/s: "
                    f"{self.speedup:.2f}x (rounds fp32 {_fmt(r['fp32'], '.0f')}; int8 {_fmt(r['int8'], '.0f')})"]
            if self.speedup_1t is not None:
                out.append(f"build throughput (1 thread, same texts and rounds): fp32 {self.build_tps['fp32 1t']:.1f} "
                           f"texts/s, int8 {self.build_tps['int8 1t']:.1f} texts/s: {self.speedup_1t:.2f}x (rounds fp32 "
                           f"{_fmt(r['fp32 1t'], '.0f')}; int8 {_fmt(r['int8 1t'], '.0f')})")
        if self.query_ms:
            r = self.query_ms_rounds
            out.append(f"query encoding ({self.threads_query} thread, one CrowdFlower query at a time): fp32 "
                       f"{self.query_ms['fp32']:.2f} ms, int8 {self.query_ms['int8']:.2f} ms: "
                       f"{self.query_ratio:.2f}x (rounds fp32 {_fmt(r['fp32'], '.2f')}; int8 {_fmt(r['int8'], '.2f')})")
        out += ["", "targets (issue 13, part 3):"]
        for name, met in self.targets().items():
            out.append(f"  {name}: {'met' if met else 'not met' if met is not None else 'not measured'}")
        return out


def _fmt(xs: Sequence[float], spec: str) -> str:
    return ", ".join(format(x, spec) for x in xs)


def _agreement(a: np.ndarray, b: np.ndarray) -> Agreement:
    cos = (a.astype(np.float64) * b.astype(np.float64)).sum(axis=1)
    return Agreement(len(cos), round(float(cos.mean()), 6), round(float(np.percentile(cos, 1)), 6),
                     round(float(cos.min()), 6))


def top_k_overlap(q_a: np.ndarray, docs_a: np.ndarray, q_b: np.ndarray, docs_b: np.ndarray,
                  k: int = K) -> np.ndarray:
    """Per query, the share of its exact top-``k`` (inner product) under ``a`` found in its top-``k`` under ``b``."""
    def top(q: np.ndarray, d: np.ndarray) -> np.ndarray:
        s = q.astype(np.float32) @ d.astype(np.float32).T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        return part

    ta, tb = top(q_a, docs_a), top(q_b, docs_b)
    return np.array([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(ta, tb)])


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return f"{model}, {os.cpu_count()} cores, onnxruntime {onnxruntime.__version__}"


def _eval_vectors(index_dir: Path) -> tuple[list[str], np.ndarray]:
    """Item ids and vectors of the version published in an eval index folder."""
    from engine.index import versions
    from engine.snapshot import Snapshot

    snap = Snapshot.load(versions.current_dir(index_dir))
    return list(snap.catalog.ids), np.asarray(snap.vectors, dtype=np.float32)


def _interleaved(encoders: dict[str, Encoder], rounds: int, run: Any) -> dict[str, list[float]]:
    """``run(encoder)`` for each encoder in turn, ``rounds`` times, the order flipping every round (A/B, B/A...)."""
    out: dict[str, list[float]] = {k: [] for k in encoders}
    names = list(encoders)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].append(float(run(encoders[name])))
    return out


def run_encoder_agreement(config: EngineConfig, data_dir: Path | None = None, *, rounds: int = 3,
                          search_eval: bool = True, items: int | None = None) -> EncoderAgreementReport:
    """Measure the int8 encoder against fp32 (see the module doc). ``items`` caps the Scientific texts
    (default all); ``search_eval`` off skips the nDCG runs (and takes the CrowdFlower product vectors
    from the published eval indexes only if they exist)."""
    import pandas as pd

    from engine.embedding.factory import build_encoder
    from engine.evaluation.search_eval import load_crowdflower, run_search_eval

    started = time.time()
    report = EncoderAgreementReport(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), machine=_machine(),
                                    rounds=rounds)
    data_dir = data_dir or config.data_dir
    kinds = {"fp32": EncoderKind.ONNX, "int8": EncoderKind.ONNX_INT8}
    fp32_index = config.index_dir / "eval" / "crowdflower"
    int8_config = config.replace(encoder=EncoderKind.ONNX_INT8, index_dir=config.index_dir / "eval" / "onnx-int8",
                                 models_dir=config.models_path)
    int8_index = int8_config.index_dir / "eval" / "crowdflower"

    # nDCG@10 with each kind: the search eval unchanged, the encoder switched (each builds its eval index).
    if search_eval:
        for label, cfg in (("fp32", config.replace(encoder=EncoderKind.ONNX)), ("int8", int8_config)):
            r = run_search_eval(cfg, "crowdflower", data_dir)
            report.ndcg[label] = dict(r.report)
            report.fusion[label] = f"{r.fusion} {r.weight}"

    report.threads_build = os.cpu_count() or 1
    report.threads_query = config.torch_threads
    build_enc = {k: build_encoder(v, cache_dir=config.models_path, threads=report.threads_build,
                                  max_seq_length=config.max_seq_length) for k, v in kinds.items()}
    query_enc = {k: build_encoder(v, cache_dir=config.models_path, threads=report.threads_query,
                                  max_seq_length=config.max_seq_length) for k, v in kinds.items()}
    int8_meta = getattr(build_enc["int8"], "export_meta", {})
    report.export = {k: int8_meta.get(k) for k in ("recipe", "probe_min_cosine_vs_fp32", "probe_mean_cosine_vs_fp32",
                                                   "model_bytes", "fp32_model_bytes", "quantized_matmuls",
                                                   "quantized_attention")}

    # CrowdFlower: queries encoded here; product vectors from the two eval builds, aligned by item id.
    _, cf_queries = load_crowdflower(data_dir)
    queries = [q for q, _, _ in cf_queries]
    qv = {k: e.encode(queries) for k, e in build_enc.items()}
    report.agreement["CrowdFlower queries"] = _agreement(qv["fp32"], qv["int8"])
    if (fp32_index / "current").exists() and (int8_index / "current").exists():
        ids_a, docs_a = _eval_vectors(fp32_index)
        ids_b, docs_b = _eval_vectors(int8_index)
        pos = {i: n for n, i in enumerate(ids_b)}
        common = [n for n, i in enumerate(ids_a) if i in pos]
        docs_a = docs_a[common]
        docs_b = docs_b[[pos[ids_a[n]] for n in common]]
        report.agreement["CrowdFlower product texts"] = _agreement(docs_a, docs_b)
        ov = top_k_overlap(qv["fp32"], docs_a, qv["int8"], docs_b)
        report.overlap, report.overlap_min = round(float(ov.mean()), 4), float(ov.min())
        report.overlap_mixed = round(float(top_k_overlap(qv["fp32"], docs_a, qv["int8"], docs_a).mean()), 4)
        report.corpus, report.queries = len(common), len(queries)

    # Scientific item texts: agreement from the first round, throughput over every round.
    sci = pd.read_csv(data_dir / "amazon_scientific_unisrec" / "items.csv.gz", keep_default_na=False)["text"]
    texts = [str(t) for t in sci.tolist()[:items]]
    first: dict[str, np.ndarray] = {}
    report.load_start = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    for enc in build_enc.values():  # warm-up: first runs allocate
        enc.encode(texts[:128], batch_size=config.encode_batch_size)

    def build_round(enc: Encoder) -> float:
        t0 = time.perf_counter()
        vecs = enc.encode(texts, batch_size=config.encode_batch_size)
        seconds = time.perf_counter() - t0
        first.setdefault(enc.name, vecs)
        return len(texts) / seconds

    timed: dict[str, Encoder] = dict(build_enc)
    if report.threads_build > 1:  # per core as well: on a shared machine one thread may beat two
        for k, v in kinds.items():
            timed[f"{k} 1t"] = build_encoder(v, cache_dir=config.models_path, threads=1,
                                             max_seq_length=config.max_seq_length)
            timed[f"{k} 1t"].encode(texts[:128], batch_size=config.encode_batch_size)
    report.build_tps_rounds = {k: [round(x, 1) for x in v] for k, v in _interleaved(timed, rounds, build_round).items()}
    report.build_tps = {k: round(float(np.median(v)), 1) for k, v in report.build_tps_rounds.items()}
    report.agreement["Amazon Scientific item texts"] = _agreement(first[build_enc["fp32"].name],
                                                                  first[build_enc["int8"].name])
    first.clear()

    for enc in query_enc.values():
        for q in queries[:20]:
            enc.encode([q])

    def query_round(enc: Encoder) -> float:
        times = []
        for q in queries:
            t0 = time.perf_counter()
            enc.encode([q])
            times.append(time.perf_counter() - t0)
        return float(np.median(times)) * 1e3

    report.query_ms_rounds = {k: [round(x, 3) for x in v]
                              for k, v in _interleaved(query_enc, max(rounds, 5), query_round).items()}
    report.query_ms = {k: round(float(np.median(v)), 3) for k, v in report.query_ms_rounds.items()}
    report.seconds = time.time() - started
    report.load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return report


def record_results(report: EncoderAgreementReport, command: str, *,
                   results: Path = ROOT / "bench" / "RESULTS.md") -> None:
    """Write the report as the ``eval-encoder-agreement`` section of ``bench/RESULTS.md``."""
    from engine.evaluation.simulate import replace_section, run_lines

    e = report.export
    body = "\n".join([
        "### The int8 encoder against fp32 (`vitrine eval encoder-agreement`)", "",
        *run_lines(command, report.started_at, report.seconds),
        f"- machine: {report.machine}; shared with other jobs, so the speed figures are medians of rounds "
        "that interleave fp32 and int8",
        f"- int8 export: {e.get('recipe', {}).get('method')}, int8 weights per channel on "
        f"{e.get('quantized_matmuls')} MatMuls and the QKV projections of {e.get('quantized_attention') or 0} fused "
        f"attention blocks, {(e.get('model_bytes') or 0) / 1e6:.1f} MB "
        f"(fp32 {(e.get('fp32_model_bytes') or 0) / 1e6:.1f} MB); probe texts cosine vs fp32 min "
        f"{e.get('probe_min_cosine_vs_fp32')}, mean {e.get('probe_mean_cosine_vs_fp32')}",
        "", "```", *report.lines(), "```",
    ])
    replace_section(results, SECTION, body)
