"""Behaviour analytics under /v1/admin/analytics (issue 12): the reports (JSON, or CSV with ``format=csv``),
optionally differentially private with ``dp_epsilon``, and the privacy budget's accounting.

Needs the admin key (or the admin page's session), like the rest of /v1/admin. The privacy budget is kept
per key: a hash of the admin key names it, so every admin session and script of one key share one budget.
"""
from __future__ import annotations

import hashlib

from flask import Blueprint, Response, jsonify, request

from engine import InvalidQuery, NotFound, PrivacyBudgetExhausted, WarmingUp
from web.auth import check_key
from web.engine_ext import get_config, get_engine
from web.errors import error_response
from web.params import get_str

bp = Blueprint("analytics", __name__, url_prefix="/v1/admin/analytics")


@bp.before_request
def require_admin_key() -> tuple[Response, int] | None:
    return check_key("admin")


@bp.errorhandler(PrivacyBudgetExhausted)
def _exhausted(e: PrivacyBudgetExhausted) -> tuple[Response, int]:
    return error_response(429, "privacy_budget_exhausted", str(e))


@bp.errorhandler(WarmingUp)
def _warming(e: WarmingUp) -> tuple[Response, int]:
    resp, status = error_response(503, "warming_up", str(e))
    resp.headers["Retry-After"] = "10"
    return resp, status


def budget_key() -> str:
    """The key whose budget a request spends: ``admin:`` and 12 hex digits of the admin key's SHA-256."""
    return "admin:" + hashlib.sha256((get_config().admin_key or "").encode()).hexdigest()[:12]


@bp.get("/privacy")
def privacy() -> Response:
    """Today's epsilon spent and left by this key, the last 7 days, and each report's stated sensitivity."""
    return jsonify(get_engine().analytics.privacy(budget_key()))


@bp.get("/<report>")
def report(report: str) -> Response:
    """One report over ``from``..``to`` (UTC days) with its filters; see engine.analytics.reports."""
    analytics = get_engine().analytics
    if report not in analytics.reports:
        raise NotFound(f"no report {report[:40]!r}; the reports are {', '.join(analytics.reports)}")
    args = {k: get_str(request.args, k) for k in request.args}
    fmt = args.pop("format", None) or "json"
    table = args.pop("table", None)
    if fmt not in ("json", "csv"):
        raise InvalidQuery("format", f"must be json or csv, got {fmt[:40]!r}")
    if table is not None and fmt != "csv":
        raise InvalidQuery("table", "only with format=csv")
    result = analytics.report(report, args, key=budget_key())
    if fmt == "csv":
        return Response(result.csv(table), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="analytics-{report}.csv"'})
    return jsonify(result.to_dict())
