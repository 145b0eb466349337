"""The staff directory: institutions, colleagues and teams, read-only, for every staff role."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from smartmed.portal.admin.organizations import org_list
from smartmed.portal.admin.practitioners import practitioner_list
from smartmed.portal.admin.teams import team_list
from smartmed.portal.nav import require


def build_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/directory/organizations")
    async def organizations(request: Request) -> Response:
        require(request, "directory")
        return await org_list(
            request, department=False, base="/directory/organizations", editable=False
        )

    @router.get("/directory/practitioners")
    async def practitioners(request: Request) -> Response:
        require(request, "directory")
        return await practitioner_list(request, "/directory/practitioners", editable=False)

    @router.get("/directory/teams")
    async def teams(request: Request) -> Response:
        require(request, "directory")
        return await team_list(request, "/directory/teams", editable=False)

    return router
