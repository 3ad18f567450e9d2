"""Vitrine: hybrid search and recommendations for online shops.

The public names: what ``web/``, the CLI and a shop's own Python code use. Imported lazily so that
``vitrine --help`` starts without loading FAISS or torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from engine import pyfix

pyfix.install()  # before any thread of ours parses: see engine/pyfix.py (CPython gh-106905)

if TYPE_CHECKING:  # the real types of the lazy names below, for mypy (`from engine import Engine` in web/)
    from engine.admin import Admin as Admin, Rollback as Rollback, Versions as Versions
    from engine.catalog import Catalog as Catalog, Product as Product
    from engine.config import EngineConfig as EngineConfig
    from engine.errors import (
        BuildInProgress as BuildInProgress,
        ConfigError as ConfigError,
        IndexNotBuilt as IndexNotBuilt,
        InvalidQuery as InvalidQuery,
        NotFound as NotFound,
        PrivacyBudgetExhausted as PrivacyBudgetExhausted,
        StoreUnavailable as StoreUnavailable,
        Unauthorized as Unauthorized,
        VitrineError as VitrineError,
        WarmingUp as WarmingUp,
    )
    from engine.events import open_event_store as open_event_store
    from engine.filters import Filters as Filters
    from engine.limits import RateLimiter as RateLimiter, open_limiter as open_limiter
    from engine.recommend.compose import Recommended as Recommended
    from engine.recommend.strategies import STRATEGIES as STRATEGIES
    from engine.search import Hit as Hit
    from engine.service import (
        Engine as Engine,
        Health as Health,
        Info as Info,
        SearchResult as SearchResult,
        Similar as Similar,
        Suggestions as Suggestions,
    )
    from engine.shoppers import (
        EventStats as EventStats,
        IngestResult as IngestResult,
        Recommendations as Recommendations,
        SampleShopper as SampleShopper,
    )
    from engine.text import parse_bool as parse_bool
    from engine.text import text_problem as text_problem
    from engine.tokens import ShopperToken as ShopperToken

_WHERE = {
    "Engine": "engine.service",
    "SearchResult": "engine.service",
    "Suggestions": "engine.service",
    "Similar": "engine.service",
    "Info": "engine.service",
    "Health": "engine.service",
    "Hit": "engine.search",
    "EngineConfig": "engine.config",
    "Filters": "engine.filters",
    "Catalog": "engine.catalog",
    "Product": "engine.catalog",
    "open_event_store": "engine.events",
    "IngestResult": "engine.shoppers",
    "Recommendations": "engine.shoppers",
    "EventStats": "engine.shoppers",
    "SampleShopper": "engine.shoppers",
    "Recommended": "engine.recommend.compose",
    "STRATEGIES": "engine.recommend.strategies",
    "Admin": "engine.admin",
    "Versions": "engine.admin",
    "Rollback": "engine.admin",
    "ShopperToken": "engine.tokens",
    "RateLimiter": "engine.limits",
    "open_limiter": "engine.limits",
    "text_problem": "engine.text",
    "parse_bool": "engine.text",
    "VitrineError": "engine.errors",
    "InvalidQuery": "engine.errors",
    "NotFound": "engine.errors",
    "PrivacyBudgetExhausted": "engine.errors",
    "WarmingUp": "engine.errors",
    "IndexNotBuilt": "engine.errors",
    "BuildInProgress": "engine.errors",
    "StoreUnavailable": "engine.errors",
    "ConfigError": "engine.errors",
    "Unauthorized": "engine.errors",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
