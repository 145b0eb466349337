"""Masked forms of ID numbers and phone numbers, for logs and for views that need no more.

``mask_id("110105194912310021") == "110***********0021"`` and
``mask_phone("13812345678") == "138****5678"``: the first three and last four characters
stay, everything between becomes ``*`` (values of seven characters or fewer are masked
whole but for their last two). ``mask_processor`` is a structlog processor that masks
every 18-character ID number and every mainland mobile number found in any string of a
log event, however deeply nested.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

# 17 digits and a digit or X (GB 11643-1999); any preceding letter allowed, so that a
# URL-encoded `%7C110...` in a logged query is caught too. The checksum is not required:
# a log line may carry a mistyped number, which is still someone's number.
ID_NUMBER_IN_TEXT = re.compile(r"(?<!\d)\d{17}[\dXx](?![\dA-Za-z])")
# Mainland mobile numbers, optionally with the +86 / 86 country code.
PHONE_IN_TEXT = re.compile(r"(?<!\d)(?:\+?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}(?!\d)")


def _mask(value: str) -> str:
    if len(value) <= 7:
        return "*" * max(len(value) - 2, 0) + value[-2:]
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def mask_id(value: str) -> str:
    """An identity number with all but its first 3 and last 4 characters hidden."""
    return _mask(value)


def mask_phone(value: str) -> str:
    """A phone number with all but its first 3 and last 4 digits hidden (country code kept)."""
    digits = re.sub(r"[^\d]", "", value)
    prefix = ""
    if value.startswith("+") and digits.startswith("86") and len(digits) == 13:
        prefix, digits = "+86 ", digits[2:]
    elif digits.startswith("86") and len(digits) == 13:
        prefix, digits = "86 ", digits[2:]
    return prefix + _mask(digits or value)


def mask_text(text: str) -> str:
    """``text`` with every ID number and mobile number in it masked."""
    if not any(c.isdigit() for c in text):
        return text
    text = ID_NUMBER_IN_TEXT.sub(lambda m: mask_id(m.group()), text)
    return PHONE_IN_TEXT.sub(lambda m: mask_phone(m.group()), text)


def _masked(value: Any, depth: int = 0) -> Any:
    if depth > 20:
        return value
    kind = type(value)
    if kind is str:
        return mask_text(value)
    if kind is dict:
        return {k: _masked(v, depth + 1) for k, v in value.items()}
    if kind is list or kind is tuple:
        return kind(_masked(v, depth + 1) for v in value)
    return value


def mask_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask ID and phone numbers in every string of the event."""
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str or kind is dict or kind is list or kind is tuple:
            event_dict[key] = _masked(value)
        elif isinstance(value, BaseException):
            event_dict[key] = mask_text(repr(value))
    return event_dict
