"""Compartment search: ``GET [base]/Patient/123/Observation?code=...``.

https://hl7.org/fhir/R4/compartmentdefinition.html: a resource is in the compartment of
``Patient/123`` when one of the reference parameters the official CompartmentDefinition
lists for its type points at ``Patient/123`` (``{def}``: the owner itself, e.g. an
Encounter in its own compartment). A compartment search is the type's search restricted
to those resources (https://hl7.org/fhir/R4/http.html#search, "compartment search").
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import Request, Response
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.sql import FromClause

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.definitions import package
from smartmed.fhir.errors import Invalid
from smartmed.fhir.request import FHIR_JSON, Prefer, base_url, negotiate
from smartmed.fhir.search.service import search_bundle
from smartmed.fhir.search.summary import definitions_folder
from smartmed.fhir.storage.tables import idx_reference, resource

Compartments = dict[str, dict[str, tuple[str, ...]]]  # owner type -> member type -> params
OWN = "{def}"  # CompartmentDefinition.resource.param: the owner resource itself


@lru_cache(maxsize=4)
def compartments(folder: Path) -> Compartments:
    """The official compartments: owner type, then member type, then its parameters."""
    found: Compartments = {}
    for definition in package.compartment_definitions(folder):
        members = found.setdefault(definition["code"], {})
        for entry in definition.get("resource", ()):
            if entry.get("param"):
                members[entry["code"]] = tuple(entry["param"])
    return found


def member_params(folder: Path, owner_type: str, type_: str) -> tuple[str, ...]:
    """The parameters putting a ``type_`` in an ``owner_type`` compartment (400 if none)."""
    table = compartments(folder)
    if owner_type not in table:
        known = ", ".join(sorted(table))
        raise Invalid(f"there is no {owner_type} compartment (known: {known})", expression="type")
    params = table[owner_type].get(type_)
    if not params:
        raise Invalid(f"{type_} is not in the {owner_type} compartment", expression="type")
    return params


def compartment_condition(
    res: FromClause, type_: str, owner_type: str, owner_id: str, params: tuple[str, ...]
) -> ColumnElement[bool]:
    """Resource alias ``res`` (of ``type_``) is in the compartment of ``owner_type/owner_id``."""
    options: list[ColumnElement[bool]] = []
    if OWN in params and type_ == owner_type:
        options.append(res.c.id == owner_id)
    codes = [p for p in params if p != OWN]
    if codes:
        ref = idx_reference.alias()
        members = select(ref.c.res_pk).where(
            ref.c.resource_type == type_,
            ref.c.param.in_(codes),
            ref.c.target_type == owner_type,
            ref.c.target_id == owner_id,
        )
        options.append(res.c.pk.in_(members))
    return or_(*options)


async def compartment_search(request: Request) -> Response:
    """``GET [base]/{owner type}/{owner id}/{type}``: the search within one compartment."""
    negotiate(request)
    engine: FhirEngine = request.app.state.fhir
    owner_type: str = request.path_params["type"]
    owner_id: str = request.path_params["id"]
    type_: str = request.path_params["ctype"]
    if type_ not in engine.resource_types:
        raise Invalid(f"unknown resource type '{type_}'", expression="type")
    folder = definitions_folder(engine.settings.definitions_dir)
    params = member_params(folder, owner_type, type_)
    condition = compartment_condition(resource, type_, owner_type, owner_id, params)
    async with engine.db.read() as conn:
        body = await search_bundle(
            conn,
            engine.services,
            type_,
            list(request.query_params.multi_items()),
            base_url=base_url(request),
            strict=Prefer.parse(request).handling == "strict",
            path=f"{owner_type}/{owner_id}/{type_}",
            restrict=(condition,),
        )
    return Response(body, 200, media_type=FHIR_JSON)
