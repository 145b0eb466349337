"""The ``smartmed`` command line: serve, migrate, demo."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from smartmed.config import get_settings

app = typer.Typer(
    help="smartmed: smart medical cloud platform for a county medical community.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (PostgreSQL only)")] = 1,
) -> None:
    """Serve the platform (FHIR API at /fhir/R4)."""
    import uvicorn

    settings = get_settings()
    if workers > 1 and settings.database_url.startswith("sqlite"):
        raise typer.BadParameter("several workers need PostgreSQL; SQLite serves one process")
    asyncio.run(_prepare())
    uvicorn.run(
        "smartmed.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


async def _prepare() -> None:
    from smartmed.fhir.storage.database import Database
    from smartmed.fhir.storage.migrate import is_current, migrate

    settings = get_settings()
    db = Database(settings.database_url)
    try:
        if not await is_current(db):
            await migrate(db)
    finally:
        await db.dispose()


@app.command("migrate")
def migrate_command() -> None:
    """Upgrade the database schema to the newest revision."""
    asyncio.run(_prepare())
    typer.echo("database is at the newest schema revision")


@app.command()
def demo(
    residents: Annotated[int, typer.Option(min=1, help="How many residents to generate")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same county")] = 1,
    if_empty: Annotated[
        bool, typer.Option(help="Only load when the database holds no Patient")
    ] = False,
) -> None:
    """Generate a synthetic county and load it through the engine."""
    from smartmed.demo.load import load_demo

    summary = asyncio.run(
        load_demo(get_settings(), residents=residents, seed=seed, if_empty=if_empty)
    )
    typer.echo(summary)


@app.command("import")
def import_command(
    files: Annotated[
        list[Path], typer.Argument(help="Bundle files (.json, or .ndjson with one per line)")
    ],
) -> None:
    """Import FHIR transaction/batch Bundles (e.g. Synthea); a bad bundle is rejected whole."""
    from smartmed.exchange.importer import import_files

    report = asyncio.run(import_files(get_settings(), files))
    typer.echo(report.summary())
    if report.failed:
        raise typer.Exit(code=1)


from smartmed.identity.cli import client_app  # noqa: E402

app.add_typer(client_app, name="client")

from smartmed.analytics.cli import app as views_app  # noqa: E402

app.add_typer(views_app, name="views")

from smartmed.crypto.cli import keys_app  # noqa: E402

app.add_typer(keys_app, name="keys")

from smartmed.access.cli import access_app  # noqa: E402
from smartmed.audit.cli import app as audit_app  # noqa: E402

app.add_typer(access_app, name="access")

app.add_typer(audit_app, name="audit")


from smartmed.jobs.cli import jobs_app  # noqa: E402

app.add_typer(jobs_app, name="jobs")


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(min=1, help="Jobs run at once")] = None,
) -> None:
    """Run jobs, workflow handlers and subscription deliveries (PostgreSQL) until stopped."""
    from smartmed.jobs.runtime import run_worker

    settings = get_settings()
    if settings.database_url.startswith("sqlite"):
        raise typer.BadParameter("workers need PostgreSQL; on SQLite `smartmed serve` runs jobs")
    asyncio.run(run_worker(settings, concurrency=concurrency))


@app.command()
def reindex(
    batch_size: Annotated[int, typer.Option(min=1, help="Resources per transaction")] = 500,
    start_after: Annotated[
        int, typer.Option(min=0, help="Resume after this resource key (an interrupted run says)")
    ] = 0,
) -> None:
    """Rebuild every resource's search index rows (after a definitions change or a migration)."""
    from smartmed.fhir.reindex import run_cli

    typer.echo(run_cli(get_settings(), batch_size=batch_size, start_after=start_after))


if __name__ == "__main__":
    app()
