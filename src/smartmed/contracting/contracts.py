"""The family-doctor contract as a FHIR ``Contract``: codes, extensions, periods and
how one is built and signed (no database here; see docs/contracting.md).

Statuses: ``offered`` (an application, signed by the applicant), ``executed`` (the
contract; in force while ``applies`` covers now), ``rejected``, ``revoked`` (withdrawn),
``terminated`` (ended early, with a reason; ``transfer`` when the resident moved team).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from smartmed.fhir.errors import Conflict, FhirError, Invalid
from smartmed.fhir.search.convert import date_range

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
# Service packages are published by this module (packages.py: PlanDefinition priced by a
# ChargeItemDefinition); the contract names the chosen one by reference. A paid package is
# named only when contracting's @on_payment("paid") handler sees the payment confirmed
# (docs/contracting.md, "Service packages").
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


def instant(moment: datetime) -> str:
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


def ref_parts(ref: str, types: Sequence[str]) -> tuple[str, str]:
    kind, _, id_ = ref.partition("/")
    if kind not in types or not id_ or "/" in id_:
        raise Invalid(f"'{ref}' is not a reference to {' or '.join(types)}", expression=ref)
    return kind, id_


def overlapping(
    contracts: list[dict[str, Any]], start: datetime, end: datetime, *, ignore: str | None = None
) -> dict[str, Any] | None:
    for contract in contracts:
        if contract.get("status") != ACTIVE or contract.get("id") == ignore:
            continue
        low, high = bounds(contract)
        if low < end and start < high:
            return contract
    return None


def refuse_overlap(
    contracts: list[dict[str, Any]],
    start: datetime,
    end: datetime,
    *,
    patient: str,
    reason: str = "already-contracted",
    ignore: str | None = None,
) -> None:
    """Refuse (``reason``) when one of ``contracts`` is in force between start and end."""
    clash = overlapping(contracts, start, end, ignore=ignore)
    if clash is not None:
        raise refuse(Refused, reason, f"{patient} already has Contract/{clash['id']}")


# -- building a contract ---------------------------------------------------------------


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def signer_entry(
    *,
    who: str,
    kind: str,
    signature_type: tuple[str, str],
    at: datetime,
    on_behalf_of: str | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    sig: dict[str, Any] = {
        "type": [coding(SIGNATURE_TYPES, *signature_type)],
        "when": instant(at),
        "who": {"reference": who},
    }
    if on_behalf_of:
        sig["onBehalfOf"] = {"reference": on_behalf_of}
    if data is not None:
        sig["sigFormat"] = "application/json"
        sig["data"] = base64.b64encode(orjson.dumps(data)).decode()
    return {"type": coding(SIGNER_TYPES, kind), "party": {"reference": who}, "signature": [sig]}


CONSENT_SIGNATURE = ("1.2.840.10065.1.12.1.7", "Consent Signature")
AUTHOR_SIGNATURE = ("1.2.840.10065.1.12.1.1", "Author's Signature")


def resident_signer(
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
    return signer_entry(
        who=signer,
        kind="AGNT" if agent else "PAT",
        signature_type=CONSENT_SIGNATURE,
        at=at,
        on_behalf_of=patient if agent else None,
        data=data,
    )


def new_contract(
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
    team_value: dict[str, Any] = {"reference": team_ref}
    if team.get("name"):  # a team without a name is still a team
        team_value["display"] = team["name"]
    ext: list[dict[str, Any]] = [
        {"url": TEAM_EXT, "valueReference": team_value},
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
        "meta": {"tag": [coding(TEAM_TAG, team["id"])]},
        "extension": ext,
        "status": status,
        "type": {
            "coding": [coding(TYPE_SYSTEM, "family-doctor", "Family doctor contract")],
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


def execute(contract: dict[str, Any], *, by: str, at: datetime, start: date) -> None:
    """Make an application (or a new contract) the executed contract of one year."""
    contract["status"] = ACTIVE
    contract["issued"] = instant(at)
    contract["author"] = {"reference": by}
    contract["applies"] = {"start": start.isoformat(), "end": one_year_after(start).isoformat()}
    contract["signer"] = [
        *contract.get("signer", []),
        signer_entry(who=by, kind="HPROV", signature_type=AUTHOR_SIGNATURE, at=at),
    ]


def set_reason(contract: dict[str, Any], code: str, text: str | None) -> None:
    concept: dict[str, Any] = {"coding": [coding(REASON_SYSTEM, code)]}
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
