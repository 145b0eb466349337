"""$viewdefinition-export: materialise views as Parquet/CSV/NDJSON files or DuckDB tables.

Every view is checked and compiled first; then one DuckDB connection holding one
snapshot of the resources writes each view with DuckDB's own writers (``COPY … TO``,
https://duckdb.org/docs/sql/statements/copy) or into a DuckDB database file. Runs
synchronously (the spec's async kick-off pattern is not implemented; the CLI shows a
progress bar instead).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from smartmed.analytics.query import CompiledView
from smartmed.analytics.run import prepare

FORMATS = ("parquet", "duckdb", "csv", "ndjson")
_SAFE = re.compile(r"[^A-Za-z0-9_\-]")


@dataclass(frozen=True, slots=True)
class Exported:
    """One materialised view."""

    name: str
    location: str
    rows: int


def output_name(raw: dict[str, Any], index: int) -> str:
    """A file/table name for a view: its name, else ``view_<n>``."""
    name = raw.get("name")
    return _SAFE.sub("_", name) if isinstance(name, str) and name else f"view_{index}"


def compile_all(views: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, CompiledView]]:
    """Compile every view for DuckDB (Invalid on the first bad one, before any I/O)."""
    return [(name, prepare(raw, "duckdb")) for name, raw in views]


def export(
    conn: duckdb.DuckDBPyConnection,
    compiled: list[tuple[str, CompiledView]],
    dest: Path,
    fmt: str = "parquet",
    progress: Callable[[str], None] | None = None,
) -> list[Exported]:
    """Write each compiled view from the resources loaded in ``conn`` to ``dest``."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}")
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    if fmt == "duckdb":
        target = dest / "views.duckdb"
        conn.execute(f"ATTACH '{_lit(target)}' AS export_db")
    try:
        for name, view in compiled:
            if fmt == "duckdb":
                conn.execute(f'CREATE OR REPLACE TABLE export_db."{name}" AS {view.sql}')
                row = conn.execute(f'SELECT count(*) FROM export_db."{name}"').fetchone()
                location = f"{target}#{name}"
            else:
                path = dest / f"{name}.{fmt}"
                options = {"parquet": "FORMAT parquet", "csv": "FORMAT csv, HEADER"}
                option = options.get(fmt, "FORMAT json")
                row = conn.execute(f"COPY ({view.sql}) TO '{_lit(path)}' ({option})").fetchone()
                location = str(path)
            out.append(Exported(name, location, int(row[0]) if row else 0))
            if progress is not None:
                progress(name)
    finally:
        if fmt == "duckdb":
            conn.execute("DETACH export_db")
    return out


def _lit(path: Path) -> str:
    return str(path).replace("'", "''")
