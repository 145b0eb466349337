"""Languages of the portal: gettext catalogues (Babel), the choice of locale, formatting.

Message ids are the English texts; ``locale/zh_CN/LC_MESSAGES/messages.po`` holds the
Chinese. The ``.po`` files are compiled in memory when the portal starts (no ``.mo`` to
build or commit). The locale of a request is, in order: the account's setting (kept in
the portal session from the linked FHIR resource's ``communication``, changed with the
language switch), the browser's ``Accept-Language``, ``SMARTMED_PORTAL_DEFAULT_LOCALE``.
"""

from __future__ import annotations

import gettext
from datetime import date, datetime
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal

LOCALES = ("zh_CN", "en")
# BCP 47 tags (html lang, FHIR communication) of each locale.
TAGS = {"zh_CN": "zh-CN", "en": "en"}
LOCALE_DIR = Path(__file__).parent / "locale"


@cache
def translations(locale: str) -> gettext.NullTranslations:
    """The catalogue of ``locale`` (English: the message ids themselves)."""
    po_path = LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po"
    if not po_path.is_file():
        return gettext.NullTranslations()
    with po_path.open("rb") as handle:
        catalog = read_po(handle, locale=locale)
    buffer = BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


def normalize(value: str | None) -> str | None:
    """One of :data:`LOCALES` for a tag like ``zh``, ``zh-Hans-CN``, ``en-GB``; else None."""
    if not value:
        return None
    try:
        parsed = Locale.parse(value.strip().replace("-", "_"))
    except (ValueError, UnknownLocaleError):
        return None
    if parsed.language == "zh":
        return "zh_CN"
    if parsed.language == "en":
        return "en"
    return None


def from_accept_language(header: str | None) -> str | None:
    """The best of :data:`LOCALES` in an ``Accept-Language`` header (q-values honoured)."""
    if not header:
        return None
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        found = normalize(tag)
        if found and quality > 0:
            ranked.append((-quality, position, found))
    return sorted(ranked)[0][2] if ranked else None


class Formatter:
    """Locale-aware formatting for templates: dates, numbers, people's names."""

    def __init__(self, locale: str) -> None:
        self.locale = locale
        self.tag = TAGS[locale]

    def date(self, value: str | date | datetime | None, form: str = "medium") -> str:
        if not value:
            return ""
        if isinstance(value, str):
            try:
                value = date.fromisoformat(value) if len(value) <= 10 else _dt(value)
            except ValueError:
                return str(value)
        if isinstance(value, datetime):
            return format_datetime(value, form, locale=self.locale)
        return format_date(value, form, locale=self.locale)

    def number(self, value: float | int | None) -> str:
        return "" if value is None else format_decimal(value, locale=self.locale)

    def name(self, names: list[dict[str, Any]] | dict[str, Any] | None) -> str:
        """A FHIR HumanName as it is written: Chinese names family name first with no
        space (in both locales), others given names first."""
        if isinstance(names, list):
            names = _preferred(names)
        if not names:
            return ""
        family = str(names.get("family") or "")
        given = [str(g) for g in names.get("given") or []]
        if not family and not given:
            return str(names.get("text") or "")
        if _is_cjk(family + "".join(given)):
            return family + "".join(given)
        return " ".join([*given, family]).strip()


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _preferred(names: list[dict[str, Any]]) -> dict[str, Any] | None:
    for use in ("usual", "official"):
        for item in names:
            if item.get("use") == use:
                return item
    return names[0] if names else None


def _is_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)
