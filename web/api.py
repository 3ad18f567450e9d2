"""Public read API under /v1, plus /healthz."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from web.auth import check_shopper
from web.engine_ext import get_engine
from web.openapi import openapi_document
from web.params import get_bool, get_filters, get_float, get_int, get_str

bp = Blueprint("api", __name__)


@bp.get("/v1/search")
def search() -> Response | tuple[Response, int]:
    a = request.args
    user = get_str(a, "user")
    if user:  # personalized for a named shopper: their data, so the read scope or their own token
        denied = check_shopper(user)
        if denied:
            return denied
    result = get_engine().search(
        get_str(a, "q", "") or "",
        k=get_int(a, "k"),
        offset=get_int(a, "offset", 0) or 0,
        filters=get_filters(a),
        user=user,
        personalize=get_float(a, "personalize"),
    )
    return jsonify(result.to_dict())


@bp.get("/v1/suggest")
def suggest() -> Response:
    a = request.args
    return jsonify(get_engine().suggest(get_str(a, "q", "") or "", k=get_int(a, "k")).to_dict())


@bp.get("/v1/items/<path:item_id>/similar")
def similar(item_id: str) -> Response:
    a = request.args
    engine = get_engine()
    k = get_int(a, "k")
    similar = engine.similar(item_id, k=k, same_category=bool(get_bool(a, "same_category", False)))
    return jsonify(similar.to_dict() | {"also_bought": engine.also_bought(item_id, k=len(similar.hits) or 10)})


@bp.get("/v1/items/<path:item_id>")
def item(item_id: str) -> Response:
    engine = get_engine()
    return jsonify({**engine.item(item_id).to_dict(), "stats": engine.item_stats(item_id)})


@bp.get("/v1/info")
def info() -> Response:
    """The served version for anyone: no paths or hashes (the manifest is under /v1/admin/versions)."""
    return jsonify(get_engine().info().to_dict())


@bp.get("/v1/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """``ok``, ``no_index`` or ``degraded`` with the ``reason`` (see ``engine.Health``); always 200, so that a
    load balancer keeps a degraded server, which still answers searches, in rotation."""
    return jsonify(get_engine().health().to_dict()), 200
