"""The cipher suites: round trips, a published SM4-GCM vector, tampering, availability."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from smartmed.crypto import ciphers
from smartmed.crypto.ciphers import AES, SM4, normalize_algorithm, suite
from smartmed.crypto.errors import CryptoConfigError, DecryptError


@given(plaintext=st.binary(max_size=200), aad=st.binary(max_size=40))
@pytest.mark.parametrize("name", [AES, SM4])
def test_round_trip(name: str, plaintext: bytes, aad: bytes) -> None:
    s = suite(name)
    key = os.urandom(s.key_bytes)
    sealed = s.encrypt(key, plaintext, aad)
    assert len(sealed) == 12 + len(plaintext) + 16
    assert s.decrypt(key, sealed, aad) == plaintext


@pytest.mark.parametrize("name", [AES, SM4])
def test_tampering_and_wrong_context_are_refused(name: str) -> None:
    s = suite(name)
    key = os.urandom(s.key_bytes)
    sealed = s.encrypt(key, b"110105194912310021", b"enc:v1:k1")
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(DecryptError):
        s.decrypt(key, flipped, b"enc:v1:k1")
    with pytest.raises(DecryptError):
        s.decrypt(key, sealed, b"enc:v1:k2")  # moved under another key id
    with pytest.raises(DecryptError):
        s.decrypt(os.urandom(s.key_bytes), sealed, b"enc:v1:k1")
    with pytest.raises(DecryptError, match="too short"):
        s.decrypt(key, sealed[:20], b"enc:v1:k1")


def test_sm4_gcm_matches_rfc_8998_vector() -> None:
    # RFC 8998 appendix A.1 (SM4-GCM test vector)
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    nonce = bytes.fromhex("00001234567800000000ABCD")
    aad = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
    plaintext = bytes.fromhex(
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
        "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
    )
    expected = bytes.fromhex(
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
        "83DE3541E4C2B58177E065A9BF7B62EC"
    )
    assert suite(SM4).decrypt(key, nonce + expected, aad) == plaintext


def test_mac_algorithms() -> None:
    # RFC 4231 test case 2 (HMAC-SHA256)
    digest = suite(AES).mac(b"Jefe", b"what do ya want for nothing?")
    assert digest.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    key = b"k" * 32
    assert len(suite(AES).mac(key, b"x")) == 32
    assert len(suite(SM4).mac(key, b"x")) == 32
    assert suite(AES).mac(key, b"x") != suite(SM4).mac(key, b"x")


@pytest.mark.parametrize(
    ("given_name", "expected"),
    [("aes-256-gcm", AES), ("AES", AES), ("sm4-gcm", SM4), ("SM4", SM4), (" sm4_gcm ", SM4)],
)
def test_algorithm_names(given_name: str, expected: str) -> None:
    assert normalize_algorithm(given_name) == expected


@pytest.mark.parametrize("bad", ["", "DES", "AES-128-GCM", "SM4-CBC"])
def test_unknown_algorithm_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(CryptoConfigError, match="unknown encryption algorithm"):
        normalize_algorithm(bad)


def test_missing_sm4_support_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*_args: object, **_kwargs: object) -> Cipher[modes.GCM]:
        raise UnsupportedAlgorithm("sm4 not in this OpenSSL")

    monkeypatch.setattr(ciphers, "Cipher", unsupported)
    with pytest.raises(CryptoConfigError, match="SM4-GCM is not available"):
        ciphers._check_sm_available()
    assert algorithms.SM4  # the real library still has it
