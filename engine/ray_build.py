"""Embedding over a Ray cluster, for ``vitrine build --ray auto|ADDRESS`` (README, "Builds on a Ray cluster").

Owns: connecting to Ray (or starting a local instance), one encoder actor per node (built once there, from
the same models cache folder, with intra-op threads = that node's CPUs), cutting the texts a build must
embed into shards and gathering each shard's vectors back to the driver. The driver (``engine.pipeline``)
keeps everything else: the embedding cache, the FAISS and BM25 builds, the manifest and the publish.

Identical vectors: a local build encodes the missing texts in steps of ``step`` texts (each step sorted by
length and cut into batches of ``batch_size``). A shard here is a whole number of those steps and an actor
encodes it step by step, so every batch holds the same texts with the same padding as in a local build.
(On this machine the padding and the thread count measured no difference at all, 0.0; the alignment keeps
it so on kernels where they would.)

``ray`` is imported only here, and only when a build asks for it.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from engine.errors import VitrineError

log = logging.getLogger(__name__)

AUTO = "auto"
OFF = ("", "off", "local", "none")  # `--ray off`: a local build even when the configuration names a cluster
SHARD_TEXTS = 2048  # texts per shard at most (rounded down to whole steps)
IN_FLIGHT = 2  # shards queued per actor: the next one is ready when the current one ends
READY_TIMEOUT_S = 600.0  # actors not placed by then (no free CPUs, a node without the models): fail


class RayBuildError(VitrineError):
    """The Ray cluster could not be reached, or its encoders could not start or failed."""


def wanted(address: str | None) -> str | None:
    """The Ray address a build should use: ``None`` for a local build."""
    if address is None or address.strip().lower() in OFF:
        return None
    return address.strip()


@dataclass
class RayEmbedInfo:
    """What the manifest records of a Ray build's embedding."""

    address: str
    workers: list[dict[str, Any]] = field(default_factory=list)
    shards: int = 0
    shard_texts: int = 0
    startup_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "workers": len(self.workers),
            "cpus": sum(int(w["threads"]) for w in self.workers),
            "nodes": sorted({str(w["host"]) for w in self.workers}),
            "shards": self.shards,
            "shard_texts": self.shard_texts,
            "startup_seconds": round(self.startup_seconds, 2),
        }


class EncoderWorker:
    """A Ray actor (``ray.remote`` is applied at run time): one encoder per node, built once."""

    def __init__(self, kind: str, models_path: str, threads: int, max_seq_length: int) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from engine.embedding.factory import build_encoder

        self.threads = threads
        self.encoder = build_encoder(kind, cache_dir=Path(models_path), threads=threads, max_seq_length=max_seq_length)

    def describe(self) -> dict[str, Any]:
        e = self.encoder
        return {"name": e.name, "family": e.family, "dim": e.dim, "threads": self.threads,
                "host": socket.gethostname(), "pid": os.getpid()}

    def encode(self, texts: Sequence[str], step: int, batch_size: int) -> np.ndarray:
        """The vectors of ``texts``, encoded ``step`` texts at a time as a local build does."""
        parts = [self.encoder.encode(list(texts[i:i + step]), batch_size=batch_size) for i in range(0, len(texts), step)]
        return np.ascontiguousarray(np.vstack(parts), dtype=np.float32)


def shard_size(total: int, workers: int, step: int, limit: int = SHARD_TEXTS) -> int:
    """Texts per shard: whole steps, at most ``limit`` (at least one step), and small enough that every
    worker gets about two shards when there are few texts."""
    per_worker = math.ceil(total / max(2 * workers, 1))
    steps = max(1, min(limit // step, math.ceil(per_worker / step)))
    return steps * step


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at ``[ray://]HOST:PORT`` (``ray.init`` would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayBuildError(f"--ray {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RayBuildError(f"cannot reach a Ray cluster at {address!r}: {e}") from e


class RayEncoderPool:
    """The encoder actors of one build: ``with RayEncoderPool(...) as pool: for offset, vecs in pool.encode(...)``.

    Entering connects to ``address`` (``auto``: the Ray instance this process already runs, else a running
    local cluster, else a new local instance; ``HOST:PORT`` or ``ray://HOST:PORT``: that cluster) and starts
    one :class:`EncoderWorker` per alive node with CPUs; leaving kills the actors and disconnects (stopping
    the instance if this pool started it). A connection made by the caller (``ray.init`` beforehand) is
    reused and left open.
    """

    def __init__(self, address: str, *, kind: str, models_path: Path, max_seq_length: int,
                 say: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.address = address
        self.kind = kind
        self.models_path = Path(models_path).resolve()
        self.max_seq_length = max_seq_length
        self.say = say or (lambda event: None)
        self.info = RayEmbedInfo(address=address)
        self._ray: Any = None
        self._owns_connection = False
        self._actors: list[Any] = []

    # -- connection and actors ---------------------------------------------------------------------

    def __enter__(self) -> "RayEncoderPool":
        t0 = time.time()
        try:
            import ray
        except ImportError as e:
            raise RayBuildError("--ray needs the ray package: pip install 'vitrine[ray]'") from e
        self._ray = ray
        try:
            self._connect()
            self._start_actors()
        except BaseException:
            self.close()
            raise
        self.info.startup_seconds = time.time() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            log.info("using this process's Ray connection (--ray %s)", self.address)
            return
        common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        try:
            if self.address.lower() == AUTO:
                try:
                    ray.init(address="auto", **common)
                except ConnectionError:
                    log.info("no running Ray cluster found; starting a local Ray instance")
                    ray.init(include_dashboard=False, **common)
            else:
                _check_reachable(self.address)
                if self.address.startswith("ray://"):
                    if importlib.util.find_spec("grpc") is None:  # Ray Client's transport, in ray[client]
                        raise RayBuildError(f"{self.address}: ray:// addresses need Ray Client: "
                                            "pip install 'ray[client]' (or give the cluster's HOST:PORT)")
                ray.init(address=self.address, **common)
        except RayBuildError:
            raise
        except Exception as e:  # noqa: BLE001 - ConnectionError, ValueError, RuntimeError... all mean "no cluster"
            raise RayBuildError(f"cannot connect to Ray at {self.address!r}: {e}") from e
        self._owns_connection = True

    def _start_actors(self) -> None:
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [(str(n["NodeID"]), int(n.get("Resources", {}).get("CPU", 0)))
                 for n in ray.nodes() if n.get("Alive")]
        nodes = [(node_id, cpus) for node_id, cpus in nodes if cpus >= 1]
        if not nodes:
            raise RayBuildError(f"the Ray cluster at {self.address!r} has no node with a CPU")
        worker = ray.remote(EncoderWorker)
        actors = [
            worker.options(num_cpus=cpus, max_concurrency=1,
                           scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
            .remote(self.kind, str(self.models_path), cpus, self.max_seq_length)
            for node_id, cpus in nodes
        ]
        self._actors = list(actors)
        pending = {a.describe.remote(): a for a in actors}
        self.say({"stage": "ray", "done": 0, "total": len(actors)})
        deadline = time.time() + READY_TIMEOUT_S
        ready: list[tuple[Any, dict[str, Any]]] = []
        errors: list[str] = []
        while pending and time.time() < deadline:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(deadline - time.time(), 0.0))
            for ref in done:
                actor = pending.pop(ref)
                try:
                    ready.append((actor, ray.get(ref)))
                except Exception as e:  # noqa: BLE001 - an actor that cannot build its encoder is dropped
                    errors.append(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
                    ray.kill(actor)
            self.say({"stage": "ray", "done": len(ready), "total": len(actors)})
        for actor in pending.values():  # never placed (no free CPUs on its node) within the timeout
            ray.kill(actor)
        if pending:
            errors.append(f"{len(pending)} encoder(s) not started within {READY_TIMEOUT_S:.0f}s (busy CPUs?)")
        if not ready:
            raise RayBuildError(f"no encoder could start on the Ray cluster at {self.address!r}: " + "; ".join(errors))
        if errors:
            log.warning("Ray build continues with %d of %d encoders: %s", len(ready), len(actors), "; ".join(errors))
        self._actors = [actor for actor, _ in ready]
        self.info.workers = [meta for _, meta in ready]

    def describe(self) -> list[dict[str, Any]]:
        """Each started encoder's name, family, dim, threads, host and pid."""
        return list(self.info.workers)

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors = []
        if self._owns_connection:
            ray.shutdown()
            self._owns_connection = False

    # -- encoding ----------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], *, step: int, batch_size: int,
               shard_limit: int = SHARD_TEXTS) -> Iterator[tuple[int, np.ndarray]]:
        """``(offset, vectors of texts[offset:offset + len(vectors)])`` for every shard, as shards finish
        (any order). A shard whose actor dies goes to another actor; an encoder error fails the build."""
        ray = self._ray
        from ray.exceptions import RayActorError

        size = shard_size(len(texts), len(self._actors), step, shard_limit)
        queue = list(range(0, len(texts), size))
        self.info.shards, self.info.shard_texts = len(queue), size
        pending: dict[Any, tuple[Any, int]] = {}  # object ref -> (actor, offset)

        def submit(actor: Any) -> None:
            offset = queue.pop(0)
            pending[actor.encode.remote(list(texts[offset:offset + size]), step, batch_size)] = (actor, offset)

        alive = list(self._actors)
        for _ in range(IN_FLIGHT):
            for actor in alive:
                if queue:
                    submit(actor)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            actor, offset = pending.pop(done[0])
            try:
                vectors = ray.get(done[0])
            except RayActorError as e:
                if actor in alive:
                    alive.remove(actor)
                    log.warning("a Ray encoder died (%s); its shards go to the %d others", e, len(alive))
                queue.insert(0, offset)
                if not alive:
                    raise RayBuildError("every Ray encoder died; the shards finished so far are cached") from e
                while queue and sum(1 for a, _ in pending.values() if a in alive) < IN_FLIGHT * len(alive):
                    submit(min(alive, key=lambda a: sum(1 for b, _ in pending.values() if b is a)))
                continue
            except Exception as e:  # noqa: BLE001 - RayTaskError: the encoder raised; the same would happen again
                raise RayBuildError(f"a Ray encoder failed: {e}") from e
            if queue and actor in alive:
                submit(actor)
            yield offset, np.asarray(vectors, dtype=np.float32)
