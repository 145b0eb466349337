"""Administrators' view of the job queue: list jobs (the dead-letter list) and retry one.

``GET /api/admin/jobs?state=dead`` and ``POST /api/admin/jobs/{id}/retry``, for holders of
the platform-admin or system-admin role (bearer token, or a principal a session
middleware put on ``request.state``); 401 without credentials, 403 for anyone else.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from smartmed.fhir.errors import Conflict, Forbidden, NotFound, Unauthorized
from smartmed.identity.principal import Principal, Role
from smartmed.identity.service import get_identity
from smartmed.jobs.queue import STATES, count_by_state, list_jobs, retry_dead
from smartmed.jobs.tables import job

ADMIN_ROLES = (Role.PLATFORM_ADMIN, Role.SYSTEM_ADMIN)


async def access_admin(request: Request) -> Principal:
    """The caller, if a platform or system administrator; 401/403 otherwise."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("a bearer token is required", error=None)
        principal = await get_identity(request.app).principal(request, token.strip())
    if not any(principal.has_role(role) for role in ADMIN_ROLES):
        raise Forbidden("the job queue is for platform and system administrators")
    return principal


Admin = Annotated[Principal, Depends(access_admin)]


def build_admin_router() -> APIRouter:
    """Routes under ``/api/admin/jobs``."""
    router = APIRouter(prefix="/api/admin/jobs", tags=["admin"])

    @router.get("")
    async def get_jobs(
        request: Request,
        _admin: Admin,
        state: Annotated[str | None, Query(pattern="^(queued|running|done|dead)$")] = None,
        kind: Annotated[str | None, Query(max_length=100)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        async with request.app.state.fhir.db.read() as conn:
            return {
                "jobs": await list_jobs(conn, state=state, kind=kind, limit=limit),
                "counts": await count_by_state(conn),
                "states": list(STATES),
            }

    @router.post("/{job_id}/retry")
    async def retry_job(request: Request, _admin: Admin, job_id: int) -> dict[str, Any]:
        async with request.app.state.fhir.db.write() as conn:
            if await retry_dead(conn, job_id):
                return {"id": job_id, "state": "queued"}
            exists = (
                await conn.execute(
                    job.select().with_only_columns(job.c.state).where(job.c.pk == job_id)
                )
            ).scalar_one_or_none()
        if exists is None:
            raise NotFound(f"no job {job_id}")
        raise Conflict(f"job {job_id} is {exists}, not dead; only dead jobs are retried")

    return router
