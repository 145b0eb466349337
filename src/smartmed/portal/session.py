"""The portal session: an encrypted cookie, the principal of portal and ``/api`` requests.

The cookie (``smartmed_portal``: ``Secure; HttpOnly; SameSite=Lax``) holds an
AES-GCM-sealed JSON object: a random session id (the CSRF token derives from it), the
login-flow state (``state``, PKCE verifier, nonce) while a login runs, and after login
the account id, the access token's ``jti`` and scopes, the active role and the language.
The access token itself never leaves the server. Each request re-reads the account (so
a deactivated account or a removed role takes effect at once) and the token's ``jti``
against the revocation list: logging out revokes it, which ends every copy of the cookie.
Sessions end after ``session_idle_seconds`` without a request and after
``portal_session_seconds`` in all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smartmed.fhir.hooks import current_access, current_principal
from smartmed.identity.accounts import Account
from smartmed.identity.crypto import Box, derive
from smartmed.identity.principal import Principal, Role, RoleAssignment
from smartmed.identity.scopes import ScopeSet
from smartmed.identity.service import get_identity

COOKIE = "smartmed_portal"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
# Paths that are not the portal's: they have their own authentication.
_NOT_PORTAL = ("/fhir/", "/oauth/", "/.well-known/", "/static/", "/metrics", "/healthz", "/readyz")
_TOUCH_SECONDS = 30  # re-issue the cookie (sliding idle timeout) at most this often


@dataclass(slots=True)
class PortalSession:
    """The decoded cookie of one request; changes are written back on the response."""

    data: dict[str, Any] = field(default_factory=dict)
    account: Account | None = None
    dirty: bool = False
    cleared: bool = False

    @property
    def sid(self) -> str:
        if "sid" not in self.data:
            self.data["sid"] = secrets.token_urlsafe(24)
            self.dirty = True
        return str(self.data["sid"])

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        if self.data.get(key) != value:
            self.data[key] = value
            self.dirty = True

    def pop(self, key: str) -> Any:
        if key in self.data:
            self.dirty = True
        return self.data.pop(key, None)

    def clear(self) -> None:
        """Forget everything (logout): a fresh anonymous session, keeping the language."""
        lang = self.data.get("lang")
        self.data = {"lang": lang} if lang else {}
        self.account = None
        self.dirty = True

    @property
    def active_role(self) -> Role | None:
        if self.account is None or not self.account.roles:
            return None
        held = [r.role for r in self.account.roles]
        chosen = self.data.get("role")
        if chosen in held:
            return Role(chosen)
        return held[0]


def csrf_token(secret: bytes, session: PortalSession) -> str:
    return hmac.new(derive(secret, "portal-csrf"), session.sid.encode(), hashlib.sha256).hexdigest()


def csrf_valid(secret: bytes, session: PortalSession, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(secret, session), presented or "")


def get_session(request: Request) -> PortalSession:
    session: PortalSession | None = getattr(request.state, "portal", None)
    if session is None:  # a path outside the middleware's reach
        session = PortalSession()
        request.state.portal = session
    return session


def principal_for(account: Account, session: PortalSession) -> Principal:
    """The principal acting through the portal: the account in its active role."""
    active = session.active_role
    roles: tuple[RoleAssignment, ...] = tuple(r for r in account.roles if r.role == active)
    return Principal(
        subject=account.id,
        client_id=str(session.get("client_id", "")),
        scopes=ScopeSet.parse(str(session.get("scope", ""))),
        roles=roles,
        fhir_user=account.fhir_user,
        token_id=session.get("jti"),
        extra={"portal": True, "all_roles": account.roles},
    )


class PortalSessionMiddleware:
    """Decodes the portal cookie for portal and ``/api`` paths; sets the principal."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(_NOT_PORTAL):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        identity = get_identity(request.app)
        settings = identity.settings
        box = Box(identity.secret, "portal-session")
        session = PortalSession(data=_open(box, request.cookies.get(COOKIE)))
        now = int(time.time())
        if session.data.get("acc"):
            account = await self._account(request, session, now)
            if account is None:
                session.clear()
            else:
                session.account = account
                if now - int(session.data.get("seen", 0)) >= _TOUCH_SECONDS:
                    session.set("seen", now)
        state = scope.setdefault("state", {})
        state["portal"] = session
        reset = None
        access_reset = None
        if session.account is not None:
            principal = principal_for(session.account, session)
            state["principal"] = principal
            reset = current_principal.set(principal)
            # The same access policy as the FHIR API: portal pages read through the engine.
            control = request.app.state.fhir.access
            access_reset = current_access.set(
                control.guard_for(principal) if control is not None else None
            )

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and session.dirty:
                headers = list(message.get("headers", []))
                headers.append(
                    (b"set-cookie", _cookie(box, session, settings.session_idle_seconds))
                )
                if not any(name.lower() == b"cache-control" for name, _v in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_cookie)
        finally:
            if access_reset is not None:
                current_access.reset(access_reset)
            if reset is not None:
                current_principal.reset(reset)

    @staticmethod
    async def _account(request: Request, session: PortalSession, now: int) -> Account | None:
        identity = get_identity(request.app)
        settings = identity.settings
        if now - int(session.data.get("seen", 0)) > settings.session_idle_seconds:
            return None
        if now - int(session.data.get("iat", 0)) > settings.portal_session_seconds:
            return None
        jti = session.data.get("jti")
        if not jti or await identity.tokens.is_revoked(str(jti)):
            return None
        return await identity.accounts.get(str(session.data["acc"]))


def _open(box: Box, value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        data = orjson.loads(box.open(value))
    except (InvalidTag, ValueError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _cookie(box: Box, session: PortalSession, idle_seconds: int) -> bytes:
    value = box.seal(orjson.dumps(session.data).decode())
    parts = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "Secure", "SameSite=Lax"]
    if session.account is not None or session.data.get("acc"):
        parts.append(f"Max-Age={idle_seconds}")
    return "; ".join(parts).encode()
