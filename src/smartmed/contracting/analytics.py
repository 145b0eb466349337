"""Contract analytics for institution administrators and health-authority analysts:
signing rate and key-population coverage by village, township and team; renewals and
changes; fulfilment (contracts whose residents actually received services).

**How it is computed.** Through the analytics engine (docs/analytics.md): the SQL-on-FHIR
ViewDefinitions below flatten Patients, Organizations, CareTeams, Conditions, Contracts,
PlanDefinition items and the delivered-service records (Encounter, Procedure) of the
**live store** (``analytics.run.run_store``: inside PostgreSQL, or a DuckDB snapshot of
the SQLite store), and this module joins the rows in Python. Why not SQL over the index
tables: they hold the searchable values only (no contract-service or contract-team
extension, no status reason), and a view is the documented, dialect-portable way to read
resources in bulk. Each view is its own snapshot (a consistent read of one type).

**Definitions** (all at the moment ``at``; residents are living Patients not marked
inactive; a resident's village is their ``managingOrganization`` (the village clinic, as
in the demo county), its township that clinic's ``partOf``):

- *signing rate* = residents with a contract in force / residents;
- *key-population coverage* = key-population residents (contracting/populations.py) with a
  contract in force / key-population residents;
- by *team*: contracts in force with the team / residents of the team's area (whose
  village clinic is, or is part of, the team's managing organisation);
- *changes* over the window (default the last 365 days): new signings, renewals,
  transfers, terminations by reason; contracts that expired in the window and the share
  renewed (renewal rate, the "analysis of return and change");
- *fulfilment* = contracts in force whose resident received at least one service
  recorded against that contract (the ``contract-service`` extension, issue 8
  conventions) / contracts in force; *signed but never served* is the rest. *Fully
  delivered*: contracts whose package (a PlanDefinition) has items and every item
  reached its quantity. Derived from the records, never entered.

**Who sees what** (docs/access.md): institution administrators see the areas and teams
of their organisations (and the organisations part of them); health-authority analysts
see everything, aggregate-only: every count below the policy's small-count threshold
(5) that is not 0 is suppressed (``None``), and so is any rate built on one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from smartmed.analytics.run import run_store
from smartmed.contracting import populations
from smartmed.contracting.contracts import (
    ACTIVE,
    PACKAGE_EXT,
    REASON_EXT,
    REPLACES_EXT,
    TEAM_EXT,
    bounds,
)
from smartmed.contracting.teamwork import SERVICE_EXT
from smartmed.fhir.context import FhirEngine

QUANTITY_EXT = "urn:smartmed:extension:service-quantity"
ICD10 = populations.ICD10
DEFAULT_WINDOW = timedelta(days=365)
DEFAULT_THRESHOLD = 5


def _view(name: str, resource: str, *selects: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "ViewDefinition",
        "name": f"contracting_{name}",
        "status": "active",
        "resource": resource,
        "select": list(selects),
    }


def _cols(*columns: tuple[str, str, str]) -> dict[str, Any]:
    return {"column": [{"name": n, "path": p, "type": t} for n, p, t in columns]}


KEY = ("id", "getResourceKey()", "id")
VIEWS: dict[str, dict[str, Any]] = {
    "patients": _view(
        "patients",
        "Patient",
        _cols(
            KEY,
            ("active", "active", "boolean"),
            ("deceased", "deceased.ofType(boolean)", "boolean"),
            ("deceased_at", "deceased.ofType(dateTime)", "dateTime"),
            ("birth_date", "birthDate", "date"),
            ("clinic", "managingOrganization.getReferenceKey(Organization)", "string"),
        ),
    ),
    "organizations": _view(
        "organizations",
        "Organization",
        _cols(KEY, ("name", "name", "string"), ("part_of", "partOf.getReferenceKey()", "string")),
    ),
    "teams": _view(
        "teams",
        "CareTeam",
        _cols(
            KEY,
            ("name", "name", "string"),
            ("status", "status", "code"),
            ("org", "managingOrganization.getReferenceKey(Organization).first()", "string"),
        ),
    ),
    "conditions": _view(
        "conditions",
        "Condition",
        _cols(
            ("patient", "subject.getReferenceKey(Patient)", "string"),
            ("code", f"code.coding.where(system = '{ICD10}').code.first()", "string"),
            ("clinical", "clinicalStatus.coding.code.first()", "code"),
            ("verification", "verificationStatus.coding.code.first()", "code"),
        ),
    ),
    "contracts": _view(
        "contracts",
        "Contract",
        _cols(
            KEY,
            ("status", "status", "code"),
            ("patient", "subject.getReferenceKey(Patient).first()", "string"),
            (
                "team",
                f"extension('{TEAM_EXT}').value.ofType(Reference)"
                ".getReferenceKey(CareTeam).first()",
                "string",
            ),
            (
                "package",
                f"extension('{PACKAGE_EXT}').value.ofType(Reference).reference.first()",
                "string",
            ),
            ("issued", "issued", "dateTime"),
            ("start", "applies.start", "dateTime"),
            ("end", "applies.end", "dateTime"),
            (
                "replaces",
                f"extension('{REPLACES_EXT}').extension('reason').value.ofType(code).first()",
                "code",
            ),
            (
                "replaced",
                f"extension('{REPLACES_EXT}').extension('contract').value.ofType(Reference)"
                ".getReferenceKey(Contract).first()",
                "string",
            ),
            (
                "reason",
                f"extension('{REASON_EXT}').value.ofType(CodeableConcept).coding.code.first()",
                "code",
            ),
        ),
    ),
    "packages": _view(
        "packages",
        "PlanDefinition",
        _cols(KEY),
        {
            "forEach": "action",
            "column": [
                {"name": "item", "path": "code.first().coding.first().code", "type": "code"},
                {
                    "name": "quantity",
                    "path": f"extension('{QUANTITY_EXT}').value.ofType(integer).first()",
                    "type": "integer",
                },
            ],
        },
    ),
}
for _type, _when in (("Encounter", "period.start"), ("Procedure", "performed.ofType(dateTime)")):
    VIEWS[f"services_{_type.lower()}"] = _view(
        f"services_{_type.lower()}",
        _type,
        _cols(KEY, ("status", "status", "code"), ("day", _when, "dateTime")),
        {
            "forEach": f"extension('{SERVICE_EXT}')",
            "column": [
                {
                    "name": "contract",
                    "path": "extension('contract').value.ofType(Reference)"
                    ".getReferenceKey(Contract).first()",
                    "type": "string",
                },
                {
                    "name": "item",
                    "path": "extension('item').value.ofType(Coding).code.first()",
                    "type": "code",
                },
            ],
        },
    )


async def rows(engine: FhirEngine, name: str) -> list[dict[str, Any]]:
    """The rows of one of :data:`VIEWS` over the live store."""
    result = await run_store(engine.db, VIEWS[name])
    return result.dicts()


# -- the figures --------------------------------------------------------------------------


def rate(num: int | None, den: int | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return round(num / den, 4)


@dataclass(slots=True)
class Area:
    """Counts of one village, township or team."""

    key: str
    name: str
    residents: int = 0
    contracted: int = 0
    key_residents: int = 0
    key_contracted: int = 0
    active: int = 0  # contracts in force (teams)
    served: int = 0

    def count(self, *, signed: bool, key: bool) -> None:
        self.residents += 1
        self.contracted += signed
        self.key_residents += key
        self.key_contracted += key and signed

    def as_dict(self, *, services: bool = False) -> dict[str, Any]:
        """The row; ``services`` adds the fulfilment figures (teams)."""
        row: dict[str, Any] = {
            "key": self.key,
            "name": self.name,
            "residents": self.residents,
            "contracted": self.contracted,
            "rate": rate(self.contracted, self.residents),
            "keyResidents": self.key_residents,
            "keyContracted": self.key_contracted,
            "coverage": rate(self.key_contracted, self.key_residents),
        }
        if services:
            row |= {
                "active": self.active,
                "served": self.served,
                "neverServed": self.active - self.served,
                "fulfilment": rate(self.served, self.active),
            }
        return row


def _day(value: Any) -> date | None:
    text = str(value or "")[:10]
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _in_force(c: dict[str, Any], at: datetime) -> bool:
    if c["status"] != ACTIVE:
        return False
    low, high = bounds({"applies": {"start": c["start"], "end": c["end"]}})
    return low <= at < high


def _groups(birth: Any, codes: Iterable[str], on: date) -> set[str]:
    found: set[str] = set()
    age = populations.age_on(str(birth) if birth else None, on)
    if age is not None and age >= populations.ELDERLY_AGE:
        found.add("elderly")
    if age is not None and age <= populations.CHILD_MAX_AGE:
        found.add("child")
    for code in codes:
        found |= populations.icd10_groups(code)
    return found


def descendants(orgs: dict[str, dict[str, Any]], roots: Iterable[str]) -> set[str]:
    """Organisation ids of ``roots`` and every organisation part of them (any depth)."""
    children: dict[str, list[str]] = defaultdict(list)
    for oid, org in orgs.items():
        if org.get("part_of"):
            children[str(org["part_of"])].append(oid)
    out: set[str] = set()
    todo = [r for r in roots]
    while todo:
        oid = todo.pop()
        if oid in out:
            continue
        out.add(oid)
        todo += children.get(oid, [])
    return out


async def compute(
    engine: FhirEngine,
    *,
    at: datetime,
    organizations: set[str] | None = None,
    window: timedelta = DEFAULT_WINDOW,
) -> dict[str, Any]:
    """The contract analytics at ``at`` (unsuppressed); ``organizations`` (ids) limits the
    areas and teams to those organisations and the ones part of them."""
    today = at.date()
    orgs = {r["id"]: r for r in await rows(engine, "organizations")}
    scope = descendants(orgs, organizations) if organizations is not None else None
    conditions: dict[str, list[str]] = defaultdict(list)
    for r in await rows(engine, "conditions"):
        if (
            r["patient"]
            and r["code"]
            and r["clinical"] in ("active", "recurrence", "relapse")
            and r["verification"] not in ("refuted", "entered-in-error")
        ):
            conditions[str(r["patient"])].append(str(r["code"]))
    contracts = [c for c in await rows(engine, "contracts") if c["team"] and c["patient"]]
    in_force = {c["patient"]: c for c in contracts if _in_force(c, at)}
    teams = {t["id"]: t for t in await rows(engine, "teams")}
    # Areas.
    villages: dict[str, Area] = {}
    townships: dict[str, Area] = {}
    team_areas: dict[str, Area] = {
        tid: Area(tid, str(t.get("name") or tid))
        for tid, t in teams.items()
        if scope is None or (t.get("org") in scope)
    }
    groups: dict[str, Area] = {g: Area(g, g) for g in populations.GROUPS}
    total = Area("total", "total")
    team_by_org: dict[str, list[str]] = defaultdict(list)
    for tid, t in teams.items():
        if tid in team_areas and t.get("org"):
            team_by_org[str(t["org"])].append(tid)
    for p in await rows(engine, "patients"):
        if p["active"] is False or p["deceased"] or p["deceased_at"]:
            continue
        clinic = str(p["clinic"] or "")
        town = str((orgs.get(clinic) or {}).get("part_of") or "")
        if scope is not None and clinic not in scope and town not in scope:
            continue
        pid = str(p["id"])
        signed = pid in in_force
        key = _groups(p["birth_date"], conditions.get(pid, []), today)
        areas = [total]
        if clinic:
            areas.append(
                villages.setdefault(
                    clinic, Area(clinic, str((orgs.get(clinic) or {}).get("name") or clinic))
                )
            )
        if town:
            areas.append(
                townships.setdefault(
                    town, Area(town, str((orgs.get(town) or {}).get("name") or town))
                )
            )
        for area in {id(a): a for a in areas}.values():
            area.count(signed=signed, key=bool(key))
        # A team's area: residents whose clinic is, or is part of, its organisation; its
        # signing counts only the residents signed with that team.
        with_team = (in_force.get(pid) or {}).get("team")
        for tid in {t for org in {clinic, town} - {""} for t in team_by_org.get(org, [])}:
            team_areas[tid].count(signed=with_team == tid, key=bool(key))
        for g in key:
            groups[g].residents += 1
            groups[g].contracted += signed
    # Fulfilment: contracts in force with at least one service recorded against them.
    visible = {
        pid: c
        for pid, c in in_force.items()
        if c["team"] in team_areas or (scope is None and c["team"] not in teams)
    }
    delivered: dict[str, Counter[str]] = defaultdict(Counter)
    for name in ("services_encounter", "services_procedure"):
        for s in await rows(engine, name):
            if s["contract"] and s["item"] and s["status"] not in _NOT_DONE:
                delivered[str(s["contract"])][str(s["item"])] += 1
    package_items: dict[str, dict[str, int]] = defaultdict(dict)
    for item in await rows(engine, "packages"):
        if item["item"]:
            package_items[f"PlanDefinition/{item['id']}"][str(item["item"])] = int(
                item["quantity"] or 1
            )
    active = served = with_package = full = 0
    for c in visible.values():
        got = delivered.get(str(c["id"]), Counter())
        active += 1
        served += bool(got)
        if c["team"] in team_areas:
            team_areas[c["team"]].active += 1
            team_areas[c["team"]].served += bool(got)
        items = package_items.get(str(c["package"] or ""))
        if items:
            with_package += 1
            full += all(got[i] >= q for i, q in items.items())
    # Changes over the window.
    since = at - window
    mine = [c for c in contracts if c["team"] in team_areas or scope is None]
    changes: Counter[str] = Counter()
    terminations: Counter[str] = Counter()
    months: dict[str, Counter[str]] = defaultdict(Counter)
    successors = {str(c["replaced"]) for c in mine if c["replaces"] == "renewal" and c["replaced"]}
    expired = renewed = 0
    for c in mine:
        started = _day(c["issued"]) or _day(c["start"])
        if (
            started is not None
            and since.date() <= started <= today
            and c["status"]
            in (
                ACTIVE,
                "terminated",
            )
        ):
            kind = {"renewal": "renewals", "transfer": "transfers"}.get(str(c["replaces"]), "new")
            changes[kind] += 1
            months[started.strftime("%Y-%m")][kind] += 1
        ended = _day(c["end"])
        if c["status"] == "terminated" and ended and since.date() <= ended <= today:
            if c["reason"] != "transfer":
                terminations[str(c["reason"] or "other")] += 1
                months[ended.strftime("%Y-%m")]["terminations"] += 1
        if c["status"] == ACTIVE and ended and since.date() <= ended < today:
            expired += 1  # ran its full term in the window
            renewed += str(c["id"]) in successors
    return {
        "at": today.isoformat(),
        "total": total.as_dict(),
        "villages": sorted((a.as_dict() for a in villages.values()), key=lambda r: r["name"]),
        "townships": sorted((a.as_dict() for a in townships.values()), key=lambda r: r["name"]),
        "teams": sorted(
            (a.as_dict(services=True) for a in team_areas.values()), key=lambda r: r["name"]
        ),
        "groups": [
            {
                "group": g,
                "residents": a.residents,
                "contracted": a.contracted,
                "coverage": rate(a.contracted, a.residents),
            }
            for g, a in groups.items()
        ],
        "changes": {
            "from": since.date().isoformat(),
            "to": today.isoformat(),
            "new": changes["new"],
            "renewals": changes["renewals"],
            "transfers": changes["transfers"],
            "terminations": sum(terminations.values()),
            "terminationReasons": dict(sorted(terminations.items())),
            "expired": expired,
            "renewed": renewed,
            "renewalRate": rate(renewed, expired),
            "months": [
                {
                    "month": m,
                    "new": n["new"],
                    "renewals": n["renewals"],
                    "transfers": n["transfers"],
                    "terminations": n["terminations"],
                }
                for m, n in sorted(months.items())
            ],
        },
        "fulfilment": {
            "active": active,
            "served": served,
            "neverServed": active - served,
            "fulfilment": rate(served, active),
            "neverServedShare": rate(active - served, active),
            "withPackage": with_package,
            "fullyDelivered": full,
            "fullyDeliveredShare": rate(full, with_package),
        },
    }


_NOT_DONE = ("entered-in-error", "cancelled", "not-done", "planned")
_AREA_RATES = {
    # rate -> (numerator, denominator), in the same row
    "rate": ("contracted", "residents"),
    "coverage": ("keyContracted", "keyResidents"),
    "fulfilment": ("served", "active"),
    "neverServedShare": ("neverServed", "active"),
    "fullyDeliveredShare": ("fullyDelivered", "withPackage"),
    "renewalRate": ("renewed", "expired"),
}
_GROUP_RATES = {"coverage": ("contracted", "residents")}


def suppress(figures: Any, threshold: int) -> Any:
    """The figures with every count in 1..threshold-1 replaced by None, and every rate
    computed from a suppressed count too (aggregate-only roles, docs/access.md)."""
    if isinstance(figures, list):
        return [suppress(f, threshold) for f in figures]
    if not isinstance(figures, dict):
        return figures
    out: dict[str, Any] = {}
    for key, value in figures.items():
        if isinstance(value, bool) or not isinstance(value, int):
            out[key] = suppress(value, threshold)
        else:
            out[key] = None if 0 < value < threshold else value
    # served + neverServed = active: either one suppressed would be revealed by the other.
    if "neverServed" in out and (out.get("served") is None or out.get("neverServed") is None):
        out["served"] = out["neverServed"] = None
    rates = _GROUP_RATES if "group" in out else _AREA_RATES
    for key, parts in rates.items():
        if key in out and any(p in out and out[p] is None for p in parts):
            out[key] = None
    return out


def threshold_of(engine: FhirEngine) -> int:
    policy = getattr(getattr(engine, "access", None), "policy", None)
    return int(getattr(policy, "small_count_threshold", DEFAULT_THRESHOLD))
