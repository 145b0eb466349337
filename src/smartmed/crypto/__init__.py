"""Encryption at rest of sensitive identifiers (resident ID numbers, phone numbers).

Envelope encryption with AES-256-GCM (or SM4-GCM) data keys wrapped by a key-encryption
key from the configuration, a blind index (HMAC) so that exact searches still work, key
rotation, and masking for logs and views. The engine stays generic: it calls the
``Protector`` seam of ``smartmed.fhir.storage.protect``; the policy lives here.
See docs/encryption.md.
"""

from __future__ import annotations

from smartmed.config import Settings
from smartmed.crypto.ciphers import AES, SM4, suite
from smartmed.crypto.errors import CryptoConfigError, CryptoError, DecryptError, KeyUnavailable
from smartmed.crypto.keys import kek_from_settings
from smartmed.crypto.masking import mask_id, mask_phone, mask_processor, mask_text
from smartmed.crypto.policy import RESIDENT_ID_SYSTEM, Policy
from smartmed.crypto.protector import CryptoProtector
from smartmed.fhir.storage.database import Database


def policy_from_settings(settings: Settings) -> Policy:
    """The protection policy the settings describe."""
    return Policy(
        systems=frozenset(settings.encryption_identifier_systems),
        phone_types=frozenset(settings.encryption_phone_resource_types),
        detect_id_numbers=settings.encryption_detect_id_numbers,
    )


def build_protector(settings: Settings, db: Database) -> CryptoProtector:
    """The protector for ``db``, its keys loaded now when the store already has them.

    Raises CryptoConfigError (a start-up error) for an unknown algorithm, SM4 without
    OpenSSL support, a short key, or keys wrapped by another key-encryption key.
    """
    protector = CryptoProtector(
        kek=kek_from_settings(settings),
        algorithm=suite(settings.encryption_algorithm),
        policy=policy_from_settings(settings),
        url=db.url.render_as_string(hide_password=False),
        enabled=settings.encryption_enabled,
        refresh_seconds=settings.encryption_refresh_seconds,
    )
    protector.reload_blocking(create=settings.encryption_enabled)
    return protector


__all__ = [
    "AES",
    "RESIDENT_ID_SYSTEM",
    "SM4",
    "CryptoConfigError",
    "CryptoError",
    "CryptoProtector",
    "DecryptError",
    "KeyUnavailable",
    "Policy",
    "build_protector",
    "mask_id",
    "mask_phone",
    "mask_processor",
    "mask_text",
    "policy_from_settings",
]
