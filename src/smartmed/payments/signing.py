"""Signed messages between us and the payment provider (both directions).

As with real providers (e.g. WeChat Pay API v3, Alipay), every message carries a
timestamp, a random nonce and an HMAC-SHA256 signature over
``timestamp \\n nonce \\n method \\n path \\n raw body`` with the shared secret (method and
path empty for callbacks). The receiver recomputes it over the *raw* bytes it received
(never a re-serialised JSON), compares in constant time, and refuses timestamps more
than :data:`TOLERANCE_SECONDS` away from its clock (replays of old captures).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

from smartmed.payments.errors import BadCallback

TIMESTAMP = "x-pay-timestamp"
NONCE = "x-pay-nonce"
SIGNATURE = "x-pay-signature"
MERCHANT = "x-pay-merchant"
TOLERANCE_SECONDS = 300


def signature(
    secret: bytes, timestamp: str, nonce: str, body: bytes, *, method: str = "", path: str = ""
) -> str:
    """The hex HMAC-SHA256 of one message."""
    message = b"\n".join(
        [timestamp.encode(), nonce.encode(), method.upper().encode(), path.encode(), body]
    )
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign_headers(
    secret: bytes,
    merchant_id: str,
    body: bytes,
    *,
    method: str = "",
    path: str = "",
    now: float | None = None,
) -> dict[str, str]:
    """The headers that make ``body`` a signed message."""
    timestamp = str(int(now if now is not None else time.time()))
    nonce = secrets.token_hex(16)
    return {
        MERCHANT: merchant_id,
        TIMESTAMP: timestamp,
        NONCE: nonce,
        SIGNATURE: signature(secret, timestamp, nonce, body, method=method, path=path),
    }


def verify(
    secret: bytes,
    merchant_id: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    method: str = "",
    path: str = "",
    now: float | None = None,
) -> str:
    """Check a signed message; its nonce. BadCallback("bad-signature", why) otherwise."""
    timestamp = headers.get(TIMESTAMP, "")
    nonce = headers.get(NONCE, "")
    given = headers.get(SIGNATURE, "")
    if not (timestamp and nonce and given):
        raise BadCallback("bad-signature", "timestamp, nonce or signature header missing")
    if not timestamp.isdigit() or not 8 <= len(nonce) <= 64 or not nonce.isalnum():
        raise BadCallback("bad-signature", "timestamp or nonce malformed")
    if headers.get(MERCHANT, "") != merchant_id:
        raise BadCallback("bad-signature", "message for another merchant")
    clock = now if now is not None else time.time()
    if abs(clock - int(timestamp)) > TOLERANCE_SECONDS:
        raise BadCallback("bad-signature", "timestamp outside the accepted window")
    expected = signature(secret, timestamp, nonce, body, method=method, path=path)
    if not hmac.compare_digest(expected, given):
        raise BadCallback("bad-signature", "signature does not match")
    return nonce
