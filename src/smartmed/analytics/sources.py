"""Where a view's resources come from, per engine: DuckDB tables, the PostgreSQL store.

- DuckDB holds resources in a table ``(type VARCHAR, content JSON)``, filled from
  Python dicts, from FHIR NDJSON files in the Bulk Data layout
  (https://hl7.org/fhir/uv/bulkdata/export.html#bulk-data-output-file-format: one
  resource per line, usually one file per type) or from a snapshot of the live store.
- On PostgreSQL a view runs inside our own database over ``resource.content`` (JSONB);
  one statement is one consistent snapshot.

The live store on SQLite is copied into DuckDB (DuckDB's sqlite extension is a download,
not available offline): the rows of the view's types are read in one read transaction,
hence a consistent snapshot, and handed to DuckDB as NDJSON through a temporary file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
import orjson
from sqlalchemy import select

from smartmed.fhir.storage.database import Database
from smartmed.fhir.storage.tables import resource as resource_table

TABLE = "fhir_resource"

#: Rows per DuckDB row group in the resource table. DuckDB scans a table in parallel one
#: row group per task, and its default row group holds 122,880 rows: a view over the
#: 10,000 Patients of a 100,000-resource county would run on one core. Small groups give
#: every thread work, and with the rows kept in type order (see ``load_ndjson``) the
#: groups of other types are skipped by their min/max statistics. Measured with
#: ``bench/views.py`` on 2 cores: the patient view 150 -> 92 ms, observations 633 -> 445 ms.
ROW_GROUP_ROWS = 2048


def duckdb_source(resource_type: str, table: str = TABLE) -> str:
    """The FROM item of one type's resources in a DuckDB table."""
    quoted = resource_type.replace("'", "''")
    return f"(SELECT content FROM \"{table}\" WHERE type = '{quoted}')"


def postgres_source(resource_type: str, table: str = "resource") -> str:
    """The FROM item of one type's current resources in the PostgreSQL store."""
    quoted = resource_type.replace("'", "''")
    return f"(SELECT content FROM {table} WHERE type = '{quoted}' AND NOT deleted)"


def new_duckdb(table: str = TABLE, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB with an empty resource table, in a scratch database file (an in-memory
    database ignores ``ROW_GROUP_SIZE``) that is removed with the connection."""
    folder = tempfile.mkdtemp(prefix="smartmed-views-")
    conn = duckdb.connect(":memory:")
    weakref.finalize(conn, shutil.rmtree, folder, ignore_errors=True)
    path = os.path.join(folder, "views.duckdb").replace("'", "''")
    conn.execute(f"ATTACH '{path}' AS scratch (ROW_GROUP_SIZE {ROW_GROUP_ROWS})")
    conn.execute("USE scratch")
    if threads:
        conn.execute(f"SET threads = {int(threads)}")
    conn.execute(f'CREATE TABLE "{table}" (type VARCHAR, content JSON)')
    return conn


def load_ndjson(conn: duckdb.DuckDBPyConnection, paths: Iterable[Path], table: str = TABLE) -> int:
    """Append NDJSON files (one resource per line) to the table; the number of rows added."""
    files = [str(p) for p in paths]
    if not files:
        return 0
    before = _count(conn, table)
    conn.execute(
        f"INSERT INTO \"{table}\" SELECT json ->> 'resourceType', json "
        "FROM read_ndjson_objects(?, format = 'newline_delimited') ORDER BY 1",
        [files],
    )
    return _count(conn, table) - before


def _count(conn: duckdb.DuckDBPyConnection, table: str) -> int:
    row = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    return int(row[0]) if row else 0


def load_resources(
    conn: duckdb.DuckDBPyConnection, resources: Iterable[dict[str, Any]], table: str = TABLE
) -> int:
    """Append resources given as dicts (through a temporary NDJSON file)."""
    return load_lines(conn, (orjson.dumps(r) for r in resources), table)


def load_lines(conn: duckdb.DuckDBPyConnection, lines: Iterable[bytes], table: str = TABLE) -> int:
    """Append resources given as JSON texts, one per item."""
    fd, name = tempfile.mkstemp(suffix=".ndjson")
    try:
        with os.fdopen(fd, "wb") as out:
            for line in lines:
                out.write(line)
                out.write(b"\n")
        return load_ndjson(conn, [Path(name)], table)
    finally:
        os.unlink(name)


def bulk_files(folder: Path, resource_type: str) -> list[Path]:
    """The NDJSON files of one type in a Bulk Data output folder (``Type.ndjson``,
    ``Type.000.ndjson``, ``Type-1.ndjson`` …)."""
    out = []
    for p in sorted(folder.glob("*.ndjson")):
        stem = p.name[: -len(".ndjson")]
        if stem == resource_type or stem.split(".")[0] == resource_type:
            out.append(p)
        elif stem.split("-")[0] == resource_type:
            out.append(p)
    return out


async def snapshot_store(
    db: Database, types: Iterable[str], conn: duckdb.DuckDBPyConnection, table: str = TABLE
) -> int:
    """Copy the current resources of ``types`` from the live store into DuckDB."""
    wanted = sorted(set(types))
    query = (
        select(resource_table.c.content)
        .where(resource_table.c.type.in_(wanted), resource_table.c.deleted.is_(False))
        .order_by(resource_table.c.pk)
    )
    fd, name = tempfile.mkstemp(suffix=".ndjson")
    try:
        with os.fdopen(fd, "wb") as out:
            # One statement in one read transaction: a consistent snapshot of all types
            # (streamed: server-side cursors need the transaction on PostgreSQL).
            async with db.engine.connect() as sa, sa.begin():
                result = await sa.stream(query)
                async for (content,) in result:
                    out.write(content.encode() if isinstance(content, str) else content)
                    out.write(b"\n")
        return load_ndjson(conn, [Path(name)], table)
    finally:
        os.unlink(name)
