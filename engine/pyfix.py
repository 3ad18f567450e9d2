"""A guard for a CPython 3.11/3.12 bug that Vitrine's threads can trip: gh-106905.

The C code that turns a parse tree into ``ast`` objects keeps its recursion counter in state shared by
the whole interpreter. When two threads build ASTs at once (one is switched out mid-build when a garbage
collection runs a Python finaliser), the counter is left unbalanced and ``ast.parse`` raises
``SystemError: AST constructor recursion depth mismatch``. Vitrine's background threads load ``.npy``
and ``.npz`` files, and numpy reads their headers with ``ast.literal_eval``; at the same moment Flask
compiles URL rules and the traceback module locates error carets with ``ast.parse``. CI hit it once
in 1,023 tests, and ``tests/test_pyfix.py`` reproduces it in seconds without this guard.

:func:`install` wraps ``ast.parse`` (which ``ast.literal_eval`` calls through the module's globals) in a
re-entrant lock, so that only one thread builds an AST at a time. It is idempotent and does nothing on
Python 3.13 and later, whose AST constructor keeps the counter per call.
"""
from __future__ import annotations

import ast
import functools
import sys
import threading
from typing import Any

_LOCK = threading.RLock()


def needed() -> bool:
    return sys.version_info < (3, 13)


def install() -> bool:
    """Serialise ``ast.parse`` across threads; True where the guard is (now or already) in place."""
    if not needed():
        return False
    if getattr(ast.parse, "__vitrine_guard__", False):
        return True
    unguarded = ast.parse

    @functools.wraps(unguarded)
    def parse(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return unguarded(*args, **kwargs)

    parse.__vitrine_guard__ = True  # type: ignore[attr-defined]
    ast.parse = parse
    return True
