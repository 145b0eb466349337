"""The portal's error pages: unknown URLs, refusals and server errors as localized HTML.

The application's handlers (``app.py``) ask :func:`is_portal_path` first: the FHIR API,
``/api``, the OAuth endpoints and the machine endpoints keep answering with JSON
(OperationOutcome); everything else is the portal, which answers with ``error.html`` in
the user's language and the right status.
"""

from __future__ import annotations

import structlog
from fastapi import Request
from fastapi.responses import HTMLResponse, Response

log = structlog.get_logger("smartmed.portal")

# Paths that are not pages: they answer machines, in JSON.
API_ROOTS = (
    "/fhir",
    "/api",
    "/oauth",
    "/.well-known",
    "/static",
    "/metrics",
    "/healthz",
    "/readyz",
    "/ws",
)


def N_(text: str) -> str:  # noqa: N802
    """Marks a message for extraction; translated when shown."""
    return text


MESSAGES = {
    400: (N_("Bad request"), N_("The request could not be understood.")),
    403: (N_("Not allowed"), N_("Your current role may not use this page.")),
    404: (
        N_("Page not found"),
        N_("There is no page at this address. Check the link, or start again from the home page."),
    ),
    405: (N_("Not allowed"), N_("This page cannot be used that way.")),
    500: (
        N_("Something went wrong"),
        N_(
            "The page could not be shown because of an error on the server. "
            "Nothing was changed; please try again later."
        ),
    ),
}


def is_portal_path(path: str) -> bool:
    """Whether ``path`` belongs to the portal (HTML) rather than an API (JSON)."""
    return not any(path == root or path.startswith(root + "/") for root in API_ROOTS)


def error_page(request: Request, status: int) -> Response:
    """``error.html`` for ``status`` in the request's language (a plain page if even
    rendering fails, e.g. with the database down)."""
    title, message = MESSAGES.get(status, MESSAGES[500 if status >= 500 else 400])
    try:
        from smartmed.portal.render import gettext_for, render

        _ = gettext_for(request)
        return render(request, "error.html", status, title=_(title), message=_(message))
    except Exception:  # noqa: BLE001 - the error page must not fail in turn
        log.exception("error page could not be rendered", status=status)
        return HTMLResponse(
            f"<!doctype html><title>{status}</title><h1>{status}</h1>",
            status,
            headers={"Cache-Control": "no-store"},
        )
