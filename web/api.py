"""Public read API under /v1, plus /healthz."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from engine.index import store
from web.engine_ext import get_config, get_engine
from web.openapi import openapi_document
from web.params import get_bool, get_float, get_int, get_str

bp = Blueprint("api", __name__)


@bp.get("/v1/search")
def search() -> Response:
    a = request.args
    result = get_engine().search(
        get_str(a, "q", "") or "",
        k=get_int(a, "k"),
        offset=get_int(a, "offset", 0) or 0,
        category=get_str(a, "category") or None,
        min_price=get_float(a, "min_price"),
        max_price=get_float(a, "max_price"),
        in_stock=get_bool(a, "in_stock"),
        user=get_str(a, "user"),
        personalize=get_float(a, "personalize"),
    )
    return jsonify(result.to_dict())


@bp.get("/v1/suggest")
def suggest() -> Response:
    a = request.args
    return jsonify(get_engine().suggest(get_str(a, "q", "") or "", k=get_int(a, "k")))


@bp.get("/v1/items/<path:item_id>/similar")
def similar(item_id: str) -> Response:
    a = request.args
    engine = get_engine()
    k = get_int(a, "k")
    hits = engine.similar(item_id, k=k, same_category=bool(get_bool(a, "same_category", False)))
    return jsonify(item_id=item_id, version=engine.snapshot().version, similar=[h.to_dict() for h in hits],
                   also_bought=engine.also_bought(item_id, k=len(hits) or 10))


@bp.get("/v1/items/<path:item_id>")
def item(item_id: str) -> Response:
    engine = get_engine()
    return jsonify({**engine.item(item_id).to_dict(), "stats": engine.item_stats(item_id)})


@bp.get("/v1/info")
def info() -> Response:
    return jsonify(get_engine().info())


@bp.get("/v1/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    version = store.current_version(get_config().index_dir)
    body: dict[str, Any] = {"status": "ok", "index_version": version}
    if version is None:
        body["status"] = "no_index"
    return jsonify(body), 200
