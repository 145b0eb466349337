"""The OAuth 2.0 grants: authorization code + PKCE, refresh (rotated), client credentials.

Clients, one-time codes and refresh tokens live in the database, codes and tokens only as
SHA-256 hashes. A refresh token is single-use: using it returns a new one of the same
family; presenting a used one again (a replay: it was stolen, or the client is confused)
revokes the whole family (OAuth 2.0 Security BCP, RFC 9700 §4.14.2).
"""

from __future__ import annotations

import hmac
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]

from smartmed.config import Settings
from smartmed.fhir.storage.database import Database
from smartmed.identity.accounts import Account, Accounts
from smartmed.identity.crypto import new_token, token_hash
from smartmed.identity.scopes import covered_by, is_known, split
from smartmed.identity.tables import auth_code, oauth_client, refresh_token
from smartmed.identity.tokens import TokenService, utcnow

CODE_SECONDS = 60
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")


class OAuthError(Exception):
    """An OAuth error response (RFC 6749 §5.2)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def as_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    confidential: bool
    redirect_uris: tuple[str, ...]
    scope: tuple[str, ...]
    grant_types: tuple[str, ...]


class Clients:
    """Registered OAuth clients."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        name: str,
        scope: str,
        *,
        redirect_uris: list[str] | None = None,
        confidential: bool = True,
        grant_types: list[str] | None = None,
    ) -> tuple[str, str | None]:
        """Register a client; returns its id and (confidential clients) its secret, once."""
        unknown = [s for s in split(scope) if not is_known(s)]
        if unknown:
            raise ValueError(f"unknown scopes: {' '.join(unknown)}")
        if grant_types is None:
            grant_types = (
                ["authorization_code", "refresh_token"] if redirect_uris else ["client_credentials"]
            )
        if "client_credentials" in grant_types and not confidential:
            raise ValueError("client credentials need a confidential client")
        client_id = uuid.uuid4().hex
        secret = new_token() if confidential else None
        async with self.db.write() as conn:
            await conn.execute(
                oauth_client.insert().values(
                    client_id=client_id,
                    name=name,
                    secret_hash=token_hash(secret) if secret else None,
                    redirect_uris=" ".join(redirect_uris or []),
                    scope=" ".join(split(scope)),
                    grant_types=" ".join(grant_types),
                    active=True,
                    created_at=utcnow(),
                )
            )
        return client_id, secret

    async def get(self, client_id: str | None) -> Client | None:
        if not client_id:
            return None
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(oauth_client).where(oauth_client.c.client_id == client_id)
                )
            ).first()
        if row is None or not row.active:
            return None
        return Client(
            row.client_id,
            row.name,
            row.secret_hash is not None,
            tuple(row.redirect_uris.split()),
            tuple(row.scope.split()),
            tuple(row.grant_types.split()),
        )

    async def authenticate(self, client_id: str | None, secret: str | None) -> Client:
        """The client, its secret checked when it has one; else ``invalid_client``."""
        client = await self.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", "unknown client", 401)
        if client.confidential:
            async with self.db.read() as conn:
                stored = await conn.scalar(
                    sa.select(oauth_client.c.secret_hash).where(
                        oauth_client.c.client_id == client.client_id
                    )
                )
            if not secret or not hmac.compare_digest(token_hash(secret), str(stored)):
                raise OAuthError("invalid_client", "client authentication failed", 401)
        return client


def granted_scopes(requested: str | None, client: Client, account: Account | None) -> list[str]:
    """The scopes to grant: what was asked within what the client may have.

    A scope beyond the client's registration is an escalation and refused whole. Residents
    and family representatives get no ``user/`` or ``system/`` scopes: a person of the
    public sees data only through a patient context.
    """
    wanted = split(requested) or list(client.scope)
    beyond = [s for s in wanted if not covered_by(s, list(client.scope))]
    if beyond:
        raise OAuthError("invalid_scope", f"scopes not allowed for this client: {' '.join(beyond)}")
    if account is None:
        return [s for s in wanted if s.startswith("system/")]
    wanted = [s for s in wanted if not s.startswith("system/")]
    if account.public_only:
        wanted = [s for s in wanted if not s.startswith("user/")]
    return wanted


def patient_context(account: Account, scopes: list[str]) -> str | None:
    """The patient in context for ``launch/patient``: the account's own Patient, if any."""
    if (
        "launch/patient" in scopes
        and account.fhir_user
        and account.fhir_user.startswith("Patient/")
    ):
        return account.fhir_user.split("/", 1)[1]
    return None


class Grants:
    """Token endpoint logic."""

    def __init__(
        self, db: Database, settings: Settings, tokens: TokenService, accounts: Accounts
    ) -> None:
        self.db = db
        self.settings = settings
        self.tokens = tokens
        self.accounts = accounts

    async def issue_code(
        self,
        *,
        client: Client,
        account: Account,
        redirect_uri: str,
        scope: list[str],
        code_challenge: str,
        nonce: str | None,
    ) -> str:
        code = new_token()
        async with self.db.write() as conn:
            await conn.execute(
                auth_code.insert().values(
                    code_hash=token_hash(code),
                    client_id=client.client_id,
                    account_id=account.id,
                    redirect_uri=redirect_uri,
                    scope=" ".join(scope),
                    code_challenge=code_challenge,
                    nonce=nonce,
                    patient=patient_context(account, scope),
                    expires_at=utcnow() + timedelta(seconds=CODE_SECONDS),
                    used=False,
                )
            )
        return code

    async def authorization_code(
        self, client: Client, form: dict[str, str], issuer: str, audience: str
    ) -> dict[str, Any]:
        code, verifier = form.get("code", ""), form.get("code_verifier", "")
        if not _VERIFIER.match(verifier):
            raise OAuthError("invalid_grant", "a PKCE code_verifier (43-128 characters) is needed")
        key = token_hash(code)
        async with self.db.write() as conn:
            row = (
                await conn.execute(sa.select(auth_code).where(auth_code.c.code_hash == key))
            ).first()
            if row is not None:
                await conn.execute(
                    auth_code.update().where(auth_code.c.code_hash == key).values(used=True)
                )
        if row is None or row.used or row.expires_at < utcnow():
            raise OAuthError("invalid_grant", "the code is unknown, used or expired")
        if row.client_id != client.client_id or row.redirect_uri != form.get("redirect_uri"):
            raise OAuthError("invalid_grant", "the code was issued to another client or redirect")
        if not hmac.compare_digest(create_s256_code_challenge(verifier), row.code_challenge):
            raise OAuthError("invalid_grant", "the PKCE code_verifier does not match")
        account = await self.accounts.get(row.account_id)
        if account is None:
            raise OAuthError("invalid_grant", "the account is no longer active")
        scope = split(row.scope)
        return await self._tokens(
            client, account, scope, row.patient, issuer, audience, row.nonce, family=None
        )

    async def refresh(
        self, client: Client, form: dict[str, str], issuer: str, audience: str
    ) -> dict[str, Any]:
        key = token_hash(form.get("refresh_token", ""))
        now = utcnow()
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    sa.select(refresh_token).where(refresh_token.c.token_hash == key)
                )
            ).first()
            if row is not None and row.client_id == client.client_id and row.rotated:
                # Replay of a used token: revoke the family (the thief's and the owner's).
                await conn.execute(
                    refresh_token.update()
                    .where(refresh_token.c.family_id == row.family_id)
                    .values(revoked=True)
                )
        if row is None or row.client_id != client.client_id:
            raise OAuthError("invalid_grant", "unknown refresh token")
        if row.rotated:
            raise OAuthError("invalid_grant", "refresh token reused: its family is revoked")
        if row.revoked or row.expires_at < now:
            raise OAuthError("invalid_grant", "the refresh token is revoked or expired")
        scope = split(row.scope)
        asked = split(form.get("scope"))
        if asked:
            beyond = [s for s in asked if not covered_by(s, scope)]
            if beyond:
                raise OAuthError("invalid_scope", f"beyond the original grant: {' '.join(beyond)}")
            scope = asked
        account = await self.accounts.get(row.account_id) if row.account_id else None
        if account is None:
            raise OAuthError("invalid_grant", "the account is no longer active")
        async with self.db.write() as conn:
            done = await conn.execute(
                refresh_token.update()
                .where(refresh_token.c.token_hash == key, refresh_token.c.rotated.is_(False))
                .values(rotated=True)
            )
            if done.rowcount != 1:
                raise OAuthError("invalid_grant", "the refresh token was used concurrently")
        return await self._tokens(
            client, account, scope, row.patient, issuer, audience, None, family=row.family_id
        )

    async def client_credentials(
        self, client: Client, form: dict[str, str], issuer: str, audience: str
    ) -> dict[str, Any]:
        scope = granted_scopes(form.get("scope"), client, None)
        token, _ = await self.tokens.access_token(
            issuer=issuer,
            audience=audience,
            subject=client.client_id,
            client_id=client.client_id,
            scope=" ".join(scope),
        )
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.settings.access_token_seconds,
            "scope": " ".join(scope),
        }

    async def _tokens(
        self,
        client: Client,
        account: Account,
        scope: list[str],
        patient: str | None,
        issuer: str,
        audience: str,
        nonce: str | None,
        family: str | None,
    ) -> dict[str, Any]:
        roles = [
            {"role": r.role.value, **({"organization": r.organization} if r.organization else {})}
            for r in account.roles
        ]
        token, _ = await self.tokens.access_token(
            issuer=issuer,
            audience=audience,
            subject=account.id,
            client_id=client.client_id,
            scope=" ".join(scope),
            fhir_user=account.fhir_user,
            patient=patient,
            roles=roles,
        )
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.settings.access_token_seconds,
            "scope": " ".join(scope),
        }
        if patient:
            body["patient"] = patient
        if "openid" in scope:
            body["id_token"] = await self.tokens.id_token(
                issuer=issuer,
                client_id=client.client_id,
                subject=account.id,
                fhir_user=account.fhir_user if "fhirUser" in scope else None,
                nonce=nonce,
            )
        if "offline_access" in scope or "online_access" in scope:
            body["refresh_token"] = await self._new_refresh(
                client, account, scope, patient, family or str(uuid.uuid4())
            )
        return body

    async def _new_refresh(
        self, client: Client, account: Account, scope: list[str], patient: str | None, family: str
    ) -> str:
        value = new_token()
        now = utcnow()
        async with self.db.write() as conn:
            await conn.execute(
                refresh_token.insert().values(
                    token_hash=token_hash(value),
                    family_id=family,
                    client_id=client.client_id,
                    account_id=account.id,
                    scope=" ".join(scope),
                    patient=patient,
                    issued_at=now,
                    expires_at=now + timedelta(seconds=self.settings.refresh_token_seconds),
                    rotated=False,
                    revoked=False,
                )
            )
        return value

    async def revoke_refresh(self, value: str, client: Client) -> bool:
        """Revoke the family of a refresh token of ``client``; whether it was one."""
        key = token_hash(value)
        async with self.db.write() as conn:
            family = await conn.scalar(
                sa.select(refresh_token.c.family_id).where(
                    refresh_token.c.token_hash == key, refresh_token.c.client_id == client.client_id
                )
            )
            if family is None:
                return False
            await conn.execute(
                refresh_token.update()
                .where(refresh_token.c.family_id == family)
                .values(revoked=True)
            )
        return True

    async def refresh_state(self, value: str) -> sa.Row[tuple[Any, ...]] | None:
        async with self.db.read() as conn:
            return (
                await conn.execute(
                    sa.select(refresh_token).where(refresh_token.c.token_hash == token_hash(value))
                )
            ).first()
