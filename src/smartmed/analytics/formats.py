"""Rows → bytes in the $viewdefinition-run output formats: json, ndjson, csv, parquet.

Output format codes and media types as in the SQL-on-FHIR OperationDefinition
ViewDefinitionRun (``_format``: json | ndjson | csv | parquet). Parquet is written by
DuckDB's own writer (no pyarrow): the rows go through a temporary NDJSON file read with
the view's column types.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import orjson

from smartmed.analytics.query import OutputColumn
from smartmed.analytics.run import Result
from smartmed.analytics.types import BOOL, INT, NUM

MEDIA_TYPES = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
_ALIASES = {
    "application/json": "json",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/fhir+ndjson": "ndjson",
    "text/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/parquet": "parquet",
}
_DUCK = {BOOL: "BOOLEAN", INT: "BIGINT", NUM: "DOUBLE"}


def format_code(value: str | None) -> str:
    """Normalise a _format value (code or media type); ValueError when unknown."""
    code = (value or "json").split(";")[0].strip().lower()
    code = _ALIASES.get(code, code)
    if code not in MEDIA_TYPES:
        raise ValueError(f"_format {value!r} is not one of {', '.join(MEDIA_TYPES)}")
    return code


def duck_type(column: OutputColumn) -> str:
    """The DuckDB type of an output column."""
    base = _DUCK.get(column.kind, "VARCHAR")
    return base + "[]" if column.collection else base


def _default(value: object) -> Any:
    return str(value)  # Decimal, dates: text


def render(result: Result, fmt: str, *, header: bool = True) -> bytes:
    """The rows in format ``fmt`` (a code from MEDIA_TYPES)."""
    if fmt == "json":
        return orjson.dumps(result.dicts(), default=_default)
    if fmt == "ndjson":
        return b"".join(
            orjson.dumps(row, default=_default, option=orjson.OPT_APPEND_NEWLINE)
            for row in result.dicts()
        )
    if fmt == "csv":
        return _csv(result, header)
    if fmt == "parquet":
        fd, name = tempfile.mkstemp(suffix=".parquet")
        os.close(fd)
        try:
            write_parquet(result, Path(name))
            return Path(name).read_bytes()
        finally:
            os.unlink(name)
    raise ValueError(f"unknown format {fmt!r}")


def _csv(result: Result, header: bool) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow([c.name for c in result.columns])
    for row in result.rows:
        writer.writerow(
            [
                orjson.dumps(v, default=_default).decode()
                if isinstance(v, list)
                else ("true" if v is True else "false" if v is False else v)
                for v in row
            ]
        )
    return out.getvalue().encode()


def write_parquet(result: Result, path: Path) -> None:
    """Write the rows to a Parquet file with the view's column types."""
    fd, name = tempfile.mkstemp(suffix=".ndjson")
    try:
        with os.fdopen(fd, "wb") as f:
            for row in result.dicts():
                f.write(orjson.dumps(row, default=_default, option=orjson.OPT_APPEND_NEWLINE))
        columns = {c.name: duck_type(c) for c in result.columns}
        conn = duckdb.connect(":memory:")
        try:
            rel = (
                f"read_json(?, format = 'newline_delimited', columns = {_struct(columns)})"
                if result.rows
                else "(SELECT "
                + ", ".join(f"CAST(NULL AS {t}) AS {_q(n)}" for n, t in columns.items())
                + " WHERE FALSE)"
            )
            params = [name] if result.rows else []
            conn.execute(f"COPY (SELECT * FROM {rel}) TO '{_path(path)}' (FORMAT parquet)", params)
        finally:
            conn.close()
    finally:
        os.unlink(name)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _path(path: Path) -> str:
    return str(path).replace("'", "''")


def _struct(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{n}': '{t}'" for n, t in columns.items()) + "}"
