"""Rights per role edited by administrators: stored versions, applied in every process.

The access policy document (``default_policy.json``) stays the source of the categories,
the relations (whose records a role reaches) and the grant rules. What administrators
edit in the portal is the **rights matrix**: per role, per category, the SMART letters
``c r u d s``. Each save is a new row of ``access_policy_version`` holding the whole
matrix (a snapshot, so any version can be read on its own), with its author, time and
reason; the newest row is the matrix in force. Restoring the shipped default is a new
version equal to the file's matrix.

- At start-up the newest stored version wins over the file: :class:`PolicySync` applies it
  before the first request is served (:class:`PolicyRefreshMiddleware`).
- Every process checks ``max(version)`` at most once per :data:`CHECK_SECONDS` (one small
  indexed query; none on the other requests) and applies a newer version with
  :meth:`AccessControl.set_policy` — so several app processes on PostgreSQL follow an
  edit within a few seconds. The process that saves applies it at once.
- Two administrators editing at once: a save names the version it was based on and is
  refused (:class:`PolicyConflict`) when another was saved meanwhile.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from starlette.types import ASGIApp, Receive, Scope, Send

from smartmed.access.policy import LETTERS, Category, Policy
from smartmed.fhir.model import utcnow
from smartmed.fhir.storage.database import Database
from smartmed.fhir.storage.tables import metadata

if TYPE_CHECKING:
    from smartmed.access.guard import AccessControl

log = structlog.get_logger("smartmed.access")

# Seconds between two checks for a newer stored version, per process.
CHECK_SECONDS = 2.0
CATEGORIES: tuple[Category, ...] = ("clinical", "directory", "audit", "system", "other")
ORDER = "cruds"
# Who may edit the rights: roles whose policy lets them update the system category.
ADMINISTER: tuple[Category, str] = ("system", "u")

Rights = dict[str, dict[Category, str]]

access_policy_version = sa.Table(
    "access_policy_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    # {"role": {"category": "letters"}}: the whole matrix of this version.
    sa.Column("rights", sa.Text, nullable=False),
    sa.Column("author", sa.String(200), nullable=False),  # account id
    sa.Column("author_name", sa.String(200), nullable=True),  # account name when saved
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("restored_default", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
)

# The policy in force for the request being served (set by PolicyRefreshMiddleware), for
# code that decides by the policy without a guard (the portal's navigation).
policy_in_force: ContextVar[Policy | None] = ContextVar("smartmed_policy", default=None)


class PolicyConflict(Exception):
    """Another version was saved since the one an edit was based on."""


@dataclass(frozen=True, slots=True)
class StoredVersion:
    version: int
    rights: Rights
    author: str
    author_name: str | None
    reason: str
    restored_default: bool
    created_at: datetime


def letters(value: str) -> str:
    """Letters in the canonical order ``cruds``, each once (unknown letters kept last,
    for validation to name them)."""
    known = "".join(ch for ch in ORDER if ch in value)
    return known + "".join(sorted(set(value) - LETTERS))


def rights_of(policy: Policy) -> Rights:
    """The rights matrix of ``policy`` (empty categories left out)."""
    return {
        role: {c: letters(p) for c, p in rp.permissions.items() if p}
        for role, rp in policy.roles.items()
    }


def apply_rights(policy: Policy, rights: Rights) -> Policy:
    """``policy`` with each role's permissions replaced by ``rights`` (validated).

    Roles the matrix does not name keep the document's permissions; roles the document
    does not know are ignored (their relations and grant rules live in the document)."""
    data = policy.model_dump(by_alias=True)
    for role, body in data["roles"].items():
        if role in rights:
            body["permissions"] = {c: p for c, p in rights[role].items() if p}
    return Policy.model_validate(data)


def changes(before: Rights, after: Rights) -> list[str]:
    """What an edit changes, one ``role.category: old → new`` line per changed cell."""
    out = []
    for role in sorted(set(before) | set(after)):
        for category in CATEGORIES:
            old = before.get(role, {}).get(category, "")
            new = after.get(role, {}).get(category, "")
            if old != new:
                out.append(f"{role}.{category}: {old or '-'} → {new or '-'}")
    return out


def administrators(policy: Policy) -> list[str]:
    """Roles that may edit the rights under ``policy``."""
    category, letter = ADMINISTER
    return sorted(r for r, rp in policy.roles.items() if rp.allows(category, letter))


def _row(row: Any) -> StoredVersion:
    raw = orjson.loads(row.rights)
    return StoredVersion(
        version=int(row.version),
        rights={str(r): {c: str(p) for c, p in cats.items()} for r, cats in raw.items()},
        author=str(row.author),
        author_name=row.author_name,
        reason=str(row.reason),
        restored_default=bool(row.restored_default),
        created_at=row.created_at,
    )


class PolicyStore:
    """Versions of the rights matrix in the database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def latest_version(self) -> int:
        """The newest version number (0: none stored, the file is in force)."""
        t = access_policy_version.c
        async with self.db.read() as conn:
            found = await conn.scalar(sa.select(sa.func.max(t.version)))
        return int(found or 0)

    async def latest(self) -> StoredVersion | None:
        t = access_policy_version.c
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    sa.select(access_policy_version).order_by(t.version.desc()).limit(1)
                )
            ).first()
        return None if row is None else _row(row)

    async def history(self, limit: int = 50) -> list[StoredVersion]:
        """The newest ``limit`` versions, newest first."""
        t = access_policy_version.c
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(access_policy_version).order_by(t.version.desc()).limit(limit)
                )
            ).all()
        return [_row(r) for r in rows]

    async def save(
        self,
        rights: Rights,
        *,
        base_version: int,
        author: str,
        author_name: str | None,
        reason: str,
        restored_default: bool = False,
    ) -> StoredVersion:
        """Store ``rights`` as the version after ``base_version``; :class:`PolicyConflict`
        when another version was saved since (also when two saves race: the version is the
        primary key)."""
        t = access_policy_version.c
        now = utcnow()
        try:
            async with self.db.write() as conn:
                current = int(await conn.scalar(sa.select(sa.func.max(t.version))) or 0)
                if current != base_version:
                    raise PolicyConflict(f"version {current} was saved after {base_version}")
                await conn.execute(
                    access_policy_version.insert().values(
                        version=current + 1,
                        rights=orjson.dumps(rights, option=orjson.OPT_SORT_KEYS).decode(),
                        author=author,
                        author_name=author_name,
                        reason=reason,
                        restored_default=restored_default,
                        created_at=now,
                    )
                )
        except IntegrityError as exc:
            raise PolicyConflict(f"version {base_version + 1} was saved meanwhile") from exc
        return StoredVersion(
            current + 1, rights, author, author_name, reason, restored_default, now
        )


class PolicySync:
    """Keeps one process's :class:`AccessControl` on the newest stored version."""

    def __init__(
        self,
        control: AccessControl,
        store: PolicyStore,
        shipped: Policy,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.control = control
        self.store = store
        self.shipped = shipped  # the document from the file: relations, grants, defaults
        self.check_seconds = check_seconds
        self.version = 0  # the stored version in force (0: the file's rights)
        self.checked = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self, *, force: bool = False) -> None:
        """Apply a newer stored version, checking at most every ``check_seconds``."""
        if not force and time.monotonic() - self.checked < self.check_seconds:
            return
        async with self._lock:
            if not force and time.monotonic() - self.checked < self.check_seconds:
                return
            try:
                newest = await self.store.latest_version()
            except (OperationalError, ProgrammingError) as exc:
                if access_policy_version.name not in str(exc):
                    raise  # never serve on rights that may have been edited away
                # No table yet (a database not migrated): the file's rights apply.
                self.checked = time.monotonic()
                return
            if newest != self.version:
                stored = await self.store.latest()
                if stored is not None:
                    self.apply(stored)
            self.checked = time.monotonic()

    def apply(self, stored: StoredVersion) -> None:
        if stored.version < self.version:
            return
        self.control.set_policy(apply_rights(self.shipped, stored.rights))
        self.version = stored.version
        log.info("access rights applied", version=stored.version)


_syncs: weakref.WeakKeyDictionary[AccessControl, PolicySync] = weakref.WeakKeyDictionary()


def attach(control: AccessControl, db: Database, shipped: Policy) -> PolicySync:
    """Keep ``control`` on the stored rights of ``db`` (called by ``install_access``)."""
    sync = PolicySync(control, PolicyStore(db), shipped)
    _syncs[control] = sync
    return sync


def sync_of(control: AccessControl | None) -> PolicySync | None:
    return None if control is None else _syncs.get(control)


async def refresh(engine: Any) -> None:
    """Bring ``engine``'s policy up to date (cheap unless the check is due)."""
    sync = sync_of(getattr(engine, "access", None))
    if sync is not None:
        await sync.refresh()


class PolicyRefreshMiddleware:
    """Before each request: the newest stored rights (checked every few seconds), and the
    policy in force in :data:`policy_in_force`. Outermost, so every guard sees it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        engine = getattr(getattr(scope.get("app"), "state", None), "fhir", None)
        control = getattr(engine, "access", None)
        reset = None
        if control is not None:
            await refresh(engine)
            reset = policy_in_force.set(control.policy)
        try:
            await self.app(scope, receive, send)
        finally:
            if reset is not None:
                policy_in_force.reset(reset)
