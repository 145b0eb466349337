"""Renewal reminders: a daily durable job tells residents whose contract ends soon.

Every day at 01:00 UTC (09:00 in China) the job reads the executed family-doctor
contracts and, for each that ends within :data:`REMIND_BEFORE` and has not been renewed,
notifies the resident with the ``contract-renewal`` template (in-app, WeChat, SMS). The
notification key is the contract and its end date, so a contract gets one reminder
however often the job runs (at least once, after an outage, or by hand).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from smartmed.contracting import (
    packages,  # noqa: F401 - the package payment handlers
    service,
)
from smartmed.fhir.context import FhirEngine
from smartmed.jobs import JobContext, schedule

REMIND_BEFORE = timedelta(days=30)
JOB = "contracting.renewal-reminders"


async def send_renewal_reminders(engine: FhirEngine, *, now: datetime) -> list[str]:
    """Queue the reminders due at ``now``; the contracts due. A contract reminded before
    is listed again, but its notification key makes the repeat queue nothing."""
    from smartmed.notify import notify

    due: list[tuple[dict[str, Any], str, datetime]] = []
    async with engine.db.read() as conn:
        by_patient: dict[str, list[dict[str, Any]]] = {}
        async for contract in service.search_every(
            engine, conn, "Contract", [("status", service.ACTIVE), ("_sort", "_id")]
        ):
            patient = service.patient_of(contract)
            if patient and service.team_of(contract):
                by_patient.setdefault(patient, []).append(contract)
        for patient, own in by_patient.items():
            for contract in own:
                _start, end = service.bounds(contract)
                if not now < end <= now + REMIND_BEFORE:
                    continue
                if any(service.bounds(c)[0] >= end for c in own if c is not contract):
                    continue  # already renewed (or followed by another contract)
                due.append((contract, patient, end))
    reminded: list[str] = []
    # One short transaction per reminder: a long scan never holds the writer.
    for contract, patient, end in due:
        async with engine.db.write() as conn:
            team_ref = service.team_of(contract)
            assert team_ref is not None
            team = await service.read(engine, conn, team_ref, ("CareTeam",))
            person = await service.read(engine, conn, patient, ("Patient",))
            await notify(
                engine,
                conn,
                recipient=patient,
                template="contract-renewal",
                data={
                    "name": service.person_name(person),
                    "team": str(team.get("name", team_ref)),
                    "ends": (end - timedelta(seconds=1)).date().isoformat(),
                },
                channels=("inapp", "wechat", "sms"),
                key=f"contract-renewal:{contract['id']}:{contract['applies']['end']}",
            )
        reminded.append(f"Contract/{contract['id']}")
    return reminded


@schedule("0 1 * * *", name=JOB)
async def renewal_reminders(ctx: JobContext, payload: dict[str, Any]) -> None:
    await send_renewal_reminders(ctx.engine, now=service.now_utc())
