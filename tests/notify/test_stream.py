"""Live push: an SSE client on a real HTTP server receives new inbox messages."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI

from smartmed.fhir.context import FhirEngine
from smartmed.fhir.model import utcnow
from smartmed.notify import notify
from smartmed.notify.broker import broker
from smartmed.notify.router import _events
from smartmed.notify.tables import notify_inbox
from tests.notify.conftest import free_port, person, token

BP = {"patient": "张三", "systolic": 182, "diastolic": 110, "measured_at": "2026-11-22T01:30:00Z"}


@pytest.fixture
async def server(notify_app: FastAPI) -> AsyncIterator[str]:
    """The app on a local port (lifespan already run by the fixture); its base URL."""
    port = free_port()
    config = uvicorn.Config(
        notify_app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    await task


async def events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parsed SSE events (comments and retry lines skipped)."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in event:
                yield event
            event = {}
        elif line.startswith((":", "retry:")):
            continue
        else:
            name, _, value = line.partition(": ")
            event[name] = value


async def next_event(stream: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    async with asyncio.timeout(10):
        return await anext(stream)


async def test_push_reaches_an_open_stream(
    server: str, notify_app: FastAPI, engine: FhirEngine
) -> None:
    me = await person(engine, "Practitioner")
    auth = await token(notify_app, me, ["family-doctor"])
    async with (
        httpx.AsyncClient(base_url=server, timeout=10) as http,
        http.stream("GET", "/api/notifications/stream", headers=auth) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response)
        while broker.open_streams(me) == 0:  # the stream is registered once connected
            await asyncio.sleep(0.02)
        async with engine.db.write() as conn:
            nid = await notify(
                engine,
                conn,
                recipient=me,
                template="bp-alert",
                data=BP,
                channels=("inapp",),
                urgency="urgent",
            )
        event = await next_event(stream)
        assert event["event"] == "notification"
        data = orjson.loads(event["data"])
        assert (data["id"], data["subject"], data["urgency"]) == (
            nid,
            "血压异常提醒：张三",
            "urgent",
        )
        assert event["id"] == str(data["seq"])

        # A row written by another process (no in-process wake-up) arrives by polling.
        async with engine.db.write() as conn:
            await conn.execute(
                notify_inbox.insert().values(
                    notification_id="from-another-process",
                    owner=me,
                    recipient=me,
                    template="bp-alert",
                    urgency="routine",
                    subject="s",
                    body="b",
                    created_at=utcnow(),
                )
            )
        event = await next_event(stream)
        assert orjson.loads(event["data"])["id"] == "from-another-process"
        assert await next_event_or_none(stream) is None  # each message once


async def next_event_or_none(stream: AsyncIterator[dict[str, Any]]) -> str | None:
    """Nothing else is pending: the wait times out."""
    try:
        async with asyncio.timeout(0.5):
            return str((await anext(stream))["data"])
    except TimeoutError:
        return None


async def test_resume_after_a_sequence_number(
    server: str, notify_app: FastAPI, engine: FhirEngine
) -> None:
    me = await person(engine, "Patient")
    ids = []
    for _ in range(2):
        async with engine.db.write() as conn:
            ids.append(
                await notify(
                    engine, conn, recipient=me, template="bp-alert", data=BP, channels=("inapp",)
                )
            )
    auth = await token(notify_app, me, ["resident"])
    async with httpx.AsyncClient(base_url=server, timeout=10) as http:
        r = await http.get("/api/notifications", headers=auth)
        while len(r.json()["items"]) < 2:
            await asyncio.sleep(0.05)
            r = await http.get("/api/notifications", headers=auth)
        # Two jobs may write the inbox in either order: the sequence decides, not the call.
        by_seq = sorted((i["seq"], i["id"]) for i in r.json()["items"])
        assert sorted(i for _, i in by_seq) == sorted(ids)
        headers = {**auth, "Last-Event-ID": str(by_seq[0][0])}
        async with http.stream("GET", "/api/notifications/stream", headers=headers) as response:
            event = await next_event(events(response))
        assert (int(event["id"]), orjson.loads(event["data"])["id"]) == by_seq[1]


async def test_stream_needs_a_person(server: str, notify_app: FastAPI) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=10) as http:
        r = await http.get("/api/notifications/stream")
        assert r.status_code == 401
        r = await http.get("/api/notifications/stream", headers=await token(notify_app, None))
        assert r.status_code == 403


async def test_postgres_wakes_streams_of_other_processes(engine: FhirEngine) -> None:
    """A message committed elsewhere (NOTIFY, no in-process wake-up) arrives at once."""
    if not engine.db.is_postgres:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite streams poll")
    # A poll period far longer than the wait below: only the NOTIFY can deliver in time.
    slow = dataclasses.replace(
        engine, settings=engine.settings.model_copy(update={"notify_stream_poll_seconds": 60.0})
    )
    me = await person(engine, "Patient")
    elsewhere = str(uuid.uuid4())
    stream = _events(slow, me, 0)
    try:
        assert await anext(stream) == b"retry: 3000\n: connected\n\n"
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.3)  # the stream now waits for a wake-up
        assert not pending.done()
        async with engine.db.write() as conn:  # what another process's job does
            await conn.execute(
                notify_inbox.insert().values(
                    notification_id=elsewhere,
                    owner=me,
                    recipient=me,
                    template="bp-alert",
                    urgency="urgent",
                    subject="s",
                    body="b",
                    created_at=utcnow(),
                )
            )
            await broker.announce(conn, me)
        chunk = await asyncio.wait_for(pending, 5)
        assert orjson.loads(chunk.split(b"data: ", 1)[1])["id"] == elsewhere
    finally:
        await stream.aclose()


async def test_a_stream_ends_after_its_lifetime(engine: FhirEngine) -> None:
    """The browser reconnects (and is authenticated again); nothing lost with Last-Event-ID."""
    me = await person(engine, "Patient")
    chunks = []
    async with asyncio.timeout(5):
        async for chunk in _events(engine, me, 0, lifetime=0.5):
            chunks.append(chunk)
    assert chunks == [b"retry: 3000\n: connected\n\n"]
    assert broker.open_streams(me) == 0
