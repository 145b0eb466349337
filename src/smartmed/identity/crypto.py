"""The platform secret, encryption at rest of small secrets, and token hashing.

``SMARTMED_SECRET_KEY`` encrypts signing keys and TOTP secrets (AES-256-GCM, key derived
with SHA-256 per purpose) and signs CSRF tokens. Unset, a development key is generated
once into ``./var/secret.key`` (with a warning): production sets the variable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from smartmed.config import Settings

log = structlog.get_logger("smartmed.identity")

DEV_KEY_FILE = Path("var") / "secret.key"


def load_secret(settings: Settings) -> bytes:
    """The secret key from the settings, else the development key file (made if missing)."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    if DEV_KEY_FILE.exists():
        return DEV_KEY_FILE.read_text().strip().encode()
    DEV_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(DEV_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    log.warning(
        "SMARTMED_SECRET_KEY is not set: generated a development key file; "
        "set the variable in production",
        path=str(DEV_KEY_FILE),
    )
    return value.encode()


def derive(secret: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose."""
    return hashlib.sha256(purpose.encode() + b"\x00" + secret).digest()


class Box:
    """Authenticated encryption of short strings with a key from the secret."""

    def __init__(self, secret: bytes, purpose: str = "at-rest") -> None:
        self._aead = AESGCM(derive(secret, purpose))

    def seal(self, plaintext: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), None)
        return base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, token: str) -> str:
        raw = base64.urlsafe_b64decode(token.encode())
        return self._aead.decrypt(raw[:12], raw[12:], None).decode()


def token_hash(value: str) -> str:
    """How high-entropy tokens (codes, refresh tokens, sessions, client secrets) are stored."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def sign(secret: bytes, value: str) -> str:
    mac = hmac.new(derive(secret, "csrf"), value.encode(), hashlib.sha256).hexdigest()
    return f"{value}.{mac}"


def verify_signed(secret: bytes, signed: str) -> str | None:
    value, _, mac = signed.rpartition(".")
    if value and hmac.compare_digest(sign(secret, value), signed):
        return value
    return None
