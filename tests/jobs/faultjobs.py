"""Jobs and a workflow handler for the fault test, imported by the worker subprocesses
(``SMARTMED_JOB_MODULES=tests.jobs.faultjobs``). Each reports to the test's receiver with
an idempotency key. ``fault.send`` also marks itself running in ``fault_running`` (made by
the test): finding the mark of another live process means two runs of one job at once,
which it reports to the receiver (``/overlap``)."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import httpx
from sqlalchemy import text

from smartmed.jobs import Event, JobContext, job, on_event
from smartmed.jobs.registry import registry


def _receiver() -> str:
    return os.environ["SMARTMED_TEST_RECEIVER"]


async def _post(path: str, key: str) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(
            f"{_receiver()}{path}", headers={"Idempotency-Key": key, "X-Pid": str(os.getpid())}
        )
    r.raise_for_status()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@job("fault.send", max_attempts=20, backoff_seconds=0.2, max_backoff_seconds=2, timeout_seconds=60)
async def send(ctx: JobContext, payload: dict[str, Any]) -> None:
    key, pid = ctx.idempotency_key, os.getpid()
    async with ctx.engine.db.write() as conn:
        other = (
            await conn.execute(
                text("SELECT pid FROM fault_running WHERE key = :k FOR UPDATE"), {"k": key}
            )
        ).scalar_one_or_none()
        if other is not None and other != pid and _alive(other):
            await _post("/overlap", key)
            raise RuntimeError(f"{key} is running in process {other} too")
        await conn.execute(
            text(
                "INSERT INTO fault_running VALUES (:k, :p)"
                " ON CONFLICT (key) DO UPDATE SET pid = excluded.pid"
            ),
            {"k": key, "p": pid},
        )
    try:
        await _post("/start", key)
        await asyncio.sleep(random.uniform(0.05, 0.4))  # long enough to be caught by a kill
        await _post("/end", key)
    finally:
        async with ctx.engine.db.write() as conn:
            await conn.execute(
                text("DELETE FROM fault_running WHERE key = :k AND pid = :p"), {"k": key, "p": pid}
            )


@on_event(
    "Observation",
    actions={"create"},
    name="fault.observation",
    backoff_seconds=0.2,
    max_backoff_seconds=2,
)
async def observed(ctx: JobContext, event: Event) -> None:
    await asyncio.sleep(random.uniform(0.02, 0.2))
    await _post("/event", f"evt:{event.resource_id}")


def unregister() -> None:
    """Forget these jobs and the handler in this process (pytest imports them once)."""
    registry.kinds.pop("fault.send", None)
    registry.kinds.pop("workflow:fault.observation", None)
    registry.handlers.pop("fault.observation", None)
