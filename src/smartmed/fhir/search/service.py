"""Run searches: parse the request, query the store, render the ``searchset`` Bundle.

Results are ordered by ``_sort`` keys (then insertion order, so ties are stable) and
paged by offset within a snapshot: a first page that has a next page pins the newest
resource key that exists, and the next/previous links carry it, so resources created
while a client pages never shift the pages it has yet to read.

Each page carries its ``_include``/``_revinclude`` resources (``include.py``, not counted
in ``total``), ``_summary``/``_elements`` subsets (``summary.py``), ``_has`` reverse chains
(``has.py``); a compartment search passes its restriction in ``restrict``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.errors import Invalid, OutcomeIssue, operation_outcome
from smartmed.fhir.hooks import current_access, note_touched
from smartmed.fhir.repository import EngineServices
from smartmed.fhir.search.has import has_condition
from smartmed.fhir.search.include import Found, resolve_includes
from smartmed.fhir.search.query import ParsedParam, SearchError, SearchRequest, parse_search
from smartmed.fhir.search.sql import SUPPORTED_KINDS, param_condition
from smartmed.fhir.search.summary import SUBSET_MODES, only_elements, summarize
from smartmed.fhir.storage.tables import INDEX_TABLES, resource

__all__ = ["SUPPORTED_KINDS", "match_ids", "search_bundle"]

_CONTROL = ("_snapshot", "_contained", "_containedType")
_CONTAINED_DEFAULTS = (("_contained", "false"), ("_containedType", "container"))
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]").search


def parse(
    services: EngineServices, type_: str, items: list[tuple[str, str]], *, strict: bool
) -> SearchRequest:
    """Parse search parameters, turning parse errors into 400 OperationOutcomes."""
    for key, value in items:
        if _CONTROL_CHARS(key) or _CONTROL_CHARS(value):
            raise Invalid("search parameters may not contain control characters", expression=key)
        # search.html#contained: only the default, searching the container resources.
        if key in _CONTROL[1:] and (key, value) not in _CONTAINED_DEFAULTS:
            raise Invalid(f"{key}={value} is not supported (only the default)", expression=key)
    try:
        return parse_search(
            type_,
            [(k, v) for k, v in items if k not in _CONTROL],
            services.registry,
            strict=strict,
            default_count=services.default_count,
            max_count=services.max_count,
        )
    except SearchError as exc:
        raise Invalid(str(exc), expression=exc.expression) from None


# Conditions of the parameters most searches repeat (a code, a category, a status), kept:
# SQL expressions are immutable and building one costs more than running the query.
# Chains are never kept (they follow the caller's access policy), nor ``ap`` (relative to
# now) or values that cannot be a key.
_KEPT_CONDITIONS: dict[tuple[str, ParsedParam, bool], ColumnElement[bool]] = {}
_KEPT_MAX = 4096


def _param_condition(type_: str, parsed: ParsedParam, is_postgres: bool) -> ColumnElement[bool]:
    if parsed.chain or any(t.prefix == "ap" for t in parsed.values):  # 'ap' depends on now
        return param_condition(resource, type_, parsed, is_postgres=is_postgres)
    key = (type_, parsed, is_postgres)
    try:
        found = _KEPT_CONDITIONS.get(key)
    except TypeError:  # an unhashable value (e.g. a value set's expansion)
        return param_condition(resource, type_, parsed, is_postgres=is_postgres)
    if found is None:
        found = param_condition(resource, type_, parsed, is_postgres=is_postgres)
        if len(_KEPT_CONDITIONS) >= _KEPT_MAX:
            _KEPT_CONDITIONS.pop(next(iter(_KEPT_CONDITIONS)))
        _KEPT_CONDITIONS[key] = found
    return found


def _conditions(
    services: EngineServices,
    type_: str,
    request: SearchRequest,
    restrict: Sequence[ColumnElement[bool]] = (),
) -> list[Any]:
    res = resource
    type_column: Any = res.c.type
    if (request.params or request.has or restrict) and not services.is_postgres:
        # `type || ''` keeps SQLite from driving the query by the type index (every
        # resource of the type) instead of by the parameters' matching keys.
        type_column = res.c.type.op("||")("")
    conds: list[Any] = [type_column == type_, res.c.deleted.is_(False)]
    for parsed in request.params:
        conds.append(_param_condition(type_, parsed, services.is_postgres))
    for has in request.has:
        conds.append(has_condition(res, type_, has, is_postgres=services.is_postgres))
    return [*conds, *restrict]


async def match_ids(
    conn: AsyncConnection, services: EngineServices, type_: str, query: str
) -> list[str]:
    """Ids of live resources of ``type_`` matching a conditional query (strict parsing)."""
    items = parse_qsl(query, keep_blank_values=True)
    if not items:
        raise Invalid("conditional criteria are empty")
    request = parse(services, type_, items, strict=True)
    guard = current_access.get()
    if guard is not None:
        await guard.ready(conn)  # chains and _has consult it
    stmt = select(resource.c.id).where(*_conditions(services, type_, request)).limit(2)
    return list((await conn.execute(stmt)).scalars())


def _order_by(services: EngineServices, type_: str, request: SearchRequest) -> list[Any]:
    keys: list[Any] = []
    for code, descending in request.sort:
        if code == "_id":
            column: Any = resource.c.id
        elif code == "_lastUpdated":
            column = resource.c.last_updated
        else:
            param = services.registry.get(type_, code)
            if param is None or param.type not in (
                "string",
                "date",
                "token",
                "number",
                "quantity",
                "uri",
            ):
                raise Invalid(f"cannot sort by '{code}'", expression="_sort")
            table = INDEX_TABLES[param.type]
            value_column = {
                "string": table.c.get("norm"),
                "date": table.c.get("low"),
                "token": table.c.get("code"),
                "number": table.c.get("value"),
                "quantity": table.c.get("value"),
                "uri": table.c.get("value"),
            }[param.type]
            agg = func.max(value_column) if descending else func.min(value_column)
            column = (
                select(agg)
                .where(table.c.res_pk == resource.c.pk, table.c.param == code)
                .scalar_subquery()
            )
        keys.append(column.desc() if descending else column.asc())
    keys.append(resource.c.pk.asc())
    return keys


async def search_bundle(
    conn: AsyncConnection,
    services: EngineServices,
    type_: str,
    items: list[tuple[str, str]],
    *,
    base_url: str,
    strict: bool,
    path: str | None = None,
    restrict: Sequence[ColumnElement[bool]] = (),
) -> str:
    """Run a type-level search (within ``restrict``) and return the ``searchset`` Bundle JSON.

    ``path`` is where the links point (default ``type_``; a compartment's own path)."""
    request = parse(services, type_, items, strict=strict)
    control = dict(items)
    offset = request.offset
    snapshot: int | None = _non_negative(control.get("_snapshot", "0"), "_snapshot") or None
    guard = current_access.get()
    if guard is not None:
        await guard.ready(conn)  # chains and _has consult it too
    conds = _conditions(services, type_, request, restrict)
    if guard is not None:
        guard.check_summary(type_, request.summary)
        allowed = guard.search_condition(resource, type_)
        if allowed is not None:
            conds.append(allowed)
    if snapshot is not None:
        conds.append(resource.c.pk <= snapshot)
    count = services.default_count if request.count is None else request.count
    rows: list[Any] = []
    if request.summary != "count" and count > 0:
        stmt = (
            select(resource.c.pk, resource.c.id, resource.c.content)
            .where(*conds)
            .order_by(*_order_by(services, type_, request))
            .limit(count + 1)
            .offset(offset)
        )
        rows = list((await conn.execute(stmt)).all())
    has_next = len(rows) > count
    rows = rows[:count]
    if has_next and snapshot is None:
        # Pin the pages that follow to what exists now (one extra query, only when paging).
        snapshot = (
            await conn.execute(select(func.coalesce(func.max(resource.c.pk), 0)))
        ).scalar_one()
    total: int | None = None
    # search.html#count: _count=0 is treated like _summary=count (the total, no entries).
    if request.summary == "count" or count == 0 or request.total in ("accurate", "estimate"):
        total = (
            await conn.execute(select(func.count()).select_from(resource).where(*conds))
        ).scalar_one()
    elif offset == 0 and not has_next and request.total != "none":
        total = len(rows)
    suppressed = False
    if guard is not None and total is not None:
        shown = guard.suppress_total(type_, total)
        suppressed = shown is None
        total = shown
    kept = [(k, v) for k, v in items if k not in ("_snapshot", "_offset")]
    if request.unknown:
        kept = [(k, v) for k, v in kept if k.split(":")[0] not in request.unknown]
    where = path or type_

    def link(relation: str, at: int) -> dict[str, str]:
        pinned = [("_snapshot", str(snapshot))] if snapshot is not None else []
        query = urlencode(kept + pinned + [("_offset", str(at))])
        return {"relation": relation, "url": f"{base_url}/{where}?{query}"}

    links = [link("self", offset)]
    if has_next:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    head: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    # _total=none omits the total, unless it is all that was asked for (_summary=count).
    if total is not None and (request.total != "none" or count == 0 or request.summary == "count"):
        head["total"] = total
    head["link"] = links
    matches = [Found(row.pk, type_, row.id, row.content) for row in rows]
    included = await resolve_includes(conn, matches, request.includes, snapshot=snapshot)
    summary = request.summary if request.summary in SUBSET_MODES else None
    elements = set(request.elements)
    parts = []
    for mode, found in [("match", m) for m in matches] + [
        ("include", i) for i in included.resources
    ]:
        content = found.content
        if summary is not None:
            content = summarize(content, summary)
        elif elements and mode == "match":
            content = only_elements(content, elements)
        note_touched(found.type, found.id, found.content)
        full_url = orjson.dumps(f"{base_url}/{found.type}/{found.id}").decode()
        parts.append(f'{{"fullUrl":{full_url},"resource":{content},"search":{{"mode":"{mode}"}}}}')
    issues = []
    if request.unknown:
        text = "ignored unknown search parameters: " + ", ".join(request.unknown)
        issues.append(OutcomeIssue("warning", "not-supported", text))
    if included.warning is not None:
        issues.append(OutcomeIssue("warning", "too-costly", "included " + included.warning))
    if suppressed:
        text = "the total is withheld: small counts are suppressed so no one can be singled out"
        issues.append(OutcomeIssue("information", "suppressed", text))
    if issues:
        outcome = orjson.dumps(operation_outcome(issues)).decode()
        parts.append(f'{{"resource":{outcome},"search":{{"mode":"outcome"}}}}')
    return orjson.dumps(head).decode()[:-1] + ',"entry":[' + ",".join(parts) + "]}"


def _non_negative(raw: str, name: str) -> int:
    if not raw.isdigit():
        raise Invalid(f"{name} must be a whole number", expression=name)
    return int(raw)
