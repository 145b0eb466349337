"""End to end: authlib's OAuth client through login + TOTP, PKCE, tokens on the FHIR API."""

from __future__ import annotations

import warnings
from urllib.parse import parse_qs, urlsplit

import httpx
from authlib.common.security import generate_token
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import KeySet

from smartmed.identity.service import Identity
from tests.identity.conftest import (
    BASE,
    FHIR,
    PASSWORD,
    REDIRECT,
    browser_login,
    http,
    staff_account,
    system_token,
)

with warnings.catch_warnings():
    # authlib 1.7+ announces a move to the httpx2 package; httpx is what we have.
    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import AsyncOAuth2Client

SCOPE = "openid fhirUser offline_access launch/patient patient/Patient.rs user/Patient.rs"


async def _public_client(identity: Identity, scope: str = SCOPE) -> str:
    client_id, _ = await identity.clients.create(
        "viewer", scope, redirect_uris=[REDIRECT], confidential=False
    )
    return client_id


def _oauth(app: FastAPI, client_id: str, scope: str = SCOPE) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=client_id,
        scope=scope,
        redirect_uri=REDIRECT,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
        transport=httpx.ASGITransport(app=app),
        base_url=BASE,
    )


async def _code_flow(
    app: FastAPI, identity: Identity, scope: str = SCOPE
) -> tuple[AsyncOAuth2Client, dict[str, object]]:
    client_id = await _public_client(identity)
    username, totp_secret = await staff_account(identity)
    oauth = _oauth(app, client_id, scope)
    verifier = generate_token(48)
    url, _state = oauth.create_authorization_url(
        f"{BASE}/oauth/authorize", code_verifier=verifier, aud=FHIR
    )
    async with http(app) as browser:
        final = await browser_login(browser, url, username, PASSWORD, totp_secret)
    assert final.status_code == 302, final.text
    location = final.headers["location"]
    assert location.startswith(REDIRECT)
    token = await oauth.fetch_token(
        f"{BASE}/oauth/token", authorization_response=location, code_verifier=verifier
    )
    return oauth, dict(token)


async def test_code_flow_with_pkce_totp_and_scopes(auth_app: FastAPI, identity: Identity) -> None:
    seed = await system_token(auth_app)
    async with http(auth_app, headers={"Authorization": f"Bearer {seed}"}) as c:
        created = await c.post(
            "/fhir/R4/Patient",
            json={"resourceType": "Patient", "name": [{"family": "Synthetic"}]},
            headers={"Content-Type": "application/fhir+json"},
        )
        assert created.status_code == 201, created.text
        patient_id = created.json()["id"]
        # The doctor's team holds a family-doctor contract with the patient (access policy).
        await c.put(
            "/fhir/R4/Practitioner/p1",
            json={"resourceType": "Practitioner", "id": "p1"},
            headers={"Content-Type": "application/fhir+json"},
        )
        team = await c.post(
            "/fhir/R4/CareTeam",
            json={
                "resourceType": "CareTeam",
                "participant": [{"member": {"reference": "Practitioner/p1"}}],
            },
            headers={"Content-Type": "application/fhir+json"},
        )
        contract = await c.post(
            "/fhir/R4/Contract",
            json={
                "resourceType": "Contract",
                "status": "executed",
                "subject": [{"reference": f"Patient/{patient_id}"}],
                "extension": [
                    {
                        "url": "urn:smartmed:extension:contract-care-team",
                        "valueReference": {"reference": f"CareTeam/{team.json()['id']}"},
                    }
                ],
            },
            headers={"Content-Type": "application/fhir+json"},
        )
        assert contract.status_code == 201, contract.text

    oauth, token = await _code_flow(auth_app, identity)
    assert token["token_type"] == "Bearer"
    assert "refresh_token" in token and "id_token" in token
    granted = str(token["scope"]).split()
    assert "patient/Patient.rs" in granted

    # The ID token verifies against the published JWKS.
    async with http(auth_app) as c:
        jwks = (await c.get("/oauth/jwks")).json()
        config = (await c.get("/.well-known/openid-configuration")).json()
        smart = (await c.get("/fhir/R4/.well-known/smart-configuration")).json()
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert smart["token_endpoint"] == f"{BASE}/oauth/token"
    id_token = jwt.decode(str(token["id_token"]), KeySet.import_key_set(jwks))
    assert id_token.claims["fhirUser"] == "Practitioner/p1"
    assert id_token.claims["aud"] == oauth.client_id

    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    async with http(auth_app, headers=bearer) as c:
        read = await c.get(f"/fhir/R4/Patient/{patient_id}")
        assert read.status_code == 200, read.text
        search = await c.get("/fhir/R4/Patient")
        assert search.status_code == 200
        write = await c.put(
            f"/fhir/R4/Patient/{patient_id}",
            json={"resourceType": "Patient", "id": patient_id},
            headers={"Content-Type": "application/fhir+json"},
        )
        assert write.status_code == 403
        assert write.json()["issue"][0]["code"] == "forbidden"
        other = await c.get("/fhir/R4/Observation")
        assert other.status_code == 403
        # A transaction is checked entry by entry.
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"request": {"method": "GET", "url": f"Patient/{patient_id}"}},
                {
                    "resource": {"resourceType": "Patient"},
                    "request": {"method": "POST", "url": "Patient"},
                },
            ],
        }
        tx = await c.post(
            "/fhir/R4", json=bundle, headers={"Content-Type": "application/fhir+json"}
        )
        assert tx.status_code == 403, tx.text
    await oauth.aclose()


async def test_pkce_plain_is_refused(auth_app: FastAPI, identity: Identity) -> None:
    client_id = await _public_client(identity)
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "patient/Patient.rs",
        "state": "s1",
        "code_challenge": "a" * 43,
        "code_challenge_method": "plain",
    }
    async with http(auth_app) as c:
        r = await c.get("/oauth/authorize", params=query)
    assert r.status_code == 302
    params = parse_qs(urlsplit(r.headers["location"]).query)
    assert params["error"] == ["invalid_request"]
    assert params["state"] == ["s1"]


async def test_wrong_code_verifier_is_refused(auth_app: FastAPI, identity: Identity) -> None:
    client_id = await _public_client(identity)
    username, totp_secret = await staff_account(identity)
    oauth = _oauth(auth_app, client_id)
    url, _ = oauth.create_authorization_url(f"{BASE}/oauth/authorize", code_verifier="v" * 50)
    async with http(auth_app) as browser:
        final = await browser_login(browser, url, username, PASSWORD, totp_secret)
    code = parse_qs(urlsplit(final.headers["location"]).query)["code"][0]
    async with http(auth_app) as c:
        r = await c.post(
            "/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "client_id": client_id,
                "code_verifier": "w" * 50,
            },
        )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    await oauth.aclose()


async def test_refresh_rotation_and_replay_revokes_family(
    auth_app: FastAPI, identity: Identity
) -> None:
    oauth, token = await _code_flow(auth_app, identity)
    first = str(token["refresh_token"])
    rotated = await oauth.refresh_token(f"{BASE}/oauth/token", refresh_token=first)
    second = str(rotated["refresh_token"])
    assert second != first
    async with http(auth_app) as c:
        data = {"grant_type": "refresh_token", "client_id": oauth.client_id}
        replay = await c.post("/oauth/token", data={**data, "refresh_token": first})
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        # The replay revoked the family: the newest token is dead too.
        after = await c.post("/oauth/token", data={**data, "refresh_token": second})
        assert after.status_code == 400
    await oauth.aclose()


async def test_refresh_cannot_widen_scope(auth_app: FastAPI, identity: Identity) -> None:
    oauth, token = await _code_flow(auth_app, identity)
    async with http(auth_app) as c:
        r = await c.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "client_id": oauth.client_id,
                "refresh_token": token["refresh_token"],
                "scope": "user/*.cruds",
            },
        )
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    await oauth.aclose()


async def test_logout_everywhere_revokes_refresh_tokens(
    auth_app: FastAPI, identity: Identity
) -> None:
    oauth, token = await _code_flow(auth_app, identity)
    async with http(auth_app) as c:
        r = await c.post(
            "/oauth/logout-everywhere",
            headers={"Authorization": f"Bearer {token['access_token']}"},
        )
        assert r.status_code == 204
        after = await c.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "client_id": oauth.client_id,
                "refresh_token": token["refresh_token"],
            },
        )
    assert after.status_code == 400
    await oauth.aclose()


async def test_revocation_and_introspection(auth_app: FastAPI, identity: Identity) -> None:
    client_id, secret = await identity.clients.create("svc", "system/*.rs")
    async with http(auth_app) as c:
        token = (
            await c.post(
                "/oauth/token",
                data={"grant_type": "client_credentials", "scope": "system/Patient.rs"},
                auth=(client_id, secret or ""),
            )
        ).json()["access_token"]
        auth = (client_id, secret or "")
        active = (await c.post("/oauth/introspect", data={"token": token}, auth=auth)).json()
        assert active["active"] is True and active["scope"] == "system/Patient.rs"
        ok = await c.get("/fhir/R4/Patient", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert (await c.post("/oauth/revoke", data={"token": token}, auth=auth)).status_code == 200
        gone = (await c.post("/oauth/introspect", data={"token": token}, auth=auth)).json()
        assert gone == {"active": False}
        denied = await c.get("/fhir/R4/Patient", headers={"Authorization": f"Bearer {token}"})
        assert denied.status_code == 401
        assert denied.json()["resourceType"] == "OperationOutcome"
        unauthenticated = await c.post("/oauth/introspect", data={"token": token})
        assert unauthenticated.status_code == 401
