"""Shopper questions: the best past answers (and catalog fields) for a new question, per item or catalog-wide."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from web.engine_ext import get_engine
from web.params import get_int, get_str

bp = Blueprint("qa", __name__)


@bp.get("/v1/items/<path:item_id>/answers")
def item_answers(item_id: str) -> Response:
    """Answers to ``q`` about one item: the catalog fields it names first, then past answers by score."""
    a = request.args
    return jsonify(get_engine().qa.answers(get_str(a, "q"), item_id, k=get_int(a, "k", 5) or 0))


@bp.get("/v1/answers")
def answers() -> Response:
    """Past answers to ``q`` across the catalog (each names its item)."""
    a = request.args
    return jsonify(get_engine().qa.answers(get_str(a, "q"), None, k=get_int(a, "k", 5) or 0))
