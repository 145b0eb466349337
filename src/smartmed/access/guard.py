"""The access policy applied to one caller: SQL restrictions and checks for the engine.

:class:`AccessControl` is built once per application from the policy document and the
official Patient CompartmentDefinition. For each authenticated person it makes a
:class:`Guard` (the engine's :class:`~smartmed.fhir.hooks.AccessGuard`), which

- resolves who the caller acts as: their FHIR identity, their PractitionerRoles, the
  CareTeams they belong to and the organisations of their roles (``ready``);
- restricts every search, include, history and ``$everything`` in SQL to the resources
  the caller's roles reach: whole categories (the directory), or only the records of the
  patients granted to them (``access_grant``: contracts, consents, referrals, visits,
  break-the-glass), or single granted resources (a pharmacy's prescriptions);
- checks reads and writes of single resources the same way;
- lets aggregate-only roles (health-authority analysts) count but never list records,
  and suppresses small counts.

The grant subquery is evaluated by the database on every statement, so a revoked consent
or an ended contract stops access at once, in every process.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Select,
    String,
    and_,
    bindparam,
    exists,
    false,
    literal,
    or_,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.access.grants import GrantDeriver
from smartmed.access.policy import Category, Policy, RolePolicy
from smartmed.access.tables import access_grant
from smartmed.fhir.errors import Forbidden
from smartmed.fhir.model import utcnow
from smartmed.fhir.search.compartment import OWN, compartments
from smartmed.fhir.storage.tables import idx_reference, resource
from smartmed.identity.principal import Principal

# "Now" for grant validity, bound when a statement runs (so conditions can be cached).
_NOW = bindparam("access_now", callable_=utcnow, type_=DateTime())
# How far up Organization.partOf an administrator's jurisdiction is followed.
_MAX_DEPTH = 8
# Seconds a person's resolved teams and roles are reused (docs/access.md).
ACTORS_TTL = 30.0
# The delegated action that lets a family representative see a member's records.
VIEW_RECORDS = "view-records"
_LETTER = {"read": "r", "search": "s", "create": "c", "update": "u", "delete": "d"}


def _fixed(values: Iterable[str]) -> list[ColumnElement[Any]]:
    """IN-list items as individual bound values: conditions are built once and kept, so
    their IN lists need not be expanded again at every execution (SQLAlchemy re-renders
    a list given as plain values on each execution)."""
    return [literal(v, String()) for v in values]


class AccessControl:
    """The policy, compiled: categories of types, compartment links, grant rules."""

    def __init__(self, policy: Policy, definitions: Path) -> None:
        self.policy = policy
        patient = compartments(definitions).get("Patient", {})
        self.patient_params: dict[str, tuple[str, ...]] = {
            type_: tuple(p for p in params if p != OWN) for type_, params in patient.items()
        }
        for type_, params in policy.patient_links.items():
            known = self.patient_params.get(type_, ())
            self.patient_params[type_] = known + tuple(p for p in params if p not in known)
        self.categorized = frozenset(t for types in policy.categories.values() for t in types)
        # Listed categories win: AuditEvent is in the Patient compartment but is "audit".
        self.clinical_types = (frozenset(self.patient_params) | {"Patient"}) - self.categorized
        self.pairs = [(t, p) for t, params in self.patient_params.items() for p in params]
        self.deriver = GrantDeriver(policy)
        # Who a person acts as (their PractitionerRoles and CareTeams), per person, for
        # ACTORS_TTL seconds: team membership changes rarely; grants are always live.
        self.actors_cache: dict[tuple[str, ...], tuple[float, frozenset[str]]] = {}
        # Conditions per (person and who they act as, type, letter): SQL expressions are
        # immutable, and building them costs more than running them.
        self.conditions: dict[tuple[Any, ...], ColumnElement[bool] | Forbidden | None] = {}

    def set_policy(self, policy: Policy) -> None:
        """Apply an edited policy (rights per role and category) from the next request on.

        The grant rules stay those the deriver was built with: changing who is *related*
        to whom needs ``smartmed access rebuild``; rights per role take effect at once.
        """
        self.policy = policy
        self.categorized = frozenset(t for types in policy.categories.values() for t in types)
        self.clinical_types = (frozenset(self.patient_params) | {"Patient"}) - self.categorized
        self.conditions.clear()

    def category(self, type_: str) -> Category:
        return self.policy.category_of(type_, self.clinical_types)

    def guard_for(self, principal: Principal) -> Guard | None:
        """The guard for ``principal``; None when only its SMART scopes apply (systems)."""
        if principal.is_system:
            return None
        roles = {
            str(r.role): self.policy.roles[str(r.role)]
            for r in principal.roles
            if str(r.role) in self.policy.roles
        }
        if not roles and principal.fhir_user and principal.fhir_user.startswith("Patient/"):
            # A person without a role assignment who is a patient: a resident.
            roles = {"resident": self.policy.roles["resident"]}
        return Guard(self, principal, roles)


@dataclass(slots=True)
class Guard:
    """The access policy of one caller (see the module docstring)."""

    control: AccessControl
    principal: Principal
    roles: dict[str, RolePolicy]
    actors: frozenset[str] = frozenset()
    organizations: frozenset[str] = frozenset()
    resolved: bool = False
    key: tuple[Any, ...] = ()

    # -- who the caller is ------------------------------------------------------------

    async def ready(self, conn: AsyncConnection) -> None:
        if self.resolved:
            return
        self.organizations = frozenset(self.principal.organizations())
        key = (
            self.principal.subject,
            self.principal.fhir_user or "",
            *sorted(f"{r.role}@{r.organization}" for r in self.principal.roles),
        )
        cache = self.control.actors_cache
        hit = cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < ACTORS_TTL:
            self.actors = hit[1]
        else:
            await self._resolve(conn)
            if len(cache) > 10_000:
                cache.clear()
            cache[key] = (now, self.actors)
        self.key = (key, self.actors, self._launch_patient())
        self.resolved = True

    async def _resolve(self, conn: AsyncConnection) -> None:
        actors: set[str] = set()
        user = self.principal.fhir_user
        if user:
            actors.add(user)
        actors |= self.organizations
        ref = idx_reference.c
        if user and user.startswith("Practitioner/"):
            roles = await conn.execute(
                select(resource.c.id)
                .join(idx_reference, ref.res_pk == resource.c.pk)
                .where(
                    ref.resource_type == "PractitionerRole",
                    ref.param == "practitioner",
                    ref.target_type == "Practitioner",
                    ref.target_id == user.split("/", 1)[1],
                    resource.c.deleted.is_(False),
                )
            )
            actors |= {f"PractitionerRole/{rid}" for rid in roles.scalars()}
        members = [a for a in actors if a.split("/", 1)[0] in ("Practitioner", "PractitionerRole")]
        if members:
            teams = await conn.execute(
                select(resource.c.id)
                .join(idx_reference, ref.res_pk == resource.c.pk)
                .where(
                    ref.resource_type == "CareTeam",
                    ref.param == "participant",
                    tuple_(ref.target_type, ref.target_id).in_(
                        [tuple(m.split("/", 1)) for m in members]
                    ),
                    resource.c.deleted.is_(False),
                )
                .distinct()
            )
            actors |= {f"CareTeam/{tid}" for tid in teams.scalars()}
        self.actors = frozenset(actors)

    @property
    def self_patient(self) -> str | None:
        user = self.principal.fhir_user
        if user and user.startswith("Patient/"):
            return user.split("/", 1)[1]
        return None

    # -- which roles allow what -------------------------------------------------------

    def _granting(self, category: Category, letter: str) -> list[RolePolicy]:
        return [r for r in self.roles.values() if r.allows(category, letter)]

    def _restricted(self, role: RolePolicy, category: Category) -> bool:
        # Clinical records are always per patient; so is the audit trail for a person
        # who reaches patients (a resident sees the audit of their own record).
        if category == "clinical":
            return not role.aggregate_only
        return category == "audit" and bool(role.patients)

    def _patients(
        self, roles: Iterable[RolePolicy], action: str | None = VIEW_RECORDS
    ) -> Select[Any] | None:
        """Ids of the patients the roles reach, as a subquery (None: nobody).

        ``action`` is the delegated action a family representative needs (None: a
        delegation does not reach this at all)."""
        kinds: set[str] = set()
        with_self = False
        for role in roles:
            for relation in role.patients:
                if relation == "self":
                    with_self = True
                else:
                    kinds.add(relation)
        parts: list[Select[Any]] = []
        if with_self and self.self_patient:
            parts.append(select(literal(self.self_patient).label("patient_id")))
        kind_cond: list[ColumnElement[bool]] = []
        g = access_grant.c
        now = _NOW
        if kinds and self.actors:
            if "delegation" in kinds and action is not None:
                kind_cond.append(and_(g.kind == "delegation", g.actions.like(f"%{action}%")))
            others = kinds - {"delegation"}
            if others:
                kind_cond.append(g.kind.in_(_fixed(sorted(others))))
        if kind_cond:
            parts.append(
                select(g.patient_id).where(
                    g.grantee.in_(_fixed(sorted(self.actors))),
                    or_(*kind_cond),
                    g.resource_type.is_(None),
                    or_(g.valid_from.is_(None), g.valid_from <= now),
                    or_(g.valid_to.is_(None), g.valid_to > now),
                )
            )
        if not parts:
            return None
        query = parts[0]
        for part in parts[1:]:
            query = query.union(part)  # type: ignore[assignment]
        context = self._launch_patient()
        if context is not None:
            sub = query.subquery()
            return select(sub.c.patient_id).where(sub.c.patient_id == context)
        return query

    def _launch_patient(self) -> str | None:
        """The SMART launch patient when the token holds only ``patient/`` scopes."""
        scopes = self.principal.scopes.resource_scopes
        if self.principal.patient and scopes and all(s.context == "patient" for s in scopes):
            return self.principal.patient
        return None

    def _resource_grants(self, roles: Iterable[RolePolicy]) -> Select[Any] | None:
        kinds = sorted({k for role in roles for k in role.resources})
        if not kinds or not self.actors:
            return None
        g = access_grant.c
        now = _NOW
        return select(g.resource_type, g.resource_id, g.patient_id).where(
            g.kind.in_(_fixed(kinds)),
            g.grantee.in_(_fixed(sorted(self.actors))),
            g.resource_type.is_not(None),
            or_(g.valid_to.is_(None), g.valid_to > now),
        )

    def _type_condition(self, res: Any, type_: str, letter: str) -> ColumnElement[bool] | None:
        """Restriction on resources of ``type_`` for ``letter``; raises if no role allows it.

        Built once per person, type and letter (the time is bound at execution)."""
        if res is not resource:
            return self._build_condition(res, type_, letter)
        key = (self.key, type_, letter)
        cache = self.control.conditions
        if key in cache:
            found = cache[key]
            if isinstance(found, Forbidden):
                raise Forbidden(found.issues[0].diagnostics)
            return found
        if len(cache) > 50_000:
            cache.clear()
        try:
            built = self._build_condition(res, type_, letter)
        except Forbidden as exc:
            cache[key] = exc
            raise
        cache[key] = built
        return built

    def _build_condition(self, res: Any, type_: str, letter: str) -> ColumnElement[bool] | None:
        category = self.control.category(type_)
        roles = self._granting(category, letter)
        if not roles:
            raise Forbidden(self._denied(type_, letter))
        if any(not self._restricted(r, category) for r in roles):
            return None
        restricted = [r for r in roles if self._restricted(r, category)]
        options: list[ColumnElement[bool]] = []
        patients = self._patients(restricted)
        if patients is not None:
            if type_ == "Patient":
                options.append(res.c.id.in_(patients))
            elif self.control.patient_params.get(type_):
                ref = idx_reference.alias()
                # Correlated: probed per candidate row, so a selective search stays
                # selective (an IN over every reachable record would be materialised).
                options.append(
                    exists().where(
                        ref.c.res_pk == res.c.pk,
                        ref.c.resource_type == type_,
                        ref.c.param.in_(_fixed(self.control.patient_params[type_])),
                        ref.c.target_type == "Patient",
                        ref.c.target_id.in_(patients),
                    )
                )
        granted = self._resource_grants(restricted)
        if granted is not None:
            sub = granted.subquery()
            if type_ == "Patient":
                options.append(res.c.id.in_(select(sub.c.patient_id)))
            else:
                options.append(
                    res.c.id.in_(select(sub.c.resource_id).where(sub.c.resource_type == type_))
                )
        return or_(*options) if options else false()

    def _denied(self, type_: str, letter: str) -> str:
        verb = {"r": "read", "s": "search", "c": "create", "u": "update", "d": "delete"}[letter]
        roles = ", ".join(sorted(self.roles)) or "no role"
        return f"your roles ({roles}) may not {verb} {type_} resources"

    # -- the engine's questions -------------------------------------------------------

    def search_condition(self, res: Any, type_: str) -> ColumnElement[bool] | None:
        return self._type_condition(res, type_, "s")

    def read_condition(self, res: Any, type_: str) -> ColumnElement[bool] | None:
        return self._type_condition(res, type_, "r")

    def denied_read(self, type_: str, id_: str) -> Forbidden:
        return Forbidden(f"you may not read {type_}/{id_}: it is not among your patients' records")

    def any_condition(self, res: Any) -> ColumnElement[bool] | None:
        """Resources of any type the caller may read (includes, history, $everything)."""
        open_types: set[str] = set()
        open_other = False
        restricted_roles: dict[Category, list[RolePolicy]] = {}
        categories: tuple[Category, ...] = ("clinical", "directory", "audit", "system", "other")
        for category in categories:
            roles = self._granting(category, "r")
            if not roles:
                continue
            if any(not self._restricted(r, category) for r in roles):
                if category == "other":
                    open_other = True
                elif category == "clinical":
                    open_types |= self.control.clinical_types
                else:
                    open_types |= set(self.control.policy.categories.get(category, ()))
            else:
                restricted_roles[category] = roles
        options: list[ColumnElement[bool]] = []
        if open_types:
            options.append(res.c.type.in_(_fixed(sorted(open_types))))
        if open_other:
            known = self.control.categorized | self.control.clinical_types
            options.append(res.c.type.not_in(_fixed(sorted(known))))
        all_restricted = [r for roles in restricted_roles.values() for r in roles]
        if all_restricted:
            types: set[str] = set()
            for category in restricted_roles:
                if category == "clinical":
                    types |= self.control.clinical_types
                else:
                    types |= set(self.control.policy.categories.get(category, ()))
            patients = self._patients(all_restricted)
            if patients is not None:
                ref = idx_reference.alias()
                pairs = [(t, p) for t, p in self.control.pairs if t in types]
                options.append(and_(res.c.type == "Patient", res.c.id.in_(patients)))
                if pairs:
                    options.append(
                        exists().where(
                            ref.c.res_pk == res.c.pk,
                            tuple_(ref.c.resource_type, ref.c.param).in_(pairs),
                            ref.c.target_type == "Patient",
                            ref.c.target_id.in_(patients),
                        )
                    )
            granted = self._resource_grants(all_restricted)
            if granted is not None:
                sub = granted.subquery()
                options.append(
                    tuple_(res.c.type, res.c.id).in_(select(sub.c.resource_type, sub.c.resource_id))
                )
                options.append(
                    and_(res.c.type == "Patient", res.c.id.in_(select(sub.c.patient_id)))
                )
        if not options:
            return false()
        return or_(*options)

    def aggregate_only(self, type_: str) -> bool:
        category = self.control.category(type_)
        if category != "clinical":
            return False
        roles = self._granting(category, "s")
        return bool(roles) and all(r.aggregate_only for r in roles)

    def check_summary(self, type_: str, summary: str | None) -> None:
        if self.aggregate_only(type_) and summary != "count":
            raise Forbidden(
                f"your roles may only count {type_} resources (use _summary=count); "
                "identifiable records are not available to them"
            )

    def suppress_total(self, type_: str, total: int) -> int | None:
        threshold = self.control.policy.small_count_threshold
        if 0 < total < threshold and self.aggregate_only(type_):
            return None
        return total

    async def check_read(self, conn: AsyncConnection, type_: str, id_: str) -> None:
        await self.ready(conn)
        cond = self._type_condition(resource, type_, "r")
        if cond is None:
            return
        found = await conn.execute(
            select(exists().where(resource.c.type == type_, resource.c.id == id_, cond))
        )
        if not found.scalar():
            raise Forbidden(
                f"you may not read {type_}/{id_}: it is not among your patients' records"
            )

    async def check_write(
        self,
        conn: AsyncConnection,
        type_: str,
        interaction: str,
        refs: dict[str, set[str]],
        id_: str | None = None,
    ) -> None:
        await self.ready(conn)
        params = self.control.patient_params.get(type_, ())
        patients = {
            ref.split("/", 1)[1]
            for param in params
            for ref in refs.get(param, ())
            if ref.startswith("Patient/")
        }
        all_refs = {ref for values in refs.values() for ref in values}
        letter = _LETTER.get(interaction, "u")
        category = self.control.category(type_)
        roles = self._granting(category, letter)
        if not roles:
            raise Forbidden(self._denied(type_, letter))
        if id_ is not None and interaction in ("update", "delete"):
            await self._check_current(conn, type_, id_)
        free = [r for r in roles if not self._restricted(r, category)]
        if free:
            scoped = [r for r in free if category in r.organization_scoped]
            if len(scoped) < len(free) or not scoped:
                return
            target = f"{type_}/{id_}" if id_ else None
            if (target and target in self.organizations) or all_refs & self.organizations:
                return
            orgs = {r for r in all_refs if r.startswith("Organization/")}
            if type_ == "Organization" and target:
                orgs.add(target)
            if await self._within_jurisdiction(conn, orgs):
                return
            # A resource that names no organisation at all (a Practitioner: where they
            # work is their PractitionerRoles) is not tied to one.
            if type_ != "Organization" and not any(r.startswith("Organization/") for r in all_refs):
                return
            raise Forbidden(
                f"{type_} is outside your organisations ({', '.join(sorted(self.organizations))})"
            )
        if interaction == "delete":
            return  # the current version is readable (checked above): that is the reach
        if type_ == "Patient" and id_ is not None:
            patients = patients | {id_}
        if not patients:
            raise Forbidden(f"a {type_} written by your roles must belong to one of your patients")
        action = self.control.policy.delegated_writes.get(type_)
        restricted = [r for r in roles if self._restricted(r, category)]
        allowed = await self._reachable(conn, restricted, action)
        outside = patients - allowed
        if outside:
            raise Forbidden(
                f"you may not {_verb(letter)} records of Patient/{sorted(outside)[0]}: "
                "not one of your patients"
            )

    async def _within_jurisdiction(self, conn: AsyncConnection, orgs: set[str]) -> bool:
        """Whether one of ``orgs`` is (under) one of the caller's organisations, following
        Organization.partOf upwards (village ⊂ township ⊂ county ⊂ city)."""
        ref = idx_reference.c
        frontier = {o.split("/", 1)[1] for o in orgs}
        seen: set[str] = set()
        for _ in range(_MAX_DEPTH):
            if {f"Organization/{o}" for o in frontier} & self.organizations:
                return True
            seen |= frontier
            if not frontier:
                return False
            parents = await conn.execute(
                select(ref.target_id)
                .join(resource, resource.c.pk == ref.res_pk)
                .where(
                    resource.c.type == "Organization",
                    resource.c.id.in_(sorted(frontier)),
                    ref.param == "partof",
                    ref.target_type == "Organization",
                )
            )
            frontier = {str(p) for p in parents.scalars()} - seen
        return False

    async def _check_current(self, conn: AsyncConnection, type_: str, id_: str) -> None:
        live = await conn.execute(
            select(resource.c.deleted).where(resource.c.type == type_, resource.c.id == id_)
        )
        row = live.first()
        if row is not None and not row.deleted:
            await self.check_read(conn, type_, id_)

    async def _reachable(
        self, conn: AsyncConnection, roles: list[RolePolicy], action: str | None
    ) -> set[str]:
        patients = self._patients(roles, action)
        if patients is None:
            return set()
        return set((await conn.execute(patients)).scalars())

    def history_condition(self, type_column: Any, id_column: Any) -> ColumnElement[bool] | None:
        cond = self.any_condition(resource)
        if cond is None:
            return None
        return exists().where(resource.c.type == type_column, resource.c.id == id_column, cond)


def _verb(letter: str) -> str:
    return {"r": "read", "s": "search", "c": "create", "u": "update", "d": "delete"}[letter]
