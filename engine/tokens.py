"""Signed shopper tokens: how a shop's backend tells Vitrine which shopper a browser acts for.

A token is ``v1.<user id, base64url>.<expiry, unix seconds>.<HMAC-SHA256, base64url>``, signed with the
shop's ``shopper_secret``. The shop mints one when its shopper logs in (:meth:`ShopperToken.sign`, or
``vitrine shopper-token USER``) and hands it to the page; the page sends it (``X-Shopper-Token``), and
Vitrine lets it act for that shopper only, until it expires. Nothing is stored server-side.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass

from engine.errors import Unauthorized

PREFIX = "v1"
MAX_TOKEN_CHARS = 1024
MAX_TTL_S = 30 * 86400


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, body: str) -> str:
    return _b64(hmac.new(secret.encode(), b"vitrine-shopper:" + body.encode(), hashlib.sha256).digest())


@dataclass(frozen=True)
class ShopperToken:
    user_id: str
    expires_at: int

    @staticmethod
    def sign(secret: str, user_id: str, *, ttl_s: int = 3600, now: float | None = None) -> str:
        """A token for ``user_id`` valid ``ttl_s`` seconds (at most 30 days)."""
        if not 1 <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl_s must be in 1..{MAX_TTL_S}, got {ttl_s}")
        expires = int(time.time() if now is None else now) + ttl_s
        body = f"{PREFIX}.{_b64(user_id.encode())}.{expires}"
        return f"{body}.{_mac(secret, body)}"

    @staticmethod
    def verify(secret: str, token: str, *, now: float | None = None) -> ShopperToken:
        """The shopper and expiry of a valid token; ``Unauthorized`` for a forged, malformed or expired one."""
        bad = Unauthorized("the shopper token is not valid: ask the shop for a new one")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise bad
        parts = token.strip().split(".")
        if len(parts) != 4 or parts[0] != PREFIX:
            raise bad
        body = ".".join(parts[:3])
        if not hmac.compare_digest(_mac(secret, body).encode(), parts[3].encode("ascii", "replace")):
            raise bad
        try:
            user_id = _unb64(parts[1]).decode("utf-8")
            expires = int(parts[2])
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise bad from None
        if expires < (time.time() if now is None else now):
            raise Unauthorized("the shopper token has expired: ask the shop for a new one")
        return ShopperToken(user_id, expires)
