"""``_include`` and ``_revinclude`` (https://hl7.org/fhir/R4/search.html#include).

The first round applies every include to the page's matches (an include whose source
type is not the match's type adds nothing); each further round applies the ``:iterate``
(or STU3 ``:recurse``) ones to what the previous round added. A resource enters the Bundle at
most once: never a second time, never as an include when it is already a match.

Limits: at most ``MAX_INCLUDE_ROUNDS`` rounds and ``MAX_INCLUDED`` included resources per
page; reaching either adds a warning OperationOutcome entry (``search.mode = outcome``).

Every included resource is read through :func:`load_resources`, the one gate that keeps
included resources to those the search itself could return (live ones today; an access
policy filters there later).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.hooks import current_access
from smartmed.fhir.search.query import IncludeParam
from smartmed.fhir.storage.tables import idx_reference, resource

MAX_INCLUDE_ROUNDS = 4  # the first round and up to three levels of :iterate
MAX_INCLUDED = 1000  # included resources per page


@dataclass(frozen=True, slots=True)
class Found:
    """A resource put in the Bundle: its key, type, id and stored JSON."""

    pk: int
    type: str
    id: str
    content: str


@dataclass(frozen=True, slots=True)
class Included:
    """The included resources of a page, and why inclusion stopped early (if it did)."""

    resources: list[Found]
    warning: str | None = None


async def load_resources(
    conn: AsyncConnection,
    where: ColumnElement[bool],
    *,
    exclude: Collection[int] = (),
    limit: int,
    snapshot: int | None = None,
) -> list[Found]:
    """The live resources matching ``where``, in key order: the only way includes are read."""
    r = resource.c
    conds: list[Any] = [r.deleted == false(), where]
    if exclude:
        conds.append(r.pk.not_in(list(exclude)))
    if snapshot is not None:
        conds.append(r.pk <= snapshot)
    guard = current_access.get()
    if guard is not None:
        await guard.ready(conn)
        allowed = guard.any_condition(resource)
        if allowed is not None:
            conds.append(allowed)
    stmt = select(r.pk, r.type, r.id, r.content).where(*conds).order_by(r.pk).limit(limit)
    return [Found(*row) for row in (await conn.execute(stmt)).all()]


def _by_type(keys: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for type_, id_ in keys:
        grouped[type_].append(id_)
    return grouped


async def _forward(
    conn: AsyncConnection, include: IncludeParam, frontier: Sequence[Found]
) -> ColumnElement[bool] | None:
    """Which resources the frontier's references (per ``include``) point at."""
    sources = [f.pk for f in frontier if include.source in ("*", f.type)]
    if not sources:
        return None
    ref = idx_reference.c
    conds: list[Any] = [
        ref.res_pk.in_(sources),
        ref.target_type.is_not(None),
        ref.target_id.is_not(None),
    ]
    if include.param != "*":
        conds.append(ref.param == include.param)
    if include.target is not None:
        conds.append(ref.target_type == include.target)
    stmt = select(ref.target_type, ref.target_id).where(*conds).distinct()
    keys = [(row.target_type, row.target_id) for row in (await conn.execute(stmt)).all()]
    if not keys:
        return None
    r = resource.c
    return or_(*[and_(r.type == t, r.id.in_(ids)) for t, ids in _by_type(keys).items()])


def _reverse(include: IncludeParam, frontier: Sequence[Found]) -> ColumnElement[bool] | None:
    """Which resources (per ``include``) refer to the frontier."""
    targets = [(f.type, f.id) for f in frontier if include.target in (None, f.type)]
    if not targets:
        return None
    ref = idx_reference.c
    conds: list[Any] = [
        or_(
            *[
                and_(ref.target_type == t, ref.target_id.in_(ids))
                for t, ids in _by_type(targets).items()
            ]
        )
    ]
    if include.source != "*":
        conds.append(ref.resource_type == include.source)
    if include.param != "*":
        conds.append(ref.param == include.param)
    return resource.c.pk.in_(select(ref.res_pk).where(*conds))


async def resolve_includes(
    conn: AsyncConnection,
    matches: Sequence[Found],
    includes: Sequence[IncludeParam],
    *,
    snapshot: int | None = None,
) -> Included:
    """The resources the includes add to a page of ``matches``."""
    seen = {m.pk for m in matches}
    added: list[Found] = []
    frontier: Sequence[Found] = matches
    for round_ in range(MAX_INCLUDE_ROUNDS):
        active = [i for i in includes if round_ == 0 or i.iterate]
        if not active or not frontier:
            return Included(added)
        fresh: list[Found] = []
        for include in active:
            if include.reverse:
                where = _reverse(include, frontier)
            else:
                where = await _forward(conn, include, frontier)
            if where is None:
                continue
            room = MAX_INCLUDED - len(added) - len(fresh)
            found = await load_resources(
                conn, where, exclude=seen, limit=room + 1, snapshot=snapshot
            )
            if len(found) > room:
                fresh += found[:room]
                added += fresh
                return Included(added, f"only the first {MAX_INCLUDED} included resources")
            fresh += found
            seen.update(f.pk for f in found)
        added += fresh
        frontier = fresh
    if frontier and any(i.iterate for i in includes):
        return Included(added, f":iterate stopped after {MAX_INCLUDE_ROUNDS - 1} levels")
    return Included(added)
