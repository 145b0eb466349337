"""The lifecycle of a contract in force: renewal in one step, transfer to another team,
termination with a reason, the chosen service package (docs/contracting.md).

Keyword-only functions on the caller's connection; they never commit. Who may act: the
resident, their representative (``sign-on-behalf``) or a member of the contract's team.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.contracting.contracts import (
    ACTIVE,
    METHOD_EXT,
    PACKAGE_EXT,
    PENDING,
    RENEWAL_GRACE,
    RENEWAL_WINDOW,
    TERMINATION_REASONS,
    Refused,
    bounds,
    execute,
    extension,
    instant,
    is_in_force,
    new_contract,
    now_utc,
    package_of,
    patient_of,
    refuse,
    refuse_overlap,
    replaces_of,
    team_of,
)
from smartmed.contracting.service import (
    access_contract,
    access_team,
    check_package,
    check_signer,
    contracts_of,
    create,
    end_contract,
    get_team,
    lock_patient,
    read,
    update,
)
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Invalid


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
    """Renew in one step: a new executed contract with the same team for the next year,
    pointing to this one (``replaces``, reason ``renewal``). A free package carries over;
    a paid one is bought again for the new year (``packages.renewable_package``)."""
    from smartmed.contracting.packages import renewable_package

    at = now or now_utc()
    contract = await access_contract(engine, conn, contract_id)
    await _may_change(engine, conn, contract, actor, at)
    patient = patient_of(contract)
    assert patient is not None
    await lock_patient(engine, conn, patient)
    contract = await access_contract(engine, conn, contract_id)
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
    renewed = new_contract(
        patient=patient_body,
        team=team,
        status=PENDING,
        method=str((extension(contract, METHOD_EXT) or {}).get("valueCode", "portal")),
        signers=[
            s for s in contract.get("signer") or [] if s.get("type", {}).get("code") != "HPROV"
        ],
        package=await renewable_package(engine, conn, package_of(contract)),
        at=at,
        replaces=(f"Contract/{contract_id}", "renewal"),
    )
    author = actor if actor.startswith(("Practitioner/", "PractitionerRole/")) else None
    execute(
        renewed,
        by=author or str((contract.get("author") or {}).get("reference") or actor),
        at=at,
        start=start,
    )
    # The member responsible for the resident stays responsible for the renewed year
    # (the workbench's _tag search finds them at once).
    from smartmed.contracting.teamwork import assign, assignee_of

    responsible = assignee_of(contract)
    if responsible is not None:
        assign(renewed, member=responsible, by=actor, at=at)
    low, high = bounds(renewed)
    refuse_overlap(existing, low, high, patient=patient, reason="already-renewed")
    return await create(engine, conn, renewed)


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
    contract = await access_contract(engine, conn, contract_id)
    await _may_change(engine, conn, contract, actor, at)
    new_team = await get_team(engine, conn, team)
    if team_of(contract) == team:
        raise refuse(Refused, "same-team", "the resident is already with this team")
    patient = patient_of(contract)
    assert patient is not None
    await lock_patient(engine, conn, patient)
    contract = await access_contract(engine, conn, contract_id)
    if not is_in_force(contract, at):
        raise refuse(Refused, "not-active", f"Contract/{contract_id} is not in force")
    old = await end_contract(
        engine, conn, contract, status="terminated", reason="transfer", text=None, at=at
    )
    patient_body = await read(engine, conn, patient, ("Patient",))
    moved = new_contract(
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
    execute(moved, by=actor, at=at, start=at.date())
    moved["applies"]["start"] = instant(at)
    existing = await contracts_of(engine, conn, patient=patient)
    low, high = bounds(moved)
    refuse_overlap(existing, low, high, patient=patient)
    return old, await create(engine, conn, moved)


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
    contract = await access_contract(engine, conn, contract_id)
    await _may_change(engine, conn, contract, actor, at)
    patient = patient_of(contract)
    assert patient is not None
    await lock_patient(engine, conn, patient)
    contract = await access_contract(engine, conn, contract_id)
    _start, end = bounds(contract)
    if contract.get("status") != ACTIVE or end <= at:
        raise refuse(Refused, "not-active", f"Contract/{contract_id} is not in force")
    return await end_contract(
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
    """Name the service package on the contract; None removes it. A free package is named
    when the resident chooses it (``packages.do_choose``); a paid one only by the
    contracting module's own ``@on_payment("paid")`` handler (``packages.activate_paid``)
    once the payment is confirmed — payments never calls this."""
    await check_package(engine, conn, package)
    contract = await access_contract(engine, conn, contract_id)
    if contract.get("status") not in (PENDING, ACTIVE):
        raise refuse(Refused, "not-active", f"Contract/{contract_id} is not pending or in force")
    contract["extension"] = [
        e for e in contract.get("extension") or [] if e.get("url") != PACKAGE_EXT
    ]
    if package:
        contract["extension"].append({"url": PACKAGE_EXT, "valueReference": {"reference": package}})
    return await update(engine, conn, contract)
