"""Vitrine: hybrid search and recommendations for online shops.

The public nouns; imported lazily so that ``vitrine --help`` starts without loading FAISS or torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Engine", "EngineConfig", "SearchHits", "Catalog"]

_WHERE = {
    "Engine": "engine.service",
    "EngineConfig": "engine.config",
    "SearchHits": "engine.types",
    "Catalog": "engine.catalog",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
