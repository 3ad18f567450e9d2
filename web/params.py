"""Typed query-string and JSON-body parameters; a bad value raises ``InvalidQuery`` naming the field.

Numbers must be real: a bool is not a number, an integer beyond ``MAX_INT`` is refused, and so is a float
that is not finite (``1e400`` in JSON reads as infinity). Strings must be valid Unicode text.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from engine import Filters, InvalidQuery, parse_bool, text_problem

MAX_INT = 2**53  # the largest magnitude a JSON number (an IEEE double) holds exactly


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters: an error message never echoes a whole body."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def get_str(args: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    value = args.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidQuery(name, "must be a string")
    problem = text_problem(value)
    if problem:
        raise InvalidQuery(name, problem)
    return value


def get_int(args: Mapping[str, Any], name: str, default: int | None = None) -> int | None:
    """An int, an integral finite float (``10.0``) or a decimal string, of magnitude at most ``MAX_INT``."""
    value = args.get(name)
    if value is None or value == "":
        return default
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():  # False for inf and nan
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value)
        except ValueError:  # also a string of more than 4,300 digits
            pass
    if number is None:
        raise InvalidQuery(name, f"must be an integer, got {shown(value)}")
    if not -MAX_INT <= number <= MAX_INT:
        raise InvalidQuery(name, f"must be an integer in -2**53..2**53, got {shown(value)}")
    return number


def get_float(args: Mapping[str, Any], name: str, default: float | None = None) -> float | None:
    """A finite number: an int, a float or a decimal string (not a bool, not NaN, not infinite)."""
    value = args.get(name)
    if value is None or value == "":
        return default
    number: float | None = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int past the float range
            number = math.inf
        except ValueError:
            pass
    if number is None:
        raise InvalidQuery(name, f"must be a number, got {shown(value)}")
    if not math.isfinite(number):
        raise InvalidQuery(name, f"must be a finite number, got {shown(value)}")
    return number


def get_bool(args: Mapping[str, Any], name: str, default: bool | None = None) -> bool | None:
    value = args.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)):
        try:
            return parse_bool(str(value))
        except ValueError:
            pass
    raise InvalidQuery(name, f"must be true or false, got {shown(value)}")


def get_filters(args: Mapping[str, Any]) -> Filters:
    """The ``category``, ``min_price``, ``max_price`` and ``in_stock`` parameters as one ``Filters`` value."""
    return Filters(category=get_str(args, "category") or None, min_price=get_float(args, "min_price"),
                   max_price=get_float(args, "max_price"), in_stock=get_bool(args, "in_stock"))
