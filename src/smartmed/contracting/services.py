"""Delivered services and the used / remaining counts of a contract's package
(docs/contracting.md, "Service counting").

A delivered service is an ``Encounter`` or ``Procedure`` carrying the complex extension
``urn:smartmed:extension:contract-service`` (``contract`` → Contract/…, ``item`` →
``urn:smartmed:service-item|<code>``), written any way (FHIR API, portal, demo, imports).

Counts are **derived when asked**, never stored: the resident's current Encounters and
Procedures are found through the search index (``subject`` = the contract's resident) and
those naming this contract are counted. A re-saved record is one current resource (an
update replaces it), a deleted one is no longer found, concurrent writers share no
counter that could lose an update — so the counts are right by construction, on every
write path, with no hook to miss (the migration slot 0018 stays empty).

Per contract year: a contract is one year, so the services of a contract are its year's;
a record dated outside the contract's term is listed (``outside-term``) but not counted,
and a cancelled, not-done or entered-in-error record is neither.
Beyond the package's quantity a service still counts as delivered and is flagged
``over-quota`` (clinically allowed, never dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.contracting.contracts import (
    Refused,
    bounds,
    instant,
    now_utc,
    package_of,
    patient_of,
    refuse,
    team_of,
)
from smartmed.contracting.packages import ITEM_SYSTEM, ITEMS, Package, get_package
from smartmed.contracting.service import (
    access_contract,
    create,
    person_name,
    search,
    search_every,
)
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError, Invalid
from smartmed.fhir.search.convert import date_range

SERVICE_EXT = "urn:smartmed:extension:contract-service"
SERVICE_TYPES = ("Encounter", "Procedure")
# Records that say the service did not happen (FHIR status value sets).
NOT_DELIVERED = frozenset({"cancelled", "entered-in-error", "not-done", "unknown"})


@dataclass(frozen=True, slots=True)
class Delivered:
    """One delivered service record as the records view shows it."""

    reference: str  # Encounter/… or Procedure/…
    item: str
    when: datetime | None
    performers: tuple[str, ...]
    status: str
    counted: bool
    flag: str | None  # None | over-quota | outside-term | not-delivered | not-in-package

    def json(self, names: dict[str, str]) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "item": self.item,
            "date": instant(self.when) if self.when else None,
            "performers": [{"reference": p, "name": names.get(p, "")} for p in self.performers],
            "status": self.status,
            "counted": self.counted,
            "flag": self.flag,
        }


@dataclass(slots=True)
class Usage:
    """A contract's package and its services: per item quantity, used, remaining."""

    contract: dict[str, Any]
    package: Package | None
    items: list[dict[str, Any]] = field(default_factory=list)
    services: list[Delivered] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)

    def used(self, item: str) -> int:
        return sum(1 for s in self.services if s.counted and s.item == item)

    def json(self) -> dict[str, Any]:
        return {
            "contract": f"Contract/{self.contract['id']}",
            "applies": self.contract.get("applies"),
            "package": self.package.json() if self.package else None,
            "items": self.items,
            "services": [s.json(self.names) for s in self.services],
        }


def service_link(resource: dict[str, Any]) -> tuple[str, str] | None:
    """(contract reference, item code) of a record's contract-service extension."""
    for ext in resource.get("extension") or []:
        if ext.get("url") != SERVICE_EXT:
            continue
        parts = {e.get("url"): e for e in ext.get("extension") or []}
        contract = ((parts.get("contract") or {}).get("valueReference") or {}).get("reference")
        coding = (parts.get("item") or {}).get("valueCoding") or {}
        if contract and coding.get("code") and coding.get("system", ITEM_SYSTEM) == ITEM_SYSTEM:
            return str(contract), str(coding["code"])
    return None


def service_date(resource: dict[str, Any]) -> datetime | None:
    """When the service was delivered: Encounter.period.start, Procedure.performed[x]."""
    value = None
    if resource.get("resourceType") == "Encounter":
        value = (resource.get("period") or {}).get("start")
    else:
        value = resource.get("performedDateTime") or (resource.get("performedPeriod") or {}).get(
            "start"
        )
    if not value:
        value = (resource.get("meta") or {}).get("lastUpdated")
    if not value:
        return None
    found = date_range(str(value))
    if found is None:
        return None
    low = found[0]
    return low if low.tzinfo else low.replace(tzinfo=UTC)


def performers(resource: dict[str, Any]) -> tuple[str, ...]:
    if resource.get("resourceType") == "Encounter":
        refs = [
            (p.get("individual") or {}).get("reference") for p in resource.get("participant") or []
        ]
    else:
        refs = [(p.get("actor") or {}).get("reference") for p in resource.get("performer") or []]
    return tuple(str(r) for r in refs if r)


def tally(
    contract: dict[str, Any], package: Package | None, records: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[Delivered]]:
    """The pure counting rule (tested against a brute-force oracle): per item of the
    package quantity / used / remaining / over, and each record with its flag, in the
    order delivered (date, then reference)."""
    ref = f"Contract/{contract['id']}"
    start, end = bounds(contract)
    mine = []
    for record in records:
        link = service_link(record)
        if link is None or link[0] != ref:
            continue
        mine.append((record, link[1], service_date(record)))
    mine.sort(
        key=lambda r: (r[2] or datetime.max.replace(tzinfo=UTC), r[0]["resourceType"], r[0]["id"])
    )
    quantities = {i.code: i.quantity for i in package.items} if package else {}
    used: dict[str, int] = {}
    out: list[Delivered] = []
    for record, item, when in mine:
        status = str(record.get("status") or "")
        flag: str | None = None
        counted = False
        if status in NOT_DELIVERED:
            flag = "not-delivered"
        elif when is not None and not start <= when < end and contract.get("status") != "offered":
            flag = "outside-term"
        else:
            counted = True
            used[item] = used.get(item, 0) + 1
            if item not in quantities:
                flag = "not-in-package"
            elif used[item] > quantities[item]:
                flag = "over-quota"
        out.append(
            Delivered(
                reference=f"{record['resourceType']}/{record['id']}",
                item=item,
                when=when,
                performers=performers(record),
                status=status,
                counted=counted,
                flag=flag,
            )
        )
    items = []
    codes = list(quantities) + sorted(set(used) - set(quantities))
    for code in codes:
        quantity = quantities.get(code, 0)
        n = used.get(code, 0)
        items.append(
            {
                "code": code,
                "display": ITEMS.get(code, code),
                "quantity": quantity,
                "used": n,
                "remaining": max(quantity - n, 0),
                "over": max(n - quantity, 0),
            }
        )
    return items, out


async def records_of(
    engine: FhirEngine, conn: AsyncConnection, contract: dict[str, Any]
) -> list[dict[str, Any]]:
    """The resident's current Encounters and Procedures that name this contract."""
    patient = patient_of(contract)
    assert patient is not None
    ref = f"Contract/{contract['id']}"
    out = []
    for type_ in SERVICE_TYPES:
        async for record in search_every(
            engine, conn, type_, [("subject", patient), ("_sort", "_id")]
        ):
            link = service_link(record)
            if link is not None and link[0] == ref:
                out.append(record)
    return out


async def usage(engine: FhirEngine, conn: AsyncConnection, *, contract_id: str) -> Usage:
    """Package, per-item used / remaining, and every service record of a contract."""
    contract = await access_contract(engine, conn, contract_id)
    package = None
    chosen = package_of(contract)
    if chosen and chosen.startswith("PlanDefinition/"):
        try:
            package = await get_package(engine, conn, chosen)
        except FhirError:
            package = None
    records = await records_of(engine, conn, contract)
    items, delivered = tally(contract, package, records)
    result = Usage(contract, package, items, delivered)
    people = sorted({p for s in delivered for p in s.performers if p.startswith("Practitioner")})
    for kind in ("Practitioner", "PractitionerRole"):
        ids = [p.split("/", 1)[1] for p in people if p.split("/", 1)[0] == kind]
        if ids:
            for body in await search(engine, conn, kind, [("_id", ",".join(ids))]):
                name = person_name(body)
                if kind == "PractitionerRole":
                    name = str((body.get("practitioner") or {}).get("display") or name)
                result.names[f"{kind}/{body['id']}"] = name
    return result


def service_resource(
    *,
    kind: str,
    contract: dict[str, Any],
    item: str,
    performer: str,
    when: datetime,
) -> dict[str, Any]:
    """A delivered service as FHIR (Encounter ``finished`` or Procedure ``completed``)."""
    if kind not in SERVICE_TYPES:
        raise refuse(Invalid, "bad-kind", "kind must be Encounter or Procedure")
    if item not in ITEMS:
        raise refuse(Invalid, "bad-item", f"unknown service item {item!r}")
    patient = patient_of(contract)
    ext = {
        "url": SERVICE_EXT,
        "extension": [
            {"url": "contract", "valueReference": {"reference": f"Contract/{contract['id']}"}},
            {
                "url": "item",
                "valueCoding": {"system": ITEM_SYSTEM, "code": item, "display": ITEMS[item]},
            },
        ],
    }
    code = {"coding": [{"system": ITEM_SYSTEM, "code": item, "display": ITEMS[item]}]}
    if kind == "Encounter":
        body: dict[str, Any] = {
            "resourceType": "Encounter",
            "extension": [ext],
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "HH"
                if item == "home-visit"
                else ("VR" if item == "consultation" else "AMB"),
            },
            "type": [code],
            "subject": {"reference": patient},
            "participant": [{"individual": {"reference": performer}}],
            "period": {"start": instant(when), "end": instant(when)},
        }
    else:
        body = {
            "resourceType": "Procedure",
            "extension": [ext],
            "status": "completed",
            "code": code,
            "subject": {"reference": patient},
            "performedDateTime": instant(when),
            "performer": [{"actor": {"reference": performer}}],
        }
    return body


async def do_record(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    contract_id: str,
    item: str,
    performer: str,
    kind: str = "Encounter",
    when: datetime | None = None,
) -> dict[str, Any]:
    """Record a service delivered under a contract (by a team member; the caller checks
    membership). Beyond the quantity it is still recorded (flagged over quota)."""
    contract = await access_contract(engine, conn, contract_id)
    if contract.get("status") != "executed":
        raise refuse(Refused, "not-active", f"Contract/{contract_id} is not a contract in force")
    at = when or now_utc()
    if at > now_utc():
        raise refuse(Invalid, "bad-date", "a service cannot be recorded in the future")
    body = service_resource(kind=kind, contract=contract, item=item, performer=performer, when=at)
    assert team_of(contract)
    return await create(engine, conn, body)
