"""Typed query-string and JSON-body parameters; a bad value raises ``InvalidQuery`` naming the field."""
from __future__ import annotations

import math
from typing import Any, Mapping

from engine.errors import InvalidQuery

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def get_str(args: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    value = args.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidQuery(name, "must be a string")
    return value


def get_int(args: Mapping[str, Any], name: str, default: int | None = None) -> int | None:
    value = args.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidQuery(name, f"must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidQuery(name, f"must be an integer, got {value!r}") from None


def get_float(args: Mapping[str, Any], name: str, default: float | None = None) -> float | None:
    value = args.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidQuery(name, f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidQuery(name, f"must be a finite number, got {value!r}")
    return number


def get_bool(args: Mapping[str, Any], name: str, default: bool | None = None) -> bool | None:
    value = args.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidQuery(name, f"must be true or false, got {value!r}")
