"""Signed checkpoints of the chain head, to keep outside the database.

A checkpoint is a compact JWS (ES256) over ``{"seq", "hash", "time", "records"}`` signed
with the identity provider's current signing key; its header carries the ``kid`` so it
can be checked against ``/oauth/jwks`` (or a saved copy of it). Later,
``smartmed audit verify --checkpoint FILE`` proves the chain still holds that record with
that hash: a truncated or rewritten history no longer does.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from sqlalchemy import select

from smartmed.audit.chain import chain_pending
from smartmed.audit.record import instant
from smartmed.audit.verify import verify
from smartmed.config import Settings
from smartmed.fhir.storage.database import Database
from smartmed.identity.crypto import Box, load_secret
from smartmed.identity.tables import signing_key
from smartmed.identity.tokens import ALG, KeyStore

TYP = "smartmed-audit-checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that cannot be made or trusted; the message says why."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    time: str
    records: int
    kid: str


async def make_checkpoint(db: Database, settings: Settings) -> tuple[str, Checkpoint]:
    """Chain what is pending, verify, and sign the head; (compact JWS, its content)."""
    await chain_pending(db)
    report = await verify(db)
    if not report.ok:
        raise CheckpointError(f"refusing to sign a broken chain: {report.summary()}")
    if report.head_seq == 0:
        raise CheckpointError("the audit log is empty: nothing to checkpoint")
    key = await KeyStore(db, settings, Box(load_secret(settings))).signing()
    content = Checkpoint(
        report.head_seq, report.head_hash, instant(datetime.now(UTC)), report.records, key.kid
    )
    payload = {
        "typ": TYP,
        "seq": content.seq,
        "hash": content.hash,
        "time": content.time,
        "records": content.records,
    }
    header = {"alg": ALG, "kid": key.kid, "typ": TYP}
    token = jws.serialize_compact(header, orjson.dumps(payload), key.private, algorithms=[ALG])
    return token, content


def _header(value: str) -> dict[str, Any]:
    part = value.split(".")[0]
    header = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header


async def read_checkpoint(
    db: Database, value: str, *, jwks: dict[str, Any] | None = None
) -> Checkpoint:
    """The content of a checkpoint whose signature holds (key from ``jwks`` or the database)."""
    value = value.strip()
    try:
        header = _header(value)
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise CheckpointError(f"not a compact JWS checkpoint: {exc}") from None
    kid = header.get("kid")
    if header.get("typ") != TYP or not isinstance(kid, str):
        raise CheckpointError("not a smartmed audit checkpoint (typ or kid missing)")
    if jwks is not None:
        try:
            keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"the JWKS cannot be read: {exc}") from None
    else:
        async with db.read() as conn:
            public = await conn.scalar(
                select(signing_key.c.public_jwk).where(signing_key.c.kid == kid)
            )
        if public is None:
            raise CheckpointError(f"no signing key {kid!r} is known: cannot check the signature")
        keys = KeySet([ECKey.import_key(orjson.loads(public))])
    try:
        signed = jws.deserialize_compact(value, keys, algorithms=[ALG])
    except (JoseError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's signature does not hold: {exc}") from None
    try:
        payload = orjson.loads(signed.payload)
        return Checkpoint(
            int(payload["seq"]),
            str(payload["hash"]),
            str(payload["time"]),
            int(payload["records"]),
            kid,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's content is not valid: {exc}") from None
