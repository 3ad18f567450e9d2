"""Who may call what: bearer keys for API clients, signed-cookie sessions for the browser pages.

Scopes: ``admin`` (rebuild, rollback, stats, delete a shopper) and ``ingest`` (send events). A request
with an ``Authorization`` header is judged by its key alone: ``Bearer <key>`` of the scope, else 401; a
scope whose key is not configured is off (403), never open.

Without that header, the browser's session may stand in, and only with the session's CSRF token in the
``X-CSRF-Token`` header (the pages put it in ``<meta name="csrf-token">``):
- ``admin``: the session logged in on ``/admin`` with the admin key. The session holds an HMAC of the key,
  never the key, so changing the key logs every session out;
- ``ingest``: the storefront's session shopper, for their own events only (``storefront_events``; the
  events route checks each event's ``user_id``).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Literal

from flask import Response, g, request, session

from engine.config import EngineConfig
from web.engine_ext import get_config
from web.errors import error_response

Scope = Literal["admin", "ingest"]
CSRF_HEADER = "X-CSRF-Token"


def load_secret_key(config: EngineConfig) -> bytes:
    """``secret_key``, else the key in ``secret_key_file``, created (0600, atomically) when missing."""
    if config.secret_key:
        return config.secret_key.encode()
    path = Path(config.secret_key_file)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # the first worker wins; the others read its key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(24)
    return str(token)


def csrf_ok() -> bool:
    given, expected = request.headers.get(CSRF_HEADER, ""), session.get("csrf", "")
    return bool(expected) and hmac.compare_digest(given.encode(), str(expected).encode())


def _admin_mark(key: str) -> str:
    from flask import current_app

    secret = current_app.secret_key
    raw = secret if isinstance(secret, bytes) else str(secret).encode()
    return hmac.new(raw, b"admin:" + key.encode(), hashlib.sha256).hexdigest()


def admin_login(given: str) -> bool:
    """Mark the session as admin when ``given`` is the admin key."""
    key = get_config().admin_key
    if not key or not hmac.compare_digest(given.encode(), key.encode()):
        return False
    session["admin"] = _admin_mark(key)
    return True


def is_admin_session() -> bool:
    key = get_config().admin_key
    mark = session.get("admin")
    return bool(key and mark and hmac.compare_digest(str(mark), _admin_mark(key)))


def session_shopper() -> str | None:
    shopper = session.get("shopper")
    return str(shopper) if shopper else None


def check_key(scope: Scope) -> tuple[Response, int] | None:
    """None when the request may use the scope (and ``g.auth`` says how: "key" or "session");
    else the 403/401 response."""
    config = get_config()
    key = config.admin_key if scope == "admin" else config.ingest_key
    header = request.headers.get("Authorization")
    if header is None:
        if scope == "admin" and is_admin_session() and csrf_ok():
            g.auth = "session"
            return None
        if scope == "ingest" and config.storefront_events and session_shopper() and csrf_ok():
            g.auth = "session"
            return None
    if not key:
        env = f"VITRINE_{scope.upper()}_KEY"
        return error_response(403, f"{scope}_disabled", f"{scope} routes are off: set {env} to enable them")
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        return error_response(401, "unauthorized", f"send the {scope} key as 'Authorization: Bearer <key>'")
    g.auth = "key"
    return None


def requires(scope: Scope) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def inner(*args: Any, **kwargs: Any) -> Any:
            return check_key(scope) or view(*args, **kwargs)

        return inner

    return wrap
