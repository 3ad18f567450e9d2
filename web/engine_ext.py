"""Access to the process's engine services from a request."""
from __future__ import annotations

from flask import current_app

from engine import Admin, Engine, EngineConfig, RateLimiter


def get_engine() -> Engine:
    engine: Engine = current_app.extensions["vitrine"]
    return engine


def get_admin() -> Admin:
    admin: Admin = current_app.extensions["vitrine_admin"]
    return admin


def get_limiter() -> RateLimiter:
    limiter: RateLimiter = current_app.extensions["vitrine_limits"]
    return limiter


def get_config() -> EngineConfig:
    config: EngineConfig = current_app.config["ENGINE_CONFIG"]
    return config
