"""Finding the resident a doctor signs in person (docs/contracting.md, "Finding the
resident").

The doctor searches by one of

- the resident ID number (18 characters, GB 11643 check character): ``identifier=<value>``
  — identifiers are sealed at rest and matched through their blind index
  (docs/encryption.md), so the exact search works and nothing else does;
- a phone number: ``phone=<digits>`` (blind index too: exact, as stored);
- the name together with the birth date: ``name=<name>&birthdate=<yyyy-mm-dd>`` (a name
  alone would list a whole village).

The search runs through the engine **with the caller's access policy** (their guard, not
the platform): a doctor finds only the residents their roles reach — their teams'
contracted residents, those who shared their records with the doctor's institution,
break-the-glass grants (docs/access.md). Nothing here widens that.

Results show identifiers and phones masked (``110***********1234``, ``138****5678``);
the full values never leave the server on this path. Each search is audited (who, the
kind of search, the residents found; never the number typed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.contracting.contracts import refuse
from smartmed.contracting.service import person_name
from smartmed.crypto.masking import mask_id, mask_phone
from smartmed.crypto.policy import is_id_number
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Invalid
from smartmed.fhir.hooks import AuditRecord, current_access
from smartmed.fhir.model import utcnow
from smartmed.fhir.search.service import search_bundle
from smartmed.identity.principal import Principal

MAX_RESULTS = 20
_PHONE = re.compile(r"^\+?[0-9]{5,20}$")
_PHONE_NOISE = re.compile(r"[\s\-()]")


@dataclass(frozen=True, slots=True)
class Query:
    """What the doctor typed; exactly one way of searching is used."""

    id_number: str = ""
    phone: str = ""
    name: str = ""
    birth_date: str = ""

    def params(self) -> list[tuple[str, str]]:
        """The FHIR search parameters; Invalid (with a ``reason``) for bad input."""
        id_number = self.id_number.strip().upper()
        phone = _PHONE_NOISE.sub("", self.phone)
        name = " ".join(self.name.split())
        birth = self.birth_date.strip()
        if id_number:
            if not is_id_number(id_number):
                raise refuse(Invalid, "bad-id-number", "not an 18-character resident ID number")
            return [("identifier", id_number)]
        if phone:
            if not _PHONE.match(phone):
                raise refuse(Invalid, "bad-phone", "a phone number is 5-20 digits")
            return [("phone", phone)]
        if name or birth:
            if not name or not birth:
                raise refuse(
                    Invalid, "search-name-and-birth", "search by name needs the birth date too"
                )
            if len(name) > 100:
                raise refuse(Invalid, "search-name-and-birth", "the name is too long")
            try:
                day = date.fromisoformat(birth)
            except ValueError:
                raise refuse(Invalid, "bad-birth-date", "the birth date is YYYY-MM-DD") from None
            return [("name", name), ("birthdate", day.isoformat())]
        raise refuse(
            Invalid,
            "search-criteria",
            "give an ID number, a phone number, or a name and a birth date",
        )


@dataclass(frozen=True, slots=True)
class Found:
    """A resident found, as the doctor's form shows them (identifiers masked)."""

    patient: str
    name: str
    birth_date: str | None
    gender: str | None
    identifiers: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "patient": self.patient,
            "name": self.name,
            "birthDate": self.birth_date,
            "gender": self.gender,
            "identifiers": self.identifiers,
            "phones": self.phones,
        }


def _found(patient: dict[str, Any], id_systems: frozenset[str]) -> Found:
    identifiers = [
        mask_id(str(i["value"]))
        for i in patient.get("identifier") or []
        if isinstance(i.get("value"), str)
        and (i.get("system") in id_systems or is_id_number(str(i["value"])))
    ]
    phones = [
        mask_phone(str(t["value"]))
        for t in patient.get("telecom") or []
        if t.get("system") in ("phone", "sms") and isinstance(t.get("value"), str)
    ]
    return Found(
        patient=f"Patient/{patient['id']}",
        name=person_name(patient),
        birth_date=patient.get("birthDate"),
        gender=patient.get("gender"),
        identifiers=identifiers,
        phones=phones,
    )


async def find_residents(
    engine: FhirEngine, conn: AsyncConnection, *, principal: Principal, query: Query
) -> list[Found]:
    """Residents matching ``query`` that ``principal`` may reach (at most 20, by name)."""
    params = query.params()
    control = engine.access
    guard = control.guard_for(principal) if control is not None else None
    items = [*params, ("active:not", "false"), ("_count", str(MAX_RESULTS))]
    reset = current_access.set(guard)  # the caller's policy, never the platform's
    try:
        raw = await search_bundle(
            conn,
            engine.services,
            "Patient",
            items,
            base_url="urn:smartmed:contracting",
            strict=True,
        )
    finally:
        current_access.reset(reset)
    bundle = orjson.loads(raw)
    systems = frozenset(engine.settings.encryption_identifier_systems)
    found = [
        _found(e["resource"], systems)
        for e in bundle.get("entry", [])
        if (e.get("search") or {}).get("mode") == "match"
    ]
    await _audit(engine, principal, params, found)
    return sorted(found, key=lambda f: (f.name, f.patient))


async def _audit(
    engine: FhirEngine, principal: Principal, params: list[tuple[str, str]], found: list[Found]
) -> None:
    """Who looked for a resident and whom they found: an audit record (search-type) per
    search, naming the residents found; the query keeps the parameter names only, never
    the ID number or phone typed."""
    if engine.audit is None:
        return
    patients = tuple(f.patient for f in found)
    await engine.audit.record(
        AuditRecord(
            action="E",
            subtype="search-type",
            outcome="0",
            recorded=utcnow(),
            agent=principal.fhir_user,
            account=principal.subject,
            client_id=principal.client_id,
            roles=tuple(str(r.role) for r in principal.roles),
            entities=patients,
            patients=patients,
            query="Patient?" + "&".join(f"{name}=*" for name, _ in params),
            detail="contracting: find the resident to sign in person",
        )
    )
