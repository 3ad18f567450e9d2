"""Sponsored products for advertisers and the shop's ad-ops (the ``ads`` key scope): campaigns."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from web.auth import requires
from web.body import json_body
from web.engine_ext import get_engine
from web.params import get_str

bp = Blueprint("ads", __name__)


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
