"""Team co-management: the team leader assigns contracted residents to team members, and
each member's workbench lists their residents, due follow-ups and open tasks.

**Assignment, on the Contract.** The member responsible for a resident is kept on the
resident's executed ``Contract`` (the contract is what ties the resident to the team, so
the assignment ends with it and moves with nothing else):

- extension ``urn:smartmed:extension:contract-assignment`` (repeating, oldest first),
  sub-extensions ``member`` (valueReference ``Practitioner/…``), ``period`` (valuePeriod:
  ``start`` when assigned, ``end`` when the resident was moved to another member) and
  ``by`` (valueReference, the team leader). The one without ``period.end`` is current;
  the others are the transfer history (and every change is a Contract version too).
- ``meta.tag`` ``urn:smartmed:contract-assignee|Practitioner/<id>`` on the current one:
  R4 has no search parameter on an extension, so a member's residents are one indexed
  ``_tag`` search.

**Team leader**: a ``CareTeam.participant`` whose role has code ``leader`` in
``urn:smartmed:care-team-role`` (the administration pages write it), or the text 团队长
(the demo county). Only the leader assigns and moves residents; any team member may be
assigned.

**Due follow-ups.** 《国家基本公共卫生服务规范（第三版）》(2017), 高血压患者健康管理服务规范
and 2型糖尿病患者健康管理服务规范: "对原发性高血压患者，每年要提供至少4次面对面的随访"
(and the same for type 2 diabetes). Four a year is one every 365 / 4 ≈ 91 days: a
resident in the ``hypertension`` or ``diabetes`` key population is due when their last
follow-up is older than :data:`FOLLOW_UP_INTERVAL` (or they have none). A follow-up is a
finished Encounter typed ``urn:smartmed:encounter-type|chronic-follow-up`` (as the demo
county records them) or a delivered service (issue 8 conventions) of item
``bp-followup`` or ``glucose-followup``.

**Open tasks**: FHIR ``Task`` whose ``owner`` is the member (their Practitioner or one of
their PractitionerRoles), in a status that is not final.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.contracting import populations, service
from smartmed.contracting.contracts import TEAM_ROLE_SYSTEM, instant, refuse
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError, Forbidden, Invalid

ASSIGNMENT_EXT = "urn:smartmed:extension:contract-assignment"
ASSIGNEE_TAG = "urn:smartmed:contract-assignee"
SERVICE_EXT = "urn:smartmed:extension:contract-service"  # issue 8 conventions
SERVICE_ITEM_SYSTEM = "urn:smartmed:service-item"
ENCOUNTER_TYPE_SYSTEM = "urn:smartmed:encounter-type"  # as the demo county
FOLLOW_UP_TYPE = "chronic-follow-up"
FOLLOW_UP_ITEMS = frozenset({"bp-followup", "glucose-followup"})
FOLLOW_UP_GROUPS = ("hypertension", "diabetes")
# 国家基本公共卫生服务规范（第三版）: at least 4 face-to-face follow-ups a year.
FOLLOW_UPS_PER_YEAR = 4
FOLLOW_UP_INTERVAL = timedelta(days=365 // FOLLOW_UPS_PER_YEAR)  # 91 days
LEADER_CODE = "leader"
LEADER_TEXT = "团队长"
OPEN_TASK_STATUSES = ("requested", "received", "accepted", "ready", "in-progress", "on-hold")
MAX_PAGE_SIZE = 100
_CHUNK = 50  # patients per search (reference lists in one parameter)


# -- the assignment on the Contract ------------------------------------------------------


def _parts(ext: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(e.get("url")): e for e in ext.get("extension") or []}


def assignments(contract: dict[str, Any]) -> list[dict[str, Any]]:
    """The assignment history, oldest first: ``{"member", "start", "end", "by"}``."""
    out = []
    for ext in contract.get("extension") or []:
        if ext.get("url") != ASSIGNMENT_EXT:
            continue
        parts = _parts(ext)
        period = (parts.get("period") or {}).get("valuePeriod") or {}
        out.append(
            {
                "member": ((parts.get("member") or {}).get("valueReference") or {}).get(
                    "reference"
                ),
                "start": period.get("start"),
                "end": period.get("end"),
                "by": ((parts.get("by") or {}).get("valueReference") or {}).get("reference"),
            }
        )
    return out


def assignee_of(contract: dict[str, Any]) -> str | None:
    """The member currently responsible for the contract's resident, if any."""
    current = [a for a in assignments(contract) if not a["end"]]
    return str(current[-1]["member"]) if current and current[-1]["member"] else None


def assign(contract: dict[str, Any], *, member: str, by: str, at: datetime) -> None:
    """Record ``member`` as responsible from ``at``; the previous assignment ends at ``at``."""
    when = instant(at)
    kept: list[dict[str, Any]] = []
    for ext in contract.get("extension") or []:
        if ext.get("url") == ASSIGNMENT_EXT:
            parts = _parts(ext)
            period = dict((parts.get("period") or {}).get("valuePeriod") or {})
            if not period.get("end"):
                period["end"] = when
                parts["period"] = {"url": "period", "valuePeriod": period}
                ext = {"url": ASSIGNMENT_EXT, "extension": list(parts.values())}
        kept.append(ext)
    kept.append(
        {
            "url": ASSIGNMENT_EXT,
            "extension": [
                {"url": "member", "valueReference": {"reference": member}},
                {"url": "period", "valuePeriod": {"start": when}},
                {"url": "by", "valueReference": {"reference": by}},
            ],
        }
    )
    contract["extension"] = kept
    meta = dict(contract.get("meta") or {})
    tags = [t for t in meta.get("tag") or [] if t.get("system") != ASSIGNEE_TAG]
    meta["tag"] = [*tags, {"system": ASSIGNEE_TAG, "code": member}]
    contract["meta"] = meta


# -- the team and its leader -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """A team member as their Practitioner, with the role they hold in the team."""

    practitioner: str
    name: str
    leader: bool
    role: str | None  # code in urn:smartmed:care-team-role, if coded


async def members(engine: FhirEngine, conn: AsyncConnection, team: dict[str, Any]) -> list[Member]:
    """The team's members as Practitioners (PractitionerRoles resolved), in team order."""
    out: dict[str, Member] = {}
    roles: dict[str, str] = {}
    role_ids = [
        str((p.get("member") or {}).get("reference", "")).split("/", 1)[1]
        for p in team.get("participant") or []
        if str((p.get("member") or {}).get("reference", "")).startswith("PractitionerRole/")
    ]
    if role_ids:
        for role in await service.search(
            engine, conn, "PractitionerRole", [("_id", ",".join(role_ids))]
        ):
            who = (role.get("practitioner") or {}).get("reference")
            if who:
                roles[f"PractitionerRole/{role['id']}"] = str(who)
    for participant in team.get("participant") or []:
        ref = str((participant.get("member") or {}).get("reference", ""))
        practitioner = roles.get(ref, ref)
        if not practitioner.startswith("Practitioner/") or practitioner in out:
            continue
        codes = [
            str(c.get("code"))
            for concept in participant.get("role") or []
            for c in concept.get("coding") or []
            if c.get("system") == TEAM_ROLE_SYSTEM
        ]
        texts = {str(concept.get("text", "")) for concept in participant.get("role") or []}
        out[practitioner] = Member(
            practitioner=practitioner,
            name=str((participant.get("member") or {}).get("display", "")),
            leader=LEADER_CODE in codes or LEADER_TEXT in texts,
            role=codes[0] if codes else None,
        )
    ids = [m.practitioner.split("/", 1)[1] for m in out.values() if not m.name]
    if ids:
        for body in await service.search(engine, conn, "Practitioner", [("_id", ",".join(ids))]):
            ref = f"Practitioner/{body['id']}"
            m = out[ref]
            out[ref] = Member(ref, service.person_name(body), m.leader, m.role)
    return list(out.values())


async def access_member(
    engine: FhirEngine, conn: AsyncConnection, *, team: str, practitioner: str
) -> tuple[dict[str, Any], list[Member], Member]:
    """The team, its members and the caller, if ``practitioner`` belongs to it."""
    body = await service.get_team(engine, conn, team)
    found = await members(engine, conn, body)
    me = next((m for m in found if m.practitioner == practitioner), None)
    if me is None:
        raise refuse(Forbidden, "not-team-member", f"{practitioner} is not a member of {team}")
    return body, found, me


async def do_assign(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    contract_id: str,
    member: str,
    leader: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The team leader makes ``member`` responsible for the contract's resident (a first
    assignment or a transfer between members; the history is kept on the Contract)."""
    at = now or service.now_utc()
    contract = await service.access_contract(engine, conn, contract_id)
    team = service.team_of(contract)
    assert team is not None
    _body, team_members, me = await access_member(engine, conn, team=team, practitioner=leader)
    if not me.leader:
        raise refuse(Forbidden, "not-team-leader", "only the team leader assigns residents")
    if member not in {m.practitioner for m in team_members}:
        raise refuse(Invalid, "not-team-member", f"{member} is not a member of {team}")
    patient = service.patient_of(contract)
    assert patient is not None
    await service.lock_patient(engine, conn, patient)
    contract = await service.access_contract(engine, conn, contract_id)  # under the lock
    if not service.is_in_force(contract, at):
        raise refuse(
            service.Refused, "not-in-force", f"Contract/{contract_id} is not a contract in force"
        )
    if assignee_of(contract) == member:
        raise refuse(service.Refused, "already-assigned", f"{member} is already responsible")
    assign(contract, member=member, by=leader, at=at)
    return await service.update(engine, conn, contract)


# -- follow-ups and tasks ----------------------------------------------------------------


def _chunks(items: Sequence[str], size: int = _CHUNK) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def service_item(resource: dict[str, Any]) -> tuple[str | None, str | None]:
    """(Contract reference, item code) of a delivered service record, else (None, None)."""
    for ext in resource.get("extension") or []:
        if ext.get("url") != SERVICE_EXT:
            continue
        parts = _parts(ext)
        contract = ((parts.get("contract") or {}).get("valueReference") or {}).get("reference")
        item = (parts.get("item") or {}).get("valueCoding") or {}
        code = item.get("code") if item.get("system") in (None, SERVICE_ITEM_SYSTEM) else None
        return (str(contract) if contract else None, str(code) if code else None)
    return None, None


def is_follow_up(encounter: dict[str, Any]) -> bool:
    """Whether an Encounter is a chronic-disease follow-up (demo type or service item)."""
    if encounter.get("status") in ("cancelled", "entered-in-error", "planned"):
        return False
    typed = any(
        c.get("system") == ENCOUNTER_TYPE_SYSTEM and c.get("code") == FOLLOW_UP_TYPE
        for concept in encounter.get("type") or []
        for c in concept.get("coding") or []
    )
    return typed or service_item(encounter)[1] in FOLLOW_UP_ITEMS


def encounter_day(encounter: dict[str, Any]) -> date | None:
    start = str((encounter.get("period") or {}).get("start") or "")
    try:
        return date.fromisoformat(start[:10]) if start else None
    except ValueError:
        return None


async def follow_up_days(
    engine: FhirEngine, conn: AsyncConnection, patients: Sequence[str]
) -> dict[str, list[date]]:
    """The days of each patient's follow-ups, ascending."""
    out: dict[str, list[date]] = {p: [] for p in patients}
    for chunk in _chunks(sorted(set(patients))):
        async for enc in service.search_every(
            engine, conn, "Encounter", [("subject", ",".join(chunk)), ("_sort", "_id")]
        ):
            day = encounter_day(enc)
            ref = str((enc.get("subject") or {}).get("reference", ""))
            if day is not None and ref in out and is_follow_up(enc):
                out[ref].append(day)
    for days in out.values():
        days.sort()
    return out


def next_due(groups: Sequence[str], days: Sequence[date]) -> date | None:
    """When the next follow-up is due (None when the resident needs none): the day after
    the last one plus the interval; a managed resident never followed up is due already
    (returned as ``date.min``)."""
    if not any(g in FOLLOW_UP_GROUPS for g in groups):
        return None
    return max(days) + FOLLOW_UP_INTERVAL if days else date.min


async def open_tasks(
    engine: FhirEngine, conn: AsyncConnection, *, practitioner: str
) -> list[dict[str, Any]]:
    """Tasks owned by the member (or one of their roles) that are not finished."""
    refs = [practitioner]
    roles = await service.search(engine, conn, "PractitionerRole", [("practitioner", practitioner)])
    refs += [f"PractitionerRole/{r['id']}" for r in roles]
    found = await service.search(
        engine,
        conn,
        "Task",
        [("owner", ",".join(refs)), ("status", ",".join(OPEN_TASK_STATUSES))],
    )
    return sorted(found, key=lambda t: (str(t.get("authoredOn", "")), str(t.get("id"))))


# -- the workbench -------------------------------------------------------------------------


@dataclass(slots=True)
class Filters:
    """What the workbench shows: whose residents, which group, only due ones, a page."""

    scope: str = "mine"  # mine | team | unassigned (the last two for the leader)
    group: str | None = None
    due_only: bool = False
    query: str = ""
    page: int = 1
    size: int = 25

    def check(self) -> None:
        if self.scope not in ("mine", "team", "unassigned"):
            raise refuse(Invalid, "bad-filter", f"unknown scope {self.scope!r}")
        if self.group is not None and self.group not in populations.GROUPS:
            raise refuse(Invalid, "bad-filter", f"unknown key population {self.group!r}")
        if not 1 <= self.size <= MAX_PAGE_SIZE or self.page < 1:
            raise refuse(Invalid, "bad-filter", f"page >= 1 and 1 <= size <= {MAX_PAGE_SIZE}")
        if len(self.query) > 100:
            raise refuse(Invalid, "bad-filter", "the name filter is at most 100 characters")


@dataclass(slots=True)
class Workbench:
    team: str
    team_name: str
    me: Member
    members: list[Member]
    rows: list[dict[str, Any]]  # this page
    total: int  # rows matching the filters
    due: int  # residents due among those matching the scope (before other filters)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    filters: Filters = field(default_factory=Filters)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.filters.size))


def _assignee(contract: dict[str, Any], inherited: dict[str, str]) -> str | None:
    return assignee_of(contract) or inherited.get(str(contract.get("id")))


async def renewed_assignees(
    engine: FhirEngine,
    conn: AsyncConnection,
    contracts: Sequence[dict[str, Any]],
    *,
    members: set[str],
) -> dict[str, str]:
    """For renewals nobody was assigned to yet: the member responsible at the end of the
    contract renewed (if still in the team), by contract id. ``lifecycle.do_renew`` does
    not copy the assignment, so the workbench carries it over when reading."""
    out: dict[str, str] = {}
    for contract in contracts:
        previous = service.replaces_of(contract)
        if assignee_of(contract) or previous is None or previous[1] != "renewal":
            continue
        try:
            old = await service.read(engine, conn, previous[0], ("Contract",))
        except FhirError:
            continue
        history = assignments(old)
        member = history[-1]["member"] if history else None
        if member in members:
            out[str(contract["id"])] = str(member)
    return out


async def resident_rows(
    engine: FhirEngine,
    conn: AsyncConnection,
    contracts: Sequence[dict[str, Any]],
    *,
    at: datetime,
    names: dict[str, str] | None = None,
    inherited: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per contract: resident, key populations, assignee, follow-ups, due date."""
    patients = sorted({service.patient_of(c) or "" for c in contracts} - {""})
    people: dict[str, dict[str, Any]] = {}
    conditions: dict[str, list[dict[str, Any]]] = {}
    for chunk in _chunks(patients):
        ids = ",".join(p.split("/", 1)[1] for p in chunk)
        async for p in service.search_every(engine, conn, "Patient", [("_id", ids)]):
            people[f"Patient/{p['id']}"] = p
        async for cond in service.search_every(
            engine, conn, "Condition", [("subject", ",".join(chunk)), ("_sort", "_id")]
        ):
            ref = str((cond.get("subject") or {}).get("reference", ""))
            conditions.setdefault(ref, []).append(cond)
    days = await follow_up_days(engine, conn, patients)
    today = at.date()
    rows = []
    for contract in contracts:
        ref = service.patient_of(contract) or ""
        body = people.get(ref, {})
        groups = populations.key_populations(body, conditions.get(ref, []), on=today)
        due_on = next_due(groups, days.get(ref, []))
        assignee = _assignee(contract, inherited or {})
        rows.append(
            {
                "patient": ref,
                "name": service.person_name(body),
                "birthDate": body.get("birthDate"),
                "contract": f"Contract/{contract['id']}",
                "applies": contract.get("applies"),
                "keyPopulations": groups,
                "assignee": assignee,
                "assigneeName": (names or {}).get(assignee or "", ""),
                "lastFollowUp": days[ref][-1].isoformat() if days.get(ref) else None,
                "followUps": [d.isoformat() for d in days.get(ref, [])],
                "followUpDue": None
                if due_on is None
                else (today.isoformat() if due_on == date.min else due_on.isoformat()),
                "due": due_on is not None and due_on <= today,
            }
        )
    return sorted(rows, key=lambda r: (r["name"], r["patient"]))


async def workbench(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    team: str,
    practitioner: str,
    filters: Filters,
    at: datetime,
) -> Workbench:
    """The member's residents in ``team`` (the leader may see the whole team or the
    unassigned), filtered and paged, with due follow-ups and the member's open tasks."""
    filters.check()
    body, team_members, me = await access_member(engine, conn, team=team, practitioner=practitioner)
    if filters.scope != "mine" and not me.leader:
        raise refuse(Forbidden, "not-team-leader", "only the team leader sees the whole team")
    contracts = await service.contracted_with_team(engine, conn, team=team, at=at)
    names = {m.practitioner: m.name for m in team_members}
    inherited = await renewed_assignees(engine, conn, contracts, members=set(names))
    if filters.scope == "mine":
        contracts = [c for c in contracts if _assignee(c, inherited) == practitioner]
    elif filters.scope == "unassigned":
        contracts = [c for c in contracts if _assignee(c, inherited) is None]
    rows = await resident_rows(engine, conn, contracts, at=at, names=names, inherited=inherited)
    due = sum(1 for r in rows if r["due"])
    needle = filters.query.strip().casefold()
    matching = [
        r
        for r in rows
        if (filters.group is None or filters.group in r["keyPopulations"])
        and (not filters.due_only or r["due"])
        and (not needle or needle in r["name"].casefold())
    ]
    start = (filters.page - 1) * filters.size
    tasks = await open_tasks(engine, conn, practitioner=practitioner)
    return Workbench(
        team=team,
        team_name=str(body.get("name", team)),
        me=me,
        members=team_members,
        rows=matching[start : start + filters.size],
        total=len(matching),
        due=due,
        tasks=tasks,
        filters=filters,
    )
