"""``Patient/[id]/$everything`` (https://hl7.org/fhir/R4/patient-operation-everything.html).

The patient, every live resource in its compartment (the official Patient
CompartmentDefinition, as for compartment search), and the resources those refer to
whose types are outside the compartment (Medication, Practitioner, Organization,
Location...), as the operation suggests; the latter have ``search.mode = include``.
``_since`` keeps resources updated at or after an instant, ``_type`` keeps the listed
types, ``_count`` pages (``_offset`` and a pinned ``_snapshot`` in the links, like search).
``start``/``end`` (care dates) are not supported: the registry rejects them with a 400.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import ColumnElement, and_, case, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.errors import Invalid
from smartmed.fhir.hooks import current_access, note_touched
from smartmed.fhir.operations import Operation, OperationCall, OperationParam, OperationResult
from smartmed.fhir.request import parse_instant_param
from smartmed.fhir.search.compartment import OWN, compartments
from smartmed.fhir.search.summary import definitions_folder
from smartmed.fhir.storage.tables import idx_reference, resource

PATIENT = "Patient"


def _types(call: OperationCall, known: frozenset[str]) -> frozenset[str] | None:
    raw: list[str] = call.inputs.get("_type") or []
    wanted = {t.strip() for value in raw for t in value.split(",") if t.strip()}
    unknown = sorted(wanted - known)
    if unknown:
        raise Invalid(f"_type: unknown resource types {', '.join(unknown)}", expression="_type")
    return frozenset(wanted) if wanted else None


async def _referenced(
    conn: AsyncConnection, members: ColumnElement[bool], outside: frozenset[str]
) -> list[ColumnElement[bool]]:
    """Conditions for the resources of ``outside`` types that the members refer to."""
    ref = idx_reference.c
    r = resource.c
    referrers = select(r.pk).where(members, r.deleted == false())
    stmt = (
        select(ref.target_type, ref.target_id)
        .where(ref.res_pk.in_(referrers), ref.target_type.in_(outside), ref.target_id.is_not(None))
        .distinct()
    )
    grouped: dict[str, list[str]] = {}
    for row in (await conn.execute(stmt)).all():
        grouped.setdefault(row.target_type, []).append(row.target_id)
    return [and_(r.type == t, r.id.in_(ids)) for t, ids in grouped.items()]


NOT_RECORD = frozenset({"AuditEvent"})


async def _everything(call: OperationCall) -> OperationResult:
    """$everything on one Patient: a paged ``searchset`` of its whole record."""
    engine = call.context
    patient_id = call.resource_id
    assert patient_id is not None
    settings = engine.settings
    count = call.inputs.get("_count")
    count = settings.default_page_size if count is None else count
    offset = call.inputs.get("_offset") or 0
    snapshot = call.inputs.get("_snapshot") or None
    if count < 0 or offset < 0 or (snapshot is not None and snapshot < 0):
        raise Invalid("_count, _offset and _snapshot must not be negative", expression="_count")
    count = min(count, settings.max_page_size)
    types = _types(call, engine.resource_types)
    table = compartments(definitions_folder(settings.definitions_dir))[PATIENT]
    ref = idx_reference.c
    r = resource.c
    # The audit trail about a patient is in the Patient compartment but is not part of
    # their record: it comes only when asked for by _type.
    links_to_patient = [
        and_(ref.resource_type == t, ref.param.in_([p for p in params if p != OWN]))
        for t, params in table.items()
        if t not in NOT_RECORD or (types is not None and t in types)
    ]
    member_pks = select(ref.res_pk).where(
        ref.target_type == PATIENT, ref.target_id == patient_id, or_(*links_to_patient)
    )
    itself = and_(r.type == PATIENT, r.id == patient_id)
    members = or_(itself, r.pk.in_(member_pks))
    outside = engine.resource_types - set(table) - {PATIENT}
    async with engine.db.read() as conn:
        referenced = await _referenced(conn, members, outside)
        conds: list[Any] = [r.deleted == false(), or_(members, *referenced)]
        if types is not None:
            conds.append(r.type.in_(types))
        if call.inputs.get("_since") is not None:
            conds.append(r.last_updated >= parse_instant_param(call.inputs["_since"], "_since"))
        if snapshot is not None:
            conds.append(r.pk <= snapshot)
        guard = current_access.get()
        if guard is not None:
            await guard.ready(conn)
            allowed = guard.any_condition(resource)
            if allowed is not None:
                conds.append(allowed)
        first = case((itself, 0), else_=1)
        stmt = (
            select(r.pk, r.type, r.id, r.content)
            .where(*conds)
            .order_by(first, r.pk)
            .limit(count + 1)
            .offset(offset)
        )
        rows = list((await conn.execute(stmt)).all()) if count > 0 else []
        for row in rows[:count]:
            note_touched(row.type, row.id, row.content)
        total = (
            await conn.execute(select(func.count()).select_from(resource).where(*conds))
        ).scalar_one()
        if len(rows) > count and snapshot is None:
            snapshot = (await conn.execute(select(func.coalesce(func.max(r.pk), 0)))).scalar_one()
    has_next = len(rows) > count
    base = (call.base_url or settings.base_url or "").rstrip("/")
    prefix = f"{base}/" if base else ""
    path = f"{prefix}{PATIENT}/{patient_id}/$everything"
    kept = [("_type", ",".join(sorted(types)))] if types else []
    if call.inputs.get("_since") is not None:
        kept.append(("_since", call.inputs["_since"]))
    kept.append(("_count", str(count)))

    def link(relation: str, at: int) -> dict[str, str]:
        pinned = [("_snapshot", str(snapshot))] if snapshot is not None else []
        return {
            "relation": relation,
            "url": f"{path}?{urlencode(kept + pinned + [('_offset', str(at))])}",
        }

    links = [link("self", offset)]
    if has_next:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    entries = [
        {
            "fullUrl": f"{prefix}{row.type}/{row.id}",
            "resource": orjson.Fragment(row.content),
            "search": {"mode": "include" if row.type in outside else "match"},
        }
        for row in rows[:count]
    ]
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
    return OperationResult({**bundle, "entry": entries})


EVERYTHING = Operation(
    name="everything",
    levels=frozenset({"instance"}),
    handler=_everything,
    inputs=(
        OperationParam("_since", "instant", 0, "1"),
        OperationParam("_type", "string", 0, "*"),
        OperationParam("_count", "integer", 0, "1"),
        OperationParam("_offset", "integer", 0, "1"),
        OperationParam("_snapshot", "integer", 0, "1"),
    ),
    outputs=(OperationParam("return", "Bundle", 1, "1"),),
    resource_types=frozenset({PATIENT}),
    definition="http://hl7.org/fhir/OperationDefinition/Patient-everything",
    description="The patient's whole record: its compartment and the resources it refers to",
)
