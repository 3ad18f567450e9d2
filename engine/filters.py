"""``Filters``: the category, price range and stock filters of a search or a recommendation request.

Validated once, when made (``InvalidQuery`` naming the field), then taken as they are by search,
recommendations, the snapshot's row masks and the facets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from engine.catalog import category_key
from engine.errors import InvalidQuery

MAX_CATEGORY_CHARS = 500


@dataclass(frozen=True)
class Filters:
    """``category``: a path prefix (``"A > B"``), matched at segment boundaries, case-insensitively.
    ``min_price``/``max_price``: bounds (>= 0) that also exclude items without a price. ``in_stock``: True
    keeps items not marked out of stock, False only those marked out of stock. None: not filtered."""

    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None
    in_stock: bool | None = None

    def __post_init__(self) -> None:
        if self.category is not None:
            if not isinstance(self.category, str) or len(self.category) > MAX_CATEGORY_CHARS:
                raise InvalidQuery("category", f"must be a category path of at most {MAX_CATEGORY_CHARS} characters")
            if not category_key(self.category):
                raise InvalidQuery("category", "must be a category path such as 'A > B'")
        for name in ("min_price", "max_price"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidQuery(name, f"must be a number >= 0, got {value!r}")
            try:
                number = float(value)
            except OverflowError:
                raise InvalidQuery(name, "must be a number >= 0 of a sensible size") from None
            if not math.isfinite(number) or number < 0:
                raise InvalidQuery(name, f"must be a number >= 0, got {value}")
            object.__setattr__(self, name, number)
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise InvalidQuery("min_price", f"must not exceed max_price ({self.min_price} > {self.max_price})")
        if self.in_stock is not None and not isinstance(self.in_stock, bool):
            raise InvalidQuery("in_stock", f"must be true or false, got {self.in_stock!r}")

    @property
    def narrows_category_or_price(self) -> bool:
        return self.category is not None or self.min_price is not None or self.max_price is not None

    def stock_only(self) -> Filters:
        """These filters without the category and price ones (what the facets count over)."""
        return Filters(in_stock=self.in_stock)


NO_FILTERS = Filters()
