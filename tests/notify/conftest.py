"""Real protocol endpoints for the notification tests, and an app wired to them.

- an SMTP server (aiosmtpd) that keeps every message it receives;
- one local HTTP server (aiohttp) playing the SMS gateway and the WeChat API. Its
  answers depend on the address, so tests running side by side never share a script:
  a phone number ending in 503 always gets HTTP 503, in 400 gets 400; an openid starting
  ``o-unsub`` gets errcode 43004 (not subscribed), ``o-busy`` errcode -1 (busy);
- per backend, an application using them, with short retry and poll periods.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import select

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.fhir.context import FhirEngine
from smartmed.identity.service import get_identity
from smartmed.notify.tables import notification
from tests.conftest import ROOT, create_pg_database, drop_pg_database, need

ISSUER = "https://smartmed.test"
FHIR_BASE = f"{ISSUER}/fhir/R4"
API_KEY = "sms-test-key"
WECHAT_TOKEN = "wx-access-token-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SmtpSink:
    """aiosmtpd handler keeping what arrives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        mail = message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((list(envelope.rcpt_tos), mail))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        return [m for rcpt, m in self.messages if address in rcpt]


@dataclass
class HttpRecorder:
    """What the SMS gateway and the WeChat API were sent."""

    sms: list[dict[str, Any]] = field(default_factory=list)
    sms_headers: list[dict[str, str]] = field(default_factory=list)
    wechat: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0

    def sms_to(self, phone: str) -> list[dict[str, Any]]:
        return [m for m in self.sms if m["to"] == phone]

    def wechat_to(self, openid: str) -> list[dict[str, Any]]:
        return [m for m in self.wechat if m["touser"] == openid]


def _http_app(rec: HttpRecorder) -> web.Application:
    async def sms(request: web.Request) -> web.Response:
        body = await request.json()
        rec.sms.append(body)
        rec.sms_headers.append(dict(request.headers))
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response({"error": "bad key"}, status=401)
        to = str(body.get("to", ""))
        if to.endswith("503"):
            return web.json_response({"error": "busy"}, status=503)
        if to.endswith("400"):
            return web.json_response({"error": "invalid number"}, status=400)
        return web.json_response({"id": f"sms-{len(rec.sms)}"})

    async def token(request: web.Request) -> web.Response:
        rec.tokens += 1
        if request.query.get("appid") != "wx-app" or request.query.get("secret") != "wx-secret":
            return web.json_response({"errcode": 40013, "errmsg": "invalid appid"})
        return web.json_response({"access_token": WECHAT_TOKEN, "expires_in": 7200})

    async def send(request: web.Request) -> web.Response:
        if request.query.get("access_token") != WECHAT_TOKEN:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        body = await request.json()
        rec.wechat.append(body)
        openid = str(body.get("touser", ""))
        if openid.startswith("o-unsub"):
            return web.json_response({"errcode": 43004, "errmsg": "require subscribe"})
        if openid.startswith("o-busy"):
            return web.json_response({"errcode": -1, "errmsg": "system error"})
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": len(rec.wechat)})

    app = web.Application()
    app.router.add_post("/sms", sms)
    app.router.add_get("/cgi-bin/token", token)
    app.router.add_post("/cgi-bin/message/template/send", send)
    return app


@dataclass
class Endpoints:
    smtp: SmtpSink
    smtp_port: int
    http: HttpRecorder
    http_port: int


@pytest.fixture(scope="session")
async def endpoints() -> AsyncIterator[Endpoints]:
    sink = SmtpSink()
    smtp_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    rec = HttpRecorder()
    runner = web.AppRunner(_http_app(rec))
    await runner.setup()
    http_port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", http_port)
    await site.start()
    yield Endpoints(sink, smtp_port, rec, http_port)
    await runner.cleanup()
    controller.stop()


def notify_settings(url: str, ep: Endpoints, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "secret_key": SecretStr("synthetic-test-secret-key-0123456789"),
        "issuer": ISSUER,
        "base_url": FHIR_BASE,
        "jobs_poll_seconds": 0.05,
        "notify_retry_seconds": 0.05,
        "notify_max_attempts": 3,
        "notify_stream_poll_seconds": 0.2,
        "smtp_host": "127.0.0.1",
        "smtp_port": ep.smtp_port,
        "smtp_starttls": False,
        "smtp_from": "smartmed <noreply@smartmed.test>",
        "sms_provider": "http",
        "sms_url": f"http://127.0.0.1:{ep.http_port}/sms",
        "sms_api_key": SecretStr(API_KEY),
        "sms_sender": "SMARTMED",
        "wechat_app_id": "wx-app",
        "wechat_app_secret": SecretStr("wx-secret"),
        "wechat_api_base": f"http://127.0.0.1:{ep.http_port}",
        "wechat_templates": "bp-alert=TPL-BP, followup-reminder=TPL-FU",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
async def notify_app(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    endpoints: Endpoints,
) -> AsyncIterator[FastAPI]:
    """The application per backend, sending to the local endpoints, jobs running."""
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('notify')}/smartmed.db"
    else:
        url = await create_pg_database()
    application = create_app(notify_settings(url, endpoints))
    async with application.router.lifespan_context(application):
        yield application
    if request.param == "postgres":
        await drop_pg_database(url)


@pytest.fixture
def engine(notify_app: FastAPI) -> FhirEngine:
    fhir: FhirEngine = notify_app.state.fhir
    return fhir


@pytest.fixture
async def api(notify_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=notify_app), base_url=ISSUER
    ) as client:
        yield client


_numbers = itertools.count(1000)


def unique_phone(suffix: str = "") -> str:
    """A mobile number no other test uses; ``suffix`` selects the gateway's answer."""
    body = f"1380{next(_numbers):04d}{uuid.uuid4().int % 1000:03d}"
    return f"+86{body[: 11 - len(suffix)]}{suffix}"


async def create(engine: FhirEngine, resource: dict[str, Any]) -> str:
    """Store ``resource``; its reference."""
    async with engine.db.write() as conn:
        stored = await engine.repository(conn).create(resource)
    return stored.reference


async def person(
    engine: FhirEngine,
    type_: str = "Patient",
    *,
    email: str | None = None,
    phone: str | None = None,
    openid: str | None = None,
    language: str | None = None,
) -> str:
    """A Patient/Practitioner/RelatedPerson with the given addresses; its reference."""
    from smartmed.notify import WECHAT_OPENID_SYSTEM

    body: dict[str, Any] = {"resourceType": type_, "name": [{"text": "测试 人员"}]}
    if type_ == "RelatedPerson":
        patient = await person(engine)
        body["patient"] = {"reference": patient}
    telecom = []
    if email:
        telecom.append({"system": "email", "value": email})
    if phone:
        telecom.append({"system": "phone", "value": phone, "use": "mobile"})
    if telecom:
        body["telecom"] = telecom
    if openid:
        body["identifier"] = [{"system": WECHAT_OPENID_SYSTEM, "value": openid}]
    if language:
        concept = {"coding": [{"system": "urn:ietf:bcp:47", "code": language}]}
        if type_ == "Practitioner":
            body["communication"] = [concept]
        else:
            body["communication"] = [{"language": concept, "preferred": True}]
    return await create(engine, body)


async def state(engine: FhirEngine, notification_id: str) -> Any:
    async with engine.db.read() as conn:
        return (
            await conn.execute(select(notification).where(notification.c.id == notification_id))
        ).first()


async def settle(engine: FhirEngine, notification_id: str, timeout: float = 20.0) -> Any:
    """Wait until the job runner finished the notification; its row."""
    deadline = time.monotonic() + timeout
    while True:
        row = await state(engine, notification_id)
        if row is not None and row.status != "queued":
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"notification {notification_id} still queued: {row}")
        await asyncio.sleep(0.05)


async def communication(engine: FhirEngine, row: Any) -> dict[str, Any]:
    async with engine.db.read() as conn:
        stored = await engine.repository(conn).read("Communication", row.communication_id)
    return dict(orjson.loads(stored.content or "{}"))


async def token(
    app: FastAPI, fhir_user: str | None, roles: list[str] | None = None, scope: str = "openid"
) -> dict[str, str]:
    """Authorization header of an access token for ``fhir_user`` holding ``roles``."""
    identity = get_identity(app)
    value, _ = await identity.tokens.access_token(
        issuer=ISSUER,
        audience=FHIR_BASE,
        subject=f"account-{uuid.uuid4().hex[:8]}",
        client_id="portal",
        scope=scope,
        fhir_user=fhir_user,
        roles=[{"role": r, "organization": "Organization/clinic1"} for r in roles or []],
    )
    return {"Authorization": f"Bearer {value}"}
