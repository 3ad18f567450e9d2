"""Access to the process's Engine from a request."""
from __future__ import annotations

from flask import current_app

from engine import Engine, EngineConfig


def get_engine() -> Engine:
    engine: Engine = current_app.extensions["vitrine"]
    return engine


def get_config() -> EngineConfig:
    config: EngineConfig = current_app.config["ENGINE_CONFIG"]
    return config
