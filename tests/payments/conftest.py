"""An application per backend with the sandbox provider reached over HTTP in-process
(httpx ASGI transports mounted on the sandbox's and our own origin, no sockets), jobs
stepped by the tests (deterministic), and helpers to sign, post and inspect."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import func, select, update

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.fhir.context import FhirEngine
from smartmed.identity.service import get_identity
from smartmed.jobs.queue import utcnow
from smartmed.jobs.runner import JobRunner
from smartmed.jobs.tables import job
from smartmed.payments import provider as provider_mod
from smartmed.payments import service
from smartmed.payments.models import Order
from smartmed.payments.signing import sign_headers
from smartmed.payments.tables import payment_ledger, payment_order
from tests.conftest import ROOT, create_pg_database, drop_pg_database, need

SANDBOX = "http://sandbox.test"
MERCHANT = "http://merchant.test"
SECRET = "synthetic-payments-secret-0123456789"
MERCHANT_ID = "merchant-test"
LOOP: list[asyncio.AbstractEventLoop] = []


def pay_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "secret_key": SecretStr("synthetic-test-secret-key-0123456789"),
        "jobs_in_app": False,
        "payments_sandbox_url": SANDBOX,
        "payments_public_url": MERCHANT,
        "payments_merchant_id": MERCHANT_ID,
        "payments_signing_secret": SecretStr(SECRET),
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def pay_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FastAPI]:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('payments')}/smartmed.db"
    else:
        url = await create_pg_database()
    app = create_app(pay_settings(url))
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            provider_mod.MOUNTS[SANDBOX] = transport
            provider_mod.MOUNTS[MERCHANT] = transport
            LOOP.append(asyncio.get_running_loop())
            yield app
    finally:
        provider_mod.MOUNTS.pop(SANDBOX, None)
        provider_mod.MOUNTS.pop(MERCHANT, None)
        if request.param == "postgres":
            await drop_pg_database(url)


@pytest.fixture
def engine(pay_app: FastAPI) -> FhirEngine:
    fhir: FhirEngine = pay_app.state.fhir
    return fhir


@pytest.fixture
async def http(pay_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=pay_app), base_url=MERCHANT
    ) as client:
        yield client


async def drain(engine: FhirEngine, rounds: int = 20) -> None:
    """Run every due job (and what they queue) with back-off skipped, until none is left."""
    runner = JobRunner(engine, concurrency=8, lease_seconds=30, worker_id="pay-test")
    for _ in range(rounds):
        async with engine.db.write() as conn:
            await conn.execute(
                update(job)
                .where(job.c.state == "queued", job.c.kind.not_like("cron:%"))
                .values(run_at=utcnow())
            )
        if await runner.run_once() == 0:
            return


async def create(engine: FhirEngine, resource: dict[str, Any]) -> str:
    async with engine.db.write() as conn:
        stored = await engine.repository(conn).create(resource)
    return stored.reference


async def patient(engine: FhirEngine) -> str:
    return await create(
        engine, {"resourceType": "Patient", "name": [{"family": "测试", "given": ["付款"]}]}
    )


async def new_order(
    engine: FhirEngine, amount: str = "120.00", *, subject: str | None = None, minutes: int = 30
) -> Order:
    who = subject or await patient(engine)
    contract = await create(
        engine,
        {"resourceType": "Contract", "status": "offered", "subject": [{"reference": who}]},
    )
    async with engine.db.write() as conn:
        return await service.create_order(
            engine,
            conn,
            subject=who,
            target=contract,
            description="高血压随访服务包",
            amount=Decimal(amount),
            minutes=minutes,
        )


def signed(
    document: dict[str, Any], *, secret: str = SECRET, now: float | None = None
) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(document)
    headers = sign_headers(secret.encode(), MERCHANT_ID, body, now=now)
    headers["content-type"] = "application/json"
    return body, headers


def paid_notice(order_id: str, amount_fen: int, txn: str | None = None) -> dict[str, Any]:
    return {
        "id": f"evt-{uuid.uuid4().hex}",
        "event_type": "TRANSACTION.SUCCESS",
        "merchant_id": MERCHANT_ID,
        "out_trade_no": order_id,
        "payment_id": str(uuid.uuid4()),
        "transaction_id": txn or f"sbx{uuid.uuid4().hex[:28]}",
        "amount_fen": amount_fen,
        "paid_at": "2026-11-22T04:00:00.000000Z",
    }


async def post_callback(
    http: httpx.AsyncClient, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    return await http.post("/api/payments/notify/sandbox", content=body, headers=headers)


async def order_row(engine: FhirEngine, order_id: str) -> Any:
    async with engine.db.read() as conn:
        return (
            await conn.execute(select(payment_order).where(payment_order.c.id == order_id))
        ).one()


async def ledger_sum(engine: FhirEngine, order_id: str, kind: str) -> int:
    async with engine.db.read() as conn:
        return int(
            (
                await conn.execute(
                    select(func.coalesce(func.sum(payment_ledger.c.amount_fen), 0)).where(
                        payment_ledger.c.order_id == order_id, payment_ledger.c.kind == kind
                    )
                )
            ).scalar_one()
        )


async def token(app: FastAPI, fhir_user: str | None, roles: list[str]) -> dict[str, str]:
    identity = get_identity(app)
    value, _ = await identity.tokens.access_token(
        issuer=MERCHANT,
        audience=f"{MERCHANT}/fhir/R4",
        subject=f"account-{uuid.uuid4().hex[:8]}",
        client_id="portal",
        scope="openid",
        fhir_user=fhir_user,
        roles=[{"role": r, "organization": "Organization/clinic1"} for r in roles],
    )
    return {"Authorization": f"Bearer {value}"}


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)
