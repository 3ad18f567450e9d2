"""Vitrine: hybrid search and recommendations for online shops.

The public names: what ``web/``, the CLI and a shop's own Python code use. Imported lazily so that
``vitrine --help`` starts without loading FAISS or torch.
"""
from __future__ import annotations

import importlib
from typing import Any

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
    "Admin": "engine.admin",
    "Versions": "engine.admin",
    "Rollback": "engine.admin",
    "ShopperToken": "engine.tokens",
    "RateLimiter": "engine.limits",
    "text_problem": "engine.text",
    "VitrineError": "engine.errors",
    "InvalidQuery": "engine.errors",
    "NotFound": "engine.errors",
    "IndexNotBuilt": "engine.errors",
    "BuildInProgress": "engine.errors",
    "StoreUnavailable": "engine.errors",
    "ConfigError": "engine.errors",
    "Unauthorized": "engine.errors",
    "RateLimited": "engine.errors",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
