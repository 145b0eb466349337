"""Bulk creation of many resources: the engine's write rules, written in bulk.

The fast path of ``smartmed demo`` and ``smartmed import`` for transaction Bundles that
only create resources (``POST`` without ``ifNoneExist``, references to the bundle's own
``urn:uuid`` full URLs or to literal ``Type/id``). Such a bundle needs nothing from the
database to be prepared, so the work is split in two stages that can run in parallel:

1. **prepare** (pure CPU, picklable in and out, so it runs in worker processes on the
   other cores): for every resource exactly what ``Repository.create_many`` does —
   validation against the R4 definitions, id and ``meta`` stamped, the registered
   checks, one serialisation, the protector's sealing of sensitive identifiers and the
   search-index extraction from the sealed form — then the rows of every table as
   tuples in column order, with no SQLAlchemy parameter processing;
2. **write** (one database transaction per bundle, or per group of bundles): the
   resource rows get their primary keys, then ``COPY`` (PostgreSQL, asyncpg
   ``copy_records_to_table``) or one prepared ``executemany`` per table (SQLite) puts in
   the resources, their history versions, the index rows and the outbox events, and the
   engine's write hooks run on the same connection (access grants, subscription
   matching), exactly as after an ordinary write.

Any bundle the fast path does not handle — another method, a conditional reference or
create, an invalid resource, a caller under an access policy — goes through the ordinary
``bundles.transaction`` instead, which gives it the same outcome and the same error it
always had. ``tests/demo/test_bulk.py`` loads one county both ways and compares every
stored row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from operator import attrgetter
from typing import Any, cast

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir import bundles
from smartmed.fhir.errors import FhirError
from smartmed.fhir.hooks import current_access, note_touched
from smartmed.fhir.model import utcnow
from smartmed.fhir.repository import EngineServices, Repository, new_id
from smartmed.fhir.search.extract import IndexExtractor
from smartmed.fhir.search.index import (
    CompositeValue,
    DateValue,
    GeoValue,
    IndexValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    ResourceIndex,
    StringValue,
    TextValue,
    TokenValue,
    UriValue,
)
from smartmed.fhir.search.rows import composite_param
from smartmed.fhir.storage.tables import INDEX_TABLES

# Columns of each table in the order the tuples are built (checked against the tables).
RESOURCE_COLUMNS = ("pk", "type", "id", "version_id", "last_updated", "deleted", "content")
HISTORY_COLUMNS = ("type", "id", "version_id", "last_updated", "action", "content")
OUTBOX_COLUMNS = ("created_at", "resource_type", "resource_id", "version_id", "action")
_HEAD = ("res_pk", "resource_type", "param")
INDEX_COLUMNS: dict[str, tuple[str, ...]] = {
    "token": (*_HEAD, "system", "code", "text", "type_system", "type_code", "grp"),
    "string": (*_HEAD, "value", "norm", "grp"),
    "reference": (
        *_HEAD,
        "target_type",
        "target_id",
        "url",
        "ident_system",
        "ident_value",
        "grp",
    ),
    "date": (*_HEAD, "low", "high", "grp"),
    "number": (*_HEAD, "value", "low", "high", "grp"),
    "quantity": (
        *_HEAD,
        "value",
        "low",
        "high",
        "system",
        "code",
        "unit",
        "canon_value",
        "canon_low",
        "canon_high",
        "canon_unit",
        "grp",
    ),
    "uri": (*_HEAD, "value"),
    "geo": (*_HEAD, "lat", "lon", "x", "y", "z"),
    "text": (*_HEAD, "value"),
}
for _kind, _table in INDEX_TABLES.items():  # a schema change must be mirrored here
    if set(INDEX_COLUMNS[_kind]) != {c.name for c in _table.columns}:
        raise RuntimeError(f"bulk.INDEX_COLUMNS[{_kind!r}] does not match table {_table.name}")

# A row tuple without its first column (res_pk: the resource's position until written).
Row = tuple[Any, ...]


@dataclass(slots=True)
class Create:
    """One resource to create: its type, its new id and its (reference-resolved) body."""

    type_: str
    id_: str
    body: dict[str, Any]


@dataclass(slots=True)
class Prepared:
    """The rows of a batch of creates, ready to write (picklable: built in a worker).

    ``resources``: (type, id, plaintext JSON, stored JSON) per create; ``index``: rows per
    index kind, each starting with the position of its resource in ``resources``.
    ``error``: the position of the first resource the engine refused (nothing else set).
    """

    now: datetime
    resources: list[tuple[str, str, str, str]] = field(default_factory=list)
    index: dict[str, list[Row]] = field(default_factory=dict)
    error: int | None = None


@dataclass(slots=True)
class Plan:
    """The creates of a bundle, and the references rewritten for them (to undo)."""

    creates: list[Create]
    rewritten: list[tuple[dict[str, Any], str]]

    def restore(self) -> None:
        """Put the bundle's references back as they were before planning."""
        for node, reference in self.rewritten:
            node["reference"] = reference


# -- planning: which bundles the fast path takes ------------------------------------------


def plan_transaction(
    bundle: dict[str, Any], types: frozenset[str], known: dict[str, str] | None = None
) -> Plan | None:
    """The creates of a transaction Bundle, ids assigned and references resolved in place.

    None (and the bundle untouched) when the bundle needs the ordinary transaction path:
    anything but plain POSTs, a conditional create or reference, a reference to a
    ``urn:uuid`` that is not in the bundle, a resource whose type is not the URL's.
    The ids are drawn and the references rewritten exactly as ``bundles.transaction``
    does for such a bundle. ``known`` maps conditional references the caller has
    already resolved (``Organization?identifier=s|v`` → ``Organization/7``), as the
    transaction's own search would.
    """
    if bundle.get("type") != "transaction":
        return None
    try:
        entries = bundles.parse_entries(bundle, types)
    except FhirError:
        return None
    if not entries:
        return None
    for entry in entries:
        if entry.method != "POST" or entry.if_none_exist or entry.resource is None:
            return None
        if entry.resource.get("resourceType") != entry.type_:
            return None
    creates = [Create(e.type_, new_id(), cast(dict[str, Any], e.resource)) for e in entries]
    mapping = {
        e.full_url: f"{c.type_}/{c.id_}"
        for e, c in zip(entries, creates, strict=True)
        if e.full_url
    }
    found: list[tuple[dict[str, Any], str]] = []
    known = known or {}
    for create in creates:
        if not _collect(create.body, mapping, known, found):
            return None
    rewritten = []
    for node, target in found:
        rewritten.append((node, node["reference"]))
        node["reference"] = target
    rewritten.reverse()  # restored last first: a node met twice gets its first value back
    return Plan(creates, rewritten)


_CONTAINERS = (dict, list)


def _collect(
    node: Any,
    mapping: dict[str, str],
    known: dict[str, str],
    found: list[tuple[dict[str, Any], str]],
) -> bool:
    """Gather the references to rewrite (the bundle's full URLs in ``mapping`` first, then
    ``known``); False when one needs the database (or is bad)."""
    if isinstance(node, dict):
        value = node.get("reference")
        if isinstance(value, str):
            target = mapping.get(value)
            if target is None:
                target = known.get(value)
            if target is not None:
                found.append((node, target))
            elif value.startswith(("urn:uuid:", "urn:oid:")):
                return False  # not in the bundle: the ordinary path reports it
            elif "?" in value and "/" not in value.split("?", 1)[0]:
                return False  # a conditional reference: a search
        for value in node.values():
            if isinstance(value, dict):
                if not _collect(value, mapping, known, found):
                    return False
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, _CONTAINERS) and not _collect(item, mapping, known, found):
                        return False
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, _CONTAINERS) and not _collect(item, mapping, known, found):
                return False
    return True


# -- preparing: the engine's per-resource work, as rows ----------------------------------


class _Deferred:
    """An extractor that only keeps the documents ``Repository._prepare`` hands it."""

    def __init__(self) -> None:
        self.documents: list[dict[str, Any]] = []

    def extract(self, resource: dict[str, Any]) -> ResourceIndex:
        self.documents.append(resource)
        return _PENDING


_PENDING = ResourceIndex()


def prepare(
    services: EngineServices,
    creates: Iterable[tuple[str, str, dict[str, Any]]],
    now: datetime,
    *,
    plain: bool = False,
) -> Prepared:
    """Validate, stamp, seal and index every create (as ``Repository.create_many``).

    In two passes: ``Repository._prepare`` for every resource (validation, stamping, the
    registered checks, serialisation, sealing), with the extraction deferred; then the
    index of every resource, type after type. The validator's and the extractor's
    working sets then each stay in the processor's caches: 25-45 % less CPU than both
    per resource in turn, measured on the demo county.

    ``plain``: the bodies were decoded from JSON text (a worker's input), so the
    extractor may reuse the conversions of equal elements (``IndexExtractor.extract``).
    """
    deferred = _Deferred()
    repo = Repository(  # _prepare needs no connection
        cast(AsyncConnection, None),
        replace(services, extractor=cast(IndexExtractor, deferred)),
    )
    out = Prepared(now)
    for position, (type_, id_, body) in enumerate(creates):
        try:
            content, stored, _ = repo._prepare(body, type_, id_, 1, now)
        except FhirError:
            return Prepared(now, error=position)
        out.resources.append((type_, id_, content, stored))
    documents = deferred.documents
    index_out: dict[str, list[Row]] = {kind: [] for kind in INDEX_COLUMNS}
    extract = services.extractor.extract
    for position in sorted(range(len(documents)), key=lambda p: out.resources[p][0]):
        index = extract(documents[position], plain=True) if plain else extract(documents[position])
        index_tuples(position, out.resources[position][0], index, index_out)
    out.index = {kind: rows for kind, rows in index_out.items() if rows}
    return out


def _tuple(value: IndexValue, grp: int | None) -> tuple[str, Row]:
    """(kind, columns after ``param``) of one value; mirrors ``search.rows``."""
    match value:
        case TokenValue():
            return "token", (
                value.system,
                value.code,
                value.text,
                value.type_system,
                value.type_code,
                grp,
            )
        case StringValue():
            return "string", (value.value, value.norm, grp)
        case ReferenceValue():
            return "reference", (
                value.target_type,
                value.target_id,
                value.url,
                value.ident_system,
                value.ident_value,
                grp,
            )
        case DateValue():
            return "date", (value.low, value.high, grp)
        case NumberValue():
            return "number", (value.value, value.low, value.high, grp)
        case QuantityValue():
            return "quantity", (
                value.value,
                value.low,
                value.high,
                value.system,
                value.code,
                value.unit,
                value.canon_value,
                value.canon_low,
                value.canon_high,
                value.canon_unit,
                grp,
            )
        case UriValue():
            return "uri", (value.value,)
        case GeoValue():
            return "geo", (value.lat, value.lon, value.x, value.y, value.z)
        case TextValue():
            return "text", (value.value,)
    raise TypeError(f"not an index value: {value!r}")


# The columns of a value of exactly these types (no grp), as ``_tuple`` gives them: one
# C-level attribute fetch instead of a pattern match per value.
_FIELDS: dict[type, tuple[str, attrgetter[Any]]] = {
    TokenValue: ("token", attrgetter("system", "code", "text", "type_system", "type_code")),
    StringValue: ("string", attrgetter("value", "norm")),
    ReferenceValue: (
        "reference",
        attrgetter("target_type", "target_id", "url", "ident_system", "ident_value"),
    ),
    DateValue: ("date", attrgetter("low", "high")),
    NumberValue: ("number", attrgetter("value", "low", "high")),
    QuantityValue: (
        "quantity",
        attrgetter(
            "value",
            "low",
            "high",
            "system",
            "code",
            "unit",
            "canon_value",
            "canon_low",
            "canon_high",
            "canon_unit",
        ),
    ),
}


def index_tuples(
    position: int, type_: str, index: ResourceIndex, out: dict[str, list[Row]]
) -> None:
    """Append the index rows of one resource to ``out`` (the rows ``search.rows`` makes)."""
    fields = _FIELDS
    for param, values in index.values.items():
        if not values:
            continue
        if type(values[0]) is CompositeValue:
            for grp, composite in enumerate(values):
                assert type(composite) is CompositeValue
                for number, part in enumerate(composite.parts):
                    name = composite_param(param, number)
                    for simple in dict.fromkeys(part):
                        kind, columns = _tuple(simple, grp)
                        out[kind].append((position, type_, name, *columns))
            continue
        for value in values if len(values) == 1 else dict.fromkeys(values):
            found = fields.get(type(value))
            if found is None:
                kind, columns = _tuple(value, None)
                out[kind].append((position, type_, param, *columns))
            else:
                out[found[0]].append((position, type_, param, *found[1](value), None))


# -- writing --------------------------------------------------------------------------


def may_bulk_write() -> bool:
    """Whether the fast path may write here: not for a caller under an access policy
    (their writes are checked one by one by the ordinary path)."""
    return current_access.get() is None


async def write(conn: AsyncConnection, services: EngineServices, batch: Prepared) -> list[int]:
    """Write a prepared batch on ``conn`` (inside the caller's transaction); the new pks.

    The rows the ordinary path writes, in the same tables, then the after-write hooks.
    """
    if batch.error is not None or not batch.resources:
        raise ValueError("nothing to write: the batch was refused or is empty")
    if services.is_postgres:
        pks = await _postgres(conn, batch)
    else:
        pks = await _sqlite(conn, batch)
    writes: list[tuple[str, str, str, str | None]] = [
        (t, i, "create", c) for t, i, c, _ in batch.resources
    ]
    for t, i, c, _ in batch.resources:
        note_touched(t, i, c)
    hooks = services.hooks
    if hooks.after:
        for t, i, c, _ in batch.resources:
            for hook in hooks.after.get(t, ()):
                await hook(conn, t, i, "create", c)
    for batch_hook in hooks.after_batch:
        await batch_hook(conn, writes)
    return pks


def _with_pks(rows: list[Row], pks: list[int]) -> list[Row]:
    return [(pks[row[0]], *row[1:]) for row in rows]


_NEXT_PKS = "SELECT nextval(pg_get_serial_sequence('resource', 'pk')) FROM generate_series(1, :n)"


async def _postgres(conn: AsyncConnection, batch: Prepared) -> list[int]:
    n, now = len(batch.resources), batch.now
    # Through SQLAlchemy first: this also begins the transaction the driver calls join.
    result = await conn.execute(
        text(
            "SELECT nextval(pg_get_serial_sequence('resource', 'pk')) FROM generate_series(1, :n)"
        ),
        {"n": n},
    )
    pks = [int(pk) for pk in result.scalars()]
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    await driver.copy_records_to_table(
        "resource",
        records=[
            (pk, t, i, 1, now, False, s)
            for pk, (t, i, _, s) in zip(pks, batch.resources, strict=True)
        ],
        columns=RESOURCE_COLUMNS,
    )
    await driver.copy_records_to_table(
        "resource_history",
        records=[(t, i, 1, now, "create", s) for t, i, _, s in batch.resources],
        columns=HISTORY_COLUMNS,
    )
    for kind, rows in batch.index.items():
        await driver.copy_records_to_table(
            INDEX_TABLES[kind].name, records=_with_pks(rows, pks), columns=INDEX_COLUMNS[kind]
        )
    await driver.copy_records_to_table(
        "outbox",
        records=[(now, t, i, 1, "create") for t, i, _, _ in batch.resources],
        columns=OUTBOX_COLUMNS,
    )
    return pks


def _insert(table: str, columns: tuple[str, ...]) -> str:
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


def _sqlite_time(moment: datetime) -> str:
    # As SQLAlchemy's SQLite DateTime stores it (always six digits of microseconds).
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


async def _sqlite(conn: AsyncConnection, batch: Prepared) -> list[int]:
    now = _sqlite_time(batch.now)
    top = (await conn.execute(text("SELECT COALESCE(MAX(pk), 0) FROM resource"))).scalar_one()
    pks = list(range(int(top) + 1, int(top) + 1 + len(batch.resources)))
    await conn.exec_driver_sql(
        _insert("resource", RESOURCE_COLUMNS),
        [
            (pk, t, i, 1, now, False, s)
            for pk, (t, i, _, s) in zip(pks, batch.resources, strict=True)
        ],
    )
    await conn.exec_driver_sql(
        _insert("resource_history", HISTORY_COLUMNS),
        [(t, i, 1, now, "create", s) for t, i, _, s in batch.resources],
    )
    for kind, rows in batch.index.items():
        records = _with_pks(rows, pks)
        if kind == "date":
            records = [
                (pk, t, p, _sqlite_time(low), _sqlite_time(high), grp)
                for pk, t, p, low, high, grp in records
            ]
        await conn.exec_driver_sql(_insert(INDEX_TABLES[kind].name, INDEX_COLUMNS[kind]), records)
    await conn.exec_driver_sql(
        _insert("outbox", OUTBOX_COLUMNS),
        [(now, t, i, 1, "create") for t, i, _, _ in batch.resources],
    )
    return pks


def stamp_time() -> datetime:
    """The ``lastUpdated`` of a batch written now (one per batch, as ``create_many``)."""
    return utcnow()


__all__ = [
    "Create",
    "Plan",
    "Prepared",
    "index_tuples",
    "may_bulk_write",
    "plan_transaction",
    "prepare",
    "write",
]
