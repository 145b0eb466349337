"""Languages of the payment pages: the portal's Babel machinery and locale choice, with
the payment pages' own catalogue (``locale/zh_CN/LC_MESSAGES/messages.po``) in front of
the portal's (its messages fall back to the portal's).

Extract new messages with a mapping file naming ``src/smartmed/payments/templates/**.html``
(jinja2, extension ``jinja2.ext.i18n``) and ``src/smartmed/payments/**.py``::

    .venv/bin/pybabel extract -F payments.cfg -k _ --no-location --sort-output -o /tmp/p.pot .
    .venv/bin/pybabel update -i /tmp/p.pot -d src/smartmed/payments/locale
"""

from __future__ import annotations

import gettext
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from smartmed.portal import i18n as portal_i18n
from smartmed.portal.render import request_locale

LOCALE_DIR = Path(__file__).parent / "locale"
NO_STORE = {"Cache-Control": "no-store"}


@cache
def translations(locale: str) -> gettext.NullTranslations:
    """This module's catalogue for ``locale``, falling back to the portal's."""
    po_path = LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po"
    fallback = portal_i18n.translations(locale)
    if not po_path.is_file():
        return fallback
    with po_path.open("rb") as handle:
        catalog = read_po(handle, locale=locale)
    buffer = BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    buffer.seek(0)
    own = gettext.GNUTranslations(buffer)
    own.add_fallback(fallback)
    return own


@cache
def environment(locale: str) -> Environment:
    env = Environment(
        loader=PackageLoader("smartmed.payments", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(translations(locale), newstyle=True)  # type: ignore[attr-defined]
    return env


def locale_of(request: Request) -> str:
    """``?lang=`` if given (the sandbox page's switch), else the portal's choice."""
    asked = portal_i18n.normalize(request.query_params.get("lang"))
    return asked or request_locale(request)


def page(
    request: Request,
    template: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """Render a payment page in the request's language."""
    locale = locale_of(request)
    html = (
        environment(locale)
        .get_template(template)
        .render(
            {
                "request": request,
                "locale": locale,
                "lang_tag": portal_i18n.TAGS[locale],
                "path": request.url.path,
                **context,
            }
        )
    )
    return HTMLResponse(html, status, headers={**NO_STORE, **(headers or {})})


def gettext_for(request: Request) -> Any:
    return translations(locale_of(request)).gettext
