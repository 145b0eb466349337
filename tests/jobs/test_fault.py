"""Fault test (PostgreSQL, real processes): an app and two ``smartmed worker`` processes
share jobs, workflow events and subscription deliveries; one worker and the app are
killed with SIGKILL mid-flight and restarted. Every job, event and notification must
reach the recipient (seen once per idempotency key), none dead, nothing lost, and no
job may ever run in two live processes at the same time."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from sqlalchemy import func, select, text

from smartmed.fhir.storage.database import Database
from smartmed.fhir.storage.migrate import migrate
from smartmed.jobs import enqueue
from smartmed.jobs.tables import job
from tests.conftest import ROOT, create_pg_database, drop_pg_database, need

JOBS = 200
OBSERVATIONS_BEFORE = 40
OBSERVATIONS_AFTER = 20
LEASE_SECONDS = 10

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


class Recipient:
    """Every call it receives: (path, key, pid, loop time)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, float]] = []

    async def handle(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        if request.path == "/hook":  # a subscription notification: the Observation itself
            key = "hook:" + orjson.loads(await request.read())["id"]
        now = asyncio.get_running_loop().time()
        self.calls.append((request.path, key, int(request.headers.get("X-Pid", "0")), now))
        return web.Response(status=200)

    def keys(self, path: str) -> list[str]:
        return [k for p, k, _, _ in self.calls if p == path]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "smartmed.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


async def wait_ready(base: str, log: Path, timeout: float = 180) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient() as http:
        while asyncio.get_running_loop().time() < deadline:
            try:
                if (await http.get(f"{base}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    raise AssertionError(f"app at {base} did not become ready:\n{tail}")


def observation(n: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "subject": {"reference": f"Patient/p{n % 7}"},
        "valueQuantity": {"value": 120 + n % 40, "unit": "mmHg"},
    }


async def post_observations(base: str, numbers: range) -> list[str]:
    async with httpx.AsyncClient(base_url=f"{base}/fhir/R4/", timeout=30) as http:
        sem = asyncio.Semaphore(8)

        async def one(n: int) -> str:
            async with sem:
                r = await http.post(
                    "Observation",
                    content=orjson.dumps(observation(n)),
                    headers={"Content-Type": "application/fhir+json"},
                )
                assert r.status_code == 201, r.text
                return str(r.json()["id"])

        return list(await asyncio.gather(*(one(n) for n in numbers)))


async def test_kill_app_and_worker_mid_flight(tmp_path: Path) -> None:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    url = await create_pg_database()
    from tests.jobs import faultjobs  # registers fault.send here too, for enqueue

    db = Database(url)
    await migrate(db)
    async with db.write() as conn:
        await conn.execute(
            text("CREATE TABLE fault_running (key TEXT PRIMARY KEY, pid INT NOT NULL)")
        )
    recipient = Recipient()
    web_app = web.Application()
    web_app.router.add_route("POST", "/{tail:.*}", recipient.handle)
    web_runner = web.AppRunner(web_app, handle_signals=False)
    await web_runner.setup()
    site = web.TCPSite(web_runner, "127.0.0.1", 0)
    await site.start()
    rport = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SMARTMED_DATABASE_URL": url,
        "SMARTMED_JOB_MODULES": "tests.jobs.faultjobs",
        "SMARTMED_TEST_RECEIVER": f"http://127.0.0.1:{rport}",
        "SMARTMED_JOBS_LEASE_SECONDS": str(LEASE_SECONDS),
        "SMARTMED_JOBS_POLL_SECONDS": "0.2",
        "SMARTMED_JOBS_CONCURRENCY": "8",
        "SMARTMED_SUBSCRIPTION_ALLOWED_HOSTS": "127.0.0.1",
        "SMARTMED_SUBSCRIPTION_TIMEOUT_SECONDS": "60",  # a loaded machine answers slowly
        "SMARTMED_LOG_LEVEL": "WARNING",
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    loop = asyncio.get_running_loop()

    def start(name: str) -> None:
        args = ["serve", "--port", str(port)] if name == "app" else ["worker"]
        procs[name] = spawn(args, env, tmp_path / f"{name}.log")

    def kill(name: str) -> None:
        proc = procs[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    try:
        t0 = loop.time()
        for name in ("app", "worker1", "worker2"):
            start(name)
        await wait_ready(base, tmp_path / "app.log")
        async with httpx.AsyncClient(base_url=f"{base}/fhir/R4/") as http:
            r = await http.post(
                "Subscription",
                json={
                    "resourceType": "Subscription",
                    "status": "requested",
                    "reason": "fault test",
                    "criteria": "Observation?code=http://loinc.org|8480-6",
                    "channel": {
                        "type": "rest-hook",
                        "endpoint": f"http://127.0.0.1:{rport}/hook",
                        "payload": "application/fhir+json",
                    },
                },
            )
            assert r.status_code == 201, r.text
        async with db.write() as conn:
            for n in range(JOBS):
                await enqueue(conn, "fault.send", {"n": n}, key=f"job-{n}")
        print(f"ready after {loop.time() - t0:.1f} s")
        before = await post_observations(base, range(OBSERVATIONS_BEFORE))
        # Kill once work is visibly in flight in every process.
        for _ in range(200):
            if len(recipient.keys("/start")) >= JOBS // 4:
                break
            await asyncio.sleep(0.05)
        kill("worker1")
        kill("app")
        in_flight_at_kill = len(recipient.keys("/start")) - len(recipient.keys("/end"))
        await asyncio.sleep(0.5)
        start("worker1")
        start("app")
        await wait_ready(base, tmp_path / "app.log")
        after = await post_observations(
            base, range(OBSERVATIONS_BEFORE, OBSERVATIONS_BEFORE + OBSERVATIONS_AFTER)
        )
        observations = before + after
        print(f"restarted and posted after {loop.time() - t0:.1f} s")

        expected_jobs = {f"job-{n}" for n in range(JOBS)}
        expected_events = {f"evt:{i}" for i in observations}
        expected_hooks = {f"hook:{i}" for i in observations}
        deadline = loop.time() + 300
        while loop.time() < deadline:
            if (
                set(recipient.keys("/end")) == expected_jobs
                and set(recipient.keys("/event")) == expected_events
                and set(recipient.keys("/hook")) == expected_hooks
            ):
                async with db.read() as conn:
                    open_jobs = (
                        await conn.execute(
                            select(func.count())
                            .select_from(job)
                            .where(job.c.state.in_(["queued", "running"]))
                        )
                    ).scalar_one()
                if open_jobs == 0:
                    break
            await asyncio.sleep(0.25)
        async with db.read() as conn:
            unfinished = (
                await conn.execute(
                    select(
                        job.c.key, job.c.state, job.c.attempts, job.c.locked_by, job.c.last_error
                    )
                    .where(job.c.state != "done")
                    .limit(20)
                )
            ).all()
        assert recipient.keys("/overlap") == [], unfinished
        assert set(recipient.keys("/end")) == expected_jobs, unfinished
        assert set(recipient.keys("/event")) == expected_events
        assert set(recipient.keys("/hook")) == expected_hooks
        async with db.read() as conn:
            # This test's jobs (other modules' recurring schedules, "cron:…", may have run).
            states = dict(
                (
                    await conn.execute(
                        select(job.c.state, func.count())
                        .where(job.c.key.not_like("cron:%"))
                        .group_by(job.c.state)
                    )
                ).all()
            )
            dead = (
                await conn.execute(
                    select(job.c.kind, job.c.attempts, job.c.last_error).where(
                        job.c.state != "done"
                    )
                )
            ).all()
        assert states == {"done": JOBS + 2 * len(observations)}, dead
        # Never two runs of one job at once (each run checks for a live twin).
        assert recipient.keys("/overlap") == []
        repeated = len(recipient.keys("/start")) - JOBS
        assert 0 <= repeated <= in_flight_at_kill + 16
        print(
            f"fault test: {JOBS} jobs, {len(observations)} events and notifications; "
            f"{in_flight_at_kill} in flight at the kill, {repeated} job runs repeated"
        )
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
        faultjobs.unregister()  # the other tests of this process must not see them
        await web_runner.cleanup()
        await db.dispose()
        await drop_pg_database(url)
