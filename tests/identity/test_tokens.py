"""Access-token validation on the FHIR API: every bad token is a 401/403 OperationOutcome."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from smartmed.identity.service import Identity
from tests.identity.conftest import BASE, FHIR, http, system_token


async def _claims(identity: Identity, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": BASE,
        "aud": FHIR,
        "sub": "client-x",
        "client_id": "client-x",
        "scope": "system/Patient.rs",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": f"jti-{now}-{time.perf_counter_ns()}",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


async def _get(app: FastAPI, token: str, path: str = "/fhir/R4/Patient") -> Any:
    async with http(app, headers={"Authorization": f"Bearer {token}"}) as c:
        return await c.get(path)


def _assert_401(response: Any, words: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert words in body["issue"][0]["diagnostics"]


async def test_a_good_token_reads(auth_app: FastAPI, identity: Identity) -> None:
    token = await identity.tokens.sign(await _claims(identity))
    assert (await _get(auth_app, token)).status_code == 200


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 4000}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not yet valid"),
        ({"aud": "https://elsewhere.example.org/fhir"}, "aud"),
        ({"iss": "https://evil.example.org"}, "iss"),
    ],
    ids=["expired", "not-yet-valid", "wrong-audience", "wrong-issuer"],
)
async def test_bad_claims_are_401(
    auth_app: FastAPI, identity: Identity, changes: dict[str, Any], words: str
) -> None:
    token = await identity.tokens.sign(await _claims(identity, **changes))
    _assert_401(await _get(auth_app, token), words)


async def test_tampered_signature_is_401(auth_app: FastAPI, identity: Identity) -> None:
    token = await identity.tokens.sign(await _claims(identity))
    header, payload, signature = token.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "system/*.cruds"
    forged = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    _assert_401(await _get(auth_app, f"{header}.{forged}.{signature}"), "not valid")


async def test_foreign_key_is_401(auth_app: FastAPI, identity: Identity) -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "intruder"})
    token = jwt.encode({"alg": "ES256", "kid": "intruder"}, await _claims(identity), key)
    _assert_401(await _get(auth_app, token), "not valid")


async def test_alg_none_is_401(auth_app: FastAPI, identity: Identity) -> None:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()

    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(await _claims(identity))}."
    _assert_401(await _get(auth_app, token), "none")


async def test_revoked_token_is_401(auth_app: FastAPI, identity: Identity) -> None:
    claims = await _claims(identity)
    token = await identity.tokens.sign(claims)
    await identity.tokens.revoke(claims)
    _assert_401(await _get(auth_app, token), "revoked")


async def test_scope_escalation_is_403(auth_app: FastAPI, identity: Identity) -> None:
    token = await identity.tokens.sign(await _claims(identity, scope="system/Patient.rs"))
    async with http(auth_app, headers={"Authorization": f"Bearer {token}"}) as c:
        write = await c.post(
            "/fhir/R4/Patient",
            json={"resourceType": "Patient"},
            headers={"Content-Type": "application/fhir+json"},
        )
        other = await c.get("/fhir/R4/Observation")
        history = await c.get("/fhir/R4/_history")
    for response in (write, other, history):
        assert response.status_code == 403, response.text
        assert response.json()["issue"][0]["code"] == "forbidden"


async def test_client_cannot_ask_beyond_its_registration(
    auth_app: FastAPI, identity: Identity
) -> None:
    client_id, secret = await identity.clients.create("reader", "system/Patient.rs")
    async with http(auth_app) as c:
        r = await c.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "scope": "system/*.cruds"},
            auth=(client_id, secret or ""),
        )
        wrong_secret = await c.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, "nope")
        )
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"


async def test_auth_required_guards_the_api_but_not_metadata(auth_app: FastAPI) -> None:
    async with http(auth_app) as c:
        r = await c.get("/fhir/R4/Patient")
        assert r.status_code == 401
        assert r.json()["resourceType"] == "OperationOutcome"
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert (await c.get("/fhir/R4/metadata")).status_code == 200
        assert (await c.get("/fhir/R4/.well-known/smart-configuration")).status_code == 200
        basic = await c.get("/fhir/R4/Patient", headers={"Authorization": "Basic eDp5"})
        assert basic.status_code == 401


async def test_key_rotation_keeps_old_tokens_valid(auth_app: FastAPI, identity: Identity) -> None:
    old = await system_token(auth_app, "system/Patient.rs")
    old_kid = orjson.loads(base64.urlsafe_b64decode(old.split(".")[0] + "=="))["kid"]
    new_kid = await identity.keys.rotate()
    async with http(auth_app) as c:
        kids = {k["kid"] for k in (await c.get("/oauth/jwks")).json()["keys"]}
    assert {old_kid, new_kid} <= kids
    assert (await _get(auth_app, old)).status_code == 200
    fresh = await system_token(auth_app, "system/Patient.rs")
    assert orjson.loads(base64.urlsafe_b64decode(fresh.split(".")[0] + "=="))["kid"] == new_kid
    assert all("d" not in k for k in (await identity.keys.jwks())["keys"])  # no private parts


async def test_a_remembered_token_expires_and_keeps_its_audience(
    auth_app: FastAPI, identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token validated once is refused once it expires (the cache keeps no token alive),
    and passing for one audience does not make it pass for another."""
    now = int(time.time())
    claims = await _claims(identity, exp=now + 60)
    token = await identity.tokens.sign(claims)
    assert (await _get(auth_app, token)).status_code == 200
    assert (await _get(auth_app, token)).status_code == 200  # served from the cache
    checks = identity.tokens
    with pytest.raises(Exception, match="aud"):
        await checks.validate(token, issuer=BASE, audience="https://elsewhere.example.org/fhir")
    import smartmed.identity.tokens as tokens_module

    monkeypatch.setattr(tokens_module.time, "time", lambda: now + 60 + tokens_module.LEEWAY + 5)
    _assert_401(await _get(auth_app, token), "expired")


async def test_a_remembered_token_is_still_checked_on_every_request(
    auth_app: FastAPI, identity: Identity
) -> None:
    """The verified-signature cache never outlives revocation or the signing key."""
    claims = await _claims(identity)
    token = await identity.tokens.sign(claims)
    assert (await _get(auth_app, token)).status_code == 200
    assert (await _get(auth_app, token)).status_code == 200  # served from the cache
    await identity.tokens.revoke(claims)
    _assert_401(await _get(auth_app, token), "revoked")

    other = await _claims(identity)
    token = await identity.tokens.sign(other)
    assert (await _get(auth_app, token)).status_code == 200
    identity.keys._jwks = []  # the key withdrawn from the JWKS (e.g. compromised)
    identity.keys._public = KeySet([])
    identity.keys._load = _no_reload  # type: ignore[method-assign]
    _assert_401(await _get(auth_app, token), "not valid")


async def _no_reload() -> None:
    return None
