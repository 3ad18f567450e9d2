"""Engine errors and HTTP errors -> JSON bodies ``{"error": {"code", "message", "field"?}}``, mapped once."""
from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from engine import BuildInProgress, IndexNotBuilt, InvalidQuery, NotFound, StoreUnavailable, Unauthorized

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, field: str | None = None) -> tuple[Response, int]:
    body: dict[str, str] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return jsonify(error=body), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(InvalidQuery)
    def _invalid(e: InvalidQuery) -> tuple[Response, int]:
        return error_response(400, "invalid_parameter", str(e), e.field)

    @app.errorhandler(NotFound)
    def _not_found(e: NotFound) -> tuple[Response, int]:
        return error_response(404, "not_found", str(e))

    @app.errorhandler(IndexNotBuilt)
    def _not_built(e: IndexNotBuilt) -> tuple[Response, int]:
        return error_response(503, "index_not_built", str(e))

    @app.errorhandler(BuildInProgress)
    def _busy(e: BuildInProgress) -> tuple[Response, int]:
        return error_response(409, "build_in_progress", str(e))

    @app.errorhandler(StoreUnavailable)
    def _store_unavailable(e: StoreUnavailable) -> tuple[Response, int]:
        """The event store cannot write (or be opened): nothing was stored, the client may retry."""
        resp, status = error_response(503, "store_unavailable", f"event store unavailable: {e}; retry later")
        resp.headers["Retry-After"] = "5"
        return resp, status

    @app.errorhandler(Unauthorized)
    def _unauthorized(e: Unauthorized) -> tuple[Response, int]:
        return error_response(401, "unauthorized", str(e))

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException) -> tuple[Response, int]:
        """Werkzeug's error as JSON, keeping its headers (``Allow`` on a 405, ``Retry-After``, ...)."""
        code = (e.name or "error").lower().replace(" ", "_")
        resp, status = error_response(e.code or 500, code, e.description or e.name)
        for key, value in e.get_headers():
            if key.lower() != "content-type":
                resp.headers.add(key, value)
        return resp, status

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the server log")
