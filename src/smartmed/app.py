"""Builds the ASGI application: the FHIR API, health and metrics endpoints."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import structlog
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from smartmed.access.policy_store import PolicyRefreshMiddleware
from smartmed.access.router import build_access_router
from smartmed.config import Settings, get_settings
from smartmed.fhir.api import build_router
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError, OutcomeIssue, operation_outcome
from smartmed.fhir.request import FHIR_JSON
from smartmed.fhir.storage.migrate import is_current, migrate
from smartmed.identity.middleware import FhirAuthMiddleware
from smartmed.identity.router import build_identity_router
from smartmed.logging import configure_logging
from smartmed.metrics import MetricsMiddleware, metrics_endpoint
from smartmed.portal import install_portal
from smartmed.portal.errors import error_page, is_portal_path

log = structlog.get_logger("smartmed.app")

_HTTP_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}


def _outcome(status: int, code: str, text_: str, expression: str | None = None) -> Response:
    body = operation_outcome([OutcomeIssue("error", code, text_, expression)])
    return Response(orjson.dumps(body), status, media_type=FHIR_JSON)


class SecurityHeaders:
    """Baseline security headers on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))  # type: ignore[call-overload]
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)  # type: ignore[arg-type]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The smartmed ASGI application for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = FhirEngine.build(settings)
        if not await is_current(engine.db):
            await migrate(engine.db)
            log.info("database migrated", dialect=engine.db.url.get_backend_name())
        app.state.fhir = engine
        app.state.started = time.time()
        from smartmed import audit

        app.state.audit = audit.install(engine) if settings.audit_enabled else None
        from smartmed.jobs import runtime as jobs_runtime

        app.state.jobs = await jobs_runtime.start(engine)
        yield
        await jobs_runtime.stop(app.state.jobs)
        if app.state.audit is not None:
            await audit.shutdown(engine, app.state.audit)
        await engine.db.dispose()

    app = FastAPI(
        title="smartmed",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(FhirAuthMiddleware)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MetricsMiddleware)

    @app.exception_handler(FhirError)
    async def fhir_error(_request: Request, exc: FhirError) -> Response:
        return Response(
            orjson.dumps(operation_outcome(exc.issues)),
            exc.status,
            headers=getattr(exc, "headers", None),
            media_type=FHIR_JSON,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if is_portal_path(request.url.path):  # portal pages: localized HTML (docs/portal.md)
            return error_page(request, exc.status_code)
        code = _HTTP_CODES.get(exc.status_code, "processing")
        return _outcome(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        if is_portal_path(request.url.path):
            return error_page(request, 400)
        return _outcome(400, "invalid", f"invalid request: {exc.errors()}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", error_type=type(exc).__name__)
        if is_portal_path(request.url.path):
            return error_page(request, 500)
        return _outcome(500, "exception", "internal error; the request was not applied")

    # Routes are tried in order, a few microseconds each (a probe at the end of the list
    # cost 0.6 ms of matching): the probes first, then the FHIR API, the busiest by far.
    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        engine: FhirEngine = request.app.state.fhir
        try:
            async with engine.db.read() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return _outcome(503, "transient", f"database unavailable: {type(exc).__name__}")
        return Response(b'{"status":"ready"}', 200, media_type="application/json")

    app.include_router(build_router())
    app.include_router(build_identity_router())  # its smart-configuration is no FHIR type
    app.include_router(build_access_router())
    install_portal(app, settings)  # web portal at / (docs/portal.md)
    from smartmed.portal import csrf_protect
    from smartmed.portal.admin import rights

    app.include_router(rights.build_router(), dependencies=[Depends(csrf_protect)])
    from smartmed.jobs.admin import build_admin_router
    from smartmed.jobs.websocket import build_websocket_router

    app.include_router(build_admin_router())
    app.include_router(build_websocket_router())
    from smartmed.notify.router import build_notify_router

    app.include_router(build_notify_router())
    from smartmed.payments import install_payments

    install_payments(app)  # /api/payments, payer pages, sandbox provider (docs/payments.md)
    from smartmed.contracting import install as install_contracting

    install_contracting(app)  # family-doctor contracting (docs/contracting.md)

    # Outermost: the newest stored access rights before any guard is built (docs/access.md).
    app.add_middleware(PolicyRefreshMiddleware)
    return app
