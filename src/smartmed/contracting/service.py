"""Family-doctor contracting: applications, team review, contracts and their lifecycle.

Everything is a FHIR ``Contract`` (docs/contracting.md):

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

import base64
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Conflict, FhirError, Forbidden, Invalid, NotFound
from smartmed.fhir.hooks import current_access
from smartmed.fhir.repository import advisory_lock
from smartmed.fhir.search.convert import date_range
from smartmed.fhir.search.service import search_bundle

TEAM_EXT = "urn:smartmed:extension:contract-care-team"
PACKAGE_EXT = "urn:smartmed:extension:contract-service-package"
METHOD_EXT = "urn:smartmed:extension:contract-signing-method"
REASON_EXT = "urn:smartmed:extension:contract-status-reason"
REPLACES_EXT = "urn:smartmed:extension:contract-replaces"
REASON_SYSTEM = "urn:smartmed:contract-status-reason"
TYPE_SYSTEM = "urn:smartmed:contract-type"  # as the demo county (smartmed.demo)
TEAM_TAG = "urn:smartmed:contract-team"  # meta.tag: the team's work queue is searchable
LINK_SYSTEM = "urn:smartmed:contracting-link"  # identifier: the invitation it redeemed
SIGNER_TYPES = "http://terminology.hl7.org/CodeSystem/contractsignertypecodes"
SIGNATURE_TYPES = "urn:iso-astm:E1762-95:2013"
TEAM_ROLE_SYSTEM = "urn:smartmed:care-team-role"
DELEGATION_CATEGORY = ("urn:smartmed:consent-category", "family-delegation")
DELEGATION_ACTIONS = "urn:smartmed:delegation-action"
SIGN_ON_BEHALF = "sign-on-behalf"
# What the resident agrees to (the wording is shown on the form; its id is signed).
STATEMENT = "smartmed-family-doctor-contract-v1"

METHODS = ("portal", "qr-card", "invitation", "share-link", "agent", "in-person")
TERMINATION_REASONS = ("resident-request", "moved-away", "deceased", "team-request", "other")
# Service packages are published by the payments module; the contract names the chosen
# one by reference (see docs/contracting.md, "chosen package").
PACKAGE_TYPES = ("PlanDefinition", "InsurancePlan", "ChargeItemDefinition")
RENEWAL_WINDOW = timedelta(days=90)  # renew from 90 days before the end …
RENEWAL_GRACE = timedelta(days=90)  # … until 90 days after it
PENDING = "offered"
ACTIVE = "executed"


class Refused(Conflict):
    """A request the contract's state does not allow (409); ``reason`` names the rule."""


def refuse(kind: type[FhirError], reason: str, diagnostics: str) -> FhirError:
    """An error of ``kind`` carrying ``reason``, the code the portal translates."""
    error = kind(diagnostics)
    error.reason = reason  # type: ignore[attr-defined]
    return error


def reason_of(error: FhirError) -> str:
    """The code the portal translates (``error`` for anything without one)."""
    return str(getattr(error, "reason", "error"))


@dataclass(frozen=True, slots=True)
class Signature:
    """What a signer provides: a typed full name and ticked agreement."""

    typed_name: str
    agreed: bool


# -- small helpers ---------------------------------------------------------------------


def now_utc() -> datetime:
    return datetime.now(UTC)


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def one_year_after(start: date) -> date:
    """The last day of a one-year term starting on ``start`` (29 Feb → 27 Feb)."""
    try:
        anniversary = start.replace(year=start.year + 1)
    except ValueError:  # 29 February
        anniversary = start.replace(year=start.year + 1, day=28)
    return anniversary - timedelta(days=1)


def bounds(contract: dict[str, Any]) -> tuple[datetime, datetime]:
    """``applies`` as a half-open [start, end) in UTC, as the access policy reads it."""
    applies = contract.get("applies") or {}
    start = date_range(str(applies["start"])) if applies.get("start") else None
    end = date_range(str(applies["end"])) if applies.get("end") else None
    low = start[0] if start else datetime(1, 1, 1)
    # A date ends with its day; an instant (a termination) ends at that instant.
    high = datetime(9999, 12, 31)
    if end is not None:
        # date_range's upper bound is the last microsecond of the day: make it exclusive.
        high = end[0] if "T" in str(applies["end"]) else end[1] + timedelta(microseconds=1)
    return _aware(low), _aware(high)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def extension(resource: dict[str, Any], url: str) -> dict[str, Any] | None:
    return next((e for e in resource.get("extension") or [] if e.get("url") == url), None)


def team_of(contract: dict[str, Any]) -> str | None:
    found = extension(contract, TEAM_EXT)
    ref = ((found or {}).get("valueReference") or {}).get("reference")
    return str(ref) if ref else None


def patient_of(contract: dict[str, Any]) -> str | None:
    for subject in contract.get("subject") or []:
        ref = str(subject.get("reference", ""))
        if ref.startswith("Patient/"):
            return ref
    return None


def package_of(contract: dict[str, Any]) -> str | None:
    found = extension(contract, PACKAGE_EXT)
    ref = ((found or {}).get("valueReference") or {}).get("reference")
    return str(ref) if ref else None


def status_reason(contract: dict[str, Any]) -> tuple[str | None, str | None]:
    """(code, text) of the status-reason extension."""
    found = (extension(contract, REASON_EXT) or {}).get("valueCodeableConcept") or {}
    code = next((c.get("code") for c in found.get("coding") or []), None)
    return code, found.get("text")


def is_in_force(contract: dict[str, Any], at: datetime) -> bool:
    start, end = bounds(contract)
    return contract.get("status") == ACTIVE and start <= at < end


def _ref_parts(ref: str, types: Sequence[str]) -> tuple[str, str]:
    kind, _, id_ = ref.partition("/")
    if kind not in types or not id_ or "/" in id_:
        raise Invalid(f"'{ref}' is not a reference to {' or '.join(types)}", expression=ref)
    return kind, id_


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
    kind, id_ = _ref_parts(ref, types)
    try:
        async with as_platform():
            stored = await engine.repository(conn).read(kind, id_)
    except FhirError:
        raise refuse(NotFound, "not-found", f"{ref} does not exist") from None
    body: dict[str, Any] = orjson.loads(stored.content or "{}")
    return body


async def _create(
    engine: FhirEngine, conn: AsyncConnection, body: dict[str, Any]
) -> dict[str, Any]:
    async with as_platform():
        stored = await engine.repository(conn).create(body)
    created: dict[str, Any] = orjson.loads(stored.content or "{}")
    return created


async def _update(
    engine: FhirEngine, conn: AsyncConnection, body: dict[str, Any]
) -> dict[str, Any]:
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


async def pending_for_team(
    engine: FhirEngine, conn: AsyncConnection, *, team: str
) -> list[dict[str, Any]]:
    """Applications waiting for ``team``'s review, oldest first."""
    team_id = team.split("/", 1)[1]
    found = await search(
        engine, conn, "Contract", [("_tag", f"{TEAM_TAG}|{team_id}"), ("status", PENDING)]
    )
    return sorted(found, key=lambda c: (c.get("meta") or {}).get("lastUpdated", ""))


async def contracted_with_team(
    engine: FhirEngine, conn: AsyncConnection, *, team: str, at: datetime
) -> list[dict[str, Any]]:
    """Contracts of ``team`` in force at ``at`` (the team's contracted residents)."""
    team_id = team.split("/", 1)[1]
    found = await search(
        engine, conn, "Contract", [("_tag", f"{TEAM_TAG}|{team_id}"), ("status", ACTIVE)]
    )
    return [c for c in found if is_in_force(c, at) and team_of(c) == team]


def _overlapping(
    contracts: list[dict[str, Any]], start: datetime, end: datetime, *, ignore: str | None = None
) -> dict[str, Any] | None:
    for contract in contracts:
        if contract.get("status") != ACTIVE or contract.get("id") == ignore:
            continue
        low, high = bounds(contract)
        if low < end and start < high:
            return contract
    return None


# -- building a contract ---------------------------------------------------------------


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _signer(
    *,
    who: str,
    kind: str,
    signature_type: tuple[str, str],
    at: datetime,
    on_behalf_of: str | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    sig: dict[str, Any] = {
        "type": [_coding(SIGNATURE_TYPES, *signature_type)],
        "when": _instant(at),
        "who": {"reference": who},
    }
    if on_behalf_of:
        sig["onBehalfOf"] = {"reference": on_behalf_of}
    if data is not None:
        sig["sigFormat"] = "application/json"
        sig["data"] = base64.b64encode(orjson.dumps(data)).decode()
    return {"type": _coding(SIGNER_TYPES, kind), "party": {"reference": who}, "signature": [sig]}


CONSENT_SIGNATURE = ("1.2.840.10065.1.12.1.7", "Consent Signature")
AUTHOR_SIGNATURE = ("1.2.840.10065.1.12.1.1", "Author's Signature")


def _resident_signer(
    *,
    signer: str,
    patient: str,
    agent: bool,
    signature: Signature,
    at: datetime,
    captured_by: str | None = None,
) -> dict[str, Any]:
    if not signature.agreed:
        raise refuse(Invalid, "not-agreed", "the signer must agree to the contract terms")
    name = signature.typed_name.strip()
    if not name or len(name) > 100:
        raise refuse(Invalid, "no-signature", "type the signer's full name (1-100 characters)")
    data: dict[str, Any] = {"typedName": name, "agreed": True, "statement": STATEMENT}
    if captured_by:
        data["capturedBy"] = captured_by  # in person, on the doctor's device
    return _signer(
        who=signer,
        kind="AGNT" if agent else "PAT",
        signature_type=CONSENT_SIGNATURE,
        at=at,
        on_behalf_of=patient if agent else None,
        data=data,
    )


async def _check_package(engine: FhirEngine, conn: AsyncConnection, package: str | None) -> None:
    if package:
        await read(engine, conn, package, PACKAGE_TYPES)


def _new_contract(
    *,
    patient: dict[str, Any],
    team: dict[str, Any],
    status: str,
    method: str,
    signers: list[dict[str, Any]],
    package: str | None,
    at: datetime,
    replaces: tuple[str, str] | None = None,
    link_nonce: str | None = None,
) -> dict[str, Any]:
    if method not in METHODS:
        raise refuse(Invalid, "bad-method", f"unknown signing method {method!r}")
    team_ref = f"CareTeam/{team['id']}"
    ext: list[dict[str, Any]] = [
        {"url": TEAM_EXT, "valueReference": {"reference": team_ref, "display": team.get("name")}},
        {"url": METHOD_EXT, "valueCode": method},
    ]
    if package:
        ext.append({"url": PACKAGE_EXT, "valueReference": {"reference": package}})
    if replaces:
        ext.append(
            {
                "url": REPLACES_EXT,
                "extension": [
                    {"url": "contract", "valueReference": {"reference": replaces[0]}},
                    {"url": "reason", "valueCode": replaces[1]},
                ],
            }
        )
    body: dict[str, Any] = {
        "resourceType": "Contract",
        "meta": {"tag": [_coding(TEAM_TAG, team["id"])]},
        "extension": ext,
        "status": status,
        "type": {
            "coding": [_coding(TYPE_SYSTEM, "family-doctor", "Family doctor contract")],
            "text": "家庭医生签约服务",
        },
        "subject": [{"reference": f"Patient/{patient['id']}"}],
        "signer": signers,
    }
    organizations = [o for o in team.get("managingOrganization") or [] if o.get("reference")]
    if organizations:
        body["authority"] = [{"reference": organizations[0]["reference"]}]
    if link_nonce:
        body["identifier"] = [{"system": LINK_SYSTEM, "value": link_nonce}]
    body["applies"] = {"start": at.date().isoformat()}
    return body


def _execute(contract: dict[str, Any], *, by: str, at: datetime, start: date) -> None:
    """Make an application (or a new contract) the executed contract of one year."""
    contract["status"] = ACTIVE
    contract["issued"] = _instant(at)
    contract["author"] = {"reference": by}
    contract["applies"] = {"start": start.isoformat(), "end": one_year_after(start).isoformat()}
    contract["signer"] = [
        *contract.get("signer", []),
        _signer(who=by, kind="HPROV", signature_type=AUTHOR_SIGNATURE, at=at),
    ]


def _set_reason(contract: dict[str, Any], code: str, text: str | None) -> None:
    concept: dict[str, Any] = {"coding": [_coding(REASON_SYSTEM, code)]}
    if text:
        concept["text"] = text
    contract["extension"] = [
        e for e in contract.get("extension") or [] if e.get("url") != REASON_EXT
    ] + [{"url": REASON_EXT, "valueCodeableConcept": concept}]


def replaces_of(contract: dict[str, Any]) -> tuple[str, str] | None:
    found = extension(contract, REPLACES_EXT)
    if not found:
        return None
    parts = {e.get("url"): e for e in found.get("extension") or []}
    ref = ((parts.get("contract") or {}).get("valueReference") or {}).get("reference")
    reason = (parts.get("reason") or {}).get("valueCode")
    return (str(ref), str(reason)) if ref and reason else None


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
    await _check_package(engine, conn, package)
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
    signer = _resident_signer(
        signer=applicant, patient=patient, agent=agent, signature=signature, at=at
    )
    body = _new_contract(
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
    return await _create(engine, conn, body)


async def _access_contract(
    engine: FhirEngine, conn: AsyncConnection, contract_id: str
) -> dict[str, Any]:
    contract = await read(engine, conn, f"Contract/{contract_id}", ("Contract",))
    if not team_of(contract) or not patient_of(contract):
        raise refuse(
            NotFound, "not-found", f"Contract/{contract_id} is not a family-doctor contract"
        )
    return contract


async def _end(
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
        applies["end"] = _instant(max(min(at, end), start))
        contract["applies"] = applies
    _set_reason(contract, reason, text)
    return await _update(engine, conn, contract)


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
    contract = await _access_contract(engine, conn, contract_id)
    team = team_of(contract)
    assert team is not None
    await access_team(engine, conn, team=team, member=reviewer)
    patient = patient_of(contract)
    assert patient is not None
    await lock_patient(engine, conn, patient)
    contract = await _access_contract(engine, conn, contract_id)  # re-read under the lock
    if contract.get("status") != PENDING:
        raise refuse(Refused, "not-pending", f"Contract/{contract_id} is not a pending application")
    if not accept:
        text = (reason or "").strip()
        if not text or len(text) > 500:
            raise refuse(
                Invalid, "reason-required", "a rejection needs a reason (1-500 characters)"
            )
        return await _end(
            engine, conn, contract, status="rejected", reason="rejected", text=text, at=at
        )
    existing = await contracts_of(engine, conn, patient=patient)
    previous = replaces_of(contract)
    if previous is not None:
        old = next((c for c in existing if f"Contract/{c['id']}" == previous[0]), None)
        if old is not None and old.get("status") == ACTIVE:
            await _end(engine, conn, old, status="terminated", reason="transfer", text=None, at=at)
            existing = await contracts_of(engine, conn, patient=patient)
    start = at.date()
    _execute(contract, by=reviewer, at=at, start=start)
    low, high = bounds(contract)
    if previous is not None:
        low = at  # the old contract ended at this instant
        contract["applies"]["start"] = _instant(at)
    clash = _overlapping(existing, low, high, ignore=contract["id"])
    if clash is not None:
        raise refuse(Refused, "already-contracted", f"{patient} already has Contract/{clash['id']}")
    return await _update(engine, conn, contract)


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
    await _check_package(engine, conn, package)
    await lock_patient(engine, conn, patient)
    existing = await contracts_of(engine, conn, patient=patient)
    if any(c.get("status") == PENDING for c in existing):
        raise refuse(Refused, "already-pending", f"{patient} already has a pending application")
    if next((c for c in existing if is_in_force(c, at)), None) is not None:
        raise refuse(Refused, "already-contracted", f"{patient} already has a contract in force")
    signer = _resident_signer(
        signer=patient,
        patient=patient,
        agent=False,
        signature=signature,
        at=at,
        captured_by=doctor,
    )
    body = _new_contract(
        patient=patient_body,
        team=team_body,
        status=PENDING,
        method="in-person",
        signers=[signer],
        package=package,
        at=at,
    )
    _execute(body, by=doctor, at=at, start=at.date())
    low, high = bounds(body)
    clash = _overlapping(existing, low, high)
    if clash is not None:
        raise refuse(Refused, "already-contracted", f"{patient} already has Contract/{clash['id']}")
    return await _create(engine, conn, body)


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
    contract = await _access_contract(engine, conn, contract_id)
    patient = patient_of(contract)
    assert patient is not None
    await check_signer(engine, conn, actor=actor, patient=patient, at=at)
    await lock_patient(engine, conn, patient)
    contract = await _access_contract(engine, conn, contract_id)
    if contract.get("status") != PENDING:
        raise refuse(Refused, "not-pending", f"Contract/{contract_id} is not a pending application")
    return await _end(
        engine, conn, contract, status="revoked", reason="withdrawn", text=None, at=at
    )


# -- lifecycle -------------------------------------------------------------------------


async def _may_change(
    engine: FhirEngine, conn: AsyncConnection, contract: dict[str, Any], actor: str, at: datetime
) -> None:
    """The resident, their representative, or a member of the contract's team."""
    patient = patient_of(contract)
    team = team_of(contract)
    assert patient is not None and team is not None
    if actor.startswith(("Practitioner/", "PractitionerRole/")):
        await access_team(engine, conn, team=team, member=actor)
    else:
        await check_signer(engine, conn, actor=actor, patient=patient, at=at)


async def do_renew(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    contract_id: str,
    actor: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Renew in one step: a new executed contract with the same team and package for the
    next year, pointing to this one (``replaces``, reason ``renewal``)."""
    at = now or now_utc()
    contract = await _access_contract(engine, conn, contract_id)
    await _may_change(engine, conn, contract, actor, at)
    patient = patient_of(contract)
    assert patient is not None
    await lock_patient(engine, conn, patient)
    contract = await _access_contract(engine, conn, contract_id)
    if contract.get("status") != ACTIVE:
        raise refuse(Refused, "not-active", f"Contract/{contract_id} is not an executed contract")
    _start, end = bounds(contract)
    if at < end - RENEWAL_WINDOW:
        raise refuse(Refused, "too-early", "a contract can be renewed in its last 90 days")
    if at > end + RENEWAL_GRACE:
        raise refuse(Refused, "too-late", "this contract ended too long ago: apply again")
    existing = await contracts_of(engine, conn, patient=patient)
    if any(
        replaces_of(c) == (f"Contract/{contract_id}", "renewal")
        and c.get("status") in (ACTIVE, PENDING)
        for c in existing
    ):
        raise refuse(Refused, "already-renewed", f"Contract/{contract_id} is already renewed")
    team_ref = team_of(contract)
    assert team_ref is not None
    team = await get_team(engine, conn, team_ref)
    patient_body = await read(engine, conn, patient, ("Patient",))
    start = max(end, at).date() if end > at else at.date()
    renewed = _new_contract(
        patient=patient_body,
        team=team,
        status=PENDING,
        method=str((extension(contract, METHOD_EXT) or {}).get("valueCode", "portal")),
        signers=[
            s for s in contract.get("signer") or [] if s.get("type", {}).get("code") != "HPROV"
        ],
        package=package_of(contract),
        at=at,
        replaces=(f"Contract/{contract_id}", "renewal"),
    )
    author = actor if actor.startswith(("Practitioner/", "PractitionerRole/")) else None
    _execute(
        renewed,
        by=author or str((contract.get("author") or {}).get("reference") or actor),
        at=at,
        start=start,
    )
    low, high = bounds(renewed)
    clash = _overlapping(existing, low, high)
    if clash is not None:
        raise refuse(Refused, "already-renewed", f"{patient} already has Contract/{clash['id']}")
    return await _create(engine, conn, renewed)


async def do_transfer(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    contract_id: str,
    team: str,
    actor: str,
    now: datetime | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Move a resident to another team now: the contract ends (``terminated``, reason
    ``transfer``) and a new one of one year starts with ``team``; (old, new)."""
    at = now or now_utc()
    contract = await _access_contract(engine, conn, contract_id)
    await _may_change(engine, conn, contract, actor, at)
    new_team = await get_team(engine, conn, team)
    if team_of(contract) == team:
        raise refuse(Refused, "same-team", "the resident is already with this team")
    patient = patient_of(contract)
    assert patient is not None
    await lock_patient(engine, conn, patient)
    contract = await _access_contract(engine, conn, contract_id)
    if not is_in_force(contract, at):
        raise refuse(Refused, "not-active", f"Contract/{contract_id} is not in force")
    old = await _end(
        engine, conn, contract, status="terminated", reason="transfer", text=None, at=at
    )
    patient_body = await read(engine, conn, patient, ("Patient",))
    moved = _new_contract(
        patient=patient_body,
        team=new_team,
        status=PENDING,
        method=str((extension(contract, METHOD_EXT) or {}).get("valueCode", "portal")),
        signers=[
            s for s in contract.get("signer") or [] if s.get("type", {}).get("code") != "HPROV"
        ],
        package=package_of(contract),
        at=at,
        replaces=(f"Contract/{contract_id}", "transfer"),
    )
    _execute(moved, by=actor, at=at, start=at.date())
    moved["applies"]["start"] = _instant(at)
    existing = await contracts_of(engine, conn, patient=patient)
    low, high = bounds(moved)
    clash = _overlapping(existing, low, high)
    if clash is not None:
        raise refuse(Refused, "already-contracted", f"{patient} already has Contract/{clash['id']}")
    return old, await _create(engine, conn, moved)


async def do_terminate(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    contract_id: str,
    actor: str,
    reason: str,
    text: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """End a contract now with a reason (one of :data:`TERMINATION_REASONS`)."""
    at = now or now_utc()
    if reason not in TERMINATION_REASONS:
        raise refuse(
            Invalid, "bad-reason", f"reason must be one of {', '.join(TERMINATION_REASONS)}"
        )
    if reason == "other" and not (text or "").strip():
        raise refuse(Invalid, "reason-required", "describe the reason when it is 'other'")
    if text and len(text) > 500:
        raise refuse(Invalid, "reason-required", "the reason is at most 500 characters")
    contract = await _access_contract(engine, conn, contract_id)
    await _may_change(engine, conn, contract, actor, at)
    patient = patient_of(contract)
    assert patient is not None
    await lock_patient(engine, conn, patient)
    contract = await _access_contract(engine, conn, contract_id)
    _start, end = bounds(contract)
    if contract.get("status") != ACTIVE or end <= at:
        raise refuse(Refused, "not-active", f"Contract/{contract_id} is not in force")
    return await _end(
        engine,
        conn,
        contract,
        status="terminated",
        reason=reason,
        text=(text or "").strip() or None,
        at=at,
    )


async def do_set_package(
    engine: FhirEngine, conn: AsyncConnection, *, contract_id: str, package: str | None
) -> dict[str, Any]:
    """Name the service package the resident chose (the payments module calls this once
    a purchase is confirmed); None removes it."""
    await _check_package(engine, conn, package)
    contract = await _access_contract(engine, conn, contract_id)
    if contract.get("status") not in (PENDING, ACTIVE):
        raise refuse(Refused, "not-active", f"Contract/{contract_id} is not pending or in force")
    contract["extension"] = [
        e for e in contract.get("extension") or [] if e.get("url") != PACKAGE_EXT
    ]
    if package:
        contract["extension"].append({"url": PACKAGE_EXT, "valueReference": {"reference": package}})
    return await _update(engine, conn, contract)
