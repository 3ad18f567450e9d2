"""Shopper routes: event ingest (ingest key), shopper features, deleting a shopper (admin key)."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from engine.errors import InvalidQuery
from web.auth import requires, session_shopper
from web.errors import error_response
from web.engine_ext import get_engine
from web.params import get_float, get_int, get_str

bp = Blueprint("shoppers", __name__)


@bp.post("/v1/events")
@requires("ingest")
def events() -> Response | tuple[Response, int]:
    """One event object, a list of events, or ``{"events": [...]}``; at most 1,000 per request."""
    body = request.get_json(silent=True)
    if body is None:
        raise InvalidQuery("body", "must be a JSON event object or a list of events")
    batch: Any = body.get("events", body) if isinstance(body, dict) and "events" in body else body
    if isinstance(batch, dict):
        batch = [batch]
    if not isinstance(batch, list):
        raise InvalidQuery("events", "must be a list of event objects")
    if g.get("auth") == "session":  # a storefront page: only its own shopper's events
        shopper = session_shopper()
        if any(not isinstance(e, dict) or e.get("user_id") != shopper for e in batch):
            return error_response(403, "forbidden", f"a storefront session sends events of its shopper "
                                                    f"({shopper!r}) only", "user_id")
    return jsonify(get_engine().ingest(batch))


def _list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in (p.strip() for p in value.split(",")) if v]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidQuery(field, "must be a list of item ids (or a comma-separated string)")


def _rec_options(src: Any) -> dict[str, Any]:
    return {
        "k": get_int(src, "k"),
        "category": get_str(src, "category") or None,
        "min_price": get_float(src, "min_price"),
        "max_price": get_float(src, "max_price"),
        "exclude": _list(src.get("exclude"), "exclude"),
        "diversity": get_float(src, "diversity", 0.0) or 0.0,
    }


@bp.get("/v1/users/<path:user_id>/recommendations")
def user_recommendations(user_id: str) -> Response:
    return jsonify(get_engine().recommend(user_id, **_rec_options(request.args)))


@bp.post("/v1/recommendations")
def session_recommendations() -> Response:
    """For an anonymous session: ``{"items": [recent item ids, oldest first], "k"?, "category"?, ...}``."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidQuery("body", "must be a JSON object with 'items'")
    return jsonify(get_engine().recommend(None, recent=_list(body.get("items"), "items"), **_rec_options(body)))


@bp.get("/v1/users/<path:user_id>")
def user(user_id: str) -> Response:
    return jsonify(get_engine().user(user_id))


@bp.delete("/v1/users/<path:user_id>")
@requires("admin")
def delete_user(user_id: str) -> Response:
    return jsonify(user_id=user_id, deleted_events=get_engine().delete_user(user_id))
