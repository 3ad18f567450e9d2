"""``vitrine serve``: the HTTP API under gunicorn (pre-fork workers, threads per worker).

The engine does not import the web layer: gunicorn loads ``web:create_app()`` by name in each
worker, after the fork, so every worker has its own Engine (FAISS, encoder) and the memory-mapped
index files are shared through the page cache.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.learn.impressions import WRITER_ENV

APP_SPEC = "web:create_app()"


def gunicorn_options(config: EngineConfig) -> dict[str, Any]:
    return {
        "bind": f"{config.host}:{config.port}",
        "workers": config.workers,
        "threads": config.threads,
        "worker_class": "web.gunicorn_worker.JSONErrorWorker",  # gthread, answering its own errors in JSON
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 5,
        "preload_app": False,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "vitrine",
        # gunicorn's control socket is one fixed path per user: two servers would fight over it.
        "control_socket_disable": True,
    }


def serve(config: EngineConfig, config_file: str | None = None) -> None:
    """Run until interrupted. Settings reach the workers through the environment. With impression logging
    and ``impressions_writer = "process"``, a writer process (``vitrine impressions writer``) stores what the
    workers spool and computes its deferred features (:mod:`engine.learn.impressions`), and stops with the
    server (it also stops by itself when this process is gone)."""
    from gunicorn.app.base import BaseApplication
    from gunicorn.util import import_app

    os.environ["VITRINE_INDEX_DIR"] = str(Path(config.index_dir).resolve())
    os.environ["VITRINE_TORCH_THREADS"] = str(config.torch_threads)
    if config_file:
        os.environ["VITRINE_CONFIG"] = str(Path(config_file).resolve())
    writer = None
    os.environ.pop(WRITER_ENV, None)
    if config.log_impressions and config.impressions_writer == "process":
        writer = subprocess.Popen([sys.executable, "-m", "engine.cli", "impressions", "writer",
                                   "--parent", str(os.getpid())], env=dict(os.environ))
        os.environ[WRITER_ENV] = str(writer.pid)  # the workers only spool

    class _App(BaseApplication):  # type: ignore[misc]  # gunicorn has no type hints: subclassing Any
        def load_config(self) -> None:
            for key, value in gunicorn_options(config).items():
                if key in self.cfg.settings:  # control_socket_disable exists from gunicorn 24 on
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return import_app(APP_SPEC)

    try:
        _App().run()
    finally:
        if writer is not None:
            writer.terminate()  # it stores what is spooled, then exits
            try:
                writer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                writer.kill()
