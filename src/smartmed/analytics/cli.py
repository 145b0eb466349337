"""``smartmed views``: list, show SQL, run and export ViewDefinitions from the command line.

A VIEW is a starter-library name (``smartmed views list``) or a ViewDefinition JSON file.
The source is the live store (``SMARTMED_DATABASE_URL``) or, with ``--ndjson DIR``, a
folder of FHIR NDJSON files in the Bulk Data layout.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from smartmed.analytics import formats, library, sources
from smartmed.analytics.export import FORMATS, compile_all, export, output_name
from smartmed.analytics.run import Result, prepare, run_duckdb, run_store
from smartmed.fhir.errors import Invalid

app = typer.Typer(help="SQL-on-FHIR v2 ViewDefinitions: run and export.", no_args_is_help=True)

NdjsonOption = Annotated[
    Path | None, typer.Option("--ndjson", help="Folder of FHIR NDJSON files instead of the store")
]


def _load(view: str) -> dict[str, Any]:
    try:
        return library.load(view)
    except KeyError as exc:
        raise typer.BadParameter(str(exc)) from None


def _fail(exc: Invalid) -> typer.Exit:
    for issue in exc.issues:
        where = f" at {issue.expression}" if issue.expression else ""
        typer.echo(f"error{where}: {issue.diagnostics}", err=True)
    return typer.Exit(code=2)


@app.command("list")
def list_views() -> None:
    """The starter views."""
    for name in library.names():
        view = library.load(name)
        typer.echo(f"{name:22} {view['resource']:18} {view.get('title', '')}")


@app.command()
def sql(
    view: Annotated[str, typer.Argument(help="Starter view name or ViewDefinition file")],
    dialect: Annotated[str, typer.Option(help="duckdb, postgresql or spark")] = "duckdb",
) -> None:
    """Print the SQL a view compiles to."""
    try:
        typer.echo(prepare(_load(view), dialect).sql)
    except Invalid as exc:
        raise _fail(exc) from None


@app.command()
def run(
    view: Annotated[str, typer.Argument(help="Starter view name or ViewDefinition file")],
    fmt: Annotated[str, typer.Option("--format", help="json, ndjson, csv or parquet")] = "csv",
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout")] = None,
    ndjson: NdjsonOption = None,
    dialect: Annotated[
        str | None, typer.Option(help="Store only: duckdb or postgresql (default: the store's)")
    ] = None,
) -> None:
    """Run a view and print (or write) its rows."""
    raw = _load(view)
    try:
        code = formats.format_code(fmt)
        result = _run(raw, ndjson, dialect)
    except Invalid as exc:
        raise _fail(exc) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    data = formats.render(result, code)
    if output is not None:
        output.write_bytes(data)
        typer.echo(f"{len(result.rows)} rows written to {output}", err=True)
    else:
        sys.stdout.buffer.write(data)


def _run(raw: dict[str, Any], folder: Path | None, dialect: str | None) -> Result:
    if folder is None:
        from smartmed.config import get_settings
        from smartmed.fhir.storage.database import Database

        async def go() -> Result:
            db = Database(get_settings().database_url)
            try:
                return await run_store(db, raw, dialect)
            finally:
                await db.dispose()

        return asyncio.run(go())
    compiled = prepare(raw)
    conn = sources.new_duckdb()
    try:
        sources.load_ndjson(conn, sources.bulk_files(folder, compiled.resource))
        return run_duckdb(conn, compiled)
    finally:
        conn.close()


@app.command("export")
def export_command(
    views: Annotated[
        list[str] | None, typer.Argument(help="Views to export (default: the starter library)")
    ] = None,
    to: Annotated[Path, typer.Option(help="Destination folder")] = Path("var/exports"),
    fmt: Annotated[str, typer.Option("--format", help=", ".join(FORMATS))] = "parquet",
    ndjson: NdjsonOption = None,
) -> None:
    """Materialise views as Parquet/CSV/NDJSON files or tables of a DuckDB file."""
    raws = [_load(v) for v in (views or library.names())]
    try:
        compiled = compile_all([(output_name(r, i), r) for i, r in enumerate(raws)])
    except Invalid as exc:
        raise _fail(exc) from None
    conn = sources.new_duckdb()
    try:
        types = {c.resource for _, c in compiled}
        if ndjson is not None:
            files = [f for t in sorted(types) for f in sources.bulk_files(ndjson, t)]
            loaded = sources.load_ndjson(conn, files)
        else:
            loaded = asyncio.run(_snapshot(conn, types))
        typer.echo(f"{loaded} resources loaded", err=True)
        with typer.progressbar(length=len(compiled), label="exporting views") as bar:
            done = export(conn, compiled, to, fmt, progress=lambda _: bar.update(1))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    finally:
        conn.close()
    for item in done:
        typer.echo(f"{item.name:22} {item.rows:>9} rows  {item.location}")


async def _snapshot(conn: Any, types: set[str]) -> int:
    from smartmed.config import get_settings
    from smartmed.fhir.storage.database import Database

    db = Database(get_settings().database_url)
    try:
        return await sources.snapshot_store(db, types, conn)
    finally:
        await db.dispose()
