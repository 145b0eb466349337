"""Retention: remove records older than ``SMARTMED_AUDIT_RETENTION_DAYS``, keep verifiability.

Only a prefix of the chain is removed (every record up to the last one older than the
cutoff, all of them chained), and only after the whole chain verified. The last removed
record's seq and hash become an anchor in the same transaction; verification then starts
from the newest anchor. The database triggers refuse any other deletion, and any deletion
of records younger than the legal minimum (183 days). Materialised AuditEvents of pruned
records are deleted through the repository (searches stop returning them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.audit.chain import CHAIN_LOCK, anchor, chain_pending, pg_lock
from smartmed.audit.materialise import MARK
from smartmed.audit.tables import audit_anchor, audit_log, audit_state
from smartmed.audit.verify import verify
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.tables import resource

MIN_RETENTION_DAYS = 183  # six months: the minimum Chinese rules require for audit logs


class PruneRefused(RuntimeError):
    """Pruning would destroy evidence of a broken chain, or the retention is too short."""


@dataclass(frozen=True, slots=True)
class PruneResult:
    pruned: int
    anchor_seq: int | None
    cutoff: datetime

    def summary(self) -> str:
        when = self.cutoff.strftime("%Y-%m-%d %H:%M:%S")
        if not self.pruned:
            return f"no records older than {when} UTC: nothing pruned"
        return (
            f"pruned {self.pruned} records older than {when} UTC; "
            f"verification now starts from the anchor at seq {self.anchor_seq}"
        )


async def prune(
    engine: FhirEngine, *, retention_days: int, now: datetime | None = None
) -> PruneResult:
    """Remove the records older than ``retention_days`` (the chain must verify first)."""
    if retention_days < MIN_RETENTION_DAYS:
        raise PruneRefused(
            f"retention of {retention_days} days is under the legal minimum of "
            f"{MIN_RETENTION_DAYS} days"
        )
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    cutoff = now - timedelta(days=retention_days)
    db = engine.db
    await chain_pending(db)
    report = await verify(db)
    if not report.ok:
        raise PruneRefused(f"the chain does not verify, nothing pruned: {report.summary()}")
    c = audit_log.c
    async with db.write() as conn:
        await pg_lock(conn, CHAIN_LOCK)
        start, _ = await anchor(conn)
        first_young = await conn.scalar(
            select(func.min(c.seq)).where(
                c.seq > start, or_(c.recorded >= cutoff, c.hash.is_(None))
            )
        )
        query = select(c.seq, c.hash).where(c.seq > start, c.recorded < cutoff)
        if first_young is not None:
            query = query.where(c.seq < first_young)
        last = (await conn.execute(query.order_by(c.seq.desc()).limit(1))).first()
        if last is None:
            return PruneResult(0, None, cutoff)
        count = int(
            await conn.scalar(select(func.count()).select_from(audit_log).where(c.seq <= last.seq))
            or 0
        )
        await conn.execute(
            insert(audit_anchor).values(
                seq=last.seq, hash=last.hash, pruned_at=now, cutoff=cutoff, pruned=count
            )
        )
        await conn.execute(delete(audit_log).where(c.seq <= last.seq))
        mark = await conn.scalar(select(audit_state.c.value).where(audit_state.c.name == MARK))
    await _delete_events(engine, start + 1, min(int(last.seq), int(mark or 0)))
    return PruneResult(count, int(last.seq), cutoff)


async def _delete_events(engine: FhirEngine, first: int, last: int, batch: int = 200) -> None:
    for low in range(first, last + 1, batch):
        async with engine.db.write() as conn:
            repo = engine.repository(conn)
            for seq in range(low, min(low + batch, last + 1)):
                await repo.delete("AuditEvent", f"audit-{seq}")
                # A record that touched several patients became audit-<seq>-1 … -<n>.
                n = 1
                while await _stored(conn, f"audit-{seq}-{n}"):
                    await repo.delete("AuditEvent", f"audit-{seq}-{n}")
                    n += 1


async def _stored(conn: AsyncConnection, id_: str) -> bool:
    """Whether an AuditEvent ``id_`` was ever stored (live or deleted)."""
    found = await conn.scalar(
        select(resource.c.pk).where(resource.c.type == "AuditEvent", resource.c.id == id_)
    )
    return found is not None
