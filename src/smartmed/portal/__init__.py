"""The web portal: one server-rendered site for residents, staff and administrators.

Jinja2 pages with htmx (and Alpine.js for a little client state), Bootstrap, ECharts;
every front-end file is served by the application itself (``assets.py``). Login is the
platform's own OpenID Connect SSO (``sso.py``); the portal session (``session.py``)
puts the identity :class:`~smartmed.identity.principal.Principal` on
``request.state.principal`` for portal pages and ``/api`` routes. Pages in zh-CN and en
(``i18n.py``, gettext catalogues under ``locale/``). See docs/portal.md.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request, Response

from smartmed.config import Settings
from smartmed.portal.assets import build_assets_router, locate_node_modules
from smartmed.portal.forms import CsrfFailed, csrf_protect
from smartmed.portal.nav import LoginRequired, PageForbidden
from smartmed.portal.session import PortalSessionMiddleware

__all__ = ["PortalSessionMiddleware", "csrf_protect", "install_portal"]


def install_portal(app: FastAPI, settings: Settings) -> None:
    """Mount the portal's routes, static files, session middleware and error pages."""
    from smartmed.portal import audit
    from smartmed.portal.admin import accounts, imports, organizations, practitioners, teams
    from smartmed.portal.directory import build_router as directory_router
    from smartmed.portal.pages import build_shell_router, see_other
    from smartmed.portal.render import gettext_for, render

    app.include_router(build_assets_router(locate_node_modules(settings.portal_assets_dir)))
    protect = [Depends(csrf_protect)]
    app.include_router(build_shell_router(), dependencies=protect)
    for module in (organizations, practitioners, teams, accounts, imports, audit):
        app.include_router(module.build_router(), dependencies=protect)
    app.include_router(directory_router(), dependencies=protect)
    app.add_middleware(PortalSessionMiddleware)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _exc: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.headers.get("hx-request") == "true":
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        from urllib.parse import quote

        return see_other(f"/login?next={quote(target)}")

    @app.exception_handler(PageForbidden)
    async def forbidden(request: Request, _exc: PageForbidden) -> Response:
        _ = gettext_for(request)
        return render(
            request,
            "error.html",
            403,
            title=_("Not allowed"),
            message=_("Your current role may not use this page."),
        )

    @app.exception_handler(CsrfFailed)
    async def csrf_failed(request: Request, _exc: CsrfFailed) -> Response:
        _ = gettext_for(request)
        return render(
            request,
            "error.html",
            403,
            title=_("The form expired"),
            message=_("Please go back, reload the page and try again."),
        )
