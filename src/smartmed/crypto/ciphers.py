"""The two cipher suites: AES-256-GCM with HMAC-SHA256, SM4-GCM with HMAC-SM3.

Both are AEADs with a 96-bit random nonce and a 128-bit tag (NIST SP 800-38D; SM4-GCM
as RFC 8998 uses it). The SM suite serves deployments that must use China's commercial
cryptography (GB/T 32907 SM4, GB/T 32905 SM3); it needs an OpenSSL built with SM4 and
SM3, which is checked once when the suite is chosen.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from functools import cache, lru_cache

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from smartmed.crypto.errors import CryptoConfigError, DecryptError

AES = "AES-256-GCM"
SM4 = "SM4-GCM"
ALGORITHMS = (AES, SM4)
NONCE = 12
TAG = 16


@dataclass(frozen=True, slots=True)
class Suite:
    """An AEAD and the MAC that goes with it (blind index)."""

    name: str
    key_bytes: int
    mac_name: str

    def encrypt(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """nonce || ciphertext || tag."""
        nonce = os.urandom(NONCE)
        if self.name == AES:
            return nonce + _aesgcm(key).encrypt(nonce, plaintext, aad)
        encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        body = encryptor.update(plaintext) + encryptor.finalize()
        return nonce + body + encryptor.tag

    def decrypt(self, key: bytes, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext; DecryptError when the tag does not verify."""
        if len(sealed) < NONCE + TAG:
            raise DecryptError("sealed value is too short")
        nonce, body = sealed[:NONCE], sealed[NONCE:]
        try:
            if self.name == AES:
                return _aesgcm(key).decrypt(nonce, body, aad)
            decryptor = Cipher(
                algorithms.SM4(key), modes.GCM(nonce, body[-TAG:], min_tag_length=TAG)
            ).decryptor()
            decryptor.authenticate_additional_data(aad)
            return decryptor.update(body[:-TAG]) + decryptor.finalize()
        except InvalidTag:
            raise DecryptError("authentication tag does not verify") from None

    def mac(self, key: bytes, data: bytes) -> bytes:
        """HMAC-SHA256 or HMAC-SM3 of ``data``."""
        if self.mac_name == "HMAC-SHA256":
            return hmac.digest(key, data, hashlib.sha256)
        h = chmac.HMAC(key, hashes.SM3())
        h.update(data)
        return h.finalize()


@lru_cache(maxsize=32)
def _aesgcm(key: bytes) -> AESGCM:
    """One cipher object per key (its construction costs as much as sealing a value)."""
    return AESGCM(key)


_SUITES = {
    AES: Suite(AES, 32, "HMAC-SHA256"),
    SM4: Suite(SM4, 16, "HMAC-SM3"),
}


def normalize_algorithm(name: str) -> str:
    """The canonical name of an algorithm setting (``aes-256-gcm``, ``sm4`` ...)."""
    text = name.strip().upper().replace("_", "-")
    if text in ("AES", "AES-GCM", AES):
        return AES
    if text in ("SM4", SM4):
        return SM4
    raise CryptoConfigError(f"unknown encryption algorithm {name!r}: use {AES} (default) or {SM4}")


@cache
def suite(name: str) -> Suite:
    """The suite for an algorithm name; CryptoConfigError when this OpenSSL lacks it."""
    found = _SUITES[normalize_algorithm(name)]
    if found.name == SM4:
        _check_sm_available()
    return found


def _check_sm_available() -> None:
    key, nonce = bytes(16), bytes(NONCE)
    try:
        encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
        encryptor.update(b"probe")
        encryptor.finalize()
        h = chmac.HMAC(key, hashes.SM3())
        h.update(b"probe")
        h.finalize()
    except (UnsupportedAlgorithm, ValueError, TypeError) as exc:
        raise CryptoConfigError(
            f"{SM4} is not available in this build of the cryptography library's OpenSSL "
            f"({exc}); use {AES} or an OpenSSL with SM3 and SM4"
        ) from None
