"""Sponsored products: advertisers' campaigns (the ``ads`` key scope) and the clicks of sponsored results."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from engine import InvalidQuery, NotFound
from web.auth import requires
from web.body import json_body
from web.engine_ext import get_engine
from web.params import get_str

bp = Blueprint("ads", __name__)


@bp.post("/v1/ads/clicks")
def ad_click() -> Response:
    """A sponsored result was clicked: ``{"ad": <its token>}``. No key: the signed token is the proof that the
    result was served; each ad impression is charged at most once."""
    return jsonify(get_engine().ads.click(json_body(required=True)))


@bp.get("/v1/ads/reports")
@requires("ads")
def reports() -> Response:
    """Per campaign and UTC day: impressions, clicks, CTR, spend, average CPC, attributed purchases, revenue
    and ROAS (``format=csv`` for a CSV file)."""
    a = request.args
    engine = get_engine()

    def price_of(item: str) -> float | None:
        try:
            return engine.item(item).price
        except NotFound:
            return None

    rows = engine.ads.report(advertiser=get_str(a, "advertiser"), campaign=get_str(a, "campaign"),
                             day_from=get_str(a, "from"), day_to=get_str(a, "to"), price_of=price_of)
    fmt = get_str(a, "format") or "json"
    if fmt == "csv":
        return Response(engine.ads.csv(rows), mimetype="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="ads-report.csv"'})
    if fmt != "json":
        raise InvalidQuery("format", f"must be json or csv, got {fmt!r}")
    return jsonify({"rows": [r.to_dict() for r in rows]})


@bp.get("/v1/ads/reports/hourly")
@requires("ads")
def hourly_report() -> Response:
    """One campaign's spend and clicks per UTC hour of a day (default today), with its daily budget."""
    a = request.args
    campaign = get_str(a, "campaign")
    if not campaign:
        raise InvalidQuery("campaign", "required: the campaign's id")
    return jsonify(get_engine().ads.hourly(campaign, get_str(a, "day")))


@bp.post("/v1/ads/campaigns")
@requires("ads")
def create_campaign() -> tuple[Response, int]:
    return jsonify(get_engine().ads.create(json_body(required=True))), 201


@bp.get("/v1/ads/campaigns")
@requires("ads")
def list_campaigns() -> Response:
    return jsonify(get_engine().ads.list(get_str(request.args, "advertiser")))


@bp.get("/v1/ads/campaigns/<campaign_id>")
@requires("ads")
def get_campaign(campaign_id: str) -> Response:
    return jsonify(get_engine().ads.get(campaign_id))


@bp.patch("/v1/ads/campaigns/<campaign_id>")
@requires("ads")
def update_campaign(campaign_id: str) -> Response:
    return jsonify(get_engine().ads.update(campaign_id, json_body(required=True)))


@bp.post("/v1/ads/campaigns/<campaign_id>/pause")
@requires("ads")
def pause_campaign(campaign_id: str) -> Response:
    return jsonify(get_engine().ads.pause(campaign_id))


@bp.post("/v1/ads/campaigns/<campaign_id>/resume")
@requires("ads")
def resume_campaign(campaign_id: str) -> Response:
    return jsonify(get_engine().ads.resume(campaign_id))
