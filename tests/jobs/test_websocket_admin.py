"""The R4 websocket channel over a real server and client, and the administrators' job API."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from pydantic import SecretStr

from smartmed.app import create_app
from smartmed.identity.service import get_identity
from smartmed.jobs import JobContext, enqueue, job
from tests.conftest import ROOT, need
from tests.jobs.conftest import settings_for
from tests.jobs.test_subscriptions import observation, sub


@job("test.admin-dead", max_attempts=1)
async def always_dead(ctx: JobContext, payload: dict[str, Any]) -> None:
    raise ValueError("cannot")


@pytest.fixture
async def served(db_url: str) -> AsyncIterator[tuple[FastAPI, str]]:
    """The app (running its own job runner) behind a real uvicorn on a free port."""
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    app = create_app(settings_for(db_url, jobs_in_app=True))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield app, f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_websocket_bind_and_ping(served: tuple[FastAPI, str]) -> None:
    _app, where = served
    async with httpx.AsyncClient(base_url=f"http://{where}/fhir/R4/") as http:
        r = await http.post(
            "Subscription",
            json=sub("Observation?code=http://loinc.org|8480-6", None, type="websocket"),
        )
        assert r.status_code == 201, r.text
        sub_id = r.json()["id"]
        async with websockets.connect(f"ws://{where}/ws/subscriptions") as ws:
            await ws.send("hello")
            assert await ws.recv() == "error expected 'bind <subscription id>'"
            await ws.send("bind no-such-subscription")
            assert await ws.recv() == "error no-such-subscription is not a websocket subscription"
            await ws.send(f"bind {sub_id}")
            assert await ws.recv() == f"bound {sub_id}"
            await http.post("Observation", json=observation(code="8462-4"))  # no match
            await http.post("Observation", json=observation())
            assert await asyncio.wait_for(ws.recv(), 10) == f"ping {sub_id}"
            with pytest.raises(TimeoutError):  # one ping per matching change, no more
                await asyncio.wait_for(ws.recv(), 1.0)


@pytest.fixture
async def auth_app(db_url: str) -> AsyncIterator[FastAPI]:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    settings = settings_for(db_url, secret_key=SecretStr("synthetic-test-secret-key-0123456789"))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


async def token(app: FastAPI, roles: list[dict[str, str]]) -> str:
    minted, _ = await get_identity(app).tokens.access_token(
        issuer="http://testserver",
        audience="http://testserver/fhir/R4",
        subject="account-1",
        client_id="portal",
        scope="openid user/*.rs",
        roles=roles,
    )
    return minted


async def test_admin_jobs_role_matrix_and_retry(auth_app: FastAPI) -> None:
    engine = auth_app.state.fhir
    async with engine.db.write() as conn:
        dead_id = await enqueue(conn, "test.admin-dead", {"n": 1})
    from smartmed.jobs.runner import JobRunner

    await JobRunner(engine).run_once()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=auth_app), base_url="http://testserver"
    ) as http:
        assert (await http.get("/api/admin/jobs?state=dead")).status_code == 401
        bad = await http.get("/api/admin/jobs", headers={"Authorization": "Bearer not-a-token"})
        assert bad.status_code == 401
        for role in ("family-doctor", "institution-admin", "security-admin", "audit-admin"):
            tok = await token(auth_app, [{"role": role, "organization": "Organization/o1"}])
            r = await http.get("/api/admin/jobs", headers={"Authorization": f"Bearer {tok}"})
            assert r.status_code == 403, role
            r = await http.post(
                f"/api/admin/jobs/{dead_id}/retry", headers={"Authorization": f"Bearer {tok}"}
            )
            assert r.status_code == 403, role
        for role in ("platform-admin", "system-admin"):
            tok = await token(auth_app, [{"role": role}])
            r = await http.get(
                "/api/admin/jobs?state=dead", headers={"Authorization": f"Bearer {tok}"}
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert [(j["id"], j["kind"], j["state"], j["last_error"]) for j in body["jobs"]] == [
                (dead_id, "test.admin-dead", "dead", "ValueError: cannot")
            ]
            assert body["counts"]["dead"] == 1
        auth = {"Authorization": f"Bearer {tok}"}
        assert (await http.get("/api/admin/jobs?state=bogus", headers=auth)).status_code == 400
        r = await http.post(f"/api/admin/jobs/{dead_id}/retry", headers=auth)
        assert (r.status_code, r.json()) == (200, {"id": dead_id, "state": "queued"})
        r = await http.post(f"/api/admin/jobs/{dead_id}/retry", headers=auth)
        assert r.status_code == 409
        assert "queued, not dead" in r.json()["issue"][0]["diagnostics"]
        assert (await http.post("/api/admin/jobs/999999/retry", headers=auth)).status_code == 404
        r = await http.get("/api/admin/jobs?state=queued", headers=auth)
        assert [(j["id"], j["attempts"]) for j in r.json()["jobs"]] == [(dead_id, 0)]
