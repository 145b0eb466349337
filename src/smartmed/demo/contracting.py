"""The demo county's family-doctor contracting programme (pure: no I/O).

``generator`` decides who signs (the published shares, cited there); this module gives
the programme a history the workbenches and contract analytics can show
(docs/demo.md, "The contracting programme"):

* the default service-package catalogue (``contracting/data/catalogue.toml``, the same
  resources ``contracting.packages.ensure_catalogue`` publishes) goes in the first
  Bundle with ``ifNoneExist`` on its identifiers, so a catalogue already seeded is
  reused; contracts and orders name packages and prices by conditional reference on
  that identifier (``PlanDefinition?identifier=urn:smartmed:service-package|basic``);
* every contract is shaped as ``contracting`` writes one signed through the module
  (``contracts.new_contract`` + ``execute``): the team extension (with the team's name),
  the signing method (``qr-card`` or ``portal``), type, subject, authority, ``issued``
  and ``author``, the resident's ``PAT`` signer with the typed-name electronic signature
  and the accepting doctor's ``HPROV`` signer, a one-year ``applies``
  (``one_year_after``), and the doctor who signed as the member responsible for the
  resident (``teamwork`` assignment, by the team leader), so each doctor's workbench
  lists their residents. Only the ``meta.tag``s (team, member responsible) are missing:
  their codes are server-assigned ids, which a pure generator cannot know;
  :func:`tag_contracts` adds them from the loader's resolved references (the module's
  readers find untagged contracts through the team's organisation meanwhile);
* every contract names a package (``PACKAGE_EXT``): the free basic package for most,
  a paid one for a minority of hypertension, diabetes and older patients; a paid
  package's purchase is a ChargeItem (billed) and an Invoice (balanced, tag
  ``fulfilled``) shaped as ``payments.records`` writes them, with no payment-provider
  traffic and no ``payment_order`` row (the demo records purchases that happened);
* delivered services: a share of the resident's follow-up and health-check Encounters
  in a contract's term carry the ``contract-service`` extension, and paid packages add
  HbA1c Procedures and home-visit Encounters; some contracts are never served;
* history: renewals (last year's contract ended, this one ``replaces`` it, reason
  ``renewal``), transfers (the old contract ``terminated`` with reason ``transfer`` and
  its successor with another team ``replaces`` it), terminations with a reason and
  contracts that ran out without renewal.

Every share below is a MODELLING ASSUMPTION, chosen so the figures differ visibly
between teams and residents; none is a published statistic.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any

from smartmed.contracting.contracts import (
    AUTHOR_SIGNATURE,
    METHOD_EXT,
    PACKAGE_EXT,
    REPLACES_EXT,
    TEAM_EXT,
    TYPE_SYSTEM,
    Signature,
    instant,
    one_year_after,
    resident_signer,
    set_reason,
    signer_entry,
)
from smartmed.contracting.packages import (
    ITEM_SYSTEM,
    ITEMS,
    PACKAGE_SYSTEM,
    catalogue,
    check_spec,
    plan_body,
    price_body,
)
from smartmed.contracting.services import SERVICE_EXT
from smartmed.contracting.teamwork import ASSIGNMENT_EXT
from smartmed.demo.codes import (
    CARE_TEAM_SYSTEM,
    ENCOUNTER_TYPE_SYSTEM,
    SNOMED,
    V3_ACT,
    Resource,
    coding,
    concept,
    entry,
    org_ref,
    staff_ref,
    timestamp,
)
from smartmed.payments import STATE_TAG_SYSTEM

if TYPE_CHECKING:
    from smartmed.demo.generator import Staff, Township, _Generator
    from smartmed.demo.population import Person

# -- modelling assumptions (not published statistics) ----------------------------------
# Paid packages, per signed resident who qualifies (checked in this order, one package
# per contract): diabetes, hypertension, then people aged 65 and over.
DIABETES_PACKAGE_SHARE = 0.15
HYPERTENSION_PACKAGE_SHARE = 0.12
ELDERLY_PACKAGE_SHARE = 0.06
# Lifecycle of a signed resident's contract in force (exclusive, checked in this order):
RENEWAL_SHARE = 0.35  # last year's contract ran out and this one renews it
TRANSFER_SHARE = 0.04  # moved from another township's team during the past year
# Residents who are not signed now (exclusive, in this order):
TERMINATED_SHARE = 0.05  # signed once, the contract ended early with a reason
LAPSED_SHARE = 0.05  # signed once, the year ran out and was not renewed
TERMINATION_REASONS = (  # codes of contracts.TERMINATION_REASONS; weights assumed
    ("resident-request", 5, "本人申请解约"),
    ("moved-away", 3, "迁出本辖区"),
    ("team-request", 1, "团队调整"),
    ("other", 1, "其他原因"),
)
# Delivered services: some contracts are never served ("signed but never served"); of
# a served contract's eligible visits in its term, this share is recorded against it.
NEVER_SERVED_SHARE = 0.2
RECORDED_SHARE = 0.8

# How residents signed (contract-signing-method): scanning the doctor's business card at
# a village visit, or applying in the portal. Decided by a hash of the resident's entry
# (no draw from the programme's random stream, so the other figures stay as they were).
QR_CARD_SHARE = 0.7
CHINA = timezone(timedelta(hours=8))
SIGNING_TIME = time(9, 0)  # signed at 09:00 local time on the first day of the term

DEMO_ORDER_SYSTEM = "urn:smartmed:demo-order"  # not payments' order ids: no order row
HBA1C_PROCEDURE = (SNOMED, "43396009", "Hemoglobin A1c measurement")
HOME_VISIT_TYPE = ("home-visit", "上门服务")


def package_ref(code: str) -> str:
    """Conditional reference to a catalogue package by its code."""
    return f"PlanDefinition?identifier={PACKAGE_SYSTEM}|{code}"


def price_ref(code: str) -> str:
    """Conditional reference to a catalogue package's price."""
    return f"ChargeItemDefinition?identifier={PACKAGE_SYSTEM}|{code}"


@dataclass(frozen=True, slots=True)
class _Package:
    code: str
    title: str
    price: str  # CNY, as in the catalogue
    items: dict[str, int]


def _catalogue() -> tuple[dict[str, Any], dict[str, _Package]]:
    data = catalogue()
    packages = {
        p["code"]: _Package(
            p["code"], p["title"], p["price"], {i["code"]: i["quantity"] for i in p["items"]}
        )
        for p in data["package"]
    }
    return data, packages


def catalogue_entries(full_url: Callable[[], str]) -> list[Resource]:
    """PlanDefinition and ChargeItemDefinition entries of the default catalogue, each
    created only if no resource of its type has the package's identifier yet."""
    data, _ = _catalogue()
    out: list[Resource] = []
    for item in data["package"]:
        spec = check_spec(
            code=item["code"],
            title=item["title"],
            title_en=item.get("title_en", ""),
            description=item.get("description", ""),
            price=item["price"],
            items=[(i["code"], i["quantity"]) for i in item["items"]],
        )
        region, name = data["region"], data["region_name"]
        plan_url, price_url = full_url(), full_url()
        plan = plan_body(spec, status="active", region=region, region_name=name)
        price = price_body(spec, plan_id="-", status="active", region=region, region_name=name)
        price["extension"][0]["valueReference"]["reference"] = plan_url
        condition = f"identifier={PACKAGE_SYSTEM}|{spec.code}"
        out += [entry(plan, plan_url, condition), entry(price, price_url, condition)]
    return out


@dataclass(slots=True)
class _Term:
    """One contract of a resident, as built so far."""

    entry: Resource
    start: date
    end: date  # exclusive: the day after the last (a termination: its midnight)
    package: _Package


class Programme:
    """Builds each resident's contracts, purchases and delivered-service links."""

    def __init__(self, gen: _Generator, rng: random.Random) -> None:
        self.gen = gen
        self.rng = rng
        _, self.packages = _catalogue()

    # -- per resident ------------------------------------------------------------

    def resident(
        self,
        person: Person,
        patient_url: str,
        township: Township,
        gp: Staff,
        records: list[Resource],
        *,
        signed: bool,
    ) -> list[Resource]:
        """The resident's contracts (and purchases, extra services); marks ``records``
        (their clinical entries) delivered where a contract covers them."""
        rng, as_of = self.rng, self.gen.as_of
        terms: list[_Term] = []
        if signed:
            current = self._term(
                self.gen._contract(person, patient_url, township, gp),
                person,
                patient_url,
                township,
                gp,
            )
            draw = rng.random()
            if draw < RENEWAL_SHARE:
                previous = self._copy(current, person, patient_url, township, gp)
                self._dates(previous, current.start - timedelta(days=365), current.start)
                self._replaces(current, previous, "renewal")
                terms.append(previous)
            elif draw < RENEWAL_SHARE + TRANSFER_SHARE and len(self.gen.townships) > 1:
                other = rng.choice([t for t in self.gen.townships if t is not township])
                previous = self._copy(
                    current, person, patient_url, other, rng.choice(other.doctors)
                )
                start = current.start - timedelta(days=rng.randint(30, 330))
                self._dates(previous, start, current.start)
                self._terminate(previous, "transfer", None)
                self._replaces(current, previous, "transfer")
                terms.append(previous)
            terms.append(current)
        else:
            draw = rng.random()
            if draw < TERMINATED_SHARE + LAPSED_SHARE:
                past = self._term(
                    self.gen._contract(person, patient_url, township, gp),
                    person,
                    patient_url,
                    township,
                    gp,
                )
                if draw < TERMINATED_SHARE:
                    start = as_of - timedelta(days=rng.randint(120, 700))
                    ended = start + timedelta(days=rng.randint(30, 110))
                    self._dates(past, start, ended)
                    codes = [r[0] for r in TERMINATION_REASONS]
                    weights = [r[1] for r in TERMINATION_REASONS]
                    code = rng.choices(codes, weights=weights)[0]
                    text = next(r[2] for r in TERMINATION_REASONS if r[0] == code)
                    self._terminate(past, code, text)
                else:
                    start = as_of - timedelta(days=rng.randint(366, 700))
                    self._dates(past, start, start + timedelta(days=365))
                terms.append(past)
        out: list[Resource] = []
        for term in terms:
            out.append(term.entry)
            if term.package.price not in ("0", "0.00"):
                out += self._purchase(term, patient_url, person)
        out += self._services(terms, person, patient_url, gp, records)
        return out

    # -- contracts ---------------------------------------------------------------

    def _term(
        self,
        contract_entry: Resource,
        person: Person,
        patient_url: str,
        township: Township,
        gp: Staff,
    ) -> _Term:
        """The generator's contract, shaped as ``contracting`` writes one signed by the
        resident and accepted by ``gp`` (docs/contracting.md, "The contract in FHIR"), with
        its package and ``gp`` as the member responsible for the resident."""
        start = date.fromisoformat(contract_entry["resource"]["applies"]["start"])
        package = self.packages[self._choose(person)]
        term = _Term(contract_entry, start, start, package)
        self._shape(term, person, patient_url, township, gp)
        self._dates(term, start, one_year_after(start) + timedelta(days=1))
        return term

    @staticmethod
    def _shape(
        term: _Term, person: Person, patient_url: str, township: Township, gp: Staff
    ) -> None:
        """Everything but the dates (``_dates``), as ``contracts.new_contract`` and
        ``execute`` build it; references to the team and staff stay conditional (the
        loader resolves them)."""
        resource = term.entry["resource"]
        team = f"CareTeam?identifier={CARE_TEAM_SYSTEM}|{township.code}-FDT"
        doctor = staff_ref(gp.code, gp.person.name)["reference"]
        leader = staff_ref(township.team[0].code, township.team[0].person.name)["reference"]
        digest = zlib.crc32(patient_url.encode()) % 1000
        method = "qr-card" if digest < QR_CARD_SHARE * 1000 else "portal"
        at = datetime.combine(term.start, SIGNING_TIME, CHINA)
        resource["extension"] = [
            {
                "url": TEAM_EXT,
                "valueReference": {
                    "reference": team,
                    "display": f"{township.name}家庭医生签约服务团队",
                },
            },
            {"url": METHOD_EXT, "valueCode": method},
            {"url": PACKAGE_EXT, "valueReference": {"reference": package_ref(term.package.code)}},
            {  # teamwork.assign: the doctor who signed is responsible for the resident
                "url": ASSIGNMENT_EXT,
                "extension": [
                    {"url": "member", "valueReference": {"reference": doctor}},
                    {"url": "period", "valuePeriod": {"start": instant(at)}},
                    {"url": "by", "valueReference": {"reference": leader}},
                ],
            },
        ]
        resource["type"] = {
            "coding": [
                {
                    "system": TYPE_SYSTEM,
                    "code": "family-doctor",
                    "display": "Family doctor contract",
                }
            ],
            "text": "家庭医生签约服务",
        }
        resource["subject"] = [{"reference": patient_url}]
        resource["authority"] = [{"reference": org_ref(township.code)["reference"]}]
        resource["author"] = {"reference": doctor}
        resource["signer"] = [
            resident_signer(
                signer=patient_url,
                patient=patient_url,
                agent=False,
                signature=Signature(person.name, True),
                at=at,
            ),
            signer_entry(who=doctor, kind="HPROV", signature_type=AUTHOR_SIGNATURE, at=at),
        ]

    def _choose(self, person: Person) -> str:
        rng = self.rng
        if person.diabetes and rng.random() < DIABETES_PACKAGE_SHARE:
            return "diabetes"
        if person.hypertension and rng.random() < HYPERTENSION_PACKAGE_SHARE:
            return "hypertension"
        if person.age >= 65 and rng.random() < ELDERLY_PACKAGE_SHARE:
            return "elderly"
        return "basic"

    def _copy(
        self, current: _Term, person: Person, patient_url: str, township: Township, gp: Staff
    ) -> _Term:
        """An earlier contract of the same resident with ``township``'s team (signed with
        ``gp``; dated by ``_dates``)."""
        resource: Resource = {
            "resourceType": "Contract",
            "status": "executed",
            "applies": dict(current.entry["resource"]["applies"]),
        }
        term = _Term(
            entry(resource, self.gen.full_url()), current.start, current.end, current.package
        )
        self._shape(term, person, patient_url, township, gp)
        return term

    @staticmethod
    def _dates(term: _Term, start: date, end: date) -> None:
        """Signed and accepted at 09:00 (China time) on ``start``; ``end`` is exclusive
        (``applies.end`` is the term's last day, as ``contracts.execute`` writes it)."""
        resource = term.entry["resource"]
        signed = instant(datetime.combine(start, SIGNING_TIME, CHINA))
        resource["issued"] = signed
        last = end - timedelta(days=1)
        resource["applies"] = {"start": start.isoformat(), "end": last.isoformat()}
        resource["signer"] = [
            {
                **s,
                "signature": [{**sig, "when": signed} for sig in s["signature"]],
            }
            for s in resource["signer"]
        ]
        for ext in resource["extension"]:
            if ext["url"] == ASSIGNMENT_EXT:
                for part in ext["extension"]:
                    if part["url"] == "period":
                        part["valuePeriod"] = {"start": signed}
        term.start, term.end = start, end

    @staticmethod
    def _terminate(term: _Term, code: str, text: str | None) -> None:
        """Ended early at the start of ``term.end`` (China time), an instant as
        ``lifecycle`` writes it."""
        resource = term.entry["resource"]
        resource["status"] = "terminated"
        ended = datetime.combine(term.end, time(0), CHINA)
        resource["applies"]["end"] = instant(ended)
        set_reason(resource, code, text)

    @staticmethod
    def _replaces(term: _Term, previous: _Term, reason: str) -> None:
        term.entry["resource"]["extension"].append(
            {
                "url": REPLACES_EXT,
                "extension": [
                    {"url": "contract", "valueReference": {"reference": previous.entry["fullUrl"]}},
                    {"url": "reason", "valueCode": reason},
                ],
            }
        )

    # -- purchases ---------------------------------------------------------------

    def _purchase(self, term: _Term, patient_url: str, person: Person) -> list[Resource]:
        """The paid package's order as payments records it once fulfilled: ChargeItem
        billed, Invoice balanced with the state tag ``fulfilled``."""
        package = term.package
        order = f"demo-{term.entry['fullUrl'].rsplit(':', 1)[1]}"
        paid = timestamp(term.start, 9 * 60 + 30)
        money = {"value": float(package.price), "currency": "CNY"}
        charge_url, invoice_url = self.gen.full_url(), self.gen.full_url()
        charge: Resource = {
            "resourceType": "ChargeItem",
            "identifier": [{"system": DEMO_ORDER_SYSTEM, "value": order}],
            "status": "billed",
            "code": {"text": package.title},
            "subject": {"reference": patient_url, "display": person.name},
            "quantity": {"value": 1},
            "priceOverride": money,
            "enteredDate": paid,
            "supportingInformation": [
                {"reference": term.entry["fullUrl"]},
                {"reference": price_ref(package.code)},
            ],
        }
        invoice: Resource = {
            "resourceType": "Invoice",
            "meta": {"tag": [{"system": STATE_TAG_SYSTEM, "code": "fulfilled"}]},
            "identifier": [{"system": DEMO_ORDER_SYSTEM, "value": order}],
            "status": "balanced",
            "subject": {"reference": patient_url, "display": person.name},
            "recipient": {"reference": patient_url},  # the resident paid (payments.payers)
            "date": paid,
            "lineItem": [
                {
                    "sequence": 1,
                    "chargeItemReference": {"reference": charge_url},
                    "priceComponent": [{"type": "base", "amount": money}],
                }
            ],
            "totalNet": money,
            "totalGross": money,
        }
        return [entry(charge, charge_url), entry(invoice, invoice_url)]

    # -- delivered services ------------------------------------------------------

    def _services(
        self,
        terms: list[_Term],
        person: Person,
        patient_url: str,
        gp: Staff,
        records: list[Resource],
    ) -> list[Resource]:
        rng, as_of = self.rng, self.gen.as_of
        served = [t for t in terms if rng.random() >= NEVER_SERVED_SHARE]
        if not served:
            return []
        for record in records:
            resource = record["resource"]
            if resource["resourceType"] != "Encounter":
                continue
            day = date.fromisoformat(resource["period"]["start"][:10])
            term = next((t for t in served if t.start <= day < t.end), None)
            if term is None:
                continue
            item = self._item(resource, person, term.package)
            if item is not None and rng.random() < RECORDED_SHARE:
                _mark(record, term.entry["fullUrl"], item)
        extra: list[Resource] = []
        for term in served:
            last = min(term.end, as_of)
            span = (last - term.start).days
            if span < 1:
                continue
            for item in ("hba1c", "home-visit"):
                quantity = term.package.items.get(item, 0) if term.package.code != "basic" else 0
                for _ in range(rng.randint(0, quantity)):
                    day = term.start + timedelta(days=rng.randrange(span))
                    minutes = rng.randint(8 * 60, 16 * 60)
                    extra.append(self._extra(item, day, minutes, patient_url, gp, term))
        return extra

    @staticmethod
    def _item(encounter: Resource, person: Person, package: _Package) -> str | None:
        kind = encounter["type"][0]["coding"][0]["code"]
        if kind == "chronic-follow-up":
            candidates = [
                code
                for code, has in (
                    ("bp-followup", person.hypertension),
                    ("glucose-followup", person.diabetes),
                )
                if has
            ]
        elif kind in ("elderly-health-check", "child-health-check"):
            candidates = ["health-check"]
        else:
            return None
        return next((c for c in candidates if c in package.items), None)

    def _extra(
        self, item: str, day: date, minutes: int, patient_url: str, gp: Staff, term: _Term
    ) -> Resource:
        performer = staff_ref(gp.code, gp.person.name)
        resource: Resource
        if item == "hba1c":
            resource = {
                "resourceType": "Procedure",
                "status": "completed",
                "code": concept(*HBA1C_PROCEDURE, "糖化血红蛋白检测"),
                "subject": {"reference": patient_url},
                "performedDateTime": timestamp(day, minutes),
                "performer": [{"actor": performer}],
            }
        else:
            resource = {
                "resourceType": "Encounter",
                "status": "finished",
                "class": coding(V3_ACT, "HH", "home health"),
                "type": [concept(ENCOUNTER_TYPE_SYSTEM, *HOME_VISIT_TYPE, HOME_VISIT_TYPE[1])],
                "subject": {"reference": patient_url},
                "participant": [{"individual": performer}],
                "period": {
                    "start": timestamp(day, minutes),
                    "end": timestamp(day, minutes + 40),
                },
                "serviceProvider": org_ref(gp.org, self.gen.department_names.get(gp.org)),
            }
        record = entry(resource, self.gen.full_url())
        _mark(record, term.entry["fullUrl"], item)
        return record


def tag_contracts(bundle: Resource, targets: dict[str, str]) -> int:
    """Give every Contract of ``bundle`` the ``meta.tag``s contracting writes — the team
    (``urn:smartmed:contract-team|<CareTeam id>``) and the member responsible
    (``urn:smartmed:contract-assignee|Practitioner/<id>``) — once the ids are known:
    ``targets`` maps conditional references to literal ones (``CareTeam?identifier=…`` →
    ``CareTeam/7``), as the loader has them after loading the organisations. For the
    loader (``demo/load.py``) to call next to ``resolve_references``; the generator
    cannot, having no ids. How many Contracts were tagged."""
    from smartmed.contracting.contracts import TEAM_TAG
    from smartmed.contracting.teamwork import ASSIGNEE_TAG, assignee_of

    tagged = 0
    for item in bundle.get("entry", []):
        resource = item.get("resource") or {}
        if resource.get("resourceType") != "Contract":
            continue
        team_ext = next((e for e in resource.get("extension", []) if e["url"] == TEAM_EXT), None)
        team = str(((team_ext or {}).get("valueReference") or {}).get("reference", ""))
        team = targets.get(team, team)
        member = assignee_of(resource) or ""
        member = targets.get(member, member)
        tags = [
            t
            for t in (resource.get("meta") or {}).get("tag", [])
            if t.get("system") not in (TEAM_TAG, ASSIGNEE_TAG)
        ]
        if team.startswith("CareTeam/"):
            tags.append({"system": TEAM_TAG, "code": team.split("/", 1)[1]})
        if member.startswith("Practitioner/"):
            tags.append({"system": ASSIGNEE_TAG, "code": member})
        if tags:
            resource["meta"] = {**(resource.get("meta") or {}), "tag": tags}
            tagged += 1
    return tagged


def _mark(record: Resource, contract_url: str, item: str) -> None:
    """Add the contract-service extension (issue-8 conventions) to an entry's resource."""
    resource = record["resource"]
    ext = {
        "url": SERVICE_EXT,
        "extension": [
            {"url": "contract", "valueReference": {"reference": contract_url}},
            {
                "url": "item",
                "valueCoding": {"system": ITEM_SYSTEM, "code": item, "display": ITEMS[item]},
            },
        ],
    }
    record["resource"] = {
        "resourceType": resource["resourceType"],
        "extension": [*resource.get("extension", []), ext],
        **{k: v for k, v in resource.items() if k not in ("resourceType", "extension")},
    }
