"""The server-rendered login page (Jinja2): password step, TOTP step, CSRF, cookies.

A minimal form for the authorization endpoint; the full portal comes later. The CSRF
token is a double submit: a random value in a ``SameSite=Strict`` cookie and its HMAC in
the form.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from smartmed.identity.crypto import new_token, sign, verify_signed
from smartmed.identity.service import Identity

SESSION_COOKIE = "smartmed_session"
CSRF_COOKIE = "smartmed_csrf"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_templates = Environment(
    loader=PackageLoader("smartmed.identity", "templates"), autoescape=select_autoescape()
)


def page(
    request: Request,
    identity: Identity,
    *,
    step: str,
    next_query: str,
    error: str | None = None,
    client_name: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    value = request.cookies.get(CSRF_COOKIE) or new_token(16)
    html = _templates.get_template("login.html").render(
        step=step,
        action="/oauth/totp" if step == "totp" else "/oauth/login",
        csrf=sign(identity.secret, value),
        next=next_query,
        error=error,
        client_name=client_name,
    )
    response = HTMLResponse(html, status, headers=NO_STORE)
    response.set_cookie(
        CSRF_COOKIE, value, httponly=True, secure=True, samesite="strict", path="/oauth"
    )
    return response


def csrf_ok(request: Request, identity: Identity, form: dict[str, str]) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    value = verify_signed(identity.secret, form.get("csrf", ""))
    return bool(cookie) and value == cookie


def to_authorize(next_query: str) -> RedirectResponse:
    # Only ever back to our own authorize endpoint: `next` is a query string, never a URL.
    query = urlencode(parse_qsl(next_query, keep_blank_values=True))
    return RedirectResponse(f"/oauth/authorize?{query}", 303, headers=NO_STORE)
