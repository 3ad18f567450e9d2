"""Bearer-key scopes: ``admin`` (rebuild, rollback, delete a shopper) and ``ingest`` (send events).

A scope whose key is not configured is off (403), never open.
"""
from __future__ import annotations

import hmac
from functools import wraps
from typing import Any, Callable, Literal

from flask import Response, request

from web.engine_ext import get_config
from web.errors import error_response

Scope = Literal["admin", "ingest"]


def check_key(scope: Scope) -> tuple[Response, int] | None:
    """None when the request carries the scope's key; else the 403/401 response."""
    key = get_config().admin_key if scope == "admin" else get_config().ingest_key
    if not key:
        env = f"VITRINE_{scope.upper()}_KEY"
        return error_response(403, f"{scope}_disabled", f"{scope} routes are off: set {env} to enable them")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        return error_response(401, "unauthorized", f"send the {scope} key as 'Authorization: Bearer <key>'")
    return None


def requires(scope: Scope) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def inner(*args: Any, **kwargs: Any) -> Any:
            return check_key(scope) or view(*args, **kwargs)

        return inner

    return wrap
