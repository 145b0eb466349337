"""Property: any interleaving of checkout, payment on the sandbox page, provider callbacks
(right or wrong amount, repeated, forged), queries, expiry, refunds, fulfilment and job
runs leaves an order in a legal state reached by legal transitions, with every provider
transaction counted once and the books balanced (ledger = order sums, reservations =
pending refunds, never more refunded than received), and "paid" announced at most once.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError
from smartmed.fhir.model import utcnow
from smartmed.fhir.storage.tables import resource_history
from smartmed.payments import STATE_TAG_SYSTEM, service
from smartmed.payments.models import STATES, TRANSITIONS
from smartmed.payments.tables import payment_ledger, payment_order, payment_refund
from tests.payments.conftest import (
    LOOP,
    SANDBOX,
    drain,
    new_order,
    order_row,
    paid_notice,
    post_callback,
    signed,
)


def synced(test: Callable[..., Any]) -> Callable[..., None]:
    # As in tests/crypto: the property is synchronous and drives the session's loop, so
    # hypothesis can replay and report a failing example.
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        LOOP[-1].run_until_complete(test(*args, **kwargs))

    return run


OPS = st.lists(
    st.one_of(
        st.just(("checkout",)),
        st.just(("pay-page",)),
        st.tuples(st.just("callback"), st.integers(0, 2), st.booleans()),
        st.just(("repeat",)),
        st.just(("forged",)),
        st.just(("query",)),
        st.just(("expire",)),
        st.tuples(st.just("refund"), st.booleans()),
        st.just(("fulfil",)),
        st.just(("drain",)),
    ),
    min_size=1,
    max_size=10,
)

REACHABLE: dict[str, set[str]] = {}
for start in STATES:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    REACHABLE[start] = seen


async def pay_page(app: FastAPI, pay_url: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=SANDBOX) as b:
        page = await b.get(pay_url)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        await b.post(f"{pay_url}/pay", data={"csrf": csrf.group(1)})


async def check_books(engine: FhirEngine, order_id: str, sent: dict[str, int]) -> str:
    row = await order_row(engine, order_id)
    async with engine.db.read() as conn:
        ledger = (
            await conn.execute(
                select(
                    payment_ledger.c.kind, payment_ledger.c.external_id, payment_ledger.c.amount_fen
                ).where(payment_ledger.c.order_id == order_id)
            )
        ).all()
        pending = (
            await conn.execute(
                select(func.coalesce(func.sum(payment_refund.c.amount_fen), 0)).where(
                    payment_refund.c.order_id == order_id, payment_refund.c.state == "pending"
                )
            )
        ).scalar_one()
        versions = (
            (
                await conn.execute(
                    select(resource_history.c.content).where(
                        resource_history.c.type == "Invoice",
                        resource_history.c.id == row.invoice_id,
                    )
                )
            )
            .scalars()
            .all()
        )
    payments = [(x, a) for k, x, a in ledger if k == "payment"]
    refunds = [a for k, _, a in ledger if k == "refund"]
    assert row.state in STATES
    # Each provider transaction once, with the amount the provider reported for it.
    assert len({x for x, _ in payments}) == len(payments)
    for external, amount in payments:
        assert sent.get(external, amount) == amount
    assert row.received_fen == sum(a for _, a in payments)
    assert row.refunded_fen == sum(refunds)
    assert row.reserved_fen == int(pending) >= 0
    assert row.refunded_fen + row.reserved_fen <= row.received_fen
    tags = [
        t["code"]
        for v in versions
        for t in orjson.loads(v)["meta"].get("tag", [])
        if t["system"] == STATE_TAG_SYSTEM
    ]
    changes = [t for i, t in enumerate(tags) if i == 0 or tags[i - 1] != t]
    assert changes.count("paid") <= 1  # announced at most once
    assert changes[-1] == row.state
    for before, after in zip(changes, changes[1:], strict=False):
        assert after in TRANSITIONS[before], (before, after)
    if row.state in ("paid", "fulfilled", "refunded"):
        assert "paid" in changes and row.paid_at is not None
        assert any(a == row.amount_fen for _, a in payments)  # the right amount came in
    if row.state == "expired":
        assert "paid" not in changes and row.paid_at is None
    if row.state == "refunded":
        assert row.refunded_fen == row.received_fen
    return str(row.state)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
@synced
async def test_any_interleaving_keeps_the_books(pay_app: FastAPI, ops: list[Any]) -> None:
    engine: FhirEngine = pay_app.state.fhir
    order = await new_order(engine, "30.00")
    sent: dict[str, int] = {}
    txns = [f"prop{uuid.uuid4().hex[:20]}" for _ in range(3)]
    last: tuple[bytes, dict[str, str]] | None = None
    pay_url: str | None = None
    state = "created"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=pay_app), base_url="http://merchant.test"
    ) as http:
        for op in ops:
            try:
                if op[0] == "checkout":
                    pay_url = (await service.start_checkout(engine, order_id=order.id)).pay_url
                elif op[0] == "pay-page" and pay_url is not None:
                    await pay_page(pay_app, pay_url)
                elif op[0] == "callback":
                    amount = 3000 if op[2] else 2999
                    txn = txns[op[1]]
                    amount = sent.setdefault(txn, amount)
                    last = signed(paid_notice(order.id, amount, txn))
                    await post_callback(http, *last)
                elif op[0] == "repeat" and last is not None:
                    await post_callback(http, *last)
                elif op[0] == "forged":
                    forged = paid_notice(order.id, 3000, txns[0])
                    response = await post_callback(http, *signed(forged, secret="wrong-secret-x"))
                    assert response.status_code == 401
                elif op[0] == "query":
                    await service.sync_order(engine, order_id=order.id)
                elif op[0] == "expire":
                    async with engine.db.write() as conn:
                        await conn.execute(
                            update(payment_order)
                            .where(payment_order.c.id == order.id)
                            .values(expires_at=utcnow() - timedelta(seconds=1))
                        )
                    await service.expire_order(engine, order_id=order.id)
                elif op[0] == "refund":
                    async with engine.db.write() as conn:
                        await service.refund(
                            engine,
                            conn,
                            order_id=order.id,
                            amount="10.00" if op[1] else None,
                            reason="property test",
                            by="Practitioner/admin",
                        )
                elif op[0] == "fulfil":
                    async with engine.db.write() as conn:
                        await service.mark_fulfilled(
                            engine, conn, order_id=order.id, by="Contract/x"
                        )
                elif op[0] == "drain":
                    await drain(engine)
            except FhirError:
                pass  # refused as the state machine says (409, 404): checked below
            new_state = await check_books(engine, order.id, sent)
            assert new_state in REACHABLE[state], (state, new_state, op)
            state = new_state
        await drain(engine)
        await check_books(engine, order.id, sent)
