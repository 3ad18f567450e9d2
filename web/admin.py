"""Admin API under /v1/admin: rebuild (background job), job progress, rollback, event statistics.

Needs ``Authorization: Bearer <admin_key>``. With no admin key configured the routes answer 403:
they are off, never open.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, jsonify, request, url_for

from engine import jobs
from engine.errors import InvalidQuery
from engine.index import store
from web.engine_ext import get_config, get_engine
from web.auth import check_key
from web.params import get_bool, get_int, get_str

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


@bp.before_request
def require_admin_key() -> tuple[Response, int] | None:
    return check_key("admin")


@bp.post("/rebuild")
def rebuild() -> tuple[Response, int]:
    body = request.get_json(silent=True)
    if request.data and body is None:
        raise InvalidQuery("body", "must be a JSON object")
    body = body or {}
    if not isinstance(body, dict):
        raise InvalidQuery("body", "must be a JSON object")
    config = get_config()
    catalog = get_str(body, "catalog")
    if catalog is None:
        catalog = _current_catalog() or (str(config.catalog) if config.catalog else None)
    if not catalog:
        raise InvalidQuery("catalog", "give the catalog file path (no index published yet to take it from)")
    state = jobs.start_rebuild(config, Path(catalog), full=bool(get_bool(body, "full", False)))
    resp = jsonify(job=state["job"], state=state["state"], status_url=url_for("admin.job", job=state["job"]))
    return resp, 202


@bp.get("/rebuild/<job>")
def job(job: str) -> Response:
    return jsonify(jobs.read_job(get_config(), job))


@bp.post("/rollback")
def rollback() -> Response:
    old, new = store.rollback(get_config().index_dir)
    return jsonify(previous=old, current=new)


@bp.get("/stats")
def stats() -> Response:
    days = get_int(request.args, "days")
    return jsonify(get_engine().event_stats(30 if days is None else days))


def _current_catalog() -> str | None:
    try:
        path: str = store.read_manifest(store.current_dir(get_config().index_dir))["catalog"]["path"]
        return path
    except Exception:
        return None
