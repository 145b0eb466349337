"""Grants derived from resources by the policy's rules, kept in step by write hooks.

When a Contract, Consent, ServiceRequest, Encounter, Appointment or MedicationRequest is
written, its grants (``access_grant`` rows whose ``source`` is that resource) are replaced
in the same transaction, so a revoked consent or a terminated contract stops access at
once. Expressions are FHIRPath (fhirpathpy, R4 model) from the policy document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import fhirpathpy
import orjson
from fhirpathpy.models import models
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.access.policy import GrantRule, Policy
from smartmed.access.tables import access_grant
from smartmed.fhir.hooks import WriteHooks
from smartmed.fhir.model import utcnow
from smartmed.fhir.search.convert import date_range
from smartmed.fhir.storage.tables import resource

_MODEL = models["r4"]


def _compile(expression: str) -> Callable[[dict[str, Any]], list[Any]]:
    fn = fhirpathpy.compile(expression, _MODEL)

    def run(body: dict[str, Any]) -> list[Any]:
        return [getattr(v, "data", v) for v in fn(body, {})]

    return run


@dataclass(frozen=True, slots=True)
class _Rule:
    rule: GrantRule
    when: Callable[[dict[str, Any]], list[Any]]
    patient: Callable[[dict[str, Any]], list[Any]]
    grantee: Callable[[dict[str, Any]], list[Any]]
    period: Callable[[dict[str, Any]], list[Any]] | None
    start: Callable[[dict[str, Any]], list[Any]] | None
    end: Callable[[dict[str, Any]], list[Any]] | None
    actions: Callable[[dict[str, Any]], list[Any]] | None


def _when_true(values: list[Any]) -> bool:
    return bool(values) and all(v is True for v in values)


def _instant(value: Any, *, end: bool) -> datetime | None:
    if not isinstance(value, str):
        return None
    found = date_range(value)
    if found is None:
        return None
    return found[1] if end else found[0]


class GrantDeriver:
    """The compiled grant rules of a policy."""

    def __init__(self, policy: Policy) -> None:
        self.by_type: dict[str, list[_Rule]] = {}
        for rule in policy.grants:
            opt = _compile
            self.by_type.setdefault(rule.source, []).append(
                _Rule(
                    rule,
                    opt(rule.when),
                    opt(rule.patient),
                    opt(rule.grantee),
                    opt(rule.period) if rule.period else None,
                    opt(rule.from_) if rule.from_ else None,
                    opt(rule.to) if rule.to else None,
                    opt(rule.actions) if rule.actions else None,
                )
            )

    @property
    def types(self) -> Iterable[str]:
        return self.by_type.keys()

    def rows(self, type_: str, id_: str, body: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The ``access_grant`` rows resource ``type_/id_`` grants (none when deleted)."""
        if body is None:
            return []
        now = utcnow()
        rows: list[dict[str, Any]] = []
        for compiled in self.by_type.get(type_, ()):
            rule = compiled.rule
            if not _when_true(compiled.when(body)):
                continue
            start = end = None
            if compiled.period is not None:
                for period in compiled.period(body):
                    if isinstance(period, dict):
                        start = _instant(period.get("start"), end=False)
                        end = _instant(period.get("end"), end=True)
                        break
            if compiled.start is not None:
                start = next((_instant(v, end=False) for v in compiled.start(body)), None)
            if compiled.end is not None:
                end = next((_instant(v, end=True) for v in compiled.end(body)), None)
            if end is None and rule.default_days is not None:
                end = (start or now) + timedelta(days=rule.default_days)
            if end is not None and rule.extend_days:
                end += timedelta(days=rule.extend_days)
            actions = None
            if compiled.actions is not None:
                actions = " ".join(sorted({str(a) for a in compiled.actions(body)}))
            patients = {
                p.removeprefix("Patient/")
                for p in compiled.patient(body)
                if isinstance(p, str) and p.startswith("Patient/")
            }
            grantees = {g for g in compiled.grantee(body) if isinstance(g, str) and "/" in g}
            for patient in sorted(patients):
                for grantee in sorted(grantees):
                    rows.append(
                        {
                            "source": f"{type_}/{id_}",
                            "kind": rule.kind,
                            "grantee": grantee,
                            "patient_id": patient,
                            "resource_type": type_ if rule.resource_only else None,
                            "resource_id": id_ if rule.resource_only else None,
                            "actions": actions,
                            "valid_from": start,
                            "valid_to": end,
                            "reason": None,
                            "created_at": now,
                        }
                    )
        return rows

    async def replace(
        self, conn: AsyncConnection, type_: str, id_: str, content: str | None
    ) -> None:
        """Make the grants of ``type_/id_`` match its stored content."""
        await conn.execute(delete(access_grant).where(access_grant.c.source == f"{type_}/{id_}"))
        rows = self.rows(type_, id_, orjson.loads(content) if content is not None else None)
        if rows:
            await conn.execute(insert(access_grant), rows)

    def install(self, hooks: WriteHooks) -> None:
        """Keep the grants in step with every write of a granting type: per batch of
        writes, one DELETE for the updated/deleted ones (a new resource has no grants
        yet) and one INSERT."""
        types = frozenset(self.types)

        async def after(
            conn: AsyncConnection, writes: list[tuple[str, str, str, str | None]]
        ) -> None:
            changed = [
                f"{t}/{i}" for t, i, action, _ in writes if t in types and action != "create"
            ]
            if changed:
                await conn.execute(delete(access_grant).where(access_grant.c.source.in_(changed)))
            rows = [
                g
                for t, i, _, content in writes
                if t in types and content is not None
                for g in self.rows(t, i, orjson.loads(content))
            ]
            if rows:
                await conn.execute(insert(access_grant), rows)

        hooks.add_after_batch(after)

    async def rebuild(self, conn: AsyncConnection, *, batch: int = 500) -> int:
        """Derive every grant again from the stored resources; the number of grants."""
        await conn.execute(
            delete(access_grant).where(access_grant.c.source.not_like("break-glass/%"))
        )
        total = 0
        r = resource.c
        for type_ in self.types:
            last = 0
            while True:
                rows = (
                    await conn.execute(
                        select(r.pk, r.id, r.content)
                        .where(r.type == type_, r.deleted.is_(False), r.pk > last)
                        .order_by(r.pk)
                        .limit(batch)
                    )
                ).all()
                if not rows:
                    break
                last = rows[-1].pk
                grants = [
                    g for row in rows for g in self.rows(type_, row.id, orjson.loads(row.content))
                ]
                if grants:
                    await conn.execute(insert(access_grant), grants)
                total += len(grants)
        return total
