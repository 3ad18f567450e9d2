"""Helpers shared by the benchmarks: sizes and their catalogs/index dirs, the real server as a
subprocess, percentiles, machine description, markdown tables and ``bench/RESULTS.md`` sections.

Everything written at run time goes under ``bench/out/`` (git-ignored).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import EngineConfig  # noqa: E402

BENCH = ROOT / "bench"
OUT = BENCH / "out"
RESULTS = BENCH / "RESULTS.md"
DEMO_CATALOG = ROOT / "data" / "demo" / "catalog.jsonl"
SIZES: dict[str, int | None] = {"demo": None, "100k": 100_000}  # None: the demo catalog as is
# Variant words appended to the demo titles in synthetic catalogs (with a distinct pack size).
VARIANTS = ("black", "white", "red", "blue", "green", "grey", "clear", "small", "large", "mini", "pro", "plus")


# -- sizes, catalogs, index dirs, config --------------------------------------------------------

def parse_sizes(text: str) -> list[str]:
    sizes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        raise SystemExit(f"--sizes: unknown size(s) {unknown}; choose from {', '.join(SIZES)}")
    return sizes


def read_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_rows(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Atomically (temporary file + rename), so an interrupted run leaves no half catalog."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def synthetic_rows(n: int) -> list[dict[str, Any]]:
    """``n`` products made from the demo catalog, deterministically.

    Product ``i`` is demo item ``i % 4385``; from the second round ``r = i // 4385`` on, its title
    gets a variant word and a pack size (``", red, pack of 3"``), a new id and the brand of another
    demo item, so every text differs. Real catalogs are more varied (and have descriptions).
    """
    demo = read_rows(DEMO_CATALOG)
    m = len(demo)
    rows = []
    for i in range(n):
        base, r = demo[i % m], i // m
        if r == 0:
            rows.append(dict(base))
            continue
        other = demo[(i * 7 + r * 131) % m]
        rows.append(dict(base, id=f"{base['id']}-v{r}", brand=other["brand"],
                         title=f"{base['title']}, {VARIANTS[r % len(VARIANTS)]}, pack of {r + 1}",
                         attributes={"variant_of": base["id"]}))
    return rows


def catalog_path(size: str) -> Path:
    """The catalog file of ``size``; a synthetic one is written under ``bench/out/catalogs`` once."""
    n = SIZES[size]
    if n is None:
        return DEMO_CATALOG
    path = OUT / "catalogs" / f"catalog-{size}.jsonl"
    if not path.exists():
        write_rows(synthetic_rows(n), path)
    return path


def index_dir(size: str) -> Path:
    return OUT / f"index-{size}"


def models_dir() -> Path:
    """Where the ONNX export lives: ``$VITRINE_MODELS_DIR`` or ``bench/out/models`` (shared by all sizes)."""
    return Path(os.environ.get("VITRINE_MODELS_DIR") or OUT / "models")


def engine_config(index: Path) -> EngineConfig:
    """Defaults < ``vitrine.toml`` < ``VITRINE_*`` env, with this index dir and models dir."""
    return EngineConfig.load(index_dir=index, models_dir=models_dir())


def ensure_index(size: str) -> Path:
    """The index dir of ``size``, built (incrementally, default settings) if nothing is published there, or
    rebuilt if the published version lacks the title vectors the settings ask for (made before them)."""
    from engine import pipeline
    from engine.index import versions
    from engine.snapshot import TITLE_VECTORS

    index = index_dir(size)
    config = engine_config(index)
    current = versions.current_version(index)
    if current is None or (config.title_vectors and not (versions.current_dir(index) / TITLE_VECTORS).is_file()):
        print(f"[{size}] no {'index' if current is None else 'title vectors'} in {index}; building it "
              f"(run bench_build.py for timings)", file=sys.stderr)
        pipeline.build(config, catalog_path(size))
    return index


# -- the real server -------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    return pids


def _status_kb(pid: int, key: str, name: str = "status") -> int:
    try:
        for line in (Path("/proc") / str(pid) / name).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages (libraries, memory-mapped index files) split between processes."""
    return _status_kb(pid, "Pss", "smaps_rollup") / 1024


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` inside the block, as it was after it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _is_writer(pid: int) -> bool:
    try:
        return b"impressions\0writer" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@dataclass
class Server:
    """``python -m engine.cli --index-dir DIR serve`` on a free 127.0.0.1 port; use as a context manager."""

    index: Path
    workers: int = 1
    threads: int = 8
    log_name: str = "server"

    def __enter__(self) -> "Server":
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = OUT / "logs" / f"{self.log_name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, VITRINE_MODELS_DIR=str(models_dir()))
        cmd = [sys.executable, "-m", "engine.cli", "--index-dir", str(self.index), "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", str(self.workers), "--threads", str(self.threads)]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_healthy(timeout=120)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        import requests

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if requests.get(f"{self.base}/healthz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not healthy after {timeout:.0f}s; see {self.log_path}")

    def worker_pids(self) -> list[int]:
        """The gunicorn workers (not the master, nor the impression writer process)."""
        return [p for p in process_tree(self.proc.pid) if p != self.proc.pid and not _is_writer(p)]

    def memory_mb(self) -> tuple[float, float]:
        """(sum of VmRSS, sum of PSS) over the gunicorn master, its workers and the impression writer."""
        pids = process_tree(self.proc.pid)
        return sum(rss_mb(p) for p in pids), sum(pss_mb(p) for p in pids)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()


# -- statistics and reporting ----------------------------------------------------------------

def stats_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds of durations given in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(ms.mean())}


def load_avg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    ram_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            ram_kb = int(line.split()[1])
    cores = len(os.sched_getaffinity(0))
    libs = ", ".join(f"{d} {_version(d)}" for d in ("torch", "onnxruntime", "faiss-cpu", "bm25s", "gunicorn"))
    return (f"{cpu}, {cores} cores, {ram_kb / 2**20:.0f} GiB RAM, no GPU used; "
            f"Python {platform.python_version()}; {libs}")


def engine_commit() -> str:
    """``git`` commit of the working tree, marked when ``engine/`` or ``web/`` has uncommitted changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + (" + uncommitted changes in engine/ or web/" if git("status", "--porcelain", "engine", "web") else "")


def header(script: str, argv: Sequence[str], load_at_start: str) -> str:
    cmd = "HF_HUB_OFFLINE=1 .venv/bin/python " + " ".join(shlex.quote(a) for a in [f"bench/{script}", *argv])
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"- command: `{cmd}`",
        f"- date: {now}",
        f"- machine: {machine()}",
        f"- code: commit {engine_commit()}",
        f"- load average at start: {load_at_start}; at end: {load_avg()} (the machine is shared: "
        "other people's tests may run at the same time)",
    ])


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def record(section: str, body: str) -> None:
    """Replace ``<!-- section -->`` ... ``<!-- /section -->`` in ``bench/RESULTS.md`` (appended if absent)."""
    start, end = f"<!-- {section} -->", f"<!-- /{section} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(text, encoding="utf-8")
    print(f"recorded section {section!r} in {RESULTS.relative_to(ROOT)}", file=sys.stderr)


def run_clients(n: int, client: Callable[[int, threading.Barrier], None]) -> float:
    """Run ``client(i, start)`` in ``n`` threads that all begin at ``start.wait()``; wall seconds from
    the common start to the last thread's end."""
    start = threading.Barrier(n + 1)
    pool = [threading.Thread(target=client, args=(i, start)) for i in range(n)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    return time.perf_counter() - t0
