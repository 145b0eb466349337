"""The server-rendered login page (Jinja2): password step, TOTP step, CSRF, cookies.

The page looks like the portal (its Bootstrap and ``portal.css``) and speaks its
languages through the portal's Babel catalogue (zh-CN, en): the OIDC ``ui_locales``
parameter of the authorization request when a client sends one, else the language the
account chose in the portal (cookie ``smartmed_lang``, written by the portal's language
switch and at login from the account's FHIR ``communication``), else ``Accept-Language``,
else the portal's default. The messages of the identity router (English texts) are
message ids of that catalogue. The CSRF token is a double submit: a random value in a
``SameSite=Strict`` cookie and its HMAC in the form.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from smartmed.identity.crypto import new_token, sign, verify_signed
from smartmed.identity.service import Identity

SESSION_COOKIE = "smartmed_session"
CSRF_COOKIE = "smartmed_csrf"
# The language chosen in the portal (also read here): a locale name, nothing personal.
LANG_COOKIE = "smartmed_lang"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def N_(text: str) -> str:  # noqa: N802 - the gettext convention: mark now, translate later
    return text


# The identity router's messages on this page (message ids of the portal's catalogue).
MESSAGES = (
    N_("Too many attempts; wait a moment."),
    N_("The form expired; please try again."),
    N_("wrong account name or password"),
    N_("Staff accounts need a second factor (TOTP): ask the security administrator to enrol one."),
    N_("too many failed logins: the account is locked for a while"),
    N_("Please sign in again."),
    N_("That code is not valid."),
)
_LOCKED = re.compile(r"too many failed logins: the account is locked for (\d+) s")


def translate_error(gettext: Callable[[str], str], error: str) -> str:
    """``error`` in the page's language (a message we do not know stays as it is)."""
    locked = _LOCKED.fullmatch(error)
    if locked:
        return gettext("Too many failed logins: the account is locked for %(n)s seconds.") % {
            "n": locked.group(1)
        }
    normalised = " ".join(error.split())
    return gettext(normalised)


def _environment(locale: str) -> Environment:
    from smartmed.portal import i18n  # the portal's catalogues (imported late: no cycle)

    cached = _environments.get(locale)
    if cached is None:
        cached = Environment(
            loader=PackageLoader("smartmed.identity", "templates"),
            autoescape=select_autoescape(default=True),
            extensions=["jinja2.ext.i18n"],
            trim_blocks=True,
            lstrip_blocks=True,
        )
        cached.install_gettext_translations(i18n.translations(locale), newstyle=True)  # type: ignore[attr-defined]
        _environments[locale] = cached
    return cached


_environments: dict[str, Environment] = {}


def page_locale(request: Request, identity: Identity, next_query: str) -> str:
    """The page's language: ``ui_locales``, the portal's choice, Accept-Language, default."""
    from smartmed.portal import i18n

    params = dict(parse_qsl(next_query))
    for tag in params.get("ui_locales", "").split():
        found = i18n.normalize(tag)
        if found:
            return found
    return (
        i18n.normalize(request.cookies.get(LANG_COOKIE))
        or i18n.from_accept_language(request.headers.get("accept-language"))
        or i18n.normalize(identity.settings.portal_default_locale)
        or "zh_CN"
    )


def _with_locale(next_query: str, locale: str) -> str:
    pairs = [(k, v) for k, v in parse_qsl(next_query, keep_blank_values=True) if k != "ui_locales"]
    return urlencode([*pairs, ("ui_locales", locale.replace("_", "-"))])


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
    from smartmed.portal import i18n

    locale = page_locale(request, identity, next_query)
    gettext = i18n.translations(locale).gettext
    value = request.cookies.get(CSRF_COOKIE) or new_token(16)
    html = (
        _environment(locale)
        .get_template("login.html")
        .render(
            step=step,
            action="/oauth/totp" if step == "totp" else "/oauth/login",
            csrf=sign(identity.secret, value),
            next=next_query,
            error=translate_error(gettext, error) if error else None,
            client_name=client_name,
            locale=locale,
            lang_tag=i18n.TAGS[locale],
            # The language switch: the same authorization request in the other language
            # (only on the password step, where it restarts nothing).
            switch={
                other: "/oauth/authorize?" + _with_locale(next_query, other)
                for other in i18n.LOCALES
            }
            if step == "password" and next_query
            else {},
        )
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
