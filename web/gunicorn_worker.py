"""gunicorn's gthread worker, answering the requests gunicorn refuses itself with the API's JSON errors.

gunicorn parses the request before the app sees it: a request line or headers over its limits, or a
malformed request, gets gunicorn's own HTML page from ``Worker.handle_error``. This worker lets gunicorn
decide, log and count the error as always, keeps the status it chose (414 for a request line over
``limit_request_line``, 431 for headers over their limits, 400 for other bad requests) and sends the body
as ``{"error": {"code", "message", "field"?}}`` with ``Content-Type: application/json`` instead.

engine/serving.py names this class by its dotted path, so the engine never imports the web layer.
"""
from __future__ import annotations

import json
import re
from typing import Any

from gunicorn import util
from gunicorn.http.errors import (
    InvalidHeader, InvalidHeaderName, InvalidHTTPVersion, InvalidRequestLine, InvalidRequestMethod,
    LimitRequestHeaders, LimitRequestLine,
)
from gunicorn.workers.gthread import ThreadWorker

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5]\d\d) ([^\r\n]*)\r\n")
_MAX_MESSAGE = 200
# Which part of the request an error is about, for the ``field`` of the body.
_FIELDS: tuple[tuple[type[Exception] | tuple[type[Exception], ...], str], ...] = (
    (LimitRequestLine, "url"),
    ((InvalidRequestLine, InvalidRequestMethod, InvalidHTTPVersion), "request_line"),
    ((LimitRequestHeaders, InvalidHeader, InvalidHeaderName), "headers"),
)


class _Recorder:
    """Stands in for the client socket while gunicorn writes its HTML error page, keeping the bytes."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float | None:
        return None

    def setblocking(self, flag: bool) -> None:
        """Nothing to switch: the bytes only go to memory."""

    def sendall(self, data: bytes) -> None:
        self.data += data

    def send(self, data: bytes) -> int:
        self.data += data
        return len(data)


def error_document(status: int, reason: str, exc: BaseException) -> dict[str, Any]:
    """The JSON error body for gunicorn's answer ``status reason`` to ``exc``."""
    body: dict[str, str] = {"code": reason.lower().replace(" ", "_") or "error"}
    if status >= 500:
        body["message"] = "internal error; see the server log"
    else:
        message = str(exc) or reason
        body["message"] = message if len(message) <= _MAX_MESSAGE else f"{message[:_MAX_MESSAGE]}..."
        field = next((name for kinds, name in _FIELDS if isinstance(exc, kinds)), None)
        if field:
            body["field"] = field
    return {"error": body}


class JSONErrorWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """A gthread worker whose own error answers (bad request line, headers over the limits, ...) are JSON."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn picks the status and logs; the client gets that status with a JSON body."""
        recorder = _Recorder()
        super().handle_error(req, recorder, addr, exc)
        match = _STATUS_LINE.match(recorder.data)
        status, reason = (int(match[1]), match[2].decode("latin-1")) if match else (500, "Internal Server Error")
        payload = json.dumps(error_document(status, reason, exc)).encode("ascii")
        head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n")
        try:
            util.write_nonblock(client, head.encode("latin-1") + payload)
        except Exception:  # the client may be gone; gunicorn does the same
            self.log.debug("Failed to send error message.")
