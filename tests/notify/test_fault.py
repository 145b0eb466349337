"""Fault test (PostgreSQL, real processes): two ``smartmed worker`` processes deliver
notifications (in-app + SMS through a slow HTTP gateway); one is killed with SIGKILL
mid-flight and restarted. Every notification must end delivered, each inbox message
exist exactly once, and the gateway see every notification's SMS under its idempotency
key (a resend after the kill repeats a key, never invents one)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy import func, select

from smartmed.config import Settings
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.migrate import migrate
from smartmed.notify import notify
from smartmed.notify.tables import notification, notify_inbox
from tests.conftest import ROOT, create_pg_database, drop_pg_database, need
from tests.notify.conftest import free_port

N = 60
LEASE_SECONDS = 3
BP = {"patient": "张三", "systolic": 182, "diastolic": 110, "measured_at": "2026-11-22T01:30:00Z"}

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


class Gateway:
    """A slow SMS gateway: every accepted message's idempotency key."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        await request.json()
        await asyncio.sleep(random.uniform(0.1, 0.5))  # long enough to be caught by a kill
        self.keys.append(request.headers.get("Idempotency-Key", ""))
        return web.json_response({"id": f"m{len(self.keys)}"})


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "smartmed.cli", "worker", "--concurrency", "6"],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_kill_a_worker_while_sending(tmp_path: Path) -> None:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    url = await create_pg_database()
    gateway = Gateway()
    web_app = web.Application()
    web_app.router.add_post("/sms", gateway.handle)
    runner = web.AppRunner(web_app, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    sms_url = f"http://127.0.0.1:{port}/sms"
    engine = FhirEngine.build(Settings(database_url=url, sms_provider="http", sms_url=sms_url))
    await migrate(engine.db)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SMARTMED_DATABASE_URL": url,
        "SMARTMED_SMS_PROVIDER": "http",
        "SMARTMED_SMS_URL": sms_url,
        "SMARTMED_JOBS_LEASE_SECONDS": str(LEASE_SECONDS),
        "SMARTMED_JOBS_POLL_SECONDS": "0.2",
        "SMARTMED_LOG_LEVEL": "WARNING",
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    loop = asyncio.get_running_loop()
    try:
        ids: list[str] = []
        async with engine.db.write() as conn:
            repo = engine.repository(conn)
            for n in range(N):
                patient = await repo.create(
                    {
                        "resourceType": "Patient",
                        "telecom": [{"system": "phone", "value": f"+86138{n:08d}"}],
                    }
                )
                ids.append(
                    await notify(
                        engine,
                        conn,
                        recipient=patient.reference,
                        template="bp-alert",
                        data=BP,
                        channels=("inapp", "sms"),
                        urgency="urgent",
                    )
                )
        for name in ("worker1", "worker2"):
            procs[name] = spawn(env, tmp_path / f"{name}.log")
        for _ in range(1200):
            if len(gateway.keys) >= N // 4:
                break
            await asyncio.sleep(0.05)
        assert len(gateway.keys) >= N // 4, (tmp_path / "worker1.log").read_text()[-3000:]
        os.kill(procs["worker1"].pid, signal.SIGKILL)
        procs["worker1"].wait()
        await asyncio.sleep(0.5)
        procs["worker1"] = spawn(env, tmp_path / "worker1.log")

        deadline = loop.time() + 120
        statuses: dict[str, int] = {}
        while loop.time() < deadline:
            async with engine.db.read() as conn:
                statuses = dict(
                    (
                        await conn.execute(
                            select(notification.c.status, func.count()).group_by(
                                notification.c.status
                            )
                        )
                    ).all()
                )
            if statuses == {"delivered": N}:
                break
            await asyncio.sleep(0.25)
        assert statuses == {"delivered": N}
        expected = {f"{i}:sms" for i in ids}
        seen = Counter(gateway.keys)
        assert set(seen) == expected  # every notification reached the recipient
        async with engine.db.read() as conn:
            inbox = Counter(
                (await conn.execute(select(notify_inbox.c.notification_id))).scalars().all()
            )
        assert inbox == Counter(ids)  # exactly once each
        resent = sum(seen.values()) - N
        assert 0 <= resent <= 12  # at most what worker1 had in flight (6) per lost lease
        print(f"notify fault test: {N} notifications, {resent} SMS resent after the kill")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await runner.cleanup()
        await engine.db.dispose()
        await drop_pg_database(url)
