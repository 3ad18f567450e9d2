"""Shopper routes: event ingest, a shopper's features and recommendations, deleting a shopper.

Who may do what is in web/auth.py: events need the ingest key, or a shopper's own token or storefront
session (rate-limited, that shopper's events only); a named shopper's data needs the read scope or the
shopper's own token or session; anonymous recommendations from item lists are public.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from engine import STRATEGIES, InvalidQuery
from web.auth import check_shopper, client_ip, requires, session_id, too_many
from web.body import json_body
from web.engine_ext import get_config, get_engine, get_limiter
from web.errors import error_response
from web.params import get_filters, get_float, get_int

bp = Blueprint("shoppers", __name__)


@bp.post("/v1/events")
@requires("ingest")
def events() -> Response | tuple[Response, int]:
    """One event object, a list of events, or ``{"events": [...]}``; at most 1,000 per request."""
    body = json_body(required=True, check_text=False)  # each event's strings are checked on their own
    batch: Any = body.get("events", body) if isinstance(body, dict) and "events" in body else body
    if isinstance(batch, dict):
        batch = [batch]
    if not isinstance(batch, list):
        raise InvalidQuery("events", "must be a list of event objects")
    if g.get("auth") in ("session", "token"):  # a shopper's own page or app: their events only, rate-limited
        shopper = g.shopper
        if any(not isinstance(e, dict) or e.get("user_id") != shopper for e in batch):
            return error_response(403, "forbidden", f"a shopper's session or token sends events of that shopper "
                                                    f"({shopper!r}) only", "user_id")
        limited = _rate_limit(len(batch), f"session:{session_id()}" if g.auth == "session" else f"shopper:{shopper}")
        if limited:
            return limited
    return jsonify(get_engine().ingest(batch).to_dict())


def _rate_limit(cost: int, who: str) -> tuple[Response, int] | None:
    """Spend ``cost`` events from the buckets of ``who`` and of the client IP; 429 when either is empty."""
    config, limiter = get_config(), get_limiter()
    wait = limiter.take(f"events:{who}", cost, config.events_per_second_session, config.events_burst_session)
    if not wait:
        wait = limiter.take(f"events:ip:{client_ip()}", cost, config.events_per_second_ip, config.events_burst_ip)
    return too_many("events", wait) if wait else None


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
        "filters": get_filters(src),
        "exclude": _list(src.get("exclude"), "exclude"),
        "diversity": get_float(src, "diversity", 0.0) or 0.0,
        "strategy": _strategy(src.get("strategy")),
    }


def _strategy(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidQuery("strategy", f"must be one of {', '.join(STRATEGIES)}")
    return value


@bp.get("/v1/users/<path:user_id>/recommendations")
def user_recommendations(user_id: str) -> Response | tuple[Response, int]:
    return check_shopper(user_id) or jsonify(get_engine().recommend(user_id, **_rec_options(request.args)).to_dict())


@bp.post("/v1/recommendations")
def session_recommendations() -> Response:
    """For an anonymous session: ``{"items": [recent item ids, oldest first], "k"?, "category"?, ...}``."""
    body = json_body(required=True)
    if not isinstance(body, dict):
        raise InvalidQuery("body", "must be a JSON object with 'items'")
    recs = get_engine().recommend(None, recent=_list(body.get("items"), "items"), **_rec_options(body))
    return jsonify(recs.to_dict())


@bp.get("/v1/users/<path:user_id>")
def user(user_id: str) -> Response | tuple[Response, int]:
    return check_shopper(user_id) or jsonify(get_engine().user(user_id))


@bp.delete("/v1/users/<path:user_id>")
@requires("admin")
def delete_user(user_id: str) -> Response:
    """Delete everything of the shopper: the receipt says what, with counts (``GET /v1/admin/deletions/<id>``
    verifies it later)."""
    receipt = get_engine().erase_user(user_id)
    return jsonify({"user_id": user_id, "deleted_events": receipt["removed"]["events"], **receipt})


@bp.get("/v1/users/<path:user_id>/consent")
def get_consent(user_id: str) -> Response | tuple[Response, int]:
    return check_shopper(user_id) or jsonify(get_engine().consent(user_id))


@bp.put("/v1/users/<path:user_id>/consent")
@requires("ingest")
def put_consent(user_id: str) -> Response | tuple[Response, int]:
    """``{"personalization": false}`` turns personalization off for the shopper (true turns it back on): the
    ingest key, or the shopper's own token or session."""
    if g.get("auth") in ("session", "token") and g.shopper != user_id:
        return error_response(403, "forbidden", "a shopper may set their own consent only", "user_id")
    body = json_body(required=True)
    if not isinstance(body, dict) or "personalization" not in body:
        raise InvalidQuery("personalization", "required: true or false")
    return jsonify(get_engine().set_consent(user_id, body.get("personalization"),
                                            "shopper" if g.get("auth") in ("session", "token") else "api"))
