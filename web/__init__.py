"""Flask app factory: parse and validate, call the engine, serialise. No ranking logic here."""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from flask import Flask
from werkzeug.wsgi import ClosingIterator

from engine import Admin, Engine, EngineConfig, open_limiter
from web.auth import load_secret_key


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. Engine settings come from ``EngineConfig.load()`` (defaults < file <
    ``VITRINE_*`` env) unless ``test_config["ENGINE_CONFIG"]`` gives an ``EngineConfig``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # Flask types app.json as the base JSONProvider
    app.config.from_mapping(MAX_CONTENT_LENGTH=16 * 1024 * 1024)
    if test_config:
        app.config.update(test_config)
    config = app.config.get("ENGINE_CONFIG") or EngineConfig.load()
    app.config["ENGINE_CONFIG"] = config
    app.secret_key = load_secret_key(config)
    app.config.update(SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_HTTPONLY=True)
    app.extensions["vitrine"] = app.config.get("ENGINE") or Engine(config, warm_suggestions=True,
                                                                       log_impressions=config.log_impressions)
    if config.analytics_warm and app.config.get("ENGINE") is None:
        app.extensions["vitrine"].analytics.warm()  # the analytics copy, in the background (engine.analytics)
    app.extensions["vitrine_admin"] = Admin(config)
    app.extensions["vitrine_limits"] = open_limiter(config.events_url, config.limits_path)
    if not app.debug and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from web import admin, ads, analytics, api, errors, pages, shoppers

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(shoppers.bp)
    app.register_blueprint(ads.bp)
    from web import qa

    app.register_blueprint(qa.bp)
    app.register_blueprint(analytics.bp)
    errors.register_error_handlers(app)
    app.wsgi_app = _counted(app.wsgi_app, app.extensions["vitrine"].in_flight)  # type: ignore[method-assign]
    return app


def _counted(wsgi_app: Any, in_flight: Any) -> Any:
    """``wsgi_app`` with each request counted in ``in_flight`` from its start until the server has written
    the last byte of its response (the WSGI iterable's ``close``), not only until the view returns: the
    impression writer computes its deferred features between requests, and a response still being sent is
    part of the request it should not compete with."""

    def counted(environ: Any, start_response: Any) -> Any:
        in_flight.enter()
        try:
            body = wsgi_app(environ, start_response)
        except BaseException:
            in_flight.exit()
            raise
        wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(wrapper, type) and isinstance(body, wrapper):  # a file the server sends by itself
            in_flight.exit()  # (sendfile): wrapping it would lose that; the view is done
            return body
        return ClosingIterator(body, [in_flight.exit])

    return counted
