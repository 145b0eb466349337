"""Access policies applied inside the engine (issue 4): who may see and change what.

Public API for other modules:

- :func:`may_read` — whether a principal may read one resource (used e.g. before a
  subscription notification or an in-app message carries a resource to its owner).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.hooks import current_access

if TYPE_CHECKING:
    from smartmed.access.guard import AccessControl
    from smartmed.fhir.context import FhirEngine
    from smartmed.identity.principal import Principal


def _reserve_audit_ids(body: dict[str, Any]) -> None:
    from smartmed.fhir.errors import Forbidden
    from smartmed.fhir.hooks import touched

    if str(body.get("id", "")).startswith("audit-") and touched.get() is not None:
        raise Forbidden("AuditEvent ids 'audit-…' are the platform's own audit trail")


def install_access(engine: FhirEngine, definitions: Path) -> AccessControl:
    """Compile the configured policy onto ``engine`` and keep grants in step with writes."""
    from smartmed.access.guard import AccessControl
    from smartmed.access.policy import load_policy
    from smartmed.access.policy_store import attach

    shipped = load_policy(engine.settings.access_policy_file)
    control = AccessControl(shipped, definitions)
    # Rights edited by administrators (stored versions) win over the file's: applied
    # before the first request and followed every few seconds (docs/access.md).
    attach(control, engine.db, shipped)
    control.deriver.install(engine.services.hooks)
    # AuditEvents are append-only, and the ids of the platform's own copies of its
    # hash-chained log ("audit-<seq>") are reserved (docs/audit.md); other systems may
    # still record their own AuditEvents.
    engine.services.hooks.append_only.add("AuditEvent")
    engine.services.hooks.add_check("AuditEvent", _reserve_audit_ids)
    engine.access = control
    return control


async def may_read(
    engine: FhirEngine, conn: AsyncConnection, principal: Principal | None, resource: dict[str, Any]
) -> bool:
    """Whether ``principal`` may read ``resource`` (None: the platform itself, always).

    Its SMART scopes must allow reading the type, and the access policy the resource.
    """
    if principal is None:
        return True
    from smartmed.access.policy_store import refresh

    await refresh(engine)  # outside a request (workers): the newest stored rights too
    type_ = str(resource.get("resourceType", ""))
    id_ = str(resource.get("id", ""))
    if not principal.scopes.allows(type_, "r"):
        return False
    control: AccessControl | None = engine.access
    guard = control.guard_for(principal) if control is not None else None
    if guard is None:
        return True
    from smartmed.fhir.errors import Forbidden

    reset = current_access.set(None)
    try:
        await guard.check_read(conn, type_, id_)
    except Forbidden:
        return False
    finally:
        current_access.reset(reset)
    return True
