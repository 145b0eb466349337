"""Which organisations an administrator may change.

A platform administrator may change any; an institution administrator only the
organisations their role is held in and everything below them (``partOf``). Lists show
everything (the directory is not secret inside the platform); writes are checked.
"""

from __future__ import annotations

from fastapi import Request

from smartmed.identity.principal import Role
from smartmed.portal import fhirdata
from smartmed.portal.session import get_session


async def org_tree(request: Request) -> dict[str, str | None]:
    """Organization id -> parent id, for every live Organization."""
    items = await fhirdata.search_all(request, "Organization", [("_elements", "partOf")], 5000)
    tree: dict[str, str | None] = {}
    for org in items:
        parent = (org.get("partOf") or {}).get("reference", "")
        tree[org["id"]] = parent.split("/", 1)[1] if parent.startswith("Organization/") else None
    return tree


async def writable_orgs(request: Request) -> set[str] | None:
    """Ids the active role may change; None means every organisation."""
    session = get_session(request)
    if session.account is None:
        return set()
    if session.active_role == Role.PLATFORM_ADMIN:
        return None
    roots = {
        r.organization.split("/", 1)[1]
        for r in session.account.roles
        if r.role == Role.INSTITUTION_ADMIN and r.organization and "/" in r.organization
    }
    tree = await org_tree(request)
    allowed = set(roots)
    changed = True
    while changed:
        changed = False
        for child, parent in tree.items():
            if parent in allowed and child not in allowed:
                allowed.add(child)
                changed = True
    return allowed


def may_write(allowed: set[str] | None, org_id: str | None) -> bool:
    return allowed is None or (org_id is not None and org_id in allowed)
