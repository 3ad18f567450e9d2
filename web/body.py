"""JSON request bodies, read one way for every route; bad input is a 400 naming ``body``, never a 500.

``json.loads`` recurses once per level of nesting, so a body nested a thousand deep would end in a
``RecursionError``. The nesting is therefore measured first, by a scan that does not recurse, and a body
deeper than ``MAX_DEPTH`` is refused before it is parsed. ``NaN`` and ``Infinity`` are not JSON and are
refused; the body must be UTF-8. With ``check_text`` a string holding a lone surrogate (``"\\ud800"``, which
is not Unicode text) is refused, naming the top-level field it is under.
"""
from __future__ import annotations

import json
import re
from functools import partial
from itertools import accumulate, takewhile
from operator import le, lt
from typing import Any, Iterator, NoReturn

from flask import request

from engine import InvalidQuery, text_problem

MAX_DEPTH = 32
# A JSON string, escapes included; an unterminated one runs to the end. Possessive, so the scan is linear.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = tuple(1 if b in b"[{" else -1 for b in range(256))  # applied to brackets only
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``json.loads(data)`` would nest deeper than ``limit`` before it finishes or fails, found
    without recursing: whether more than ``limit`` brackets are ever open at once outside strings, counted
    up to the first one closed with none open (where the JSON is invalid). Linear; the loops run in C."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depths = takewhile(partial(le, 0), accumulate(map(_STEP.__getitem__, brackets)))
    return any(map(partial(lt, limit), depths))


def json_body(*, required: bool, empty: Any = None, check_text: bool = True) -> Any:
    """The request's body parsed as JSON; ``empty`` when it has no bytes and is not ``required``.

    Raises ``InvalidQuery("body", ...)`` for a body that is empty but required, not sent as JSON, not
    UTF-8, nested deeper than ``MAX_DEPTH``, not valid JSON, or holding NaN/Infinity; with ``check_text``,
    ``InvalidQuery(field, ...)`` for a lone surrogate in a string (the field is the top-level key above it).
    """
    data = request.get_data(cache=True)
    if not data:
        if required:
            raise InvalidQuery("body", "required: send a JSON body")
        return empty
    if not request.is_json:
        raise InvalidQuery("body", "send JSON, with Content-Type: application/json")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InvalidQuery("body", f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    if too_deep(data):
        raise InvalidQuery("body", f"nested deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise InvalidQuery("body", f"not valid JSON: {e}") from None
    except ValueError:  # Python reads integers of at most 4,300 digits
        raise InvalidQuery("body", "not valid JSON: a number has more than 4,300 digits") from None
    if check_text and _SURROGATE_ESCAPE.search(data):
        field = _unclean_field(body)
        if field is not None:
            raise InvalidQuery(field, "must be valid Unicode text (it holds a lone surrogate)")
    return body


def _refuse_constant(name: str) -> NoReturn:
    raise InvalidQuery("body", f"not valid JSON: {name} is not a JSON number (numbers must be finite)")


def _unclean_field(body: Any) -> str | None:
    """The top-level key above a string that is not clean text ("body" outside an object or for a key)."""
    if isinstance(body, dict):
        for key, value in body.items():
            if text_problem(key):
                return "body"
            if any(text_problem(s) for s in _strings(value)):
                return str(key)
        return None
    return "body" if any(text_problem(s) for s in _strings(body)) else None


def _strings(value: Any) -> Iterator[str]:
    """Every string in a parsed JSON value, object keys included (the nesting is at most ``MAX_DEPTH``)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _strings(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _strings(inner)
