"""Verification of the chain: recompute every link from the anchor (or genesis) to the head.

The first link that does not hold is classified:

- **removed**: the record names a predecessor (``prev_seq``) that is no longer there;
- **reordered**: the record names a predecessor after itself, or its content is the
  record that belongs at another (later) position of the chain;
- **altered**: anything else (content, hash or link changed), or a chained record lost
  its hash.

With a checkpoint (seq, hash) the chain must still contain that record with that hash:
**truncated** when the chain now ends before it, **rewritten** when the record differs.
Records not chained yet are reported as pending, not as errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.audit.chain import anchor, link_hash
from smartmed.audit.record import instant
from smartmed.audit.tables import audit_anchor, audit_log
from smartmed.fhir.storage.database import Database


@dataclass(frozen=True, slots=True)
class Problem:
    """The first bad place of the chain."""

    seq: int
    kind: str  # altered | removed | reordered | truncated | rewritten | unprovable
    message: str


@dataclass(frozen=True, slots=True)
class Report:
    """What verification found."""

    records: int  # chained records checked
    start_seq: int  # the anchor verification started from (0: genesis)
    head_seq: int  # the last record that verified
    head_hash: str
    pending: int  # records not chained yet
    problem: Problem | None = None
    checkpoint_seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return (
                f"chain broken at seq {self.problem.seq}: {self.problem.kind} — "
                f"{self.problem.message} ({self.records} records verified before it)"
            )
        text = f"{self.records} records, chain intact up to seq {self.head_seq}"
        if self.start_seq:
            text += f" (from the retention anchor at seq {self.start_seq})"
        if self.pending:
            text += f"; {self.pending} records not chained yet"
        if self.checkpoint_seq is not None:
            text += f"; checkpoint at seq {self.checkpoint_seq} verified"
        return text


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    body: str
    prev_seq: int | None
    hash: str | None
    recorded: datetime | None = None


_BATCH = 5000


async def _rows(conn: AsyncConnection, after: int) -> list[_Row]:
    c = audit_log.c
    result = await conn.execute(
        select(c.seq, c.body, c.prev_seq, c.hash, c.recorded)
        .where(c.seq > after)
        .order_by(c.seq)
        .limit(_BATCH)
    )
    return [
        _Row(
            int(r.seq),
            r.body,
            None if r.prev_seq is None else int(r.prev_seq),
            r.hash,
            r.recorded,
        )
        for r in result
    ]


async def verify(db: Database, *, checkpoint: tuple[int, str] | None = None) -> Report:
    """Check the whole retained chain (and that it still holds ``checkpoint``)."""
    async with db.read() as conn:
        start_seq, start_hash = await anchor(conn)
        if checkpoint is not None and checkpoint[0] <= start_seq:
            return await _pruned_checkpoint(conn, checkpoint, start_seq, start_hash)
        return await _walk(conn, start_seq, start_hash, checkpoint)


async def _walk(
    conn: AsyncConnection, start_seq: int, start_hash: str, checkpoint: tuple[int, str] | None
) -> Report:
    prev_seq, prev_hash = start_seq, start_hash
    records = pending = 0
    first_pending: int | None = None
    reread_from: int | None = None
    seen_checkpoint = False
    after = start_seq
    while rows := await _rows(conn, after):
        after = rows[-1].seq
        for i, row in enumerate(rows):
            if row.hash is None:
                pending += 1
                first_pending = first_pending if first_pending is not None else row.seq
                continue
            if first_pending is not None:
                if reread_from != first_pending:
                    # The chainer may have linked it since our earlier read: look again.
                    reread_from, after = first_pending, first_pending - 1
                    pending, first_pending = 0, None
                    break
                problem = Problem(
                    first_pending,
                    "altered",
                    f"record {first_pending} has no chain hash but later records are "
                    "chained (its hash was removed)",
                )
                return Report(records, start_seq, prev_seq, prev_hash, pending, problem)
            if row.prev_seq == prev_seq and (
                link_hash(prev_hash, row.seq, prev_seq, row.body) == row.hash
            ):
                if (
                    row.recorded is not None
                    and f'"recorded":"{instant(row.recorded)}"' not in row.body
                ):
                    # The column retention pruning goes by must say what the record says.
                    problem = Problem(
                        row.seq,
                        "altered",
                        f"the time column of record {row.seq} ({instant(row.recorded)}) is not "
                        "the record's time (changed to make it look older or newer)",
                    )
                    return Report(records, start_seq, prev_seq, prev_hash, pending, problem)
                records += 1
                prev_seq, prev_hash = row.seq, row.hash
                if checkpoint is not None and row.seq >= checkpoint[0] and not seen_checkpoint:
                    seen_checkpoint = True
                    bad = _checkpoint_problem(row, checkpoint)
                    if bad is not None:
                        return Report(records, start_seq, prev_seq, prev_hash, pending, bad)
                continue
            ahead = rows[i + 1 :] + await _rows(conn, after)
            problem = _classify(row, prev_seq, prev_hash, ahead)
            return Report(records, start_seq, prev_seq, prev_hash, pending, problem)
    if checkpoint is not None and not seen_checkpoint:
        problem = Problem(
            checkpoint[0],
            "truncated",
            f"the chain ends at seq {prev_seq} but the checkpoint names seq {checkpoint[0]}: "
            "records at the end were removed",
        )
        return Report(records, start_seq, prev_seq, prev_hash, pending, problem)
    return Report(
        records,
        start_seq,
        prev_seq,
        prev_hash,
        pending,
        checkpoint_seq=None if checkpoint is None else checkpoint[0],
    )


def _checkpoint_problem(row: _Row, checkpoint: tuple[int, str]) -> Problem | None:
    seq, digest = checkpoint
    if row.seq != seq:
        return Problem(
            seq,
            "rewritten",
            f"the checkpoint's record {seq} is not in the chain (the chain goes from an "
            f"earlier record to {row.seq}): history was rewritten",
        )
    if row.hash != digest:
        return Problem(
            seq,
            "rewritten",
            f"record {seq} has hash {str(row.hash)[:16]}…, the checkpoint says {digest[:16]}…: "
            "history was rewritten",
        )
    return None


async def _pruned_checkpoint(
    conn: AsyncConnection, checkpoint: tuple[int, str], start_seq: int, start_hash: str
) -> Report:
    seq, digest = checkpoint
    found = await conn.scalar(select(audit_anchor.c.hash).where(audit_anchor.c.seq == seq))
    rest = await _walk(conn, start_seq, start_hash, None)
    if found is not None and found == digest:
        return Report(
            rest.records,
            rest.start_seq,
            rest.head_seq,
            rest.head_hash,
            rest.pending,
            rest.problem,
            checkpoint_seq=seq if rest.problem is None else None,
        )
    problem = Problem(
        seq,
        "unprovable",
        f"the checkpoint's record {seq} was pruned (records up to {start_seq} are gone) "
        "and no retention anchor matches it",
    )
    return Report(rest.records, start_seq, rest.head_seq, rest.head_hash, rest.pending, problem)


def _classify(row: _Row, prev_seq: int, prev_hash: str, ahead: list[_Row]) -> Problem:
    """Why ``row`` does not follow (prev_seq, prev_hash)."""
    if row.prev_seq is not None and prev_seq < row.prev_seq < row.seq:
        return Problem(
            row.prev_seq,
            "removed",
            f"record {row.seq} is chained after record {row.prev_seq}, which is missing "
            f"(the last intact record is {prev_seq})",
        )
    if row.prev_seq is not None and row.prev_seq >= row.seq:
        return Problem(
            row.seq,
            "reordered",
            f"record {row.seq} holds the chain link of a record after {row.prev_seq}",
        )
    moved_to = _belongs_at(row, ahead)
    if moved_to is not None:
        return Problem(
            row.seq,
            "reordered",
            f"record {row.seq} holds the content of record {moved_to} (records were swapped "
            "or moved)",
        )
    if row.prev_seq is not None and row.prev_seq < prev_seq:
        return Problem(
            row.seq,
            "altered",
            f"record {row.seq} is chained after record {row.prev_seq}, skipping record "
            f"{prev_seq} (a record was inserted or altered)",
        )
    try:
        orjson.loads(row.body)
    except orjson.JSONDecodeError:
        return Problem(row.seq, "altered", f"record {row.seq} is no longer valid JSON")
    return Problem(
        row.seq,
        "altered",
        f"record {row.seq} does not match its chain hash (its content or hash was changed, "
        f"or record {prev_seq} was rewritten with a new hash)",
    )


def _belongs_at(row: _Row, ahead: list[_Row]) -> int | None:
    """The later position (within the rows read ahead) whose stored link ``row``'s content
    satisfies, if any: the content was moved there from that position."""
    previous = row
    for other in ahead:
        if other.hash is not None and other.prev_seq is not None and previous.hash is not None:
            candidate: Any = link_hash(previous.hash, other.seq, other.prev_seq, row.body)
            if candidate == other.hash:
                return other.seq
        previous = other
    return None
