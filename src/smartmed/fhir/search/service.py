"""Run searches: parse the request, query the store, render the ``searchset`` Bundle.

Results are ordered by ``_sort`` keys (then insertion order, so ties are stable) and
paged by offset within a snapshot: a first page that has a next page pins the newest
resource key that exists, and the next/previous links carry it, so resources created
while a client pages never shift the pages it has yet to read.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir import jsonio
from smartmed.fhir.errors import Invalid, OutcomeIssue, operation_outcome
from smartmed.fhir.repository import EngineServices
from smartmed.fhir.search.query import SearchError, SearchRequest, parse_search
from smartmed.fhir.search.sql import SUPPORTED_KINDS, param_condition
from smartmed.fhir.storage.tables import INDEX_TABLES, resource

__all__ = ["SUPPORTED_KINDS", "match_ids", "search_bundle"]

_CONTROL = ("_snapshot",)
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]").search


def parse(
    services: EngineServices, type_: str, items: list[tuple[str, str]], *, strict: bool
) -> SearchRequest:
    """Parse search parameters, turning parse errors into 400 OperationOutcomes."""
    for key, value in items:
        if _CONTROL_CHARS(key) or _CONTROL_CHARS(value):
            raise Invalid("search parameters may not contain control characters", expression=key)
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


def _conditions(services: EngineServices, type_: str, request: SearchRequest) -> list[Any]:
    res = resource
    type_column: Any = res.c.type
    if request.params and not services.is_postgres:
        # `type || ''` keeps SQLite from driving the query by the type index (every
        # resource of the type) instead of by the parameters' matching keys.
        type_column = res.c.type.op("||")("")
    conds: list[Any] = [type_column == type_, res.c.deleted.is_(False)]
    for parsed in request.params:
        conds.append(param_condition(res, type_, parsed, is_postgres=services.is_postgres))
    return conds


async def match_ids(
    conn: AsyncConnection, services: EngineServices, type_: str, query: str
) -> list[str]:
    """Ids of live resources of ``type_`` matching a conditional query (strict parsing)."""
    items = parse_qsl(query, keep_blank_values=True)
    if not items:
        raise Invalid("conditional criteria are empty")
    request = parse(services, type_, items, strict=True)
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
) -> str:
    """Run a type-level search and return the ``searchset`` Bundle JSON."""
    request = parse(services, type_, items, strict=strict)
    if request.include or request.revinclude:
        raise Invalid("_include and _revinclude are not supported yet", expression="_include")
    if request.summary not in (None, "false", "count"):
        raise Invalid(f"_summary={request.summary} is not supported yet", expression="_summary")
    control = dict(items)
    offset = request.offset
    snapshot: int | None = _non_negative(control.get("_snapshot", "0"), "_snapshot") or None
    conds = _conditions(services, type_, request)
    if snapshot is not None:
        conds.append(resource.c.pk <= snapshot)
    count = services.default_count if request.count is None else request.count
    rows: list[Any] = []
    if request.summary != "count" and count > 0:
        stmt = (
            select(resource.c.id, resource.c.content)
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
    elif offset == 0 and not has_next:
        total = len(rows)
    kept = [(k, v) for k, v in items if k not in ("_snapshot", "_offset")]
    if request.unknown:
        kept = [(k, v) for k, v in kept if k.split(":")[0] not in request.unknown]

    def link(relation: str, at: int) -> dict[str, str]:
        pinned = [("_snapshot", str(snapshot))] if snapshot is not None else []
        query = urlencode(kept + pinned + [("_offset", str(at))])
        return {"relation": relation, "url": f"{base_url}/{type_}?{query}"}

    links = [link("self", offset)]
    if has_next:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    head: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        head["total"] = total
    head["link"] = links
    elements = set(request.elements)
    parts = []
    for row in rows:
        content = row.content
        if elements:
            content = _only_elements(content, elements)
        full_url = orjson.dumps(f"{base_url}/{type_}/{row.id}").decode()
        parts.append(f'{{"fullUrl":{full_url},"resource":{content},"search":{{"mode":"match"}}}}')
    if request.unknown:
        issue = OutcomeIssue(
            "warning",
            "not-supported",
            "ignored unknown search parameters: " + ", ".join(request.unknown),
        )
        outcome = orjson.dumps(operation_outcome([issue])).decode()
        parts.append(f'{{"resource":{outcome},"search":{{"mode":"outcome"}}}}')
    return orjson.dumps(head).decode()[:-1] + ',"entry":[' + ",".join(parts) + "]}"


def _only_elements(content: str, elements: set[str]) -> str:
    document = jsonio.loads(content)
    keep = {"resourceType", "id", "meta"} | elements
    subset = {k: v for k, v in document.items() if k in keep}
    meta = dict(subset.get("meta") or {})
    # search.html#elements: a subset is marked SUBSETTED so nobody mistakes it for the whole.
    meta["tag"] = [
        *meta.get("tag", []),
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "SUBSETTED",
        },
    ]
    subset["meta"] = meta
    return jsonio.dumps(subset)


def _non_negative(raw: str, name: str) -> int:
    if not raw.isdigit():
        raise Invalid(f"{name} must be a whole number", expression=name)
    return int(raw)
