"""Family-doctor contracting: applications, team review, reading contracts and teams.

The model (codes, periods, building a Contract) is ``contracts.py``; renewal, transfer
and termination are ``lifecycle.py``. Everything is a FHIR ``Contract``
(docs/contracting.md):

==========  ===========================================================================
status      meaning
==========  ===========================================================================
offered     an application by the resident (or their representative), waiting for the
            team's review; it already carries the applicant's signature
executed    accepted: the contract; in force while ``applies`` covers now
rejected    the team refused the application (reason in the status-reason extension)
revoked     the applicant withdrew the application before review
terminated  ended early: termination with a reason, or ``transfer`` to another team
==========  ===========================================================================

The team is named by the extension the access policy reads
(``urn:smartmed:extension:contract-care-team``), so an executed contract gives the team
access to the resident's records and a terminated one stops it at once, with no code
here. Renewal and transfer make a new Contract that points to the one it continues
(``urn:smartmed:extension:contract-replaces``): the old one keeps its history.

Invariant: one resident never has two executed contracts whose periods overlap, and has
at most one pending application. Every write takes a transaction-scoped advisory lock
on the resident first (PostgreSQL; SQLite serialises writers), then checks and writes,
so two concurrent signings cannot both pass the check.

Functions are keyword-only, take the caller's connection and never commit. They act as
the platform (no access guard): Contract is in the Patient compartment without a
patient link, so the generic policy cannot decide who may sign; the rules below do.

Errors: :class:`Refused` (409 Conflict), ``Forbidden`` (403), ``NotFound`` (404),
``Invalid`` (400); each carries ``reason``, a code the portal translates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.contracting.contracts import (
    ACTIVE,
    AUTHOR_SIGNATURE,
    CONSENT_SIGNATURE,
    DELEGATION_ACTIONS,
    DELEGATION_CATEGORY,
    LINK_SYSTEM,
    METHOD_EXT,
    METHODS,
    PACKAGE_EXT,
    PACKAGE_TYPES,
    PENDING,
    REASON_EXT,
    REASON_SYSTEM,
    RENEWAL_GRACE,
    RENEWAL_WINDOW,
    REPLACES_EXT,
    SIGN_ON_BEHALF,
    SIGNATURE_TYPES,
    SIGNER_TYPES,
    STATEMENT,
    TEAM_EXT,
    TEAM_ROLE_SYSTEM,
    TEAM_TAG,
    TERMINATION_REASONS,
    TYPE_SYSTEM,
    Refused,
    Signature,
    bounds,
    coding,
    execute,
    extension,
    instant,
    is_in_force,
    new_contract,
    now_utc,
    one_year_after,
    overlapping,
    package_of,
    patient_of,
    reason_of,
    ref_parts,
    refuse,
    refuse_overlap,
    replaces_of,
    resident_signer,
    set_reason,
    signer_entry,
    status_reason,
    team_of,
)
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError, Forbidden, Invalid, NotFound
from smartmed.fhir.hooks import current_access
from smartmed.fhir.repository import advisory_lock
from smartmed.fhir.search.service import search_bundle


@asynccontextmanager
async def as_platform() -> AsyncIterator[None]:
    """Read and write as the platform: the service applies its own rules."""
    reset = current_access.set(None)
    try:
        yield
    finally:
        current_access.reset(reset)


async def search(
    engine: FhirEngine, conn: AsyncConnection, type_: str, params: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Every match (up to the page limit) of a FHIR search, as the platform."""
    items = [*params, ("_count", str(engine.settings.max_page_size))]
    async with as_platform():
        raw = await search_bundle(
            conn, engine.services, type_, items, base_url="urn:smartmed:contracting", strict=True
        )
    bundle = orjson.loads(raw)
    return [
        e["resource"]
        for e in bundle.get("entry", [])
        if (e.get("search") or {}).get("mode") == "match"
    ]


async def search_every(
    engine: FhirEngine, conn: AsyncConnection, type_: str, params: Sequence[tuple[str, str]]
) -> AsyncIterator[dict[str, Any]]:
    """Every match of a FHIR search, page after page (pinned to one snapshot)."""
    size = engine.settings.max_page_size
    offset = 0
    while True:
        page = await search(engine, conn, type_, [*params, ("_offset", str(offset))])
        for item in page:
            yield item
        if len(page) < size:
            return
        offset += size


def person_name(person: dict[str, Any]) -> str:
    """A person's name as written (Chinese: family name first, no space)."""
    for name in person.get("name") or []:
        if name.get("text"):
            return str(name["text"])
        family = str(name.get("family", ""))
        given = " ".join(name.get("given") or [])
        if family and all(ord(ch) > 0x2E80 for ch in family + given.replace(" ", "")):
            return family + given.replace(" ", "")
        return " ".join(p for p in (given, family) if p)
    return ""


async def read(
    engine: FhirEngine, conn: AsyncConnection, ref: str, types: Sequence[str]
) -> dict[str, Any]:
    """The resource ``ref`` (one of ``types``); NotFound when absent or deleted."""
    kind, id_ = ref_parts(ref, types)
    try:
        async with as_platform():
            stored = await engine.repository(conn).read(kind, id_)
    except FhirError:
        raise refuse(NotFound, "not-found", f"{ref} does not exist") from None
    body: dict[str, Any] = orjson.loads(stored.content or "{}")
    return body


async def create(engine: FhirEngine, conn: AsyncConnection, body: dict[str, Any]) -> dict[str, Any]:
    async with as_platform():
        stored = await engine.repository(conn).create(body)
    created: dict[str, Any] = orjson.loads(stored.content or "{}")
    return created


async def update(engine: FhirEngine, conn: AsyncConnection, body: dict[str, Any]) -> dict[str, Any]:
    version = int((body.get("meta") or {}).get("versionId", 0)) or None
    async with as_platform():
        result = await engine.repository(conn).update(
            "Contract", body["id"], body, if_match=version
        )
    updated: dict[str, Any] = orjson.loads(result.stored.content or "{}")
    return updated


async def lock_patient(engine: FhirEngine, conn: AsyncConnection, patient: str) -> None:
    """Serialise contract changes of one resident until the transaction ends."""
    await advisory_lock(conn, f"contracting:{patient}", is_postgres=engine.db.is_postgres)


# -- teams -----------------------------------------------------------------------------


async def team_members(engine: FhirEngine, conn: AsyncConnection, team: dict[str, Any]) -> set[str]:
    """References of the team's members: their PractitionerRoles and Practitioners."""
    members: set[str] = set()
    roles: list[str] = []
    for participant in team.get("participant") or []:
        ref = str((participant.get("member") or {}).get("reference", ""))
        if ref.startswith("Practitioner/"):
            members.add(ref)
        elif ref.startswith("PractitionerRole/"):
            members.add(ref)
            roles.append(ref.split("/", 1)[1])
    if roles:
        found = await search(engine, conn, "PractitionerRole", [("_id", ",".join(roles))])
        for role in found:
            practitioner = (role.get("practitioner") or {}).get("reference")
            if practitioner:
                members.add(str(practitioner))
    return members


async def teams_of(
    engine: FhirEngine, conn: AsyncConnection, practitioner: str
) -> list[dict[str, Any]]:
    """The active family-doctor teams a practitioner belongs to (directly or by a role)."""
    refs = [practitioner]
    if practitioner.startswith("Practitioner/"):
        roles = await search(engine, conn, "PractitionerRole", [("practitioner", practitioner)])
        refs += [f"PractitionerRole/{r['id']}" for r in roles]
    teams = await search(engine, conn, "CareTeam", [("participant", ",".join(refs))])
    return [t for t in teams if t.get("status", "active") in ("active", "proposed")]


async def get_team(engine: FhirEngine, conn: AsyncConnection, team: str) -> dict[str, Any]:
    body = await read(engine, conn, team, ("CareTeam",))
    if body.get("status", "active") not in ("active", "proposed"):
        raise refuse(Refused, "team-inactive", f"{team} is not an active team")
    return body


async def access_team(
    engine: FhirEngine, conn: AsyncConnection, *, team: str, member: str
) -> dict[str, Any]:
    """The team, if ``member`` (a Practitioner or PractitionerRole) belongs to it."""
    body = await get_team(engine, conn, team)
    if member not in await team_members(engine, conn, body):
        raise refuse(Forbidden, "not-team-member", f"{member} is not a member of {team}")
    return body


# -- who may sign for whom -------------------------------------------------------------


def _delegates_signing(consent: dict[str, Any], actor: str, at: datetime) -> bool:
    if consent.get("status") != "active":
        return False
    codes = {
        (c.get("system"), c.get("code"))
        for concept in consent.get("category") or []
        for c in concept.get("coding") or []
    }
    provision = consent.get("provision") or {}
    if DELEGATION_CATEGORY not in codes or provision.get("type") != "permit":
        return False
    actors = {
        str((a.get("reference") or {}).get("reference", "")) for a in provision.get("actor") or []
    }
    actions = {
        c.get("code")
        for concept in provision.get("action") or []
        for c in concept.get("coding") or []
        if c.get("system") == DELEGATION_ACTIONS
    }
    if actor not in actors or SIGN_ON_BEHALF not in actions:
        return False
    period = provision.get("period") or {}
    start, end = bounds({"applies": period})
    return start <= at < end


async def represented(
    engine: FhirEngine, conn: AsyncConnection, *, actor: str, at: datetime
) -> list[str]:
    """Patients who delegated ``sign-on-behalf`` to ``actor`` (a Patient or RelatedPerson)."""
    consents = await search(engine, conn, "Consent", [("actor", actor), ("status", "active")])
    found = [
        str((c.get("patient") or {}).get("reference"))
        for c in consents
        if _delegates_signing(c, actor, at)
    ]
    return sorted({p for p in found if p.startswith("Patient/") and p != actor})


async def check_signer(
    engine: FhirEngine, conn: AsyncConnection, *, actor: str, patient: str, at: datetime
) -> bool:
    """Whether ``actor`` signs as an agent (True) or for themselves (False); Forbidden if
    they may not sign for ``patient`` at all."""
    if actor == patient:
        return False
    if patient in await represented(engine, conn, actor=actor, at=at):
        return True
    raise refuse(
        Forbidden,
        "not-representative",
        f"{actor} holds no delegation (sign-on-behalf) from {patient}",
    )


# -- reading contracts -----------------------------------------------------------------


async def contracts_of(
    engine: FhirEngine, conn: AsyncConnection, *, patient: str
) -> list[dict[str, Any]]:
    """Every family-doctor contract and application of a resident, newest first."""
    found = await search(engine, conn, "Contract", [("subject", patient)])
    mine = [c for c in found if team_of(c)]
    mine.sort(key=lambda c: (bounds(c)[0], (c.get("meta") or {}).get("lastUpdated", "")))
    return list(reversed(mine))


async def current_contract(
    engine: FhirEngine, conn: AsyncConnection, *, patient: str, at: datetime
) -> dict[str, Any] | None:
    """The contract in force for ``patient`` at ``at``, if any."""
    for contract in await contracts_of(engine, conn, patient=patient):
        if is_in_force(contract, at):
            return contract
    return None


async def _team_contracts(
    engine: FhirEngine, conn: AsyncConnection, *, team: str, status: str
) -> list[dict[str, Any]]:
    """Contracts of ``team`` with ``status``: those this module wrote carry the team's tag;
    others (the demo county, imports) are found through their authority, the team's
    managing organisation, and kept when their team extension names ``team``."""
    team_id = team.split("/", 1)[1]
    found = {
        c["id"]: c
        async for c in search_every(
            engine, conn, "Contract", [("_tag", f"{TEAM_TAG}|{team_id}"), ("status", status)]
        )
    }
    body = await read(engine, conn, team, ("CareTeam",))
    for org in body.get("managingOrganization") or []:
        if str(org.get("reference", "")).startswith("Organization/"):
            params = [("authority", org["reference"]), ("status", status), ("_sort", "_id")]
            async for c in search_every(engine, conn, "Contract", params):
                found.setdefault(c["id"], c)
    return [c for c in found.values() if team_of(c) == team]


async def pending_for_team(
    engine: FhirEngine, conn: AsyncConnection, *, team: str
) -> list[dict[str, Any]]:
    """Applications waiting for ``team``'s review, oldest first."""
    found = await _team_contracts(engine, conn, team=team, status=PENDING)
    return sorted(found, key=lambda c: (c.get("meta") or {}).get("lastUpdated", ""))


async def contracted_with_team(
    engine: FhirEngine, conn: AsyncConnection, *, team: str, at: datetime
) -> list[dict[str, Any]]:
    """Contracts of ``team`` in force at ``at`` (the team's contracted residents)."""
    found = await _team_contracts(engine, conn, team=team, status=ACTIVE)
    return [c for c in found if is_in_force(c, at)]


async def check_package(engine: FhirEngine, conn: AsyncConnection, package: str | None) -> None:
    if package:
        await read(engine, conn, package, PACKAGE_TYPES)


# -- signing ---------------------------------------------------------------------------


async def do_apply(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    patient: str,
    team: str,
    applicant: str,
    signature: Signature,
    method: str = "portal",
    package: str | None = None,
    link_nonce: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """An application (Contract ``offered``) of ``patient`` to ``team``, signed by the
    applicant (the resident, or a representative holding ``sign-on-behalf``).

    A resident who has a contract with another team applies for a transfer: accepting the
    application ends the current contract (reason ``transfer``)."""
    at = now or now_utc()
    patient_body = await read(engine, conn, patient, ("Patient",))
    team_body = await get_team(engine, conn, team)
    agent = await check_signer(engine, conn, actor=applicant, patient=patient, at=at)
    await check_package(engine, conn, package)
    await lock_patient(engine, conn, patient)
    existing = await contracts_of(engine, conn, patient=patient)
    if any(c.get("status") == PENDING for c in existing):
        raise refuse(Refused, "already-pending", f"{patient} already has a pending application")
    if link_nonce and any(
        i.get("system") == LINK_SYSTEM and i.get("value") == link_nonce
        for c in existing
        for i in c.get("identifier") or []
    ):
        raise refuse(Refused, "link-used", "this invitation has already been used")
    current = next((c for c in existing if is_in_force(c, at)), None)
    replaces = None
    if current is not None:
        if team_of(current) == team:
            raise refuse(Refused, "already-contracted", f"{patient} is already with {team}")
        replaces = (f"Contract/{current['id']}", "transfer")
    signer = resident_signer(
        signer=applicant, patient=patient, agent=agent, signature=signature, at=at
    )
    body = new_contract(
        patient=patient_body,
        team=team_body,
        status=PENDING,
        method="agent" if agent and method == "portal" else method,
        signers=[signer],
        package=package,
        at=at,
        replaces=replaces,
        link_nonce=link_nonce,
    )
    return await create(engine, conn, body)


async def access_contract(
    engine: FhirEngine, conn: AsyncConnection, contract_id: str
) -> dict[str, Any]:
    contract = await read(engine, conn, f"Contract/{contract_id}", ("Contract",))
    if not team_of(contract) or not patient_of(contract):
        raise refuse(
            NotFound, "not-found", f"Contract/{contract_id} is not a family-doctor contract"
        )
    return contract


async def end_contract(
    engine: FhirEngine,
    conn: AsyncConnection,
    contract: dict[str, Any],
    *,
    status: str,
    reason: str,
    text: str | None,
    at: datetime,
) -> dict[str, Any]:
    contract["status"] = status
    applies = dict(contract.get("applies") or {})
    start, end = bounds(contract)
    if status == "terminated":
        # Ends now (an instant), so access ends now; a contract not yet begun ends unused.
        applies["end"] = instant(max(min(at, end), start))
        contract["applies"] = applies
    set_reason(contract, reason, text)
    return await update(engine, conn, contract)


async def do_review(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    contract_id: str,
    reviewer: str,
    accept: bool,
    reason: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Accept (→ executed, one year from today) or reject (→ rejected, with a reason) an
    application, by a member of its team."""
    at = now or now_utc()
    contract = await access_contract(engine, conn, contract_id)
    team = team_of(contract)
    assert team is not None
    await access_team(engine, conn, team=team, member=reviewer)
    patient = patient_of(contract)
    assert patient is not None
    await lock_patient(engine, conn, patient)
    contract = await access_contract(engine, conn, contract_id)  # re-read under the lock
    if contract.get("status") != PENDING:
        raise refuse(Refused, "not-pending", f"Contract/{contract_id} is not a pending application")
    if not accept:
        text = (reason or "").strip()
        if not text or len(text) > 500:
            raise refuse(
                Invalid, "reason-required", "a rejection needs a reason (1-500 characters)"
            )
        ended = await end_contract(
            engine, conn, contract, status="rejected", reason="rejected", text=text, at=at
        )
        await _refund_packages(engine, conn, contract_id, "application rejected", reviewer)
        return ended
    existing = await contracts_of(engine, conn, patient=patient)
    previous = replaces_of(contract)
    if previous is not None:
        old = next((c for c in existing if f"Contract/{c['id']}" == previous[0]), None)
        if old is not None and old.get("status") == ACTIVE:
            await end_contract(
                engine, conn, old, status="terminated", reason="transfer", text=None, at=at
            )
            existing = await contracts_of(engine, conn, patient=patient)
    start = at.date()
    execute(contract, by=reviewer, at=at, start=start)
    low, high = bounds(contract)
    if previous is not None:
        low = at  # the old contract ended at this instant
        contract["applies"]["start"] = instant(at)
    refuse_overlap(existing, low, high, patient=patient, ignore=contract["id"])
    return await update(engine, conn, contract)


async def do_sign_in_person(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    patient: str,
    team: str,
    doctor: str,
    signature: Signature,
    package: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A team member signs a resident who is present and consents: the resident's typed
    name and agreement are captured on the doctor's device; executed at once."""
    at = now or now_utc()
    patient_body = await read(engine, conn, patient, ("Patient",))
    team_body = await access_team(engine, conn, team=team, member=doctor)
    await check_package(engine, conn, package)
    await lock_patient(engine, conn, patient)
    existing = await contracts_of(engine, conn, patient=patient)
    if any(c.get("status") == PENDING for c in existing):
        raise refuse(Refused, "already-pending", f"{patient} already has a pending application")
    if next((c for c in existing if is_in_force(c, at)), None) is not None:
        raise refuse(Refused, "already-contracted", f"{patient} already has a contract in force")
    signer = resident_signer(
        signer=patient,
        patient=patient,
        agent=False,
        signature=signature,
        at=at,
        captured_by=doctor,
    )
    body = new_contract(
        patient=patient_body,
        team=team_body,
        status=PENDING,
        method="in-person",
        signers=[signer],
        package=package,
        at=at,
    )
    execute(body, by=doctor, at=at, start=at.date())
    low, high = bounds(body)
    refuse_overlap(existing, low, high, patient=patient)
    return await create(engine, conn, body)


async def do_withdraw(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    contract_id: str,
    actor: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The applicant (or the resident) withdraws a pending application (→ revoked)."""
    at = now or now_utc()
    contract = await access_contract(engine, conn, contract_id)
    patient = patient_of(contract)
    assert patient is not None
    await check_signer(engine, conn, actor=actor, patient=patient, at=at)
    await lock_patient(engine, conn, patient)
    contract = await access_contract(engine, conn, contract_id)
    if contract.get("status") != PENDING:
        raise refuse(Refused, "not-pending", f"Contract/{contract_id} is not a pending application")
    ended = await end_contract(
        engine, conn, contract, status="revoked", reason="withdrawn", text=None, at=at
    )
    await _refund_packages(engine, conn, contract_id, "application withdrawn", actor)
    return ended


async def _refund_packages(
    engine: FhirEngine, conn: AsyncConnection, contract_id: str, reason: str, by: str
) -> None:
    """A package paid for an application that will never run is given back."""
    from smartmed.contracting.packages import refund_unused

    await refund_unused(engine, conn, contract_id=contract_id, reason=reason, by=by)


# The contract model is part of this module's public API (callers use ``service.team_of``).
__all__ = [
    "ACTIVE",
    "AUTHOR_SIGNATURE",
    "CONSENT_SIGNATURE",
    "DELEGATION_ACTIONS",
    "DELEGATION_CATEGORY",
    "LINK_SYSTEM",
    "METHODS",
    "METHOD_EXT",
    "PACKAGE_EXT",
    "PACKAGE_TYPES",
    "PENDING",
    "REASON_EXT",
    "REASON_SYSTEM",
    "RENEWAL_GRACE",
    "RENEWAL_WINDOW",
    "REPLACES_EXT",
    "Refused",
    "SIGNATURE_TYPES",
    "SIGNER_TYPES",
    "SIGN_ON_BEHALF",
    "STATEMENT",
    "Signature",
    "TEAM_EXT",
    "TEAM_ROLE_SYSTEM",
    "TEAM_TAG",
    "TERMINATION_REASONS",
    "TYPE_SYSTEM",
    "access_contract",
    "access_team",
    "as_platform",
    "bounds",
    "check_package",
    "check_signer",
    "coding",
    "contracted_with_team",
    "contracts_of",
    "create",
    "current_contract",
    "do_apply",
    "do_review",
    "do_sign_in_person",
    "do_withdraw",
    "end_contract",
    "execute",
    "extension",
    "get_team",
    "instant",
    "is_in_force",
    "lock_patient",
    "new_contract",
    "now_utc",
    "one_year_after",
    "overlapping",
    "package_of",
    "patient_of",
    "pending_for_team",
    "person_name",
    "read",
    "reason_of",
    "ref_parts",
    "refuse",
    "replaces_of",
    "represented",
    "resident_signer",
    "search",
    "search_every",
    "set_reason",
    "signer_entry",
    "status_reason",
    "team_members",
    "team_of",
    "teams_of",
    "update",
]
