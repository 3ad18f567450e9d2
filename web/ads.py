"""Sponsored products: advertisers' campaigns (the ``ads`` key scope) and the clicks of sponsored results."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

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
