"""Catalogues and locale formatting: every message of the portal has its Chinese text;
dates, numbers and names follow the locale."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from babel.messages.extract import extract_from_dir

from smartmed.portal import i18n

ROOT = Path(__file__).resolve().parents[2]
KEYWORDS = {"_": None, "N_": None, "Field": (2,), "gettext": None}


def _extracted() -> set[str]:
    found = set()
    method_map = [
        ("src/smartmed/portal/**.py", "python"),
        ("src/smartmed/contracting/*pages.py", "python"),  # as babel.cfg
        ("src/smartmed/portal/templates/**.html", "jinja2"),
    ]
    options = {"src/smartmed/portal/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    for _file, _line, message, _comments, _context in extract_from_dir(
        ROOT, method_map, options, keywords=KEYWORDS
    ):
        found.add(message if isinstance(message, str) else message[0])
    return found


def test_every_message_has_a_chinese_translation() -> None:
    messages = _extracted()
    assert len(messages) > 200
    zh = i18n.translations("zh_CN")
    missing = sorted(m for m in messages if zh.gettext(m) == m)
    assert missing == []


def test_locale_negotiation() -> None:
    assert i18n.from_accept_language("en-US,en;q=0.9") == "en"
    assert i18n.from_accept_language("fr-FR, en;q=0.4, zh-Hans-CN;q=0.8") == "zh_CN"
    assert i18n.from_accept_language("fr, de;q=0.5") is None
    assert i18n.from_accept_language("zh;q=0, en") == "en"
    assert i18n.normalize("zh-TW") == "zh_CN" and i18n.normalize("xx-!!") is None


def test_dates_numbers_and_names_per_locale() -> None:
    zh, en = i18n.Formatter("zh_CN"), i18n.Formatter("en")
    assert zh.date("2026-03-09", "long") == "2026年3月9日"
    assert en.date(date(2026, 3, 9), "long") == "March 9, 2026"
    assert zh.number(1234567) == "1,234,567" and en.number(12345.5) == "12,345.5"
    name = [{"use": "official", "family": "Smith", "given": ["Anna", "Maria"]}]
    assert en.name(name) == "Anna Maria Smith"
    assert zh.name(name) == "Anna Maria Smith"
    chinese = {"family": "王", "given": ["芳"]}
    assert en.name(chinese) == zh.name(chinese) == "王芳"
    assert en.name([{"text": "Dr. Who"}]) == "Dr. Who"
