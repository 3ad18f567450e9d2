"""The storefront and admin pages: server-rendered templates, small vanilla JavaScript in web/static.

Plain search, filters, paging, the item page and the shopper picker work without JavaScript (forms and
links); the scripts add type-ahead suggestions, events as the person browses, a "for you" strip that
refreshes without a reload, the "why this result" toggle and the admin page's live parts.
"""
from __future__ import annotations

import logging
import math
import secrets
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, abort, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response as Redirect

from engine import Filters, IndexNotBuilt, InvalidQuery, NotFound, ShopperToken, StoreUnavailable, Unauthorized
from web.auth import (admin_login, client_ip, csrf_token, is_admin_session, login_blocked, session_shopper)
from web.engine_ext import get_admin, get_config, get_engine, get_limiter
from web.params import get_float, get_int

bp = Blueprint("pages", __name__)  # templates and /static come from the app (web/templates, web/static)

log = logging.getLogger(__name__)

# Everything the pages load comes from this server (web/static): the browser refuses anything else.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
PAGE_SIZE = 10
STRIP_SIZE = 8
SHOPPER_CHOICES = 12


@bp.after_request
def _headers(resp: Response) -> Response:
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    return resp


@bp.app_context_processor
def _globals() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "shopper": session_shopper(), "debug": request.args.get("debug") == "1",
            "demo_menu": get_config().demo_shopper_menu}


@bp.before_app_request
def _take_shopper_token() -> Redirect | tuple[str, int] | None:
    """``?shopper_token=`` on a page (from the shop's backend) makes the session that shopper's, then
    redirects to the same page without it, so that the token stays out of history and logs."""
    token = request.args.get("shopper_token")
    if token is None or request.method != "GET" or request.blueprint != "pages":
        return None
    secret = get_config().shopper_secret
    try:
        if not secret:
            raise Unauthorized("shopper tokens are off on this server (no shopper_secret)")
        session["shopper"] = ShopperToken.verify(secret, token).user_id
    except Unauthorized as e:
        return render_template("error.html", status=401, message=str(e), shoppers=[]), 401
    rest = [(k, v) for k, v in request.args.items(multi=True) if k != "shopper_token"]
    return redirect(request.path + ("?" + urlencode(rest) if rest else ""), 303)


def _shoppers() -> list[dict[str, Any]]:
    """Real shoppers with the longest histories, for the demo's picker (``demo_shopper_menu``)."""
    if not get_config().demo_shopper_menu:
        return []
    try:
        return [s.to_dict() for s in get_engine().sample_shoppers(limit=SHOPPER_CHOICES)]
    except StoreUnavailable as e:
        log.warning("no shoppers for the picker: %s", e)
        return []


def _for_you(shopper: str | None) -> tuple[list[dict[str, Any]], str | None]:
    if not shopper:
        return [], None
    return _recommendations(shopper)


def _recommendations(shopper: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """The shopper's (or, for None, trending) recommendations and the list's request_id; none while the
    event store is unavailable, so that the page still renders its search results."""
    try:
        recs = get_engine().recommend(shopper, k=STRIP_SIZE, surface="for_you" if shopper else "trending",
                                      viewer=session_shopper())
        body = recs.to_dict()
        recommended: list[dict[str, Any]] = list(body["recommendations"])
        for ad in sorted(body.get("sponsored", []), key=lambda a: a["position"]):  # at their display positions
            recommended.insert(min(ad["position"] - 1, len(recommended)), ad)
        return recommended, recs.request_id
    except StoreUnavailable as e:
        log.warning("page without recommendations: %s", e)
        return [], None


def _page_url(args: dict[str, Any], **changes: Any) -> str:
    merged = {k: v for k, v in {**args, **changes}.items() if v not in (None, "", False)}
    return url_for("pages.search") + ("?" + urlencode(merged) if merged else "")


@bp.get("/")
def search() -> tuple[str, int]:
    a = request.args
    q = " ".join((a.get("q") or "").split())
    shopper = session_shopper()
    personal = a.get("personal") != "0"
    form = {"q": q, "category": a.get("category") or "", "min_price": a.get("min_price") or "",
            "max_price": a.get("max_price") or "", "personal": "" if personal else "0",
            "debug": "1" if a.get("debug") == "1" else ""}
    ctx: dict[str, Any] = {"form": form, "personal": personal, "result": None, "error": None,
                           "page": 1, "pages": 1, "page_url": lambda **c: _page_url(form, **c)}
    status = 200
    try:
        page = get_int(a, "page", 1)
        if page is None or page < 1:
            raise InvalidQuery("page", "must be >= 1")
        ctx["page"] = page
        if q:
            filters = Filters(category=form["category"] or None, min_price=get_float(a, "min_price"),
                              max_price=get_float(a, "max_price"))
            result = get_engine().search(q, k=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, filters=filters,
                                         user=shopper if personal else None).to_dict()
            ctx["result"] = result
            total = int(result.get("total_candidates") or 0)
            ctx["pages"] = max(page, math.ceil(total / PAGE_SIZE)) if total else page
        else:
            ctx["trending"], ctx["trending_request"] = _recommendations(None)
        ctx["for_you"], ctx["for_you_request"] = _for_you(shopper)
    except InvalidQuery as e:
        ctx["error"] = e
        status = 400
    except IndexNotBuilt as e:
        ctx["error"] = e
        status = 503
    ctx["shoppers"] = _shoppers()
    return render_template("search.html", **ctx), status


@bp.get("/items/<path:item_id>")
def item(item_id: str) -> tuple[str, int]:
    engine = get_engine()
    try:
        product = engine.item(item_id)
    except NotFound as e:
        return render_template("error.html", status=404, message=str(e), shoppers=_shoppers()), 404
    similar = engine.similar(item_id, k=STRIP_SIZE, viewer=session_shopper())
    for_you, for_you_request = _for_you(session_shopper())
    return render_template(
        "item.html", product=product.to_dict(), stats=_item_stats(item_id),
        similar=[h.to_dict() for h in similar.hits], similar_request=similar.request_id,
        similar_ads={s.position: s.to_dict() for s in similar.sponsored},
        also_bought=engine.also_bought(item_id, k=STRIP_SIZE),
        for_you=for_you, for_you_request=for_you_request, shoppers=_shoppers(),
    ), 200


def _item_stats(item_id: str) -> dict[str, Any] | None:
    try:
        return get_engine().item_stats(item_id)
    except StoreUnavailable as e:
        log.warning("item page without stats: %s", e)
        return None


def _check_form_csrf() -> None:
    given, expected = request.form.get("csrf", ""), session.get("csrf", "")
    if not expected or not secrets.compare_digest(given, str(expected)):
        abort(400, description="the form is stale: reload the page and try again (csrf)")


def _safe_next(default: str) -> str:
    """A same-site path to go back to (never another host)."""
    target = request.form.get("next") or default
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc and target.startswith("/") else default


@bp.post("/shopper")
def choose_shopper() -> Redirect | tuple[str, int]:
    """Browse as a fresh anonymous shopper ("new", an id the server makes), as nobody (""), or, with
    ``demo_shopper_menu`` on, as any shopper of the demo's menu."""
    _check_form_csrf()
    choice = (request.form.get("shopper") or "").strip()
    if choice == "new":
        session["shopper"] = "anon-" + secrets.token_hex(8)
    elif not choice:
        session.pop("shopper", None)
    elif not get_config().demo_shopper_menu:
        return render_template("error.html", status=403, shoppers=[],
                               message="Picking a shopper is a demo feature (demo_shopper_menu); a shop signs "
                                       "its shopper in with a shopper token."), 403
    elif len(choice) > 200:
        abort(400, description="shopper: at most 200 characters")
    else:
        session["shopper"] = choice
    return redirect(_safe_next(url_for("pages.search")), 303)


@bp.get("/ads")
def ads_page() -> tuple[str, int]:
    """The advertiser page: campaigns, spend against budget and clicks per hour, the daily report (its data
    comes from /v1/ads with the ads key the advertiser types in)."""
    disabled = not get_config().ads_key
    return render_template("ads.html", disabled=disabled), (403 if disabled else 200)


@bp.get("/admin")
def admin() -> tuple[str, int]:
    config = get_config()
    if not config.admin_key:
        return render_template("admin_login.html", disabled=True, failed=False), 403
    if not is_admin_session():
        return render_template("admin_login.html", disabled=False, failed=False), 200
    admin = get_admin()
    versions = admin.versions()
    info: dict[str, Any] | None = None
    if versions.current is not None:
        try:
            manifest = admin.manifest()
            info = {"version": versions.current, "items": manifest["counts"]["items"], "manifest": manifest}
        except IndexNotBuilt:
            info = None
    return render_template("admin.html", info=info, versions=list(reversed(versions.on_disk)),
                           current=versions.current, can_roll_back=len(versions.served) > 1,
                           rankers=get_engine().ranker_info()), 200


@bp.post("/admin/login")
def admin_login_form() -> Redirect | tuple[str, int]:
    _check_form_csrf()
    if not get_config().admin_key:
        return render_template("admin_login.html", disabled=True, failed=False), 403
    if login_blocked():
        return render_template("admin_login.html", disabled=False, failed=True, throttled=True), 429
    limiter, key = get_limiter(), f"login:{client_ip()}"
    if not admin_login(request.form.get("key", "")):
        limiter.failed(key)
        return render_template("admin_login.html", disabled=False, failed=True), 401
    limiter.succeeded(key)
    return redirect(url_for("pages.admin"), 303)


@bp.post("/admin/logout")
def admin_logout() -> Redirect:
    _check_form_csrf()
    session.pop("admin", None)
    return redirect(url_for("pages.admin"), 303)
