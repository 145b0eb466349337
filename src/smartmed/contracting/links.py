"""Signed links for signing a family-doctor contract: business-card QR codes, invitations
and share links.

A link carries a token: ``base64url(JSON claims) "." base64url(HMAC-SHA256)`` with a key
derived from the platform secret (``SMARTMED_SECRET_KEY``) for this one purpose. The
claims hold the kind, the team and doctor, an expiry and a random nonce (128 bits), so a
token can neither be guessed nor altered nor used after it expires. Tokens are stateless;
single use (invitations) is enforced by the service, which stamps the nonce on the
application it creates (``Contract.identifier``) and refuses a second one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

import orjson

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Invalid
from smartmed.identity.crypto import derive, load_secret

KINDS = ("card", "invite", "share")
# How long each kind of link works: a printed card for a year, messages for a week.
TTL = {"card": timedelta(days=365), "invite": timedelta(days=7), "share": timedelta(days=7)}
MAX_TOKEN = 2048


class LinkError(Invalid):
    """A link that is malformed, forged or expired; ``reason`` is link-invalid/link-expired."""

    def __init__(self, reason: str, diagnostics: str) -> None:
        super().__init__(diagnostics, expression="token")
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(engine: FhirEngine) -> bytes:
    return derive(load_secret(engine.settings), "contracting-links")


def make_token(
    engine: FhirEngine, *, kind: str, claims: dict[str, str], now: datetime
) -> tuple[str, datetime]:
    """A signed token of ``kind`` with ``claims``; (token, expiry)."""
    if kind not in KINDS:
        raise ValueError(f"unknown link kind {kind!r}")
    expires = now + TTL[kind]
    payload = {**claims, "k": kind, "e": int(expires.timestamp()), "n": secrets.token_urlsafe(16)}
    body = _b64(orjson.dumps(payload))
    sig = _b64(hmac.new(_key(engine), body.encode(), hashlib.sha256).digest())
    return f"{body}.{sig}", expires


def open_token(engine: FhirEngine, token: str, *, now: datetime) -> dict[str, Any]:
    """The claims of a valid, unexpired token; :class:`LinkError` otherwise."""
    if not token or len(token) > MAX_TOKEN or token.count(".") != 1:
        raise LinkError("link-invalid", "this link is not valid")
    body, sig = token.split(".")
    expected = hmac.new(_key(engine), body.encode(), hashlib.sha256).digest()
    try:
        given = _unb64(sig)
        claims = orjson.loads(_unb64(body))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise LinkError("link-invalid", "this link is not valid") from None
    if not hmac.compare_digest(expected, given) or not isinstance(claims, dict):
        raise LinkError("link-invalid", "this link is not valid")
    if claims.get("k") not in KINDS or not isinstance(claims.get("e"), int):
        raise LinkError("link-invalid", "this link is not valid")
    if claims["e"] <= int(now.timestamp()):
        raise LinkError("link-expired", "this link has expired; ask for a new one")
    return claims
