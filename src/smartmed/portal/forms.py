"""Form handling: the CSRF check on every unsafe request, and field validation with
messages in the user's language.

Every portal router is included with :func:`csrf_protect` as a dependency: a POST (or
PUT/PATCH/DELETE) must carry the session's CSRF token in the ``csrf`` form field or the
``X-CSRF-Token`` header (htmx sends the header, set once on ``<body hx-headers>``).
Modules with their own pages or ``/api`` routes on the portal session use the same
dependency.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from smartmed.identity.service import get_identity
from smartmed.portal.session import CSRF_FIELD, CSRF_HEADER, csrf_valid, get_session

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PHONE = re.compile(r"^\+?[0-9][0-9 \-]{5,19}$")


class CsrfFailed(Exception):
    """An unsafe request without the session's CSRF token; answered with a 403 page."""


async def csrf_protect(request: Request) -> None:
    """FastAPI dependency: refuse unsafe requests without a valid CSRF token."""
    if request.method not in UNSAFE:
        return
    presented = request.headers.get(CSRF_HEADER)
    if not presented:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        presented = value if isinstance(value, str) else None
    secret = get_identity(request.app).secret
    if not csrf_valid(secret, get_session(request), presented):
        raise CsrfFailed()


async def form_data(request: Request) -> dict[str, str]:
    """The submitted text fields (stripped); files are left out."""
    form = await request.form()
    return {k: v.strip() for k, v in form.items() if isinstance(v, str)}


async def form_lists(request: Request) -> dict[str, list[str]]:
    """Every value of repeated fields (multi-selects)."""
    form = await request.form()
    out: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str) and value.strip():
            out.setdefault(key, []).append(value.strip())
    return out


async def upload(request: Request, name: str) -> UploadFile | None:
    form = await request.form()
    value = form.get(name)
    return value if isinstance(value, UploadFile) else None


class Validator:
    """Collects field errors, already translated with ``_``."""

    def __init__(self, values: dict[str, str], gettext: Callable[[str], str]) -> None:
        self.values = values
        self.errors: dict[str, str] = {}
        self._ = gettext

    def __bool__(self) -> bool:
        return not self.errors

    def error(self, field: str, message: str) -> None:
        self.errors.setdefault(field, message)

    def required(self, field: str, max_length: int = 200) -> str:
        value = self.values.get(field, "")
        if not value:
            self.error(field, self._("This field is required."))
        elif len(value) > max_length:
            self.error(field, self._("At most %(n)d characters.") % {"n": max_length})
        return value

    def optional(self, field: str, max_length: int = 200) -> str:
        value = self.values.get(field, "")
        if len(value) > max_length:
            self.error(field, self._("At most %(n)d characters.") % {"n": max_length})
        return value

    def choice(self, field: str, allowed: Any, *, required: bool = True) -> str:
        value = self.values.get(field, "")
        if not value:
            if required:
                self.error(field, self._("Please choose one."))
        elif value not in allowed:
            self.error(field, self._("This choice is not valid."))
        return value

    def phone(self, field: str) -> str:
        value = self.values.get(field, "")
        if value and not PHONE.match(value):
            self.error(field, self._("Enter a phone number: digits, spaces or dashes."))
        return value

    def past_date(self, field: str) -> str:
        value = self.values.get(field, "")
        if not value:
            return value
        try:
            parsed = date.fromisoformat(value)
        except ValueError:
            self.error(field, self._("Enter a date as YYYY-MM-DD."))
            return value
        if parsed > date.today():
            self.error(field, self._("The date cannot be in the future."))
        return value


def refused(gettext: Callable[[str], str], exc: Exception) -> str:
    """The form-level message when the engine refuses a write."""
    from smartmed.portal.fhirdata import FhirError, refusal

    reason = refusal(exc) if isinstance(exc, FhirError) else str(exc)
    return gettext("The record could not be saved: %(reason)s") % {"reason": reason}
