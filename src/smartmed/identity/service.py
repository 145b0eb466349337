"""The identity services of one application, built on first use from its FHIR engine."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from smartmed.config import Settings
from smartmed.fhir.request import base_url
from smartmed.fhir.storage.database import Database
from smartmed.identity.accounts import Accounts
from smartmed.identity.crypto import Box, load_secret
from smartmed.identity.oauth import Clients, Grants
from smartmed.identity.principal import Principal, Role, RoleAssignment
from smartmed.identity.ratelimit import TokenBucket
from smartmed.identity.scopes import ScopeSet
from smartmed.identity.tokens import KeyStore, TokenService


class Identity:
    """Accounts, clients, keys, tokens, grants and rate limits of one application."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.settings = settings
        self.secret = load_secret(settings)
        box = Box(self.secret)
        self.accounts = Accounts(db, box, settings.login_max_failures)
        self.clients = Clients(db)
        self.keys = KeyStore(db, settings, box)
        self.tokens = TokenService(db, settings, self.keys)
        self.grants = Grants(db, settings, self.tokens, self.accounts)
        rate = settings.auth_rate_per_minute
        self.ip_limiter = TokenBucket(rate, burst=max(5, rate // 3))
        self.account_limiter = TokenBucket(max(1, rate // 6), burst=10)

    def issuer(self, request: Request) -> str:
        return (self.settings.issuer or str(request.base_url)).rstrip("/")

    @staticmethod
    def audience(request: Request) -> str:
        return base_url(request)

    async def principal(self, request: Request, token: str) -> Principal:
        """The principal of a valid access token (401 otherwise)."""
        claims = await self.tokens.validate(
            token, issuer=self.issuer(request), audience=self.audience(request)
        )
        return principal_from_claims(claims)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    roles = []
    for item in claims.get("roles") or []:
        try:
            roles.append(RoleAssignment(Role(item["role"]), item.get("organization")))
        except (KeyError, ValueError, TypeError):
            continue
    return Principal(
        subject=str(claims["sub"]),
        client_id=str(claims.get("client_id", "")),
        scopes=ScopeSet.parse(str(claims.get("scope", ""))),
        roles=tuple(roles),
        fhir_user=claims.get("fhirUser"),
        patient=claims.get("patient"),
        token_id=str(claims.get("jti")),
    )


def get_identity(app: Any) -> Identity:
    """The application's identity services (made on first use)."""
    identity: Identity | None = getattr(app.state, "identity", None)
    if identity is None:
        engine = app.state.fhir
        identity = Identity(engine.db, engine.settings)
        app.state.identity = identity
    return identity
