"""``smartmed jobs``: the queue from the command line (list, retry a dead job)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import orjson
import typer

from smartmed.config import get_settings

jobs_app = typer.Typer(help="Durable jobs: list the queue, retry dead jobs.", no_args_is_help=True)


@jobs_app.command("list")
def list_command(
    state: Annotated[str | None, typer.Option(help="queued, running, done or dead")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Jobs, newest first, one JSON object a line."""
    from smartmed.fhir.storage.database import Database
    from smartmed.jobs.queue import STATES, list_jobs

    if state is not None and state not in STATES:
        raise typer.BadParameter(f"state must be one of {', '.join(STATES)}")

    async def run() -> None:
        db = Database(get_settings().database_url)
        try:
            async with db.read() as conn:
                for row in await list_jobs(conn, state=state, limit=limit):
                    typer.echo(orjson.dumps(row).decode())
        finally:
            await db.dispose()

    asyncio.run(run())


@jobs_app.command("retry")
def retry_command(job_id: Annotated[int, typer.Argument(help="A dead job's id")]) -> None:
    """Queue a dead job again with fresh attempts."""
    from smartmed.fhir.storage.database import Database
    from smartmed.jobs.queue import retry_dead

    async def run() -> bool:
        db = Database(get_settings().database_url)
        try:
            async with db.write() as conn:
                return await retry_dead(conn, job_id)
        finally:
            await db.dispose()

    if not asyncio.run(run()):
        typer.echo(f"job {job_id} is not dead (or does not exist)", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"job {job_id} queued")
