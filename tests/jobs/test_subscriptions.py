"""FHIR R4 Subscriptions: create-time checks (SSRF), rest-hook delivery, retries, error
status, slow endpoints, and the owner's read permission."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.hooks import current_principal
from smartmed.fhir.storage.tables import resource
from smartmed.identity.principal import Principal
from smartmed.identity.scopes import ScopeSet
from smartmed.jobs.runner import JobRunner
from smartmed.jobs.subscriptions import check_endpoint, check_resolved, is_internal_host
from smartmed.jobs.tables import job, subscription
from tests.jobs.conftest import make_due
from tests.jobs.receiver import Receiver, receiver

SYSTOLIC = "http://loinc.org|8480-6"


@pytest.fixture
async def client(jobs_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=jobs_app),
        base_url="http://testserver/fhir/R4/",
        headers={"Content-Type": "application/fhir+json"},
    ) as http:
        yield http


@pytest.fixture
async def hook() -> AsyncIterator[Receiver]:
    async with receiver() as rec:
        yield rec


def sub(criteria: str, endpoint: str | None, **channel: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": criteria,
        "channel": {"type": channel.pop("type", "rest-hook"), **channel},
    }
    if endpoint is not None:
        body["channel"]["endpoint"] = endpoint
    return body


def observation(code: str = "8480-6", value: float = 150) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "valueQuantity": {"value": value, "unit": "mmHg"},
    }


async def count_subscriptions(engine: FhirEngine) -> tuple[int, int]:
    async with engine.db.read() as conn:
        stored = (
            await conn.execute(
                select(func.count()).select_from(resource).where(resource.c.type == "Subscription")
            )
        ).scalar_one()
        rows = (await conn.execute(select(func.count()).select_from(subscription))).scalar_one()
    return stored, rows


BAD = [
    (sub("Observation?foo=bar", "https://hooks.example.org/x"), "Subscription.criteria", "foo"),
    (sub("Nonsense?code=1", "https://hooks.example.org/x"), "Subscription.criteria", "Nonsense"),
    (sub("?code=1", "https://hooks.example.org/x"), "Subscription.criteria", "unknown resource"),
    (
        sub("Observation?date=notadate", "https://hooks.example.org/x"),
        "Subscription.criteria",
        "notadate",
    ),
    (sub("Observation", "https://hooks.example.org/x", type="email"), "channel.type", "email"),
    (sub("Observation", "https://hooks.example.org/x", type="sms"), "channel.type", "'sms'"),
    (sub("Observation", None), "channel.endpoint", "needs an endpoint"),
    (sub("Observation", "ftp://hooks.example.org/x"), "channel.endpoint", "'ftp'"),
    (sub("Observation", "file:///etc/passwd"), "channel.endpoint", "'file'"),
    (sub("Observation", "http://10.0.0.5/hook"), "channel.endpoint", "'10.0.0.5'"),
    (sub("Observation", "http://192.168.1.20/hook"), "channel.endpoint", "internal"),
    (sub("Observation", "http://169.254.169.254/latest"), "channel.endpoint", "internal"),
    (sub("Observation", "http://localhost:8080/hook"), "channel.endpoint", "'localhost'"),
    (sub("Observation", "http://127.0.0.2/hook"), "channel.endpoint", "internal"),
    (sub("Observation", "http://[::1]/hook"), "channel.endpoint", "'::1'"),
    (sub("Observation", "http://[::ffff:10.1.1.1]/hook"), "channel.endpoint", "internal"),
    (sub("Observation", "http://metadata.internal/x"), "channel.endpoint", "internal"),
    (sub("Observation", "http://intranet/x"), "channel.endpoint", "'intranet'"),
    (sub("Observation", "https://user:pw@hooks.example.org/x"), "channel.endpoint", "credentials"),
    (
        sub("Observation", "https://hooks.example.org/x", payload="application/fhir+xml"),
        "channel.payload",
        "fhir+xml",
    ),
    (
        sub("Observation", "https://hooks.example.org/x", header=["no-colon"]),
        "channel.header",
        "no-colon",
    ),
]


@pytest.mark.parametrize(("body", "expression", "words"), BAD)
async def test_bad_subscriptions_are_refused_with_an_outcome(
    module_app: FastAPI, body: dict[str, Any], expression: str, words: str
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=module_app), base_url="http://testserver/fhir/R4/"
    ) as client:
        r = await client.post("Subscription", json=body)
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["code"] == "invalid"
    assert issue["expression"][0].endswith(expression)
    assert words in issue["diagnostics"]
    assert await count_subscriptions(module_app.state.fhir) == (0, 0)


def test_allow_list_admits_an_internal_host() -> None:
    check_endpoint("http://10.0.0.5:8080/hook", frozenset({"10.0.0.5"}))
    check_endpoint("http://hooks.lan:8080/hook", frozenset({"hooks.lan:8080"}))
    with pytest.raises(Exception, match="internal"):
        check_endpoint("http://hooks.lan:9090/hook", frozenset({"hooks.lan:8080"}))
    assert is_internal_host("8.8.8.8") is False
    assert is_internal_host("hooks.example.org") is False
    assert is_internal_host("100.64.0.1") is True  # carrier-grade NAT is not public


async def test_delivery_checks_resolved_addresses() -> None:
    # "0x7f.1" looks like a public name at create time but resolves to 127.0.0.1.
    with pytest.raises(Exception, match="internal"):
        await check_resolved("http://0x7f.1/x", frozenset())
    await check_resolved("http://127.0.0.1:9/x", frozenset({"127.0.0.1"}))


async def test_rest_hook_delivers_matching_resources(
    jobs_app: FastAPI, client: httpx.AsyncClient, hook: Receiver
) -> None:
    engine: FhirEngine = jobs_app.state.fhir
    with_payload = sub(
        f"Observation?code={SYSTOLIC}",
        f"{hook.base}/full",
        payload="application/fhir+json",
        header=["Authorization: Bearer hook-secret"],
    )
    r = await client.post("Subscription", json=with_payload)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "active"
    r = await client.post(
        "Subscription", json=sub(f"Observation?code={SYSTOLIC}", f"{hook.base}/empty")
    )
    assert r.status_code == 201, r.text
    matching = (await client.post("Observation", json=observation())).json()
    await client.post("Observation", json=observation(code="8462-4"))  # diastolic: no match
    runner = JobRunner(engine)
    await runner.run_once()
    (full,) = hook.at("/full")
    assert full.headers["Content-Type"] == "application/fhir+json"
    assert full.headers["Authorization"] == "Bearer hook-secret"
    sent = orjson.loads(full.body)
    assert (sent["resourceType"], sent["id"], sent["meta"]["versionId"]) == (
        "Observation",
        matching["id"],
        "1",
    )
    (empty,) = hook.at("/empty")
    assert empty.body == b""
    # An update is a new version and a new notification; nothing else is sent again.
    await client.put(
        f"Observation/{matching['id']}", json=observation(value=160) | {"id": matching["id"]}
    )
    await runner.run_once()
    await runner.run_once()
    assert [orjson.loads(r.body)["meta"]["versionId"] for r in hook.at("/full")] == ["1", "2"]
    assert len(hook.at("/empty")) == 2


async def test_failing_endpoint_is_retried_then_subscription_in_error(
    jobs_app: FastAPI, client: httpx.AsyncClient, hook: Receiver
) -> None:
    engine: FhirEngine = jobs_app.state.fhir
    hook.status["/down"] = 503
    created = (
        await client.post("Subscription", json=sub("Observation", f"{hook.base}/down"))
    ).json()
    await client.post("Observation", json=observation())
    runner = JobRunner(engine)
    await runner.run_once()
    async with engine.db.read() as conn:
        (row,) = (await conn.execute(select(job))).all()
        failures = (await conn.execute(select(subscription.c.failures))).scalar_one()
    assert (row.state, row.attempts, row.last_error) == (
        "queued",
        1,
        "DeliveryFailed: endpoint answered 503",
    )
    assert failures == 1
    assert (await client.get(f"Subscription/{created['id']}")).json()["status"] == "active"
    for _ in range(2):
        await make_due(engine)
        await runner.run_once()
    assert len(hook.at("/down")) == 3  # max failures is 3 in these tests
    stored = (await client.get(f"Subscription/{created['id']}")).json()
    assert stored["status"] == "error"
    assert stored["error"] == "3 consecutive failed deliveries; last: endpoint answered 503"
    async with engine.db.read() as conn:
        states = (await conn.execute(select(job.c.state))).scalars().all()
    assert states == ["done"]  # no more retries once in error
    # In error: new matches are not delivered until the owner re-activates it.
    await client.post("Observation", json=observation())
    await make_due(engine)
    await runner.run_once()
    assert len(hook.at("/down")) == 3
    hook.status["/down"] = 200
    stored["status"] = "requested"
    r = await client.put(f"Subscription/{created['id']}", json=stored)
    assert r.json()["status"] == "active"
    await client.post("Observation", json=observation())
    await runner.run_once()
    assert len(hook.at("/down")) == 4


async def test_slow_endpoint_does_not_hold_up_others(
    jobs_app: FastAPI, client: httpx.AsyncClient, hook: Receiver
) -> None:
    engine: FhirEngine = jobs_app.state.fhir
    hook.delay["/slow"] = 5.0  # beyond the 2 s delivery timeout of these tests
    await client.post("Subscription", json=sub("Observation", f"{hook.base}/slow"))
    await client.post("Subscription", json=sub("Observation", f"{hook.base}/fast"))
    await client.post("Observation", json=observation())
    runner = JobRunner(engine, concurrency=4)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await runner.run_once()
    (fast,) = hook.at("/fast")
    assert fast.at - start < 1.5
    async with engine.db.read() as conn:
        errors = sorted((await conn.execute(select(job.c.last_error))).scalars(), key=str)
    assert errors == ["DeliveryFailed: ReadTimeout", None]


def principal(scope: str, client: str) -> Principal:
    """A system client (no person behind it): only its SMART scopes decide what it reads."""
    return Principal(subject=client, client_id=client, scopes=ScopeSet.parse(scope))


async def test_owner_without_read_permission_receives_nothing(
    jobs_app: FastAPI, hook: Receiver
) -> None:
    engine: FhirEngine = jobs_app.state.fhir
    owners = {
        "/blind": principal("system/Subscription.cruds", "billing-app"),
        "/reader": principal("system/Subscription.cruds system/Observation.rs", "monitor-app"),
    }
    for path, owner in owners.items():
        token = current_principal.set(owner)
        try:
            async with engine.db.write() as conn:
                await engine.repository(conn).create(sub("Observation", f"{hook.base}{path}"))
        finally:
            current_principal.reset(token)
    async with engine.db.read() as conn:
        stored = dict(
            (await conn.execute(select(subscription.c.endpoint, subscription.c.owner))).all()
        )
    assert orjson.loads(stored[f"{hook.base}/blind"])["sub"] == "billing-app"
    async with engine.db.write() as conn:
        await engine.repository(conn).create(observation())
    await JobRunner(engine).run_once()
    assert hook.at("/blind") == []
    assert len(hook.at("/reader")) == 1
    async with engine.db.read() as conn:
        states = sorted((await conn.execute(select(job.c.state))).scalars())
    assert states == ["done", "done"]


async def test_deleted_or_off_subscriptions_are_not_delivered(
    jobs_app: FastAPI, client: httpx.AsyncClient, hook: Receiver
) -> None:
    engine: FhirEngine = jobs_app.state.fhir
    gone = (await client.post("Subscription", json=sub("Observation", f"{hook.base}/gone"))).json()
    off = sub("Observation", f"{hook.base}/off") | {"status": "off"}
    assert (await client.post("Subscription", json=off)).json()["status"] == "off"
    assert (await client.delete(f"Subscription/{gone['id']}")).status_code in (200, 204)
    await client.post("Observation", json=observation())
    await JobRunner(engine).run_once()
    assert hook.received == []
    assert await count_subscriptions(engine) == (2, 1)
