"""Form field descriptions rendered by the ``field`` macro (label, control, error)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    label: str  # English message id
    kind: str = "text"  # text, date, tel, password, select, multi, checkbox
    required: bool = False
    options: tuple[tuple[str, str], ...] = ()
    translate: bool = True  # option labels are message ids
    width: str = "col-12 col-md-6"
    size: int = 5
    autocomplete: str = ""


def N_(text: str) -> str:  # noqa: N802 - the gettext convention for "mark, translate later"
    """Marks a message id for extraction; the template translates it."""
    return text


def version(values: dict[str, Any]) -> int | None:
    """The version an edit form was opened on (its hidden ``version`` field), if any."""
    raw = str(values.get("version", ""))
    return int(raw) if raw.isdigit() else None
