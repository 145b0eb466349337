"""Rendering pages: one Jinja2 environment per locale (autoescape, gettext catalogues)."""

from __future__ import annotations

from datetime import date
from functools import cache
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from smartmed.identity.principal import Role
from smartmed.identity.service import get_identity
from smartmed.portal import i18n
from smartmed.portal.admin import codes
from smartmed.portal.nav import ROLE_LABELS, entries_for
from smartmed.portal.session import csrf_token, get_session

NO_STORE = {"Cache-Control": "no-store"}


@cache
def environment(locale: str) -> Environment:
    env = Environment(
        loader=PackageLoader("smartmed.portal", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(i18n.translations(locale), newstyle=True)  # type: ignore[attr-defined]
    return env


def request_locale(request: Request) -> str:
    """The account's (or the visitor's) chosen language, else Accept-Language, else default."""
    session = get_session(request)
    chosen = i18n.normalize(session.get("lang"))
    if chosen:
        return chosen
    found = i18n.from_accept_language(request.headers.get("accept-language"))
    if found:
        return found
    settings = get_identity(request.app).settings
    return i18n.normalize(settings.portal_default_locale) or "zh_CN"


def gettext_for(request: Request) -> Any:
    """``_`` for messages built in Python (flash texts, validation errors)."""
    return i18n.translations(request_locale(request)).gettext


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` in the request's language with the shell's context."""
    locale = request_locale(request)
    session = get_session(request)
    identity = get_identity(request.app)
    account = session.account
    role = session.active_role
    held = sorted({r.role for r in account.roles}, key=list(Role).index) if account else []
    entries = entries_for(role)
    groups: dict[str, list[Any]] = {}
    for entry in entries:
        groups.setdefault(entry.group, []).append(entry)
    base = {
        "request": request,
        "locale": locale,
        "lang_tag": i18n.TAGS[locale],
        "fmt": i18n.Formatter(locale),
        "csrf": csrf_token(identity.secret, session),
        "account": account,
        "role": role,
        "roles_held": held,
        "nav_groups": groups,
        "nav_entries": entries,
        "is_staff": role is not None and role not in (Role.RESIDENT, Role.FAMILY_REPRESENTATIVE),
        "path": request.url.path,
        "htmx": request.headers.get("hx-request") == "true",
        "role_labels": ROLE_LABELS,
        "flash": session.pop("flash"),
        "now": date.today(),
        "codes": codes,
    }
    html = environment(locale).get_template(template).render({**base, **context})
    return HTMLResponse(html, status, headers=NO_STORE)


def flash(request: Request, message: str) -> None:
    """A message shown once on the next page (already in the user's language)."""
    get_session(request).set("flash", message)
