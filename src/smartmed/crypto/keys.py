"""The key-encryption key (KEK), and data keys wrapped by it in the ``crypto_key`` table.

Envelope encryption: values are sealed with *data keys* (random, per deployment); data
keys are stored only wrapped (sealed) by a key derived from the *KEK*, which never
touches the database. The KEK comes from ``SMARTMED_ENCRYPTION_KEY`` (at least 32
characters; ``smartmed keys generate`` prints one), else it is derived from
``SMARTMED_SECRET_KEY`` (else the development secret file, as the identity module uses).
Each wrapped key records the fingerprint of the KEK that wrapped it, so a changed or
missing KEK is named at start-up instead of surfacing later as undecryptable values.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import insert, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.config import Settings
from smartmed.crypto.ciphers import SM4, Suite, suite
from smartmed.crypto.errors import CryptoConfigError, DecryptError
from smartmed.crypto.tables import crypto_key

MIN_KEK_CHARS = 32
DATA = "data"
BLIND = "blind"
ACTIVE = "active"
RETIRED = "retired"
_PREFIX = {DATA: "k", BLIND: "b"}
BLIND_KEY_BYTES = 32


def b64encode(raw: bytes) -> str:
    """URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64decode(text: str) -> bytes:
    """Inverse of ``b64encode``."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hkdf(secret: bytes, info: str, length: int = 32, *, sm: bool = False) -> bytes:
    algorithm: hashes.HashAlgorithm = hashes.SM3() if sm else hashes.SHA256()
    return HKDF(algorithm=algorithm, length=length, salt=None, info=info.encode()).derive(secret)


def kek_from_settings(settings: Settings) -> bytes:
    """The 32-byte KEK from the configuration (see the module docstring)."""
    configured = settings.encryption_key
    if configured is not None:
        text = configured.get_secret_value()
        if len(text) < MIN_KEK_CHARS:
            raise CryptoConfigError(
                f"SMARTMED_ENCRYPTION_KEY has {len(text)} characters; at least "
                f"{MIN_KEK_CHARS} are needed (`smartmed keys generate` prints a random one)"
            )
        return _hkdf(text.encode(), "smartmed kek v1")
    from smartmed.identity.crypto import load_secret

    return _hkdf(load_secret(settings), "smartmed kek from secret key v1")


def kek_id(kek: bytes) -> str:
    """A fingerprint naming a KEK (not enough to recover it)."""
    return hmac.digest(kek, b"smartmed kek id", hashlib.sha256)[:8].hex()


@dataclass(frozen=True, slots=True)
class Key:
    """One unwrapped key."""

    kid: str
    purpose: str
    suite: Suite
    secret: bytes
    state: str
    created_at: datetime

    @property
    def number(self) -> int:
        """The sequence number in the kid (``k3`` -> 3)."""
        return int(self.kid[1:])


def _wrapping_key(kek: bytes, algorithm: Suite) -> bytes:
    sm = algorithm.name == SM4
    return _hkdf(kek, f"smartmed wrap {algorithm.name}", algorithm.key_bytes, sm=sm)


def _aad(kid: str, purpose: str, algorithm: str) -> bytes:
    return f"smartmed key|{kid}|{purpose}|{algorithm}".encode()


def wrap(kek: bytes, kid: str, purpose: str, algorithm: Suite, secret: bytes) -> str:
    """``secret`` sealed under the KEK, bound to its kid, purpose and algorithm."""
    sealed = algorithm.encrypt(
        _wrapping_key(kek, algorithm), secret, _aad(kid, purpose, algorithm.name)
    )
    return b64encode(sealed)


def unwrap(kek: bytes, row: Any) -> Key:
    """The key of a ``crypto_key`` row; CryptoConfigError when the KEK does not open it."""
    algorithm = suite(row.algorithm)
    if row.kek_id != kek_id(kek):
        raise CryptoConfigError(
            f"encryption key {row.kid} was wrapped by key-encryption key {row.kek_id}, but the "
            f"configured one is {kek_id(kek)}: set SMARTMED_ENCRYPTION_KEY (or, if it was "
            "never set, SMARTMED_SECRET_KEY) to the value this database was set up with"
        )
    try:
        secret = algorithm.decrypt(
            _wrapping_key(kek, algorithm),
            b64decode(row.wrapped),
            _aad(row.kid, row.purpose, algorithm.name),
        )
    except (DecryptError, ValueError):
        raise CryptoConfigError(
            f"encryption key {row.kid} does not unwrap with the configured key-encryption "
            "key: the key table was altered or the key is wrong"
        ) from None
    return Key(row.kid, row.purpose, algorithm, secret, row.state, row.created_at)


async def table_exists(conn: AsyncConnection) -> bool:
    """Whether the key table has been created (migration 0015)."""
    found: bool = await conn.run_sync(lambda sync: inspect(sync).has_table(crypto_key.name))
    return found


async def load_keys(conn: AsyncConnection, kek: bytes) -> dict[str, Key]:
    """Every key of the table, unwrapped."""
    rows = (await conn.execute(select(crypto_key))).all()
    return {row.kid: unwrap(kek, row) for row in rows}


async def add_key(
    conn: AsyncConnection,
    kek: bytes,
    *,
    purpose: str,
    algorithm: Suite,
    existing: dict[str, Key],
    now: datetime,
) -> Key:
    """A new active key with the next kid of its purpose (IntegrityError on a race)."""
    prefix = _PREFIX[purpose]
    number = 1 + max((k.number for k in existing.values() if k.purpose == purpose), default=0)
    kid = f"{prefix}{number}"
    size = BLIND_KEY_BYTES if purpose == BLIND else algorithm.key_bytes
    secret = os.urandom(size)
    await conn.execute(
        insert(crypto_key).values(
            kid=kid,
            purpose=purpose,
            algorithm=algorithm.name,
            wrapped=wrap(kek, kid, purpose, algorithm, secret),
            kek_id=kek_id(kek),
            state=ACTIVE,
            created_at=now,
        )
    )
    return Key(kid, purpose, algorithm, secret, ACTIVE, now)


async def retire_others(conn: AsyncConnection, keep: str) -> None:
    """Mark every data key but ``keep`` retired (they still decrypt)."""
    await conn.execute(
        update(crypto_key)
        .where(crypto_key.c.purpose == DATA, crypto_key.c.kid != keep)
        .values(state=RETIRED)
    )


async def rewrap_all(conn: AsyncConnection, old_kek: bytes, new_kek: bytes) -> int:
    """Re-wrap every key under ``new_kek``; how many."""
    keys = await load_keys(conn, old_kek)
    for key in keys.values():
        await conn.execute(
            update(crypto_key)
            .where(crypto_key.c.kid == key.kid)
            .values(
                wrapped=wrap(new_kek, key.kid, key.purpose, key.suite, key.secret),
                kek_id=kek_id(new_kek),
            )
        )
    return len(keys)
