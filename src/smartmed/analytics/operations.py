"""$viewdefinition-run and $viewdefinition-export on the engine's operation registry.

Per the SQL-on-FHIR operations (OperationDefinition ViewDefinitionRun/-Export) in R4
mode, they are system-level (``/fhir/R4/$viewdefinition-run``), plus instance level on
a stored view (``/fhir/R4/Basic/{id}/$viewdefinition-run``, see ``store.py``). Inputs
come in a Parameters body: ``viewResource`` (a ViewDefinition), or ``viewReference``
(a string ``Basic/{id}``), ``_format`` (json | ndjson | csv | parquet), ``header``,
``_limit``, ``resource`` (inline resources to run over instead of the store). The view
is checked and compiled before any data is read: a bad view is a 400 OperationOutcome
naming the offending element.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any

import orjson

from smartmed.analytics import formats, sources, store
from smartmed.analytics.export import FORMATS, compile_all, export, output_name
from smartmed.analytics.run import Result, prepare, run_duckdb, run_postgres
from smartmed.fhir.errors import Invalid
from smartmed.fhir.operations import (
    Operation,
    OperationCall,
    OperationParam,
    OperationRegistry,
    OperationResult,
)

RUN_URL = "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-run"
EXPORT_URL = "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-export"
EXPORT_DIR_ENV = "SMARTMED_ANALYTICS_EXPORT_DIR"


async def _stored_view(call: OperationCall, reference: str) -> dict[str, Any]:
    type_, _, id_ = reference.partition("/")
    if type_ != "Basic" or not id_:
        raise Invalid("viewReference must be Basic/{id}", expression="viewReference")
    engine = call.context
    async with engine.db.read() as conn:
        stored = await engine.repository(conn).read("Basic", id_)
    resource = orjson.loads(stored.content or "{}")
    return store.unwrap(resource)


async def _view(call: OperationCall, resource: Any, reference: str | None) -> dict[str, Any]:
    if resource is not None:
        return dict(resource)
    if reference is not None:
        return await _stored_view(call, reference)
    if call.resource_id is not None:
        return await _stored_view(call, f"Basic/{call.resource_id}")
    raise Invalid("give viewResource or viewReference", expression="viewResource")


def _limited(compiled: Any, limit: int | None) -> Any:
    if limit is None:
        return compiled
    if limit < 0:
        raise Invalid("_limit must not be negative", expression="_limit")
    return dataclasses.replace(compiled, sql=f"SELECT * FROM ({compiled.sql}) AS v LIMIT {limit}")


async def _run(call: OperationCall) -> OperationResult:
    """$viewdefinition-run: the view's rows in the requested format."""
    inputs = call.inputs
    try:
        fmt = formats.format_code(inputs.get("_format"))
    except ValueError as exc:
        raise Invalid(str(exc), expression="_format") from None
    raw = await _view(call, inputs.get("viewResource"), inputs.get("viewReference"))
    db = call.context.db
    inline = inputs.get("resource") or []
    on_postgres = db.is_postgres and not inline
    compiled = _limited(prepare(raw, "postgresql" if on_postgres else "duckdb"), inputs["_limit"])
    if on_postgres:
        result = await run_postgres(db, compiled)
    else:
        conn = sources.new_duckdb()
        try:
            if inline:
                sources.load_resources(conn, inline)
            else:
                await sources.snapshot_store(db, [compiled.resource], conn)
            result = await asyncio.to_thread(run_duckdb, conn, compiled)
        finally:
            conn.close()
    header = inputs.get("header")
    body = await asyncio.to_thread(_render, result, fmt, header is not False)
    return OperationResult({}, body=body, media_type=formats.MEDIA_TYPES[fmt])


def _render(result: Result, fmt: str, header: bool) -> bytes:
    return formats.render(result, fmt, header=header)


async def _export(call: OperationCall) -> OperationResult:
    """$viewdefinition-export: materialise views into the server's export folder."""
    inputs = call.inputs
    fmt = inputs.get("_format") or "parquet"
    if fmt not in FORMATS:
        raise Invalid(f"_format must be one of {', '.join(FORMATS)}", expression="_format")
    raws = list(inputs.get("viewResource") or [])
    raws += [await _stored_view(call, r) for r in inputs.get("viewReference") or []]
    if not raws:
        raise Invalid("give at least one viewResource or viewReference", expression="view")
    compiled = compile_all([(output_name(r, i), r) for i, r in enumerate(raws)])
    folder = Path(os.environ.get(EXPORT_DIR_ENV, "var/exports"))
    dest = folder / (inputs.get("name") or "export")
    conn = sources.new_duckdb()
    try:
        await sources.snapshot_store(call.context.db, {c.resource for _, c in compiled}, conn)
        done = await asyncio.to_thread(export, conn, compiled, dest, fmt)
    finally:
        conn.close()
    params: list[dict[str, Any]] = [{"name": "status", "valueCode": "completed"}]
    for item in done:
        params.append(
            {
                "name": "output",
                "part": [
                    {"name": "name", "valueString": item.name},
                    {"name": "location", "valueUri": Path(item.location).resolve().as_uri()},
                    {"name": "rows", "valueInteger": item.rows},
                ],
            }
        )
    return OperationResult({"resourceType": "Parameters", "parameter": params})


def register_view_operations(registry: OperationRegistry) -> None:
    """Register $viewdefinition-run and $viewdefinition-export."""
    registry.register(
        Operation(
            name="viewdefinition-run",
            levels=frozenset({"system", "instance"}),
            handler=_run,
            inputs=(
                OperationParam("viewResource", "Resource", 0, "1"),
                OperationParam("viewReference", "string", 0, "1"),
                OperationParam("_format", "code", 0, "1"),
                OperationParam("header", "boolean", 0, "1"),
                OperationParam("_limit", "integer", 0, "1"),
                OperationParam("resource", "Resource", 0, "*"),
            ),
            outputs=(OperationParam("return", "Binary", 1, "1"),),
            resource_types=frozenset({"Basic"}),
            definition=RUN_URL,
            description="Run a SQL-on-FHIR ViewDefinition and return its rows",
        )
    )
    registry.register(
        Operation(
            name="viewdefinition-export",
            levels=frozenset({"system"}),
            handler=_export,
            inputs=(
                OperationParam("viewResource", "Resource", 0, "*"),
                OperationParam("viewReference", "string", 0, "*"),
                OperationParam("_format", "code", 0, "1"),
                OperationParam("name", "string", 0, "1"),
            ),
            outputs=(OperationParam("output", "string", 0, "*"),),
            affects_state=True,
            definition=EXPORT_URL,
            description="Materialise ViewDefinitions as Parquet/CSV/NDJSON files or DuckDB",
        )
    )
