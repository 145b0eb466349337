"""``Idempotency-Key`` for POST requests: a retry returns the first response, never a copy.

The key row is written in the same transaction as the work it guards. On PostgreSQL a
concurrent retry with the same key blocks on the key's unique index until the first
request commits, then finds its stored response; on SQLite writers are serialised.
A request that fails leaves no key behind, so the client's retry is processed afresh.
Reusing a key for a different request is refused (422), as the IETF draft requires:
https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.errors import Invalid, Unprocessable
from smartmed.fhir.model import utcnow
from smartmed.fhir.storage.tables import idempotency_key

MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class SavedResponse:
    """The response stored for a key."""

    status: int
    headers: dict[str, str]
    body: str


def request_hash(method: str, path: str, body: bytes) -> str:
    """A fingerprint of the request a key was first used with."""
    digest = hashlib.sha256()
    for part in (method.encode(), b"\0", path.encode(), b"\0", body):
        digest.update(part)
    return digest.hexdigest()


async def claim(
    conn: AsyncConnection, *, scope: str, key: str, fingerprint: str, is_postgres: bool
) -> SavedResponse | None:
    """Claim ``key`` for this request, or return the response saved by its first use."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise Invalid(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
            expression="Idempotency-Key",
        )
    values = {"scope": scope, "key": key, "request_hash": fingerprint, "created_at": utcnow()}
    insert = pg_insert if is_postgres else sqlite_insert
    result = await conn.execute(insert(idempotency_key).values(**values).on_conflict_do_nothing())
    if result.rowcount == 1:
        return None
    c = idempotency_key.c
    row = (
        await conn.execute(
            select(c.request_hash, c.status, c.headers, c.body).where(
                c.scope == scope, c.key == key
            )
        )
    ).one()
    if row.request_hash != fingerprint:
        raise Unprocessable(
            "this Idempotency-Key was already used for a different request",
            expression="Idempotency-Key",
        )
    return SavedResponse(row.status, orjson.loads(row.headers or "{}"), row.body or "")


async def save(conn: AsyncConnection, *, scope: str, key: str, response: SavedResponse) -> None:
    """Store the response of the request that claimed ``key`` (same transaction)."""
    c = idempotency_key.c
    await conn.execute(
        update(idempotency_key)
        .where(c.scope == scope, c.key == key)
        .values(
            status=response.status,
            headers=orjson.dumps(response.headers).decode(),
            body=response.body,
        )
    )
