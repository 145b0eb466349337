"""HTTP endpoints of the OAuth 2.0 / OpenID Connect provider (SMART App Launch v2).

=======  ==========================================  ===================================
method   path                                        purpose
=======  ==========================================  ===================================
GET      /.well-known/openid-configuration           OIDC discovery
GET      /fhir/R4/.well-known/smart-configuration    SMART discovery
GET      /oauth/jwks                                 public signing keys (rotated)
GET      /oauth/authorize                            authorization code + PKCE (S256)
POST     /oauth/login, /oauth/totp                   the login form and its TOTP step
POST     /oauth/token                                code, refresh_token, client_credentials
POST     /oauth/revoke                               RFC 7009
POST     /oauth/introspect                           RFC 7662
POST     /oauth/logout-everywhere                    end all sessions and refresh tokens
=======  ==========================================  ===================================
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from smartmed.audit import auth as audit
from smartmed.fhir.errors import FhirError
from smartmed.identity.loginpage import NO_STORE as _NO_STORE
from smartmed.identity.loginpage import SESSION_COOKIE, csrf_ok, page, to_authorize
from smartmed.identity.oauth import Client, OAuthError, granted_scopes
from smartmed.identity.scopes import OTHER_SCOPES
from smartmed.identity.service import Identity, get_identity
from smartmed.identity.tokens import utcnow


def _ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _too_many(wait: float) -> JSONResponse:
    return JSONResponse(
        {"error": "slow_down", "error_description": "too many requests; retry later"},
        429,
        headers={"Retry-After": str(int(wait) + 1), **_NO_STORE},
    )


def _error(exc: OAuthError) -> JSONResponse:
    headers = dict(_NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="smartmed"'
    return JSONResponse(exc.as_json(), exc.status, headers=headers)


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str | None, str | None]:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            raw = base64.b64decode(header[6:]).decode()
        except (ValueError, UnicodeDecodeError):
            return None, None
        client_id, _, secret = raw.partition(":")
        return unquote(client_id), unquote(secret)
    return form.get("client_id"), form.get("client_secret")


def _redirect(uri: str, params: dict[str, str]) -> RedirectResponse:
    parts = urlsplit(uri)
    query = "&".join(p for p in (parts.query, urlencode(params)) if p)
    return RedirectResponse(urlunsplit(parts._replace(query=query)), 302, headers=_NO_STORE)


def build_identity_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/.well-known/openid-configuration")
    async def openid_configuration(request: Request) -> JSONResponse:
        identity = get_identity(request.app)
        return JSONResponse(_discovery(identity, request))

    @router.get("/fhir/R4/.well-known/smart-configuration")
    async def smart_configuration(request: Request) -> JSONResponse:
        identity = get_identity(request.app)
        body = _discovery(identity, request)
        body["capabilities"] = [
            "launch-standalone",
            "client-public",
            "client-confidential-symmetric",
            "context-standalone-patient",
            "permission-offline",
            "permission-online",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
            "sso-openid-connect",
        ]
        return JSONResponse(body)

    @router.get("/oauth/jwks")
    async def jwks(request: Request) -> JSONResponse:
        identity = get_identity(request.app)
        return JSONResponse(await identity.keys.jwks())

    @router.get("/oauth/authorize")
    async def authorize(request: Request) -> Response:
        identity = get_identity(request.app)
        params = dict(request.query_params)
        client = await identity.clients.get(params.get("client_id"))
        redirect_uri = params.get("redirect_uri", "")
        if client is None or redirect_uri not in client.redirect_uris:
            return HTMLResponse(
                "<p>Unknown client or redirect URI: the request was not sent on.</p>", 400
            )
        state = {"state": params["state"]} if "state" in params else {}

        def fail(error: str, description: str) -> RedirectResponse:
            return _redirect(
                redirect_uri,
                {"error": error, "error_description": description, **state},
            )

        if params.get("response_type") != "code":
            return fail("unsupported_response_type", "only response_type=code is supported")
        if "authorization_code" not in client.grant_types:
            return fail("unauthorized_client", "the client may not use the code grant")
        if not params.get("code_challenge") or params.get("code_challenge_method") != "S256":
            return fail("invalid_request", "PKCE is required with code_challenge_method=S256")
        aud = params.get("aud")
        if aud is not None and aud.rstrip("/") != identity.audience(request):
            return fail("invalid_request", "aud is not this FHIR server")
        session = await identity.accounts.session(
            request.cookies.get(SESSION_COOKIE), identity.settings.session_idle_seconds
        )
        account = await identity.accounts.get(session[0]) if session else None
        if account is None or session is None:
            return page(
                request,
                identity,
                step="password",
                next_query=request.url.query,
                client_name=client.name,
            )
        if account.needs_second_factor and not session[1]:
            return page(
                request,
                identity,
                step="totp",
                next_query=request.url.query,
                client_name=client.name,
            )
        try:
            scope = granted_scopes(params.get("scope"), client, account)
        except OAuthError as exc:
            return fail(exc.error, exc.description)
        code = await identity.grants.issue_code(
            client=client,
            account=account,
            redirect_uri=redirect_uri,
            scope=scope,
            code_challenge=params["code_challenge"],
            nonce=params.get("nonce"),
        )
        return _redirect(redirect_uri, {"code": code, **state, "iss": identity.issuer(request)})

    @router.post("/oauth/login")
    async def login(request: Request) -> Response:
        identity = get_identity(request.app)
        form = await _form(request)
        next_query = form.get("next", "")
        username = form.get("username", "")
        for limiter, key in (
            (identity.ip_limiter, _ip(request)),
            (identity.account_limiter, username.lower()),
        ):
            wait = limiter.take(key)
            if wait:
                return page(
                    request,
                    identity,
                    step="password",
                    next_query=next_query,
                    error="Too many attempts; wait a moment.",
                    status=429,
                )
        if not csrf_ok(request, identity, form):
            return page(
                request,
                identity,
                step="password",
                next_query=next_query,
                error="The form expired; please try again.",
                status=403,
            )
        result = await identity.accounts.login(username, form.get("password", ""))
        if result.account is None:
            await audit.record(
                request,
                audit.LOGIN_FAILED,
                account=await audit.account_id(request, username),
                outcome="4",
                detail=result.error,
            )
            return page(
                request,
                identity,
                step="password",
                next_query=next_query,
                error=result.error,
                status=401,
            )
        account = result.account
        if account.needs_second_factor and not account.has_totp:
            await audit.record(
                request,
                audit.LOGIN_FAILED,
                account=account.id,
                outcome="4",
                detail="staff account without an enrolled second factor",
            )
            return page(
                request,
                identity,
                step="password",
                next_query=next_query,
                status=403,
                error="Staff accounts need a second factor (TOTP): ask the security "
                "administrator to enrol one.",
            )
        value = await identity.accounts.open_session(
            account.id, mfa_ok=not account.needs_second_factor
        )
        if not account.needs_second_factor:
            await audit.record(request, audit.LOGIN, account=account.id, detail="password")
        response = to_authorize(next_query)
        response.set_cookie(
            SESSION_COOKIE, value, httponly=True, secure=True, samesite="lax", path="/oauth"
        )
        return response

    @router.post("/oauth/totp")
    async def totp_step(request: Request) -> Response:
        identity = get_identity(request.app)
        form = await _form(request)
        next_query = form.get("next", "")
        cookie = request.cookies.get(SESSION_COOKIE)
        wait = identity.ip_limiter.take(_ip(request))
        if wait:
            return page(
                request,
                identity,
                step="totp",
                next_query=next_query,
                error="Too many attempts; wait a moment.",
                status=429,
            )
        if not csrf_ok(request, identity, form):
            return page(
                request,
                identity,
                step="totp",
                next_query=next_query,
                error="The form expired; please try again.",
                status=403,
            )
        session = await identity.accounts.session(cookie, identity.settings.session_idle_seconds)
        if session is None or cookie is None:
            return page(
                request,
                identity,
                step="password",
                next_query=next_query,
                error="Please sign in again.",
                status=401,
            )
        wait = identity.account_limiter.take("totp:" + session[0])
        if wait or not await identity.accounts.verify_totp(session[0], form.get("code", "")):
            await audit.record(
                request,
                audit.LOGIN_FAILED,
                account=session[0],
                outcome="4",
                detail="second factor (TOTP) rejected" if not wait else "too many TOTP attempts",
            )
            return page(
                request,
                identity,
                step="totp",
                next_query=next_query,
                error="That code is not valid.",
                status=401,
            )
        await identity.accounts.pass_second_factor(cookie)
        await audit.record(request, audit.LOGIN, account=session[0], detail="password and TOTP")
        return to_authorize(next_query)

    @router.post("/oauth/token")
    async def token(request: Request) -> Response:
        identity = get_identity(request.app)
        wait = identity.ip_limiter.take(_ip(request))
        if wait:
            return _too_many(wait)
        form = await _form(request)
        try:
            client = await _authenticate(identity, request, form)
            grant = form.get("grant_type", "")
            if grant not in client.grant_types:
                raise OAuthError("unauthorized_client", f"the client may not use {grant!r}")
            issuer, audience = identity.issuer(request), identity.audience(request)
            if grant == "authorization_code":
                body = await identity.grants.authorization_code(client, form, issuer, audience)
            elif grant == "refresh_token":
                body = await identity.grants.refresh(client, form, issuer, audience)
            elif grant == "client_credentials":
                if not client.confidential:
                    raise OAuthError("unauthorized_client", "client credentials need a secret")
                body = await identity.grants.client_credentials(client, form, issuer, audience)
            else:
                raise OAuthError("unsupported_grant_type", f"grant_type {grant!r} is not supported")
        except OAuthError as exc:
            return _error(exc)
        return JSONResponse(body, headers=_NO_STORE)

    @router.post("/oauth/revoke")
    async def revoke(request: Request) -> Response:
        identity = get_identity(request.app)
        form = await _form(request)
        try:
            client = await _authenticate(identity, request, form)
        except OAuthError as exc:
            return _error(exc)
        value = form.get("token", "")
        if not await identity.grants.revoke_refresh(value, client):
            try:
                claims = await identity.tokens.decode(value)
            except FhirError:
                claims = {}
            if claims.get("client_id") == client.client_id and "jti" in claims:
                await identity.tokens.revoke(claims)
        return Response(status_code=200, headers=_NO_STORE)  # RFC 7009 §2.2: always 200

    @router.post("/oauth/introspect")
    async def introspect(request: Request) -> Response:
        identity = get_identity(request.app)
        form = await _form(request)
        try:
            await _authenticate(identity, request, form)
        except OAuthError as exc:
            return _error(exc)
        return JSONResponse(
            await _introspect(identity, request, form.get("token", "")), headers=_NO_STORE
        )

    @router.post("/oauth/logout-everywhere")
    async def logout_everywhere(request: Request) -> Response:
        identity = get_identity(request.app)
        header = request.headers.get("authorization", "")
        account_id: str | None = None
        if header.lower().startswith("bearer "):
            try:
                principal = await identity.principal(request, header[7:].strip())
            except FhirError:
                principal = None
            if principal is not None and not principal.is_system:
                account_id = principal.subject
        else:
            form = await _form(request)
            session = await identity.accounts.session(
                request.cookies.get(SESSION_COOKIE), identity.settings.session_idle_seconds
            )
            if session is not None and csrf_ok(request, identity, form):
                account_id = session[0]
        if account_id is None:
            return JSONResponse(
                {"error": "invalid_token"},
                401,
                headers={"WWW-Authenticate": 'Bearer realm="smartmed"'},
            )
        await identity.accounts.logout_everywhere(account_id)
        await audit.record(request, audit.LOGOUT, account=account_id, detail="logout everywhere")
        response = Response(status_code=204, headers=_NO_STORE)
        response.delete_cookie(SESSION_COOKIE, path="/oauth", secure=True, httponly=True)
        return response

    return router


async def _authenticate(identity: Identity, request: Request, form: dict[str, str]) -> Client:
    client_id, secret = _client_credentials(request, form)
    return await identity.clients.authenticate(client_id, secret)


async def _introspect(identity: Identity, request: Request, value: str) -> dict[str, Any]:
    if value.count(".") == 2:
        try:
            claims = await identity.tokens.validate(
                value, issuer=identity.issuer(request), audience=identity.audience(request)
            )
        except FhirError:
            return {"active": False}
        return {"active": True, "token_type": "Bearer", **claims}
    row = await identity.grants.refresh_state(value)
    if row is None or row.rotated or row.revoked or row.expires_at < utcnow():
        return {"active": False}
    return {
        "active": True,
        "token_type": "refresh_token",
        "client_id": row.client_id,
        "sub": row.account_id,
        "scope": row.scope,
        "exp": int(row.expires_at.timestamp()),
    }


def _discovery(identity: Identity, request: Request) -> dict[str, Any]:
    issuer = identity.issuer(request)
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "jwks_uri": f"{issuer}/oauth/jwks",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "introspection_endpoint": f"{issuer}/oauth/introspect",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": sorted(OTHER_SCOPES)
        + ["patient/*.cruds", "user/*.cruds", "system/*.cruds", "patient/*.rs", "user/*.rs"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
    }
