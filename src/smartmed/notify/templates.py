"""Message templates: one Jinja2 file per template and locale, with named blocks.

``templates/<locale>/<name>.j2`` defines ``subject`` and ``body`` (both required), and
optionally ``sms`` (a short text; default: the body) and ``wechat_<field>`` blocks, one
per field of the WeChat template message (default: ``first`` = subject, ``remark`` =
body). Locales are ``zh-CN`` (the default) and ``en``. Missing data is an error
(``StrictUndefined``), never an empty gap in a clinical message.

Filters: ``datetime`` and ``date`` format an ISO string (or datetime/date) the
locale's way with Babel, in the platform time zone (naive values are UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, TemplateError, meta
from jinja2.exceptions import UndefinedError

from smartmed.notify.errors import UnknownTemplate, UnusableData

TEMPLATE_DIR = Path(__file__).with_name("templates")
DEFAULT_LOCALE = "zh-CN"
LOCALES = ("zh-CN", "en")
_BABEL = {"zh-CN": "zh_Hans_CN", "en": "en"}
# 24-hour clock in both languages: no AM/PM (whose narrow space some SMS gateways mangle).
_DATETIME = {"zh-CN": "yyyy年M月d日 HH:mm", "en": "d MMM yyyy, HH:mm"}
_SUFFIX = ".j2"


@dataclass(frozen=True, slots=True)
class Rendered:
    """A template rendered for one person, in one language."""

    locale: str
    subject: str
    body: str
    sms: str
    wechat: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "locale": self.locale,
            "subject": self.subject,
            "body": self.body,
            "sms": self.sms,
            "wechat": self.wechat,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Rendered:
        return cls(raw["locale"], raw["subject"], raw["body"], raw["sms"], dict(raw["wechat"]))


def template_names() -> frozenset[str]:
    """Every template the default locale defines (each must exist in every locale)."""
    folder = TEMPLATE_DIR / DEFAULT_LOCALE
    return frozenset(p.name.removesuffix(_SUFFIX) for p in folder.glob(f"*{_SUFFIX}"))


def check_template(name: str) -> None:
    """Raise :class:`UnknownTemplate` unless ``name`` is a template."""
    if name not in template_names():
        known = ", ".join(sorted(template_names()))
        raise UnknownTemplate(
            f"unknown notification template {name!r} (known: {known})", expression="template"
        )


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@lru_cache(maxsize=16)
def _environment(locale: str, timezone: str) -> Environment:
    babel_locale = _BABEL[locale]
    zone = ZoneInfo(timezone)

    def datetime_filter(value: Any) -> str:
        return format_datetime(
            _as_datetime(value), _DATETIME[locale], tzinfo=zone, locale=babel_locale
        )

    def date_filter(value: Any) -> str:
        if isinstance(value, str) and len(value) == 10:
            day = date.fromisoformat(value)
        elif isinstance(value, date) and not isinstance(value, datetime):
            day = value
        else:
            day = _as_datetime(value).astimezone(zone).date()
        return format_date(day, "long", locale=babel_locale)

    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR / locale),
        undefined=StrictUndefined,
        autoescape=False,  # plain text for SMS, email text/plain and JSON; never HTML
        keep_trailing_newline=False,
    )
    env.filters["datetime"] = datetime_filter
    env.filters["date"] = date_filter
    return env


def _block(template: Template, name: str, data: dict[str, Any]) -> str:
    context = template.new_context(dict(data))
    return "".join(template.blocks[name](context)).strip()


def needs(name: str, locale: str, timezone: str) -> set[str]:
    """The data names template ``name`` uses in ``locale``."""
    env = _environment(locale, timezone)
    assert env.loader is not None
    source, _, _ = env.loader.get_source(env, f"{name}{_SUFFIX}")
    return set(meta.find_undeclared_variables(env.parse(source)))


def render(name: str, locale: str, data: dict[str, Any], *, timezone: str) -> Rendered:
    """Render template ``name`` in ``locale`` (falling back to zh-CN) with ``data``."""
    check_template(name)
    if locale not in LOCALES or not (TEMPLATE_DIR / locale / f"{name}{_SUFFIX}").is_file():
        locale = DEFAULT_LOCALE
    template = _environment(locale, timezone).get_template(f"{name}{_SUFFIX}")
    try:
        subject = _block(template, "subject", data)
        body = _block(template, "body", data)
        sms = _block(template, "sms", data) if "sms" in template.blocks else body
        wechat = {
            block.removeprefix("wechat_"): _block(template, block, data)
            for block in template.blocks
            if block.startswith("wechat_")
        }
    except UndefinedError as exc:
        missing = ", ".join(sorted(needs(name, locale, timezone) - set(data))) or exc.message
        raise UnusableData(
            f"template {name!r} needs data it was not given: {missing}", expression="data"
        ) from None
    except (TemplateError, ValueError, TypeError, OverflowError) as exc:
        raise UnusableData(
            f"template {name!r} cannot use the data given: {exc}", expression="data"
        ) from None
    if not wechat:
        wechat = {"first": subject, "remark": body}
    return Rendered(locale, subject, body, sms, wechat)
