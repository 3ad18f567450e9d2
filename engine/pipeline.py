"""Offline build: catalog file -> cleaned products -> embeddings (cached) -> FAISS + BM25 -> new version.

The only writer of ``index_dir``. One build at a time (a file lock); a build killed at any point
leaves the published version untouched, because nothing is visible until the final rename.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from engine.catalog import Catalog, CatalogReport, read_catalog, write_catalog_jsonl
from engine.config import EngineConfig
from engine.embedding.base import MODEL_NAME, Encoder
from engine.embedding.cache import EmbeddingCache, text_hash
from engine.errors import BuildInProgress, CatalogError
from engine.index import publish, versions
from engine.index.keyword import B, K1, KeywordIndex
from engine.index.vector import VectorIndex, build_vector_index
from engine.item_text import embedding_text, keyword_text
from engine.ray_build import RayBuildError, RayEmbedInfo, RayEncoderPool, wanted
from engine.snapshot import TITLE_VECTORS

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
FORMAT_VERSION = 1


@dataclass
class BuildResult:
    version: str
    path: Path
    manifest: dict[str, Any]
    report: CatalogReport
    pruned: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        m = self.manifest
        c, ix = m["counts"], m["index"]
        return [
            f"published {self.version} ({c['items']} items) in {m['build_seconds']:.1f}s",
            f"catalog: {c['rows_read']} rows read, {c['items']} accepted, {c['rejected']} rejected, "
            f"{c['duplicate_ids']} duplicate ids (last wins), {c['warnings']} field warnings",
            f"embeddings: {c['embedded']} embedded, {c['from_cache']} from cache "
            f"({m['embedding']['items_per_second']:.0f} items/s embedding)",
            f"vector index: {ix['spec']} ({ix['kind']}), recall@10 vs exact {ix['recall_at_10']:.4f}"
            + (f" at nprobe {ix['nprobe']} over {ix['recall_queries']} probe queries" if ix["kind"] != "exact" else "")
            + (f", {ix['bytes_per_item']:.0f} bytes/item, {ix['qps']:.0f} QPS (1 thread)" if ix.get("qps") else ""),
            f"keyword index: BM25 k1={K1} b={B}, {m['bm25']['vocabulary']} terms",
        ] + ([f"pruned old versions: {', '.join(self.pruned)}"] if self.pruned else [])


@contextmanager
def build_lock(index_dir: Path) -> Iterator[None]:
    """Exclusive, non-blocking; released by the OS if the process dies."""
    index_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(index_dir / ".build.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise BuildInProgress("another build is running on this index directory") from e
        yield
    finally:
        os.close(fd)


def rollback(config: EngineConfig) -> tuple[str, str]:
    """Serve the version served before the current one, under the build lock; returns (from, to).

    Raises ``NotFound`` when there is no earlier version, ``BuildInProgress`` while a build runs."""
    with build_lock(config.index_dir):
        return publish.rollback(config.index_dir)


def build(
    config: EngineConfig,
    catalog_path: Path,
    *,
    full: bool = False,
    encoder: Encoder | None = None,
    progress: Progress | None = None,
    ray: str | None = None,
) -> BuildResult:
    """Build and publish a new version from ``catalog_path``.

    ``full`` re-embeds every item instead of reusing cached vectors. ``ray`` (default: the ``build_ray``
    setting) embeds the texts missing from the cache over a Ray cluster: ``auto`` or its address, ``off``
    for a local build (``engine.ray_build``); the vectors are the same as a local build's. Raises
    ``CatalogError`` when the file cannot be read or holds no valid product, ``BuildInProgress`` when
    locked, ``RayBuildError`` when the cluster cannot be used.
    """
    started = time.time()
    say = progress or (lambda event: None)
    index_dir = config.index_dir
    with build_lock(index_dir):
        publish.remove_stale_staging(index_dir)
        say({"stage": "catalog", "done": 0, "total": 0})
        catalog, report = read_catalog(catalog_path)
        if len(catalog) == 0:
            raise CatalogError(f"{catalog_path}: no valid product (rejected {len(report.rejected)} rows)")
        if encoder is None:
            from engine.embedding.factory import build_encoder

            # A build may use every core (the server's encoders use ``torch_threads``, 1 by default).
            encoder = build_encoder(config.encoder, cache_dir=config.models_path, threads=os.cpu_count() or 1,
                                    max_seq_length=config.max_seq_length)
        ray_address = wanted(config.build_ray if ray is None else ray)
        texts = [embedding_text(p) for p in catalog]
        vectors, embedded, embed_seconds, ray_info = _embed(config, texts, encoder, full, say, ray_address)
        title_vectors, titles_embedded, title_seconds = None, 0, 0.0
        if config.title_vectors:  # the titles alone, for the search ranker (same cache: a title is a text)
            title_vectors, titles_embedded, title_seconds, _ = _embed(
                config, [p.title for p in catalog], encoder, full, say, ray_address, stage="embed-titles")
        say({"stage": "index", "done": 0, "total": len(catalog)})
        previous, drift, trained_in = (None, 0, None) if full else _previous_ivf(
            index_dir, len(catalog), embedded, encoder, config.ivf_retrain_share)
        faiss_index, info = build_vector_index(
            vectors,
            approx_threshold=config.approx_threshold,
            nprobe=config.ivf_nprobe,
            target_recall=config.target_recall,
            reuse=previous,
            bytes_per_item=config.index_bytes_per_item,
            reuse_spec=_served_spec(index_dir) if previous is not None else None,
            say=lambda line: say({"stage": "index", "done": 0, "total": len(catalog), "candidate": line}),
        )
        del previous
        keyword = KeywordIndex.build([keyword_text(p) for p in catalog])
        version = publish.new_version_name(catalog.content_hash())
        staging = index_dir / f"{versions.STAGING_PREFIX}{version}"
        staging.mkdir()
        write_catalog_jsonl(catalog, staging / "items.jsonl")
        np.save(staging / "vectors.npy", vectors, allow_pickle=False)
        if title_vectors is not None:
            np.save(staging / TITLE_VECTORS, title_vectors.astype(np.float16), allow_pickle=False)
        VectorIndex(faiss_index, vectors, info.nprobe).save(staging / "vectors.faiss")
        keyword.save(staging / "bm25")
        manifest = _manifest(
            version, catalog_path, catalog, report, encoder, info, keyword, embedded, embed_seconds, started, config
        )
        if ray_info is not None:
            manifest["embedding"]["ray"] = ray_info.to_dict()
        manifest["embedding"]["title_vectors"] = (None if title_vectors is None else
                                                  {"file": TITLE_VECTORS, "dtype": "float16", "embedded": titles_embedded,
                                                   "seconds": round(title_seconds, 3)})
        if info.kind == "ivf":
            reused = info.quantizer == "reused"
            manifest["index"]["centroids"] = {"trained_in": trained_in if reused else version,
                                              "changed_since_training": drift if reused else 0}
        (staging / versions.MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        say({"stage": "publish", "done": len(catalog), "total": len(catalog)})
        path = publish.publish(index_dir, staging, version)
        pruned = publish.prune(index_dir, config.keep_versions)
    log.info("published %s with %d items", version, len(catalog))
    return BuildResult(version, path, manifest, report, pruned)


def _served_spec(index_dir: Path) -> str | None:
    """The FAISS spec of the served version (the index choice an incremental build may keep)."""
    try:
        return str(versions.read_manifest(versions.current_dir(index_dir))["index"]["spec"])
    except Exception:
        return None


def _previous_ivf(index_dir: Path, n: int, embedded: int, encoder: Encoder,
                  retrain_share: float) -> tuple[Any, int, str | None]:
    """The served version's FAISS index when its IVF centroids may be reused (the items changed since
    they were trained, counting this build, are at most ``retrain_share`` of ``n``), that count and the
    version they were trained in; ``(None, 0, None)`` when k-means must run."""
    try:
        old = versions.read_manifest(versions.current_dir(index_dir))
    except Exception:
        return None, 0, None
    centroids = old.get("index", {}).get("centroids")
    if (old["index"].get("kind") != "ivf" or not centroids or old.get("dims") != encoder.dim
            or old.get("embedding", {}).get("family") != encoder.family):
        return None, 0, None
    removed = max(int(old["counts"]["items"]) - n, 0)  # net: an edited item counts once, as embedded
    drift = int(centroids["changed_since_training"]) + embedded + removed
    if drift > retrain_share * n or retrain_share == 0:
        return None, 0, None
    import faiss

    return faiss.read_index(str(versions.current_dir(index_dir) / "vectors.faiss")), drift, str(centroids["trained_in"])


def _embed(
    config: EngineConfig, texts: list[str], encoder: Encoder, full: bool, say: Progress, ray_address: str | None = None,
    stage: str = "embed",
) -> tuple[np.ndarray, int, float, RayEmbedInfo | None]:
    """Every text's vector (one per item): from the cache, else encoded here (or over Ray) and cached. Returns
    the vectors, the number encoded, the seconds spent encoding and, for a Ray build, what it ran on.
    ``stage`` names the progress events.

    The missing texts are encoded in steps of ``step`` (each sorted by length and batched by the encoder); a
    Ray build cuts its shards on the same step boundaries, so its batches and vectors are the same."""
    hashes = [text_hash(t) for t in texts]
    cache = EmbeddingCache(config.index_dir / "cache" / "embeddings.sqlite", encoder.family, encoder.dim)
    ray_info: RayEmbedInfo | None = None
    try:
        known = {} if full else cache.get_many(sorted(set(hashes)))
        missing = sorted({h: i for i, h in enumerate(hashes) if h not in known}.values())
        total = len(missing)
        step = max(config.encode_batch_size * 4, 256)
        done = 0
        t0 = time.time()

        def store(rows: list[int], vecs: np.ndarray) -> None:
            nonlocal done
            cache.put_many((hashes[i], v) for i, v in zip(rows, vecs))
            known.update({hashes[i]: v for i, v in zip(rows, vecs)})
            done += len(rows)
            rate = done / max(time.time() - t0, 1e-9)
            say({"stage": stage, "done": done, "total": total, "items_per_s": rate, "eta_s": (total - done) / rate})

        if ray_address is not None and total:
            with RayEncoderPool(ray_address, kind=config.encoder.value, models_path=config.models_path,
                                max_seq_length=config.max_seq_length, say=say) as pool:
                _check_same_encoder(encoder, pool.describe())
                ray_info = pool.info
                t0 = time.time()
                say({"stage": stage, "done": 0, "total": total, "from_cache": len(texts) - total})
                for offset, vecs in pool.encode([texts[i] for i in missing], step=step,
                                                batch_size=config.encode_batch_size):
                    store(missing[offset:offset + len(vecs)], vecs)
        else:
            say({"stage": stage, "done": 0, "total": total, "from_cache": len(texts) - total})
            for start in range(0, total, step):
                rows = missing[start : start + step]
                store(rows, encoder.encode([texts[i] for i in rows], batch_size=config.encode_batch_size))
        seconds = time.time() - t0
    finally:
        cache.close()
    vectors = np.stack([known[h] for h in hashes]).astype(np.float32)
    return np.ascontiguousarray(vectors), total, seconds, ray_info


def _check_same_encoder(encoder: Encoder, workers: list[dict[str, Any]]) -> None:
    """The Ray encoders must make the driver's vectors (same family and dims), or the cache would mix."""
    for w in workers:
        if (w["family"], int(w["dim"]), w["name"]) != (encoder.family, encoder.dim, encoder.name):
            raise RayBuildError(
                f"the Ray encoder on {w['host']} is {w['name']} ({w['family']}, {w['dim']} dims), "
                f"the build's is {encoder.name} ({encoder.family}, {encoder.dim} dims): "
                "give the build the encoder of the `encoder` setting")


def _manifest(
    version: str,
    catalog_path: Path,
    catalog: Catalog,
    report: CatalogReport,
    encoder: Encoder,
    info: Any,
    keyword: KeywordIndex,
    embedded: int,
    embed_seconds: float,
    started: float,
    config: EngineConfig,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.time() - started, 3),
        "git_sha": _git_sha(),
        "model": MODEL_NAME,
        "dims": encoder.dim,
        "metric": "inner_product (unit vectors: cosine)",
        "embedding": {
            "encoder": encoder.name,
            "family": encoder.family,
            "max_seq_length": config.max_seq_length,
            "text_recipe": "title. category path. brand. description",
            "items_per_second": round(embedded / embed_seconds, 1) if embedded and embed_seconds > 0 else 0.0,
        },
        "catalog": {
            "path": str(Path(catalog_path).resolve()),
            "file_sha256": _file_sha256(Path(catalog_path)),
            "content_hash": catalog.content_hash(),
        },
        "counts": {
            "items": len(catalog),
            "rows_read": report.rows_read,
            "rejected": len(report.rejected),
            "duplicate_ids": len(report.duplicates),
            "warnings": len(report.warnings),
            "embedded": embedded,
            "from_cache": len(catalog) - embedded,
        },
        "index": info.to_dict(),
        "bm25": {"method": "lucene", "k1": K1, "b": B, "vocabulary": len(keyword.retriever.vocab_dict or {}),
                 "tokenizer": "bm25s en stop words + Snowball english stemmer"},
    }


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
