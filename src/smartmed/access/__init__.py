"""Access policies applied inside the engine (issue 4): who may see and change what.

Public API for other modules:

- :func:`may_read` — whether a principal may read one resource (used e.g. before a
  subscription notification or an in-app message carries a resource to its owner).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

if TYPE_CHECKING:
    from smartmed.fhir.context import FhirEngine
    from smartmed.identity.principal import Principal


async def may_read(
    engine: FhirEngine, conn: AsyncConnection, principal: Principal | None, resource: dict[str, Any]
) -> bool:
    """Whether ``principal`` may read ``resource`` (None: the platform itself, always)."""
    if principal is None:
        return True
    return principal.scopes.allows(str(resource.get("resourceType", "")), "r")
