"""Who may call what: bearer keys for API clients, signed shopper tokens, signed-cookie browser sessions.

Scopes, each with its own key (unset: the scope is off, 403, never open):
- ``read``: a named shopper's data (``GET /v1/users/<id>``, their recommendations, search with ``user``);
  the admin key may read too;
- ``ingest``: send events (``POST /v1/events``);
- ``admin``: rebuild, rollback, versions and manifest, stats, delete a shopper;
- ``ads``: sponsored products: advertisers' campaigns and their reports (``/v1/ads/...``), a scope of its
  own (neither the admin nor the ingest key opens it).
A request with an ``Authorization`` header is judged by its key alone: ``Bearer <key>`` of the scope, else
401. Wrong keys count as failed logins of the client IP (see below).

Without a key, a shopper may act for themself only:
- with a shopper token (``X-Shopper-Token``, see :mod:`engine.tokens`) signed by the shop with
  ``shopper_secret``: read their own data, send their own events;
- in a storefront page's session, whose shopper is a token's (``?shopper_token=`` on any page), a fresh
  anonymous id the server made, or, with ``demo_shopper_menu`` on, any shopper picked from the menu. Writes
  need the session's CSRF token in ``X-CSRF-Token`` (the pages put it in ``<meta name="csrf-token">``).
Events sent that way (not with the ingest key) are rate-limited per session (or token) and per IP.

The admin session holds an HMAC of the admin key, never the key, so changing the key logs every session
out. Admin logins, and wrong keys, are throttled per IP: after 5 failures, 429 with exponential back-off.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Literal

from flask import Response, g, request, session

from engine import EngineConfig, ShopperToken, Unauthorized
from web.engine_ext import get_config, get_limiter
from web.errors import error_response

Scope = Literal["admin", "ingest", "read", "ads"]
CSRF_HEADER = "X-CSRF-Token"
TOKEN_HEADER = "X-Shopper-Token"


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


def session_id() -> str:
    """A random id of this browser session (made on first use), the key of its rate limits."""
    sid = session.get("sid")
    if not sid:
        sid = session["sid"] = secrets.token_urlsafe(12)
    return str(sid)


def client_ip() -> str:
    return request.remote_addr or "unknown"


def too_many(what: str, wait: float) -> tuple[Response, int]:
    resp, status = error_response(429, "rate_limited", f"too many {what}; retry after {math.ceil(wait)} s")
    resp.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return resp, status


def login_blocked() -> tuple[Response, int] | None:
    """429 while this IP is backing off after failed logins or wrong keys, else None."""
    wait = get_limiter().blocked_for(f"login:{client_ip()}")
    return too_many("failed logins from this address", wait) if wait > 0 else None


def token_shopper() -> str | None:
    """The shopper of a valid ``X-Shopper-Token``; None without one. ``Unauthorized`` for a bad token."""
    token = request.headers.get(TOKEN_HEADER)
    if token is None:
        return None
    secret = get_config().shopper_secret
    if not secret:
        raise Unauthorized("shopper tokens are off on this server (no shopper_secret)")
    return ShopperToken.verify(secret, token).user_id


def _matches(given: str, keys: list[str]) -> bool:
    """Whether ``given`` is one of ``keys`` (compared in constant time, every key compared)."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.strip().encode(), key.encode())
    return found


def _all_keys(config: EngineConfig) -> list[str]:
    return [k for k in (config.admin_key, config.ingest_key, config.read_key, config.ads_key) if k]


def _scope_key(config: EngineConfig, scope: Scope) -> str | None:
    return {"admin": config.admin_key, "ingest": config.ingest_key, "read": config.read_key,
            "ads": config.ads_key}[scope]


def check_key(scope: Scope) -> tuple[Response, int] | None:
    """None when the request may use the scope, with ``g.auth`` saying how ("key", "session" or "token")
    and, for a shopper's session or token, ``g.shopper``; else the 401/403/429 response."""
    config = get_config()
    header = request.headers.get("Authorization")
    if header is None:
        if scope == "admin" and is_admin_session() and csrf_ok():
            g.auth = "session"
            return None
        if scope == "ingest":
            shopper = token_shopper()
            if shopper is not None:
                g.auth, g.shopper = "token", shopper
                return None
            if config.storefront_events and session_shopper() and csrf_ok():
                g.auth, g.shopper = "session", session_shopper()
                return None
    keys = [k for k in (_scope_key(config, scope), config.admin_key if scope == "read" else None) if k]
    if not keys:
        env = f"VITRINE_{scope.upper()}_KEY"
        return error_response(403, f"{scope}_disabled", f"{scope} routes are off: set {env} to enable them")
    if header is not None:  # while this IP backs off after wrong keys, no key is even looked at
        blocked = login_blocked()
        if blocked:
            return blocked
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not _matches(given, keys):
        if header is not None and not _matches(given, _all_keys(config)):  # another scope's key is no guess
            get_limiter().failed(f"login:{client_ip()}")
        return error_response(401, "unauthorized", f"send the {scope} key as 'Authorization: Bearer <key>'")
    g.auth = "key"
    return None


def check_shopper(user_id: str) -> tuple[Response, int] | None:
    """May this request read ``user_id``'s data? A key of the read scope (or the admin key), the shopper's
    own token, or a storefront session of that shopper; else 401 (no credentials) or 403 (another's)."""
    if request.headers.get("Authorization") is None:
        shopper = token_shopper()
        if shopper is None and session_shopper() is not None:
            shopper = session_shopper()
        if shopper is not None:
            if shopper == user_id:
                return None
            return error_response(403, "forbidden", "a shopper may read their own data only", "user_id")
    return check_key("read")


def requires(scope: Scope) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def inner(*args: Any, **kwargs: Any) -> Any:
            return check_key(scope) or view(*args, **kwargs)

        return inner

    return wrap
