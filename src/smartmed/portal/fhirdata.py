"""Reading and writing FHIR resources for the portal, in-process through the engine.

Pages never touch the store's tables: they search with the engine's search service and
write through the repository, in one transaction per form submission, so validation,
indexes, history and write hooks apply exactly as on the REST API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError, NotFound
from smartmed.fhir.request import base_url
from smartmed.fhir.search.service import search_bundle


@dataclass(frozen=True, slots=True)
class Page:
    """One page of search results."""

    items: list[dict[str, Any]]
    included: dict[str, dict[str, Any]]  # "Type/id" -> resource
    total: int
    offset: int
    count: int

    @property
    def has_next(self) -> bool:
        return self.offset + self.count < self.total

    @property
    def has_previous(self) -> bool:
        return self.offset > 0

    @property
    def first(self) -> int:
        return self.offset + 1 if self.items else 0

    @property
    def last(self) -> int:
        return self.offset + len(self.items)


def engine_of(request: Request) -> FhirEngine:
    engine: FhirEngine = request.app.state.fhir
    return engine


async def search(
    request: Request,
    type_: str,
    params: Sequence[tuple[str, str]],
    *,
    offset: int = 0,
    count: int = 20,
) -> Page:
    """A page of ``type_`` matching ``params`` (FHIR search syntax), with its total."""
    engine = engine_of(request)
    items = [*params, ("_count", str(count)), ("_offset", str(offset)), ("_total", "accurate")]
    async with engine.db.read() as conn:
        raw = await search_bundle(
            conn, engine.services, type_, items, base_url=base_url(request), strict=False
        )
    bundle = orjson.loads(raw)
    matches, included = [], {}
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        mode = entry.get("search", {}).get("mode")
        if mode == "match":
            matches.append(resource)
        elif mode == "include":
            included[f"{resource['resourceType']}/{resource['id']}"] = resource
    return Page(matches, included, int(bundle.get("total", len(matches))), offset, count)


async def search_all(
    request: Request, type_: str, params: Sequence[tuple[str, str]], limit: int = 1000
) -> list[dict[str, Any]]:
    """Every match up to ``limit`` (for choices in forms)."""
    return (await search(request, type_, params, count=limit)).items


async def read(request: Request, type_: str, id_: str) -> dict[str, Any] | None:
    engine = engine_of(request)
    try:
        async with engine.db.read() as conn:
            stored = await engine.repository(conn).read(type_, id_)
    except FhirError:
        return None
    resource: dict[str, Any] = orjson.loads(stored.content or "{}")
    return resource


async def save(
    request: Request, resources: list[dict[str, Any]], *, if_match: int | None = None
) -> list[dict[str, Any]]:
    """Create (no ``id``) or update each resource, all in one transaction; stored bodies.

    A resource may reference an earlier one of the list as ``{"reference": "#n"}`` with
    ``n`` its position: the reference is rewritten to the stored id. ``if_match`` is the
    version the first resource must still have (the one the form was opened on): a
    concurrent change is refused rather than overwritten.
    """
    engine = engine_of(request)
    stored_bodies: list[dict[str, Any]] = []
    async with engine.db.write() as conn:
        repo = engine.repository(conn)
        for position, body in enumerate(resources):
            body = _resolve(body, stored_bodies)
            if body.get("id"):
                expected = if_match if position == 0 else None
                result = await repo.update(
                    body["resourceType"], body["id"], body, if_match=expected
                )
                stored = result.stored
            else:
                stored = await repo.create(body)
            stored_bodies.append(orjson.loads(stored.content or "{}"))
    return stored_bodies


def refusal(exc: FhirError) -> str:
    """What the engine said when it refused a write (its OperationOutcome texts)."""
    return "; ".join(issue.diagnostics for issue in exc.issues) or str(exc)


def _resolve(value: Any, stored: list[dict[str, Any]]) -> Any:
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith("#") and ref[1:].isdigit():
            target = stored[int(ref[1:])]
            return {**value, "reference": f"{target['resourceType']}/{target['id']}"}
        return {k: _resolve(v, stored) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, stored) for v in value]
    return value


__all__ = ["FhirError", "NotFound", "Page", "read", "refusal", "save", "search", "search_all"]
