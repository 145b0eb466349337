"""The job table's operations: enqueue, claim under a lease, finish, fail, retry.

Claiming is one ``UPDATE ... WHERE pk IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING``:
on PostgreSQL concurrent workers skip each other's rows instead of waiting; on SQLite the
clause is dropped and the database's single writer serialises claims. A claim writes a
fresh ``lease`` token and ``locked_until``; every later change of that run (heartbeat,
done, failed) is conditional on the token, so a worker whose lease expired (it was
paused or killed, and another worker took the job over) can no longer finish it.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.jobs.registry import JobKind, registry
from smartmed.jobs.tables import KEY_LEN, job

STATES = ("queued", "running", "done", "dead")


def utcnow() -> datetime:
    """Now in UTC, naive (the tables store naive UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


def insert_ignore(conn: AsyncConnection, table: Any, index: list[str]) -> Any:
    """``INSERT ... ON CONFLICT (index) DO NOTHING`` for the connection's dialect."""
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    return dialect_insert(table).on_conflict_do_nothing(index_elements=index)


async def enqueue(
    conn: AsyncConnection,
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    run_at: datetime | None = None,
    key: str | None = None,
    max_attempts: int | None = None,
) -> int | None:
    """Add a job in the caller's transaction; its id, or None if ``key`` already exists.

    ``kind`` must be registered in this process (a typo fails here, not in a worker).
    ``run_at`` (naive UTC or aware) delays the job. A job with the same ``key`` is never
    added twice, whatever state the first one is in.
    """
    known = registry.kinds.get(kind)
    if known is None:
        raise LookupError(f"unknown job kind {kind!r} (is its module imported?)")
    if key is not None and not 0 < len(key) <= KEY_LEN:
        raise ValueError(f"job key must be 1-{KEY_LEN} characters")
    if run_at is not None and run_at.tzinfo is not None:
        run_at = run_at.astimezone(UTC).replace(tzinfo=None)
    now = utcnow()
    values = {
        "kind": kind,
        "payload": orjson.dumps(payload or {}).decode(),
        "key": key,
        "state": "queued",
        "run_at": run_at or now,
        "attempts": 0,
        "max_attempts": max_attempts or known.max_attempts,
        "created_at": now,
    }
    if key is None:
        stmt: Any = job.insert()
    else:
        stmt = insert_ignore(conn, job, ["key"])
    pk = (await conn.execute(stmt.values(**values).returning(job.c.pk))).scalar_one_or_none()
    if pk is not None and conn.dialect.name == "postgresql":
        # Delivered at commit (NOTIFY is transactional): idle workers wake up at once.
        await conn.exec_driver_sql("NOTIFY smartmed_jobs")
    return pk


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job this worker holds the lease of."""

    pk: int
    kind: str
    payload: dict[str, Any]
    key: str | None
    attempts: int  # including this run
    max_attempts: int
    lease: str


async def claim(
    conn: AsyncConnection, *, worker: str, limit: int, lease_seconds: float
) -> list[Claimed]:
    """Take up to ``limit`` due jobs (queued, or running with an expired lease)."""
    now = utcnow()
    due = (
        select(job.c.pk)
        .where(_due(now))
        .order_by(job.c.run_at, job.c.pk)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    token = uuid.uuid4().hex
    stmt = (
        update(job)
        .where(job.c.pk.in_(due.scalar_subquery()))
        .values(
            state="running",
            attempts=job.c.attempts + 1,
            locked_by=worker[:100],
            locked_until=now + timedelta(seconds=lease_seconds),
            lease=token,
        )
        .returning(
            job.c.pk, job.c.kind, job.c.payload, job.c.key, job.c.attempts, job.c.max_attempts
        )
    )
    rows = (await conn.execute(stmt)).all()
    return [
        Claimed(r.pk, r.kind, orjson.loads(r.payload), r.key, r.attempts, r.max_attempts, token)
        for r in sorted(rows, key=lambda r: r.pk)
    ]


def _due(now: datetime) -> Any:
    return or_(
        and_(job.c.state == "queued", job.c.run_at <= now),
        and_(job.c.state == "running", job.c.locked_until < now),
    )


async def any_due(conn: AsyncConnection) -> bool:
    """Whether some job is due (a cheap read before taking the write lock to claim)."""
    return (await conn.execute(select(job.c.pk).where(_due(utcnow())).limit(1))).first() is not None


async def heartbeat(
    conn: AsyncConnection, held: dict[int, str], *, lease_seconds: float
) -> set[int]:
    """Extend the leases of ``held`` (pk -> lease token); the pks still held."""
    if not held:
        return set()
    until = utcnow() + timedelta(seconds=lease_seconds)
    kept: set[int] = set()
    for pk, token in held.items():
        result = await conn.execute(
            update(job)
            .where(job.c.pk == pk, job.c.lease == token, job.c.state == "running")
            .values(locked_until=until)
            .returning(job.c.pk)
        )
        if result.scalar_one_or_none() is not None:
            kept.add(pk)
    return kept


async def finish(conn: AsyncConnection, claimed: Claimed) -> bool:
    """Mark a run done; False if the lease was lost meanwhile."""
    result = await conn.execute(
        update(job)
        .where(job.c.pk == claimed.pk, job.c.lease == claimed.lease)
        .values(state="done", finished_at=utcnow(), locked_by=None, locked_until=None, lease=None)
        .returning(job.c.pk)
    )
    return result.scalar_one_or_none() is not None


def backoff(kind: JobKind | None, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before retry ``attempt + 1``: exponential, capped, with equal jitter.

    ``base * 2**(attempt-1)`` capped at the kind's maximum, then a uniformly random point
    in its upper half, so that jobs failing together do not retry together.
    """
    base = kind.backoff_seconds if kind else 30.0
    cap = kind.max_backoff_seconds if kind else 3600.0
    delay = min(cap, base * 2 ** max(0, attempt - 1))
    return float(delay / 2 + (rng or random).uniform(0, delay / 2))


async def fail(conn: AsyncConnection, claimed: Claimed, error: str) -> str:
    """Record a failed run: back to queued after a back-off, or dead; the new state."""
    kind = registry.kinds.get(claimed.kind)
    dead = claimed.attempts >= claimed.max_attempts
    now = utcnow()
    values: dict[str, Any] = {
        "last_error": error[:4000],
        "locked_by": None,
        "locked_until": None,
        "lease": None,
    }
    if dead:
        values.update(state="dead", finished_at=now)
    else:
        delay = backoff(kind, claimed.attempts)
        values.update(state="queued", run_at=now + timedelta(seconds=delay))
    result = await conn.execute(
        update(job)
        .where(job.c.pk == claimed.pk, job.c.lease == claimed.lease)
        .values(**values)
        .returning(job.c.pk)
    )
    if result.scalar_one_or_none() is None:
        return "lost"
    return "dead" if dead else "queued"


async def list_jobs(
    conn: AsyncConnection, *, state: str | None = None, kind: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Jobs, newest first, as JSON-ready dicts."""
    stmt = select(job).order_by(job.c.pk.desc()).limit(limit)
    if state is not None:
        stmt = stmt.where(job.c.state == state)
    if kind is not None:
        stmt = stmt.where(job.c.kind == kind)
    rows = (await conn.execute(stmt)).mappings().all()
    return [_public(dict(r)) for r in rows]


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = {str(k): v for k, v in row.items() if k not in ("lease", "payload")}
    out["id"] = out.pop("pk")
    out["payload"] = orjson.loads(row["payload"])
    for name in ("run_at", "locked_until", "created_at", "finished_at"):
        if out.get(name) is not None:
            out[name] = out[name].isoformat() + "Z"
    return out


async def retry_dead(conn: AsyncConnection, pk: int) -> bool:
    """Put a dead job back in the queue with fresh attempts; False if it is not dead."""
    result = await conn.execute(
        update(job)
        .where(job.c.pk == pk, job.c.state == "dead")
        .values(state="queued", attempts=0, run_at=utcnow(), finished_at=None)
        .returning(job.c.pk)
    )
    return result.scalar_one_or_none() is not None


async def count_by_state(conn: AsyncConnection) -> dict[str, int]:
    """How many jobs are in each state."""
    rows = await conn.execute(select(job.c.state, func.count()).group_by(job.c.state))
    counts = dict.fromkeys(STATES, 0)
    counts.update({state: n for state, n in rows.all()})
    return counts
