"""Signing keys (ES256, rotated, JWKS) and the JWT access and ID tokens (joserfc).

A key signs for ``signing_key_rotation_seconds``; then a new key takes over and the old
public key stays in the JWKS until every token it signed has expired. Private keys are
stored encrypted with the platform secret.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError
from joserfc.jwk import ECKey, KeySet

from smartmed.config import Settings
from smartmed.fhir.errors import Unauthorized
from smartmed.fhir.storage.database import Database
from smartmed.identity.crypto import Box
from smartmed.identity.tables import revoked_token, signing_key

ALG = "ES256"
LEEWAY = 30  # seconds of clock skew tolerated on exp/nbf


def utcnow() -> datetime:
    """Naive UTC now, as the database stores times."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    private: ECKey
    sign_until: datetime


class KeyStore:
    """The signing keys of the provider, cached, loaded from and rotated in the database."""

    def __init__(self, db: Database, settings: Settings, box: Box) -> None:
        self.db = db
        self.settings = settings
        self.box = box
        self._current: _Key | None = None
        self._public: KeySet = KeySet([])
        self._jwks: list[dict[str, Any]] = []
        self._loaded = 0.0

    async def _load(self) -> None:
        now = utcnow()
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(signing_key)
                    .where(signing_key.c.publish_until > now)
                    .order_by(signing_key.c.created_at)
                )
            ).all()
        self._jwks = [orjson.loads(r.public_jwk) for r in rows]
        self._public = KeySet([ECKey.import_key(j) for j in self._jwks])
        signing = [r for r in rows if r.sign_until > now]
        self._current = None
        if signing:
            row = signing[-1]
            private = ECKey.import_key(orjson.loads(self.box.open(row.private_enc)))
            self._current = _Key(row.kid, private, row.sign_until)
        self._loaded = time.monotonic()

    async def rotate(self) -> str:
        """Make a new signing key now; the old one stops signing but stays published."""
        now = utcnow()
        kid = uuid.uuid4().hex
        key = ECKey.generate_key("P-256", parameters={"kid": kid, "alg": ALG, "use": "sig"})
        lifetime = timedelta(seconds=self.settings.signing_key_rotation_seconds)
        async with self.db.write() as conn:
            await conn.execute(
                signing_key.update()
                .where(signing_key.c.sign_until > now)
                .values(sign_until=now, publish_until=now + self._token_span())
            )
            await conn.execute(
                signing_key.insert().values(
                    kid=kid,
                    alg=ALG,
                    public_jwk=orjson.dumps(key.as_dict(private=False)).decode(),
                    private_enc=self.box.seal(orjson.dumps(key.as_dict(private=True)).decode()),
                    created_at=now,
                    sign_until=now + lifetime,
                    publish_until=now + lifetime + self._token_span(),
                )
            )
        await self._load()
        return kid

    def _token_span(self) -> timedelta:
        return timedelta(seconds=self.settings.access_token_seconds + LEEWAY)

    async def signing(self) -> _Key:
        if self._current is None or time.monotonic() - self._loaded > 60:
            await self._load()
        if self._current is None or self._current.sign_until <= utcnow():
            await self.rotate()
        assert self._current is not None
        return self._current

    async def jwks(self) -> dict[str, Any]:
        await self.signing()
        return {"keys": self._jwks}

    def knows(self, kid: str | None) -> bool:
        """Whether ``kid`` is still one of the published keys (a withdrawn key is not)."""
        return kid is not None and any(j.get("kid") == kid for j in self._jwks)

    async def public(self, kid: str | None) -> KeySet:
        if kid is None or not any(j.get("kid") == kid for j in self._jwks):
            await self._load()  # another process may have rotated
        return self._public


# How stale another process's view of the revocation denylist may be (seconds).
REVOCATION_REFRESH_SECONDS = 1.0
# Tokens whose signature was verified, remembered so that a client's next requests with
# the same token skip the ECDSA verification (the largest part of checking a token);
# revocation, expiry and the signing key are still checked on every request (the claims
# registry's issuer and audience checks once per token, issuer and audience).
VERIFIED_TOKENS = 4096


class TokenService:
    """Issues and validates the provider's JWTs."""

    def __init__(self, db: Database, settings: Settings, keys: KeyStore) -> None:
        self.db = db
        self.settings = settings
        self.keys = keys
        self._revoked: set[str] = set()
        self._revoked_at = float("-inf")
        self._verified: dict[str, tuple[str | None, dict[str, Any]]] = {}
        # (token, issuer, audience) -> (kid, claims) of tokens that passed every check.
        self._valid: dict[tuple[str, str, str], tuple[str | None, dict[str, Any]]] = {}

    async def sign(self, claims: dict[str, Any]) -> str:
        key = await self.keys.signing()
        return jwt.encode({"alg": ALG, "kid": key.kid, "typ": "JWT"}, claims, key.private)

    async def access_token(
        self,
        *,
        issuer: str,
        audience: str,
        subject: str,
        client_id: str,
        scope: str,
        fhir_user: str | None = None,
        patient: str | None = None,
        roles: list[dict[str, str]] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """A signed access token and its claims."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "nbf": now,
            "exp": now + self.settings.access_token_seconds,
            "jti": uuid.uuid4().hex,
        }
        if fhir_user:
            claims["fhirUser"] = fhir_user
        if patient:
            claims["patient"] = patient
        if roles:
            claims["roles"] = roles
        return await self.sign(claims), claims

    async def id_token(
        self,
        *,
        issuer: str,
        client_id: str,
        subject: str,
        fhir_user: str | None,
        nonce: str | None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": client_id,
            "sub": subject,
            "iat": now,
            "exp": now + self.settings.access_token_seconds,
            "auth_time": now,
        }
        if fhir_user:
            claims["fhirUser"] = fhir_user
        if nonce:
            claims["nonce"] = nonce
        return await self.sign(claims)

    async def decode(self, token: str) -> dict[str, Any]:
        """Claims of a token signed by one of our keys (signature and alg only)."""
        hit = self._verified.get(token)
        if hit is not None and self.keys.knows(hit[0]):
            return dict(hit[1])
        try:
            header = orjson.loads(_b64(token.split(".")[0]))
            kid = header.get("kid")
            keyset = await self.keys.public(kid)
            claims = dict(jwt.decode(token, keyset, algorithms=[ALG]).claims)
        except (JoseError, ValueError, IndexError, orjson.JSONDecodeError) as exc:
            raise Unauthorized(f"the access token is not valid: {exc}") from None
        if len(self._verified) >= VERIFIED_TOKENS:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[token] = (kid, claims)
        return dict(claims)

    async def validate(self, token: str, *, issuer: str, audience: str) -> dict[str, Any]:
        """The claims of a valid, unrevoked access token for ``audience``; else 401."""
        key = (token, issuer, audience)
        hit = self._valid.get(key)
        if hit is not None:
            # Validated before for this issuer and audience: what can have changed since
            # is the time (expiry), the signing key (retired) and revocation.
            kid, claims = hit
            if (
                time.time() <= int(claims["exp"]) + LEEWAY
                and self.keys.knows(kid)
                and not await self.is_revoked(str(claims["jti"]))
            ):
                return dict(claims)
            del self._valid[key]  # the full checks below give the reason
        claims = await self.decode(token)
        registry = jwt.JWTClaimsRegistry(
            now=int(time.time()),
            leeway=LEEWAY,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            sub={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise Unauthorized("the access token has expired") from None
        except InvalidClaimError as exc:
            raise Unauthorized(f"the access token is not valid: {exc.description}") from None
        except JoseError as exc:
            raise Unauthorized(f"the access token is not valid: {exc}") from None
        if await self.is_revoked(str(claims["jti"])):
            raise Unauthorized("the access token has been revoked")
        verified = self._verified.get(token)
        if verified is not None:
            if len(self._valid) >= VERIFIED_TOKENS:
                self._valid.pop(next(iter(self._valid)))  # the oldest entry
            self._valid[key] = (verified[0], dict(claims))
        return claims

    async def revoke(self, claims: dict[str, Any]) -> None:
        """Deny the token's ``jti`` until it expires."""
        expires = datetime.fromtimestamp(int(claims.get("exp", time.time())) + LEEWAY, UTC)
        expires = expires.replace(tzinfo=None)
        async with self.db.write() as conn:
            exists = await conn.scalar(
                sa.select(revoked_token.c.jti).where(revoked_token.c.jti == claims["jti"])
            )
            if exists is None:
                await conn.execute(
                    revoked_token.insert().values(jti=claims["jti"], expires_at=expires)
                )
            self._revoked.add(str(claims["jti"]))
            await conn.execute(revoked_token.delete().where(revoked_token.c.expires_at < utcnow()))

    async def is_revoked(self, jti: str) -> bool:
        """Whether ``jti`` is on the denylist.

        The denylist (only unexpired revoked tokens) is read whole at most once per
        ``REVOCATION_REFRESH_SECONDS``; a revocation in this process counts at once, one
        in another process within that time. Saves a query on every API request.
        """
        now = time.monotonic()
        if now - self._revoked_at >= REVOCATION_REFRESH_SECONDS:
            async with self.db.read() as conn:
                rows = await conn.execute(sa.select(revoked_token.c.jti))
                self._revoked = {str(r) for r in rows.scalars()}
            self._revoked_at = now
        return jti in self._revoked


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
