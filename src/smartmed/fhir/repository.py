"""The resource repository: create, read, vread, update, delete, history on one connection.

A ``Repository`` works inside the caller's transaction and never commits: the HTTP
request (or the job, or the bundle) owns the transaction, so several calls stay atomic.
Every write validates the resource, stamps ``id``/``meta``, stores the current version,
appends the history row, replaces the search index rows and writes an outbox event, all
on the same connection. With a protector installed (``storage/protect.py``), the stored
JSON and the index rows hold sensitive values in protected form, while the caller (and
the after-write hooks) get the plaintext.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir import jsonio
from smartmed.fhir.errors import (
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    OutcomeIssue,
    PreconditionFailed,
)
from smartmed.fhir.hooks import WriteHooks, current_access, note_touched, touched
from smartmed.fhir.model import ID_RE, StoredResource, fhir_instant, utcnow
from smartmed.fhir.search import rows as search_rows
from smartmed.fhir.search.extract import IndexExtractor
from smartmed.fhir.search.index import ReferenceValue, ResourceIndex
from smartmed.fhir.search.params import SearchRegistry
from smartmed.fhir.storage.protect import Protector
from smartmed.fhir.storage.tables import (
    INDEX_TABLES,
    outbox,
    resource,
    resource_history,
)
from smartmed.fhir.validate import Validator

_CURRENT = select(
    resource.c.pk,
    resource.c.version_id,
    resource.c.last_updated,
    resource.c.deleted,
    resource.c.content,
)


@dataclass(frozen=True, slots=True)
class EngineServices:
    """What every repository needs besides its connection: validator, indexer, dialect."""

    validator: Validator
    extractor: IndexExtractor
    registry: SearchRegistry
    is_postgres: bool
    default_count: int = 20
    max_count: int = 1000
    hooks: WriteHooks = field(default_factory=WriteHooks)
    # Seals sensitive values of what is written (policy: smartmed.crypto); None: stored as is.
    protector: Protector | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The stored version after a write, and whether the write created the resource."""

    stored: StoredResource
    created: bool


def new_id() -> str:
    """A new server-assigned logical id."""
    return str(uuid.uuid4())


_READ = _CURRENT.where(
    resource.c.type == bindparam("read_type"), resource.c.id == bindparam("read_id")
)
# The read statement under each access condition (the guard keeps one condition object
# per caller, type and interaction): one statement object, so SQLAlchemy computes its
# cache key and compiles it once, not on every read.
_GUARDED: dict[int, tuple[Any, Any]] = {}


def _guarded_read(allowed: Any) -> Any:
    found = _GUARDED.get(id(allowed))
    if found is not None and found[0] is allowed:
        return found[1]
    if len(_GUARDED) >= 10_000:
        _GUARDED.clear()
    stmt = _READ.add_columns(case((allowed, True), else_=False).label("allowed"))
    _GUARDED[id(allowed)] = (allowed, stmt)
    return stmt


class Repository:
    """Resource interactions on one connection, inside the caller's transaction."""

    def __init__(self, conn: AsyncConnection, services: EngineServices) -> None:
        self.conn = conn
        self.services = services

    # -- reads -------------------------------------------------------------------------

    async def read(self, type_: str, id_: str) -> StoredResource:
        """The current version; NotFound if it never existed, Gone if deleted.

        Under an access policy the check is part of the same query (``allowed``)."""
        stmt: Any = _READ
        guard = current_access.get()
        allowed: Any = None
        if guard is not None:
            await guard.ready(self.conn)
            allowed = guard.read_condition(resource, type_)
            if allowed is not None:
                stmt = _guarded_read(allowed)
        row = (await self.conn.execute(stmt, {"read_type": type_, "read_id": id_})).first()
        if row is None:
            raise NotFound(f"{type_}/{id_} is not known", expression=type_)
        if row.deleted:
            raise Gone(f"{type_}/{id_} was deleted (version {row.version_id})", expression=type_)
        if guard is not None and allowed is not None and not row.allowed:
            raise guard.denied_read(type_, id_)
        note_touched(type_, id_, row.content)
        return StoredResource(type_, id_, row.version_id, row.last_updated, False, row.content)

    async def vread(self, type_: str, id_: str, version_id: int) -> StoredResource:
        """One version from the history; Gone if that version is a deletion."""
        h = resource_history.c
        row = (
            await self.conn.execute(
                select(h.last_updated, h.action, h.content).where(
                    h.type == type_, h.id == id_, h.version_id == version_id
                )
            )
        ).first()
        if row is None:
            raise NotFound(f"{type_}/{id_}/_history/{version_id} is not known", expression=type_)
        if row.action == "delete":
            raise Gone(f"{type_}/{id_} version {version_id} is a deletion", expression=type_)
        guard = current_access.get()
        if guard is not None:
            await guard.check_read(self.conn, type_, id_)
        note_touched(type_, id_, row.content)
        return StoredResource(type_, id_, version_id, row.last_updated, False, row.content)

    async def exists(self, type_: str, id_: str) -> bool:
        """Whether a live (not deleted) resource has this type and id."""
        row = (
            await self.conn.execute(
                select(resource.c.deleted).where(resource.c.type == type_, resource.c.id == id_)
            )
        ).first()
        return row is not None and not row.deleted

    # -- writes ------------------------------------------------------------------------

    async def create(self, body: dict[str, Any], *, id_: str | None = None) -> StoredResource:
        """Store a new resource with a server-assigned id (or ``id_`` when given)."""
        return (await self.create_many([(body, id_)]))[0]

    async def create_many(
        self, items: list[tuple[dict[str, Any], str | None]]
    ) -> list[StoredResource]:
        """Store new resources with one statement per table, however many there are.

        An invalid resource raises ``Invalid`` with ``position`` set to its index in
        ``items``, before anything is written.
        """
        now = utcnow()
        prepared: list[tuple[str, str, str, ResourceIndex]] = []
        stored_forms: list[str] = []
        for position, (body, id_) in enumerate(items):
            try:
                type_ = _resource_type(body)
                id_ = id_ or new_id()
                content, stored, index = self._prepare(body, type_, id_, 1, now)
            except Invalid as exc:
                exc.position = position
                raise
            prepared.append((type_, id_, content, index))
            stored_forms.append(stored)
        if not prepared:
            return []
        guard = current_access.get()
        if guard is not None:
            for type_, _id, _, index in prepared:
                await guard.check_write(self.conn, type_, "create", references(index))
        rows = [
            {
                "type": t,
                "id": i,
                "version_id": 1,
                "last_updated": now,
                "deleted": False,
                "content": s,
            }
            for (t, i, _, _), s in zip(prepared, stored_forms, strict=True)
        ]
        result = await self.conn.execute(
            insert(resource).returning(resource.c.pk, sort_by_parameter_order=True), rows
        )
        pks = [row.pk for row in result]
        await self._after_writes(
            [
                _Write(pk, t, i, 1, now, "create", c, x, s)
                for pk, (t, i, c, x), s in zip(pks, prepared, stored_forms, strict=True)
            ]
        )
        return [StoredResource(t, i, 1, now, False, c) for t, i, c, _ in prepared]

    async def update(
        self, type_: str, id_: str, body: dict[str, Any], *, if_match: int | None = None
    ) -> WriteResult:
        """Store a new version; creates the resource when the id is new (update-as-create)."""
        if not ID_RE.match(id_):
            raise Invalid(f"'{id_}' is not a valid FHIR id", expression=f"{type_}.id")
        if body.get("resourceType") != type_:
            raise Invalid(
                f"resourceType '{body.get('resourceType')}' does not match the URL type '{type_}'",
                expression="resourceType",
            )
        if "id" not in body:
            raise Invalid(
                "an update must carry the resource id in the body", expression=f"{type_}.id"
            )
        if body["id"] != id_:
            raise Invalid(
                f"id '{body['id']}' in the body does not match '{id_}' in the URL",
                expression=f"{type_}.id",
            )
        guard = current_access.get()
        if guard is not None:
            index = self.services.extractor.extract(body)
            await guard.check_write(self.conn, type_, "update", references(index), id_)
        current = await self._lock_current(type_, id_)
        if current is not None:
            self._refuse_append_only(type_)
        if current is None:
            if if_match is not None:
                raise PreconditionFailed(
                    f"{type_}/{id_} does not exist, so version {if_match} cannot match",
                    expression=type_,
                )
            stored = await self._create_with_id(body, type_, id_)
            if stored is not None:
                return WriteResult(stored, True)
            # Another transaction created it in between: fall through and update it.
            current = await self._lock_current(type_, id_)
            assert current is not None
        pk, version = current.pk, current.version_id
        if if_match is not None and if_match != version:
            raise PreconditionFailed(
                f"version {if_match} is stale: {type_}/{id_} is at version {version}",
                expression=type_,
            )
        now = utcnow()
        new_version = version + 1
        content, sealed, index = self._prepare(body, type_, id_, new_version, now)
        result = await self.conn.execute(
            update(resource)
            .where(resource.c.pk == pk, resource.c.version_id == version)
            .values(version_id=new_version, last_updated=now, deleted=False, content=sealed)
        )
        if result.rowcount != 1:  # lost a race that row locking should have prevented
            raise PreconditionFailed(f"{type_}/{id_} changed concurrently; retry", expression=type_)
        await self._clear_index(pk)
        await self._after_write(
            pk, type_, id_, new_version, now, "update", content, index, stored=sealed
        )
        return WriteResult(
            StoredResource(type_, id_, new_version, now, False, content), current.deleted
        )

    async def delete(self, type_: str, id_: str, *, if_match: int | None = None) -> int | None:
        """Delete (keeping history); the new version id, or None when nothing was live."""
        self._refuse_append_only(type_)
        guard = current_access.get()
        if guard is not None:
            await guard.check_write(self.conn, type_, "delete", {}, id_)
        current = await self._lock_current(type_, id_)
        if current is None or current.deleted:
            if if_match is not None:
                raise PreconditionFailed(f"{type_}/{id_} is not live", expression=type_)
            return None
        if if_match is not None and if_match != current.version_id:
            raise PreconditionFailed(
                f"version {if_match} is stale: {type_}/{id_} is at version {current.version_id}",
                expression=type_,
            )
        now = utcnow()
        new_version = current.version_id + 1
        await self.conn.execute(
            update(resource)
            .where(resource.c.pk == current.pk)
            .values(version_id=new_version, last_updated=now, deleted=True, content=None)
        )
        await self._clear_index(current.pk)
        await self._after_write(current.pk, type_, id_, new_version, now, "delete", None, None)
        return int(new_version)

    # -- internals ---------------------------------------------------------------------

    def _refuse_append_only(self, type_: str) -> None:
        """Append-only types: inside a FHIR request, never changed or deleted once stored."""
        if type_ in self.services.hooks.append_only and touched.get() is not None:
            raise Forbidden(
                f"{type_} resources are append-only: once stored they are never changed or "
                "deleted through the API"
            )

    async def _lock_current(self, type_: str, id_: str) -> Any:
        stmt = _CURRENT.where(resource.c.type == type_, resource.c.id == id_)
        if self.services.is_postgres:
            # Row lock: concurrent updates of one resource queue up instead of losing one.
            stmt = stmt.with_for_update()
        return (await self.conn.execute(stmt)).first()

    async def _create_with_id(
        self, body: dict[str, Any], type_: str, id_: str
    ) -> StoredResource | None:
        if not self.services.is_postgres:
            return await self.create(body, id_=id_)
        try:
            async with self.conn.begin_nested():
                return await self.create(body, id_=id_)
        except IntegrityError:
            return None

    def _prepare(
        self, body: dict[str, Any], type_: str, id_: str, version: int, now: datetime
    ) -> tuple[str, str, ResourceIndex]:
        """Validate, stamp id and meta, serialise once and extract the search index.

        Returns the JSON text (plaintext), the text to store and the index values, which
        come from the protector's index form when it sealed anything.
        """
        issues = self.services.validator.validate(body, resource_type=type_)
        errors = [i for i in issues if i.severity in ("error", "fatal")]
        if errors:
            raise Invalid(
                errors[0].diagnostics,
                issues=[
                    OutcomeIssue(i.severity, i.code, i.diagnostics, i.expression) for i in errors
                ],
            )
        meta = dict(body.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = fhir_instant(now)
        stamped: dict[str, Any] = {"resourceType": type_, "id": id_, "meta": meta}
        for key, value in body.items():
            if key not in stamped:
                stamped[key] = value
        for check in self.services.hooks.checks.get(type_, ()):
            check(stamped)
        content = jsonio.dumps(stamped)
        protector = self.services.protector
        sealed = protector.seal(stamped, content) if protector is not None else None
        if sealed is None:
            return content, content, self.services.extractor.extract(stamped)
        return content, sealed.stored, self.services.extractor.extract(sealed.indexed)

    async def _clear_index(self, pk: int) -> None:
        for table in INDEX_TABLES.values():
            await self.conn.execute(delete(table).where(table.c.res_pk == pk))

    async def _after_write(
        self,
        pk: int,
        type_: str,
        id_: str,
        version: int,
        now: datetime,
        action: str,
        content: str | None,
        index: ResourceIndex | None,
        *,
        stored: str | None = None,
    ) -> None:
        await self._after_writes(
            [_Write(pk, type_, id_, version, now, action, content, index, stored)]
        )

    async def _after_writes(self, writes: list[_Write]) -> None:
        """History rows, index rows and outbox events of several writes: one statement each."""
        await self.conn.execute(
            insert(resource_history),
            [
                {
                    "type": w.type_,
                    "id": w.id_,
                    "version_id": w.version,
                    "last_updated": w.now,
                    "action": w.action,
                    "content": w.content if w.stored is None else w.stored,
                }
                for w in writes
            ],
        )
        by_table: dict[str, list[dict[str, Any]]] = {kind: [] for kind in INDEX_TABLES}
        for w in writes:
            if w.index is not None:
                for kind, rows in index_rows(w.pk, w.type_, w.index).items():
                    by_table[kind].extend(rows)
        for kind, rows in by_table.items():
            if rows:
                await self.conn.execute(insert(INDEX_TABLES[kind]), rows)
        await self.conn.execute(
            insert(outbox),
            [
                {
                    "created_at": w.now,
                    "resource_type": w.type_,
                    "resource_id": w.id_,
                    "version_id": w.version,
                    "action": w.action,
                }
                for w in writes
            ],
        )
        for w in writes:
            note_touched(w.type_, w.id_, w.content)
        after = self.services.hooks.after
        if after:
            for w in writes:
                for hook in after.get(w.type_, ()):
                    await hook(self.conn, w.type_, w.id_, w.action, w.content)
        batch_hooks = self.services.hooks.after_batch
        if batch_hooks:
            done = [(w.type_, w.id_, w.action, w.content) for w in writes]
            for batch_hook in batch_hooks:
                await batch_hook(self.conn, done)


@dataclass(frozen=True, slots=True)
class _Write:
    """One stored version, for the rows that follow it (history, index, outbox)."""

    pk: int
    type_: str
    id_: str
    version: int
    now: datetime
    action: str
    content: str | None
    index: ResourceIndex | None
    stored: str | None = None  # the protected form of ``content``, when it differs


def _resource_type(body: dict[str, Any]) -> str:
    type_ = body.get("resourceType")
    if not isinstance(type_, str):
        raise Invalid(
            "the body is not a FHIR resource: resourceType is missing", expression="resourceType"
        )
    return type_


def references(index: ResourceIndex) -> dict[str, set[str]]:
    """The local references of an index by parameter code (for access checks)."""
    found: dict[str, set[str]] = {}
    for code, values in index.values.items():
        for value in values:
            if isinstance(value, ReferenceValue) and value.target_type and value.target_id:
                found.setdefault(code, set()).add(f"{value.target_type}/{value.target_id}")
    return found


def index_rows(pk: int, type_: str, index: ResourceIndex) -> dict[str, list[dict[str, Any]]]:
    """The rows to insert into each ``idx_*`` table for one resource's index values."""
    return search_rows.index_rows(pk, type_, index)


async def advisory_lock(conn: AsyncConnection, key: str, *, is_postgres: bool) -> None:
    """Serialise transactions that share ``key`` (conditional creates) until commit."""
    if is_postgres:
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})
    # SQLite: write transactions are already serialised by Database.write.


__all__ = ["Conflict", "EngineServices", "Repository", "WriteResult", "advisory_lock", "new_id"]
