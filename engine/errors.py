"""Sentinel errors of the engine; the HTTP edge maps each to one status code once (web/errors.py)."""
from __future__ import annotations


class VitrineError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidQuery(VitrineError):
    """A caller-supplied parameter is out of range or malformed (HTTP 400).

    ``field`` names the parameter so that a client can fix it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(VitrineError):
    """An item, version or job does not exist (HTTP 404)."""


class IndexNotBuilt(VitrineError):
    """No index version is published yet; run `vitrine build` (HTTP 503)."""


class CatalogError(VitrineError):
    """A catalog file cannot be read at all (unknown format, missing columns, unreadable)."""


class BuildInProgress(VitrineError):
    """Another build holds the build lock (HTTP 409)."""


class ConfigError(VitrineError):
    """A configuration value is invalid; the message names the key."""


class StoreUnavailable(VitrineError):
    """The event store cannot write (read-only or immutable file or folder, full disk, I/O error) or
    cannot be opened at all (HTTP 503). Nothing of the failed call was stored; retry once it is fixed.

    ``str(e)`` and ``e.reason`` are the short reason, without paths: ``"event store is read-only"``,
    ``"disk full"``, ...
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unauthorized(VitrineError):
    """A credential (key, shopper token) is missing, wrong or expired for what was asked (HTTP 401)."""


class PrivacyBudgetExhausted(VitrineError):
    """A differentially private analytics request asks more epsilon than its key has left today (HTTP 429)."""

    def __init__(self, message: str, remaining: float) -> None:
        super().__init__(message)
        self.remaining = remaining


class WarmingUp(VitrineError):
    """What the answer needs is still being built in the background, for example the analytics copy of a
    large event store right after start-up (HTTP 503 with Retry-After). ``progress`` says how far it got."""

    def __init__(self, message: str, progress: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.progress = progress or {}
