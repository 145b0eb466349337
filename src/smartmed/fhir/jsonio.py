"""JSON in and out of the engine, keeping FHIR decimals exact.

FHIR says a decimal's precision is significant (https://hl7.org/fhir/R4/datatypes.html#decimal:
"0.010 is regarded as different to 0.01"), and JSON numbers may have more digits than a
binary float holds. orjson parses numbers into floats, so a document that has fractional
or very large numbers is parsed again with the standard library into ``Decimal`` values,
and written back with ``orjson.Fragment`` so the digits stay exactly as sent. Documents
without such numbers (most resources) take only the fast orjson path.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

# Integers up to 18 digits fit a 64-bit integer, which is all orjson writes.
_MAX_INT_DIGITS = 18


def _int(text: str) -> int | Decimal:
    return int(text) if len(text.lstrip("-")) <= _MAX_INT_DIGITS else Decimal(text)


def _needs_exact(node: Any) -> bool:
    """Whether the parsed document holds a float (or an int too large for orjson)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif type(item) is float or (type(item) is int and not -(2**63) <= item < 2**63):
            return True
    return False


def loads(raw: bytes | str) -> Any:
    """Parse JSON (raises ``orjson.JSONDecodeError``); decimals come back as ``Decimal``."""
    document = orjson.loads(raw)  # strict: rejects NaN, lone surrogates, bad UTF-8
    if _needs_exact(document):
        document = json.loads(raw, parse_float=Decimal, parse_int=_int)
    return document


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(document: Any) -> str:
    """Serialise to compact JSON text, writing decimals with the digits they were sent with."""
    return orjson.dumps(document, default=_default).decode()
