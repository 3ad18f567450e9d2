"""Admin API under /v1/admin: versions and manifest, rebuild (background job), job progress, rollback,
event statistics, the per-surface outcomes of the lists shown, and experiments (create, stop, choose the
winner, per-variant stats).

Needs the admin key (``Authorization: Bearer <admin_key>``) or the admin page's session. With no admin key
configured the routes answer 403: they are off, never open.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from engine import InvalidQuery
from web.auth import check_key
from web.body import json_body
from web.engine_ext import get_admin, get_engine
from web.params import get_bool, get_int, get_str

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


@bp.before_request
def require_admin_key() -> tuple[Response, int] | None:
    return check_key("admin")


@bp.get("/versions")
def versions() -> Response:
    """The served version, the history a rollback walks back, the versions on disk and the full manifest."""
    admin = get_admin()
    body = admin.versions().to_dict()
    body["manifest"] = admin.manifest() if body["current"] else None
    return jsonify(body)


@bp.post("/rebuild")
def rebuild() -> tuple[Response, int]:
    body = json_body(required=False, empty={})  # no body at all: rebuild from the served catalog
    if not isinstance(body, dict):
        raise InvalidQuery("body", "must be a JSON object")
    state = get_admin().start_rebuild(get_str(body, "catalog"), full=bool(get_bool(body, "full", False)))
    resp = jsonify(job=state["job"], state=state["state"], status_url=url_for("admin.job", job=state["job"]))
    return resp, 202


@bp.get("/rebuild/<job>")
def job(job: str) -> Response:
    return jsonify(get_admin().job(job))


@bp.post("/rollback")
def rollback() -> Response:
    """Back to the version served before the current one (a history: see README, "Rollback")."""
    return jsonify(get_admin().rollback().to_dict())


@bp.get("/stats")
def stats() -> Response:
    """Event counts per day and type, and per surface the lists shown and their outcomes (attribution)."""
    days = get_int(request.args, "days")
    days = 30 if days is None else days
    engine = get_engine()
    body = engine.event_stats(days).to_dict()
    body["surfaces"] = engine.surface_stats(days).to_dict()["surfaces"]
    if engine.impressions is not None:
        body["impression_log"] = engine.impressions.status()
    return jsonify(body)


@bp.get("/experiments")
def experiments() -> Response:
    """Every experiment, newest first, each with its per-variant stats (``stats``)."""
    report = get_engine().experiments.report()
    return jsonify(experiments=[exp.to_dict() | {"stats": st.to_dict()} for exp, st in report])


EXPERIMENT_FIELDS = ("name", "surface", "variants", "kind")


@bp.post("/experiments")
def create_experiment() -> tuple[Response, int]:
    """Start an experiment: ``{name, surface, variants: [{name, policy, share}], kind}``."""
    body = _object_body(EXPERIMENT_FIELDS)
    exp = get_engine().experiments.create(_given(body, "name"), _given(body, "surface"), _given(body, "variants"),
                                          kind=body.get("kind", "split"))
    return jsonify(exp.to_dict() | {"stats": get_engine().experiments.stats(exp).to_dict()}), 201


@bp.post("/experiments/<name>/stop")
def stop_experiment(name: str) -> Response:
    exps = get_engine().experiments
    exp = exps.stop(name)
    return jsonify(exp.to_dict() | {"stats": exps.stats(exp).to_dict()})


@bp.post("/experiments/<name>/winner")
def choose_winner(name: str) -> Response:
    """Record ``{variant}`` as the winner (stopping the experiment if it runs)."""
    exps = get_engine().experiments
    exps.get(name)  # 404 before a body error for an unknown experiment
    body = _object_body(("variant",))
    exp = exps.choose_winner(name, _given(body, "variant"))
    return jsonify(exp.to_dict() | {"stats": exps.stats(exp).to_dict()})


def _object_body(fields: tuple[str, ...]) -> dict[str, Any]:
    """The JSON body, an object with only ``fields`` (InvalidQuery naming the first other key)."""
    body = json_body(required=True)
    if not isinstance(body, dict):
        raise InvalidQuery("body", "must be a JSON object")
    unknown = sorted(k for k in body if k not in fields)
    if unknown:
        raise InvalidQuery(unknown[0], f"unknown field; send {', '.join(fields)}")
    return body


def _given(body: dict[str, Any], key: str) -> Any:
    """``body[key]``, None when not given: the engine checks the value and says "required" for None."""
    return body.get(key)


@bp.get("/deletions/<receipt>")
def deletion(receipt: str) -> Response:
    """Re-check a deletion receipt: ``verified`` is true while no row names the deleted shopper."""
    return jsonify(get_engine().verify_deletion(receipt))
