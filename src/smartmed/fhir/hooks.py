"""Seams through which modules plug into the generic engine: audit sink, write hooks.

The engine (``fhir/``) knows nothing about how audit records are stored: it hands an
:class:`AuditRecord` to whatever :class:`AuditSink` the application installed on
``FhirEngine.audit`` (``smartmed.audit`` in the platform; ``None`` in bare tests).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One access or change, as FHIR AuditEvent needs it (who, what, when, where, why).

    ``action`` is AuditEvent.action (C R U D E); ``subtype`` a FHIR restful-interaction
    code (read, vread, search-type, create, update, patch, delete, history-instance,
    operation, transaction, batch) or a platform event (login, login-failed, logout,
    break-glass, export, consent). ``outcome`` is AuditEvent.outcome: 0 success, 4 minor
    failure (denied, not found), 8 serious failure, 12 major failure.
    """

    action: str
    subtype: str
    outcome: str
    recorded: datetime
    agent: str | None = None  # FHIR identity of the person ("Practitioner/1") if any
    account: str | None = None  # account id (or the client id for a system client)
    client_id: str | None = None
    roles: tuple[str, ...] = ()
    source_ip: str | None = None
    purpose_of_use: str | None = None  # v3 PurposeOfUse code: TREAT, ETREAT, HOPERAT, ...
    entities: tuple[str, ...] = ()  # references read or written ("Observation/7")
    patients: tuple[str, ...] = ()  # patients whose records were touched ("Patient/3")
    query: str | None = None  # the search query or operation name
    detail: str | None = None  # e.g. the denial reason or the break-the-glass reason
    extra: dict[str, str] = field(default_factory=dict)


class AuditSink(Protocol):
    """Where the engine sends audit records; must never lose one that it accepted."""

    async def record(self, record: AuditRecord) -> None: ...


# The authenticated caller of the request being served (an identity ``Principal``), or
# None for anonymous/internal calls. Set by the identity middleware; read by write hooks.
current_principal: ContextVar[Any | None] = ContextVar("smartmed_principal", default=None)

# Raise ``Invalid`` (or another FhirError) to refuse a resource before it is stored.
ResourceCheck = Callable[[dict[str, Any]], None]
# Runs inside the writing transaction after the row is stored: (conn, type, id, action,
# stored JSON or None for a deletion). Raising aborts the whole write.
AfterWrite = Callable[[AsyncConnection, str, str, str, str | None], Awaitable[None]]
AfterBatch = Callable[[AsyncConnection, list[tuple[str, str, str, str | None]]], Awaitable[None]]


@dataclass(slots=True)
class WriteHooks:
    """Per-resource-type checks and after-write callbacks that modules register.

    Used for rules the generic validator cannot know (a Subscription's endpoint must be
    an allowed host) and for bookkeeping in the same transaction (who owns a
    Subscription). Types without hooks cost one dict lookup per write.
    """

    checks: dict[str, list[ResourceCheck]] = field(default_factory=dict)
    after: dict[str, list[AfterWrite]] = field(default_factory=dict)
    # Called once per batch of writes with [(type, id, action, content)], for hooks whose
    # work is cheaper in one statement (access grants during a bulk load).
    after_batch: list[AfterBatch] = field(default_factory=list)
    # Append-only types (the audit trail): a FHIR request may add one, never change or
    # delete a stored one.
    append_only: set[str] = field(default_factory=set)

    def add_check(self, type_: str, check: ResourceCheck) -> None:
        self.checks.setdefault(type_, []).append(check)

    def add_after_write(self, type_: str, hook: AfterWrite) -> None:
        self.after.setdefault(type_, []).append(hook)

    def add_after_batch(self, hook: AfterBatch) -> None:
        if hook not in self.after_batch:
            self.after_batch.append(hook)


class AccessGuard(Protocol):
    """The access policy of one request's caller, consulted by every engine read and write.

    Installed per request in :data:`current_access` (``smartmed.access``); absent for the
    platform itself and for unrestricted system clients. SQL conditions take the alias of
    the ``resource`` table being filtered; ``None`` means no restriction.
    """

    async def ready(self, conn: AsyncConnection) -> None:
        """Resolve what the conditions need (the caller's teams, roles); idempotent."""

    def search_condition(self, res: Any, type_: str) -> Any:
        """Restriction for a search of ``type_`` (raise Forbidden if it may not search it)."""

    def read_condition(self, res: Any, type_: str) -> Any:
        """Restriction for reading ``type_`` (raise Forbidden if it may not read it)."""

    def denied_read(self, type_: str, id_: str) -> Exception:
        """The error for a read the restriction refused."""

    def any_condition(self, res: Any) -> Any:
        """Restriction for resources of any type (includes, history, $everything)."""

    def check_summary(self, type_: str, summary: str | None) -> None:
        """Refuse searches the caller may only count (aggregate-only roles)."""

    def suppress_total(self, type_: str, total: int) -> int | None:
        """The total to report (None: suppressed as a small count)."""

    async def check_read(self, conn: AsyncConnection, type_: str, id_: str) -> None:
        """Raise Forbidden unless the caller may read this resource."""

    async def check_write(
        self,
        conn: AsyncConnection,
        type_: str,
        interaction: str,
        refs: dict[str, set[str]],
        id_: str | None = None,
    ) -> None:
        """Raise Forbidden unless the caller may make this write.

        ``refs`` are the local references of the new content by search parameter
        (``{"subject": {"Patient/3"}}``); empty for a deletion."""

    def history_condition(self, type_column: Any, id_column: Any) -> Any:
        """Restriction on history rows, by the type and id columns of the history table."""


current_access: ContextVar[AccessGuard | None] = ContextVar("smartmed_access", default=None)


# The resources ("Type/id", JSON or None) a FHIR request has read or written, for its
# audit record.
touched: ContextVar[list[tuple[str, str | None]] | None] = ContextVar(
    "smartmed_touched", default=None
)


def note_touched(type_: str, id_: str, content: str | None = None) -> None:
    """Record that the current request disclosed or changed ``type_/id_``."""
    found = touched.get()
    if found is not None:
        found.append((f"{type_}/{id_}", content))
