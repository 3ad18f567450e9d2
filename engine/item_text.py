"""How an item becomes text for the embedding model and for BM25 (one recipe each, documented in README).

Embedding: ``"{title}. {category path}. {brand}. {description}"`` with empty parts left out; the
encoder truncates at 256 word pieces, so the title and category always fit and the description
fills the rest. BM25: the title twice (a field boost), brand, category words and description.
"""
from __future__ import annotations

from engine.catalog import Product


def embedding_text(p: Product) -> str:
    parts = [p.title, p.category_path, p.brand, p.description]
    return ". ".join(s.strip().rstrip(".") for s in parts if s and s.strip())


def keyword_text(p: Product) -> str:
    return " ".join(s for s in (p.title, p.title, p.brand, " ".join(p.category), p.description) if s)
