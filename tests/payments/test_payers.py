"""Who may pay for whom (SQLite and PostgreSQL): the resident, or a representative
holding the resident's ``sign-on-behalf`` delegation while it is valid; nobody else."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Forbidden, Invalid
from smartmed.payments import service
from tests.payments.conftest import create, engine, patient, pay_app

__all__ = ["engine", "pay_app"]


def _delegation(patient_ref: str, actor: str, actions: tuple[str, ...], end: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [
            {"coding": [{"system": "urn:smartmed:consent-category", "code": "family-delegation"}]}
        ],
        "patient": {"reference": patient_ref},
        "provision": {
            "type": "permit",
            "period": {"start": "2020-01-01", "end": end},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                "code": "DELEGATEE",
                            }
                        ]
                    },
                    "reference": {"reference": actor},
                }
            ],
            "action": [
                {"coding": [{"system": "urn:smartmed:delegation-action", "code": a}]}
                for a in actions
            ],
        },
    }


async def _related(engine: FhirEngine, patient_ref: str) -> str:
    return await create(
        engine,
        {
            "resourceType": "RelatedPerson",
            "patient": {"reference": patient_ref},
            "name": [{"family": "测试", "given": ["代付"]}],
        },
    )


async def _order(engine: FhirEngine, payer: str, beneficiary: str | None, target: str) -> Any:
    async with engine.db.write() as conn:
        return await service.create_order(
            engine,
            conn,
            subject=payer,
            beneficiary=beneficiary,
            target=target,
            description="老年人服务包",
            amount=Decimal("100.00"),
        )


async def _read(engine: FhirEngine, ref: str) -> dict[str, Any]:
    async with engine.db.read() as conn:
        stored = await engine.repository(conn).read(*ref.split("/", 1))
    body: dict[str, Any] = orjson.loads(stored.content or "{}")
    return body


async def test_payers(engine: FhirEngine) -> None:
    mother = await patient(engine)
    target = await create(
        engine,
        {"resourceType": "Contract", "status": "offered", "subject": [{"reference": mother}]},
    )
    son, stranger, viewer, expired = [await _related(engine, mother) for _ in range(4)]
    consent = await create(
        engine, _delegation(mother, son, ("view-records", "sign-on-behalf"), "2099-01-01")
    )
    await create(engine, _delegation(mother, viewer, ("view-records",), "2099-01-01"))
    await create(engine, _delegation(mother, expired, ("sign-on-behalf",), "2021-01-01"))
    # The resident pays for herself; the beneficiary defaults to the payer.
    own = await _order(engine, mother, None, target)
    assert (await _read(engine, own.charge_item))["subject"] == {"reference": mother}
    assert (await _read(engine, own.invoice))["recipient"] == {"reference": mother}
    # Her son pays for her: his order, her ChargeItem and Invoice.
    order = await _order(engine, son, mother, target)
    assert order.subject == son
    charge, invoice = await _read(engine, order.charge_item), await _read(engine, order.invoice)
    assert charge["subject"] == {"reference": mother} and charge["enterer"] == {"reference": son}
    assert invoice["subject"] == {"reference": mother}
    assert invoice["recipient"] == {"reference": son}
    async with engine.db.read() as conn:
        assert [o.id for o in await service.list_orders(conn, subject=son)] == [order.id]
    # Nobody else; a RelatedPerson must name whom they pay for; staff never pay.
    for who in (stranger, viewer, expired):
        with pytest.raises(Forbidden):
            await _order(engine, who, mother, target)
    with pytest.raises(Invalid):
        await _order(engine, son, None, target)
    with pytest.raises(Invalid):
        await _order(engine, "Practitioner/x", mother, target)
    # Revoked: at once.
    body = await _read(engine, consent)
    body["status"] = "inactive"
    async with engine.db.write() as conn:
        await engine.repository(conn).update("Consent", body["id"], body)
    with pytest.raises(Forbidden):
        await _order(engine, son, mother, target)
