"""Shopper routes: event ingest (ingest key), shopper features, deleting a shopper (admin key)."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from engine.errors import InvalidQuery
from web.auth import requires
from web.engine_ext import get_engine

bp = Blueprint("shoppers", __name__)


@bp.post("/v1/events")
@requires("ingest")
def events() -> Response:
    """One event object, a list of events, or ``{"events": [...]}``; at most 1,000 per request."""
    body = request.get_json(silent=True)
    if body is None:
        raise InvalidQuery("body", "must be a JSON event object or a list of events")
    batch: Any = body.get("events", body) if isinstance(body, dict) and "events" in body else body
    if isinstance(batch, dict):
        batch = [batch]
    if not isinstance(batch, list):
        raise InvalidQuery("events", "must be a list of event objects")
    return jsonify(get_engine().ingest(batch))


@bp.get("/v1/users/<path:user_id>")
def user(user_id: str) -> Response:
    return jsonify(get_engine().user(user_id))


@bp.delete("/v1/users/<path:user_id>")
@requires("admin")
def delete_user(user_id: str) -> Response:
    return jsonify(user_id=user_id, deleted_events=get_engine().delete_user(user_id))
