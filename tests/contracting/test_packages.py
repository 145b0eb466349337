"""Service packages as a service (SQLite and PostgreSQL): the catalogue seed, publishing
rules, choosing a free package, buying a paid one through the sandbox (the paid handler
activates it and fulfils the order; a refund takes it off), and orders that cannot be
honoured (someone else's contract, a closed contract) refunded instead of activated."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from fastapi import FastAPI

from smartmed.contracting import lifecycle, packages, service
from smartmed.contracting.contracts import Signature, package_of
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError
from smartmed.payments import service as payments
from tests.payments.conftest import create, drain, engine, patient, pay_app
from tests.payments.test_roundtrip import pay_on_page

__all__ = ["engine", "pay_app"]
PAY_APPS: list[FastAPI] = []


@pytest.fixture(autouse=True)
def _app(pay_app: FastAPI) -> None:
    PAY_APPS.append(pay_app)


SIG = Signature("王 签名", True)


async def county(engine: FhirEngine) -> dict[str, str]:
    """A team with one doctor, two residents, the default catalogue."""
    doctor = await create(
        engine, {"resourceType": "Practitioner", "name": [{"family": "医", "given": ["甲"]}]}
    )
    team = await create(
        engine,
        {
            "resourceType": "CareTeam",
            "status": "active",
            "name": "包测试团队",
            "participant": [{"member": {"reference": doctor}}],
        },
    )
    async with engine.db.write() as conn:
        refs = await packages.ensure_catalogue(engine, conn)
    return {
        "doctor": doctor,
        "team": team,
        "p1": await patient(engine),
        "p2": await patient(engine),
        "basic": refs[0],
        "hypertension": refs[1],
    }


async def contract_for(engine: FhirEngine, c: dict[str, str], who: str) -> str:
    async with engine.db.write() as conn:
        body = await service.do_sign_in_person(
            engine, conn, patient=who, team=c["team"], doctor=c["doctor"], signature=SIG
        )
    return str(body["id"])


async def read_contract(engine: FhirEngine, cid: str) -> dict[str, Any]:
    async with engine.db.read() as conn:
        return await service.access_contract(engine, conn, cid)


async def pay(engine: FhirEngine, order_id: str) -> None:
    """Pay on the sandbox's checkout page as the resident would, then run the jobs."""
    checkout = await payments.start_checkout(engine, order_id=order_id)
    done = await pay_on_page(checkout.pay_url, PAY_APPS[-1])
    assert done.status_code == 303, done.text
    await drain(engine)


async def test_a_new_database_is_seeded_once_by_concurrent_first_looks(
    engine: FhirEngine,
) -> None:
    """First test of the module: its database has no package yet."""
    await asyncio.gather(*(packages.seed_if_empty(engine) for _ in range(4)))
    async with engine.db.read() as conn:
        plans = await service.search(
            engine, conn, "PlanDefinition", [("type", "urn:smartmed:plan-type|service-package")]
        )
        prices = await service.search(
            engine, conn, "ChargeItemDefinition", [("identifier", "urn:smartmed:service-package|")]
        )
    codes = sorted(packages.catalogue_code(p) for p in plans)
    assert codes == ["basic", "diabetes", "elderly", "hypertension"]
    assert len(prices) == 4


async def test_catalogue_seed_is_idempotent_and_priced(engine: FhirEngine) -> None:
    async with engine.db.write() as conn:
        first = await packages.ensure_catalogue(engine, conn)
        second = await packages.ensure_catalogue(engine, conn)
    assert first == second and len(first) == 4
    async with engine.db.read() as conn:
        listed = await packages.list_packages(engine, conn)
    by_code = {p.code: p for p in listed}
    assert by_code["basic"].free and by_code["basic"].price == 0
    assert by_code["hypertension"].price == Decimal("120.00")
    assert by_code["hypertension"].quantity("bp-followup") == 4
    assert by_code["diabetes"].quantity("hba1c") == 2
    assert by_code["hypertension"].quantity("home-visit") == 2
    for p in listed:
        assert p.price_ref is not None and p.status == "active"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"code": "Bad Code"}, "bad-package-code"),
        ({"title": " "}, "bad-title"),
        ({"price": "-1"}, "bad-price"),
        ({"price": "1.234"}, "bad-price"),
        ({"price": "1e9"}, "bad-price"),
        ({"price": "abc"}, "bad-price"),
        ({"items": []}, "no-items"),
        ({"items": [("x-ray", 1)]}, "bad-item"),
        ({"items": [("hba1c", 1), ("hba1c", 2)]}, "duplicate-item"),
        ({"items": [("hba1c", 0)]}, "bad-quantity"),
        ({"items": [("hba1c", -3)]}, "bad-quantity"),
        ({"items": [("hba1c", 10_000)]}, "bad-quantity"),
        ({"items": [("hba1c", "two")]}, "bad-quantity"),
    ],
)
def test_spec_rules(changes: dict[str, Any], reason: str) -> None:
    values: dict[str, Any] = {
        "code": "extra",
        "title": "加强包",
        "price": "10",
        "items": [("hba1c", 2)],
    }
    values.update(changes)
    with pytest.raises(FhirError) as caught:
        packages.check_spec(**values)
    assert service.reason_of(caught.value) == reason


async def test_publish_edit_retire(engine: FhirEngine) -> None:
    spec = packages.check_spec(
        code="publish-test", title="测试包", price="35.5", items=[("home-visit", 2)]
    )
    async with engine.db.write() as conn:
        made = await packages.do_publish(engine, conn, spec=spec)
        with pytest.raises(FhirError) as caught:
            await packages.do_publish(engine, conn, spec=spec)
        assert service.reason_of(caught.value) == "package-exists"
    assert made.price == Decimal("35.50")
    edited_spec = packages.check_spec(
        code="ignored", title="测试包2", price="40", items=[("home-visit", 3), ("hba1c", 1)]
    )
    async with engine.db.write() as conn:
        edited = await packages.do_edit(engine, conn, package=made.ref, spec=edited_spec)
    assert edited.id == made.id and edited.code == "publish-test"
    assert edited.price == Decimal("40.00") and edited.quantity("home-visit") == 3
    async with engine.db.write() as conn:
        retired = await packages.do_retire(engine, conn, package=made.ref)
    assert retired.status == "retired"
    async with engine.db.read() as conn:
        assert made.id not in {p.id for p in await packages.list_packages(engine, conn)}
        assert made.id in {p.id for p in await packages.list_packages(engine, conn, retired=True)}
        definition = await engine.repository(conn).read("ChargeItemDefinition", made.price_id or "")
    assert b'"retired"' in (definition.content or "").encode()


async def test_free_package_without_payment_and_paid_only_after_payment(
    engine: FhirEngine,
) -> None:
    c = await county(engine)
    cid = await contract_for(engine, c, c["p1"])
    async with engine.db.write() as conn:
        free = await packages.do_choose(
            engine, conn, contract_id=cid, package=c["basic"], actor=c["p1"]
        )
    assert free.order is None and package_of(free.contract) == c["basic"]
    async with engine.db.write() as conn:
        bought = await packages.do_choose(
            engine, conn, contract_id=cid, package=c["hypertension"], actor=c["p1"]
        )
    assert bought.order is not None and bought.order.amount == Decimal("120.00")
    # Not active before payment (the order merely exists), not even after the jobs run.
    await drain(engine)
    assert package_of(await read_contract(engine, cid)) == c["basic"]
    # Choosing again reuses the same unpaid order.
    async with engine.db.write() as conn:
        again = await packages.do_choose(
            engine, conn, contract_id=cid, package=c["hypertension"], actor=c["p1"]
        )
    assert again.order is not None and again.order.id == bought.order.id
    await pay(engine, bought.order.id)
    assert package_of(await read_contract(engine, cid)) == c["hypertension"]
    async with engine.db.read() as conn:
        order = await payments.get_order(conn, bought.order.id)
    assert order is not None and order.state == "fulfilled"
    # A paid package cannot be replaced by choosing another.
    async with engine.db.write() as conn:
        with pytest.raises(FhirError) as caught:
            await packages.do_choose(
                engine, conn, contract_id=cid, package=c["basic"], actor=c["p1"]
            )
    assert service.reason_of(caught.value) == "package-active"
    # A full refund takes it off.
    async with engine.db.write() as conn:
        await payments.refund(
            engine, conn, order_id=bought.order.id, reason="resident asked", by="Practitioner/x"
        )
    await drain(engine)
    async with engine.db.read() as conn:
        order = await payments.get_order(conn, bought.order.id)
    assert order is not None and order.state == "refunded"
    assert package_of(await read_contract(engine, cid)) is None


async def test_choose_refusals(engine: FhirEngine) -> None:
    c = await county(engine)
    cid = await contract_for(engine, c, c["p1"])
    spec = packages.check_spec(code="gone", title="下架包", price="9", items=[("hba1c", 1)])
    async with engine.db.write() as conn:
        gone = await packages.do_publish(engine, conn, spec=spec)
        await packages.do_retire(engine, conn, package=gone.ref)
    cases = [
        (c["p1"], "PlanDefinition/no-such", "unknown-package"),
        (c["p1"], gone.ref, "package-retired"),
        (c["p2"], c["hypertension"], "not-representative"),  # someone else's contract
        (c["p1"], "Patient/x", "unknown-package"),
    ]
    for actor, package, reason in cases:
        async with engine.db.write() as conn:
            with pytest.raises(FhirError) as caught:
                await packages.do_choose(
                    engine, conn, contract_id=cid, package=package, actor=actor
                )
        assert service.reason_of(caught.value) == reason, (package, actor)
    async with engine.db.read() as conn:
        assert await payments.list_orders(conn, target=f"Contract/{cid}") == []


async def test_paid_order_for_a_closed_contract_is_refunded(engine: FhirEngine) -> None:
    c = await county(engine)
    cid = await contract_for(engine, c, c["p2"])
    async with engine.db.write() as conn:
        bought = await packages.do_choose(
            engine, conn, contract_id=cid, package=c["hypertension"], actor=c["p2"]
        )
    assert bought.order is not None
    async with engine.db.write() as conn:
        await lifecycle.do_terminate(
            engine, conn, contract_id=cid, actor=c["p2"], reason="moved-away"
        )
    await pay(engine, bought.order.id)
    async with engine.db.read() as conn:
        order = await payments.get_order(conn, bought.order.id)
    assert order is not None and order.state == "refunded"
    assert package_of(await read_contract(engine, cid)) is None


async def test_order_through_payments_api_for_someone_elses_contract_is_refunded(
    engine: FhirEngine,
) -> None:
    c = await county(engine)
    cid = await contract_for(engine, c, c["p1"])
    async with engine.db.read() as conn:
        hyper = await packages.get_package(engine, conn, c["hypertension"])
    # p2 pays for p1's contract through the generic products path (priced by the
    # ChargeItemDefinition): paid, but never activated — refunded.
    async with engine.db.write() as conn:
        order = await payments.create_order(
            engine,
            conn,
            subject=c["p2"],
            target=f"Contract/{cid}",
            description="x",
            amount=hyper.price,
            definition=hyper.price_ref,
        )
    await pay(engine, order.id)
    async with engine.db.read() as conn:
        got = await payments.get_order(conn, order.id)
    assert got is not None and got.state == "refunded"
    assert package_of(await read_contract(engine, cid)) is None
