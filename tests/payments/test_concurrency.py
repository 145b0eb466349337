"""Concurrent duplicate callbacks and queries for one order (on PostgreSQL truly parallel
transactions on a connection pool; on SQLite serialised by its single writer): one
transition, the money counted once, the paid event once."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from sqlalchemy import select

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Conflict
from smartmed.fhir.storage.tables import resource_history
from smartmed.payments import service
from smartmed.payments.tables import payment_ledger
from tests.payments.conftest import (
    ledger_sum,
    new_order,
    order_row,
    paid_notice,
    post_callback,
    signed,
)


async def test_concurrent_duplicate_callbacks_count_once(
    engine: FhirEngine, http: httpx.AsyncClient
) -> None:
    order = await new_order(engine, "99.90")
    notice = paid_notice(order.id, 9990)
    responses = await asyncio.gather(*(post_callback(http, *signed(notice)) for _ in range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    assert Counter(r.json()["outcome"] for r in responses) == {"accepted": 1, "duplicate": 15}
    row = await order_row(engine, order.id)
    assert (row.state, row.received_fen, row.reserved_fen) == ("paid", 9990, 0)
    assert await ledger_sum(engine, order.id, "payment") == 9990
    async with engine.db.read() as conn:
        versions = (
            await conn.execute(
                select(resource_history.c.version_id).where(
                    resource_history.c.type == "Invoice",
                    resource_history.c.id == row.invoice_id,
                )
            )
        ).all()
    assert len(versions) == 2  # draft, then balanced (paid) once


async def test_concurrent_different_payments_one_wins_the_rest_refunded(
    engine: FhirEngine, http: httpx.AsyncClient
) -> None:
    order = await new_order(engine, "12.00")
    responses = await asyncio.gather(
        *(post_callback(http, *signed(paid_notice(order.id, 1200))) for _ in range(6))
    )
    outcomes = Counter(r.json()["outcome"] for r in responses)
    assert outcomes == {"accepted": 1, "double-payment": 5}
    row = await order_row(engine, order.id)
    assert (row.state, row.received_fen, row.reserved_fen) == ("paid", 7200, 6000)
    async with engine.db.read() as conn:
        rows = (
            await conn.execute(
                select(payment_ledger.c.external_id).where(payment_ledger.c.order_id == order.id)
            )
        ).all()
    assert len(rows) == 6


async def test_concurrent_fulfil_and_refund_requests(
    engine: FhirEngine, http: httpx.AsyncClient
) -> None:
    order = await new_order(engine, "40.00")
    await post_callback(http, *signed(paid_notice(order.id, 4000)))

    async def refund_all() -> str:
        try:
            async with engine.db.write() as conn:
                made = await service.refund(
                    engine, conn, order_id=order.id, reason="race", by="Practitioner/a"
                )
            return str(made.amount)
        except Conflict:
            return "refused"

    results = await asyncio.gather(*(refund_all() for _ in range(5)))
    assert sorted(results) == ["40.00", "refused", "refused", "refused", "refused"]
    row = await order_row(engine, order.id)
    assert (row.received_fen, row.reserved_fen) == (4000, 4000)
