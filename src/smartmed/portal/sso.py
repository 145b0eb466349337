"""Login through the platform's own OpenID Connect provider (authorization code + PKCE).

The portal is a first-party *confidential* client, registered automatically (one per
public origin, found again by name and redirect URI on later starts). Its secret is
thrown away at registration: codes issued to it can only be redeemed in-process, by
:func:`finish_login`, which calls the provider's grant logic directly — the same code
the token endpoint runs after client authentication. The ID token is then verified
(signature by a published key, ``iss``, ``aud`` = the portal client, ``exp``, ``nonce``).
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from starlette.requests import Request

from smartmed.fhir.errors import FhirError
from smartmed.identity.oauth import Client, OAuthError
from smartmed.identity.service import Identity, get_identity
from smartmed.identity.tables import oauth_client
from smartmed.portal.session import PortalSession

CLIENT_NAME = "smartmed portal"
CLIENT_SCOPE = "openid fhirUser profile user/*.cruds patient/*.cruds launch/patient"
CALLBACK = "/auth/callback"
FLOW_SECONDS = 600  # a login started longer ago than this is refused


class LoginFailed(Exception):
    """The login could not be completed; the message is for the log, not the user."""


def redirect_uri(identity: Identity, request: Request) -> str:
    return identity.issuer(request) + CALLBACK


async def portal_client(identity: Identity, uri: str) -> Client:
    """The portal's client for this redirect URI, registered on first use."""
    cache: dict[str, Client] = identity.__dict__.setdefault("_portal_clients", {})
    if uri in cache:
        return cache[uri]
    # Oldest first, so that processes racing to register agree on one client.
    query = (
        sa.select(oauth_client.c.client_id)
        .where(oauth_client.c.name == CLIENT_NAME, oauth_client.c.redirect_uris == uri)
        .order_by(oauth_client.c.created_at, oauth_client.c.client_id)
        .limit(1)
    )
    async with identity.clients.db.read() as conn:
        client_id = await conn.scalar(query)
    if client_id is None:
        client_id, _secret = await identity.clients.create(
            CLIENT_NAME, CLIENT_SCOPE, redirect_uris=[uri], confidential=True
        )
        async with identity.clients.db.read() as conn:
            client_id = await conn.scalar(query)
    client = await identity.clients.get(client_id)
    if client is None:
        raise LoginFailed("the portal client is not active")
    cache[uri] = client
    return client


async def start_login(request: Request, session: PortalSession, next_path: str) -> str:
    """Remember the flow in the session; the authorization URL to send the browser to."""
    identity = get_identity(request.app)
    uri = redirect_uri(identity, request)
    client = await portal_client(identity, uri)
    verifier = secrets.token_urlsafe(48)
    flow = {
        "state": secrets.token_urlsafe(24),
        "nonce": secrets.token_urlsafe(24),
        "verifier": verifier,
        "next": safe_next(next_path),
        "at": int(time.time()),
    }
    session.set("flow", flow)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client.client_id,
            "redirect_uri": uri,
            "scope": CLIENT_SCOPE,
            "state": flow["state"],
            "nonce": flow["nonce"],
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
    )
    return f"/oauth/authorize?{query}"


async def finish_login(request: Request, session: PortalSession) -> str:
    """Redeem the code of the callback, verify the ID token, open the session; next path."""
    identity = get_identity(request.app)
    flow = session.pop("flow")
    params = request.query_params
    if not isinstance(flow, dict):
        raise LoginFailed("no login in progress")
    if params.get("error"):
        raise LoginFailed(f"the provider answered {params.get('error')}")
    if not secrets.compare_digest(str(flow.get("state")), params.get("state", "")):
        raise LoginFailed("state mismatch")
    if int(time.time()) - int(flow.get("at", 0)) > FLOW_SECONDS:
        raise LoginFailed("the login took too long")
    uri = redirect_uri(identity, request)
    client = await portal_client(identity, uri)
    issuer, audience = identity.issuer(request), identity.audience(request)
    form = {"code": params.get("code", ""), "code_verifier": flow["verifier"], "redirect_uri": uri}
    try:
        body = await identity.grants.authorization_code(client, form, issuer, audience)
        claims = await identity.tokens.validate(
            body["access_token"], issuer=issuer, audience=audience
        )
        id_claims = await _id_token(identity, str(body.get("id_token", "")), client, issuer)
    except (OAuthError, FhirError) as exc:
        raise LoginFailed(str(exc)) from None
    if id_claims.get("nonce") != flow.get("nonce") or id_claims.get("sub") != claims["sub"]:
        raise LoginFailed("the ID token does not belong to this login")
    now = int(time.time())
    lang = session.get("lang")
    session.clear()  # a new session id: no fixation of a pre-login session
    session.data.update(
        {
            "sid": secrets.token_urlsafe(24),
            "acc": str(claims["sub"]),
            "jti": str(claims["jti"]),
            "exp": int(claims["exp"]),
            "scope": str(claims.get("scope", "")),
            "client_id": client.client_id,
            "iat": now,
            "seen": now,
        }
    )
    if lang:
        session.data["lang"] = lang
    session.dirty = True
    return str(flow.get("next") or "/")


async def _id_token(identity: Identity, token: str, client: Client, issuer: str) -> dict[str, Any]:
    if not token:
        raise LoginFailed("no ID token")
    claims = await identity.tokens.decode(token)  # signature with a published key, ES256
    if claims.get("iss") != issuer or claims.get("aud") != client.client_id:
        raise LoginFailed("the ID token is for another issuer or client")
    if int(claims.get("exp", 0)) < time.time() - 30:
        raise LoginFailed("the ID token has expired")
    return claims


async def logout(request: Request, session: PortalSession) -> None:
    """Revoke the session's access token (every copy of the cookie dies) and forget it."""
    identity = get_identity(request.app)
    jti, exp = session.get("jti"), session.get("exp")
    if jti:
        await identity.tokens.revoke({"jti": jti, "exp": exp or int(time.time())})
    session.clear()


def safe_next(value: str | None) -> str:
    """A local path to return to after login: never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value
