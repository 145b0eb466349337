"""Index values from FHIRPath result nodes, per parameter kind and FHIR datatype.

https://hl7.org/fhir/R4/search.html: each search parameter type says how an element of a
given datatype is indexed (a CodeableConcept gives one token per coding, a Period a date
range, and so on). Also the date and decimal precision ranges shared with the query parser.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from smartmed.fhir.search.fhirpath_fast import RESOURCE_TYPES, Node, is_type
from smartmed.fhir.search.geo import position
from smartmed.fhir.search.index import (
    DateValue,
    IndexValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
)
from smartmed.fhir.search.text import is_cjk, normalize
from smartmed.fhir.search.ucum import UCUM, scale, try_canonical

ISO_4217 = "urn:iso:std:iso:4217"

# --- dates and decimals ---------------------------------------------------------------

_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_US = timedelta(microseconds=1)


def date_range(text: str) -> tuple[datetime, datetime] | None:
    """The naive-UTC instant range a FHIR date/dateTime/instant covers at its precision.

    ``2024`` is the whole year, ``2024-03`` the month, ``...T10:00`` the minute, and so on
    (https://hl7.org/fhir/R4/search.html#date). A time without a zone is taken as UTC.
    Returns None when malformed or out of range.
    """
    match = _DATE.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        low = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")),
        )
        if month is None:
            end = low.replace(year=low.year + 1) if low.year < 9999 else None
        elif day is None:
            end = (low.replace(day=28) + timedelta(days=4)).replace(day=1)
        elif hour is None:
            end = low + timedelta(days=1)
        elif second is None:
            end = low + timedelta(minutes=1)
        elif fraction is None:
            end = low + timedelta(seconds=1)
        else:
            end = low + timedelta(microseconds=10 ** (6 - min(len(fraction), 6)))
        high = end - _US if end else datetime.max
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            offset = sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            low, high = low - offset, high - offset
    except (ValueError, OverflowError):
        return None
    return low, high


def decimal_range(value: Any) -> tuple[float, float, float] | None:
    """(value, low, high): ± half a unit of the last significant digit as written.

    JSON parsed with plain ``json``/``orjson`` turns decimals into floats, so ``repr`` is
    used: ``5.40`` arrives as ``5.4`` and gets the coarser range [5.35, 5.45]. Decimal
    and string inputs keep their exact precision.
    """
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int):
            number = Decimal(value)
        elif isinstance(value, float):
            number = Decimal(repr(value))
        elif isinstance(value, Decimal | str):
            number = Decimal(value)
        else:
            return None
    except InvalidOperation:
        return None
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int):
        return None  # NaN or infinity
    half = Decimal(5).scaleb(exponent - 1)
    return float(number), float(number - half), float(number + half)


# --- converters: (node data, node type) -> index values -------------------------------

Converter = Callable[[Any, str | None], Iterable[IndexValue]]
_STRING_TYPES = ("string", "uri", "System.String")


def _text(value: Any) -> str | None:
    return normalize(value) if isinstance(value, str) and value else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _coding(coding: Any, text: str | None) -> TokenValue | None:
    if not isinstance(coding, dict):
        return None
    system, code = _str(coding.get("system")), _str(coding.get("code"))
    if system is None and code is None:
        return None
    return TokenValue(system, code, text or _text(coding.get("display")))


_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


def _guess_token_type(data: dict[str, Any]) -> str:
    """The datatype of an untyped token element (computed values), from its shape."""
    if "coding" in data or "text" in data:
        return "CodeableConcept"
    if "value" in data:
        return "ContactPoint" if data.get("system") in _CONTACT_SYSTEMS else "Identifier"
    return "Coding"


def _token(data: Any, type_: str | None) -> Iterable[IndexValue]:
    if type(data) is bool:
        return [TokenValue(None, "true" if data else "false")]
    if isinstance(data, str):
        return [TokenValue(None, data)] if data else []
    if isinstance(data, int | float | Decimal):
        return [TokenValue(None, str(data))]
    if not isinstance(data, dict):
        return []
    if type_ is None:
        type_ = _guess_token_type(data)
    if type_ == "CodeableConcept":
        # One value per coding, carrying the concept text (else the coding display) for
        # :text; a text-only concept gives a value with no system and code.
        text = _text(data.get("text"))
        codings = data.get("coding")
        values = [v for c in codings or () if (v := _coding(c, text))]
        # search.html#token: `:text` matches CodeableConcept.text or a Coding.display, so a
        # display that the concept text hides gets a text-only value of its own.
        if text:
            for c in codings or ():
                display = _text(c.get("display")) if isinstance(c, dict) else None
                if display and display != text:
                    values.append(TokenValue(None, None, display))
        return values or ([TokenValue(None, None, text)] if text else [])
    if is_type(type_, "Identifier"):
        ident = _str(data.get("value"))
        if ident is None:
            return []
        system, kind = _str(data.get("system")), data.get("type")
        if not isinstance(kind, dict):
            return [TokenValue(system, ident)]
        kind_text = _text(kind.get("text"))
        # One value per type coding, for :of-type (search.html#token).
        typed = [
            TokenValue(system, ident, kind_text, _str(c.get("system")), code)
            for c in kind.get("coding") or ()
            if isinstance(c, dict) and (code := _str(c.get("code")))
        ]
        return typed or [TokenValue(system, ident, kind_text)]
    if type_ == "ContactPoint":
        # https://hl7.org/fhir/R4/search.html#token: a ContactPoint matches on its value.
        contact = _str(data.get("value"))
        return [TokenValue(None, contact)] if contact else []
    coding = _coding(data, None)  # Coding and anything shaped like one
    return [coding] if coding else []


def _string(data: Any, type_: str | None) -> Iterable[IndexValue]:
    if isinstance(data, str):
        return [StringValue(data, normalize(data))] if data else []
    if not isinstance(data, dict):
        return []
    parts: list[Any] = []
    if type_ == "HumanName" or (type_ is None and ("family" in data or "given" in data)):
        family, given = data.get("family"), data.get("given") or []
        parts = [family, *given, *(data.get("prefix") or ()), *(data.get("suffix") or ())]
        parts.append(data.get("text"))
        # Chinese names are written family-first without a space (王小明 = 王 + 小明), so a
        # prefix search for 王小 must find the joined form as well as the separate parts.
        joined = "".join(g for g in given if isinstance(g, str))
        if isinstance(family, str) and is_cjk(family) and is_cjk(joined):
            parts.append(family + joined)
    elif type_ == "Address" or type_ is None:
        parts = [*(data.get("line") or ()), data.get("text")]
        parts += [data.get(k) for k in ("city", "district", "state", "postalCode", "country")]
    return [StringValue(p, normalize(p)) for p in parts if isinstance(p, str) and p]


def parse_reference(ref: str) -> ReferenceValue | None:
    """Relative ``Type/id``, absolute URL (type and id filled when recognisable) or urn."""
    if not ref or ref.startswith("#"):
        return None  # contained resources are not indexed
    if ref.startswith("urn:"):
        return ReferenceValue(None, None, ref)
    head, _, version = ref.partition("|")
    parts = head.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
        head = "/".join(parts)
    absolute = "://" in head
    if len(parts) >= 2 and parts[-2] in RESOURCE_TYPES and parts[-1]:
        url = (head + ("|" + version if version else "")) if absolute else None
        return ReferenceValue(parts[-2], parts[-1], url)
    return ReferenceValue(None, None, ref)


def _reference(data: Any, type_: str | None) -> Iterable[IndexValue]:
    if isinstance(data, str):
        value = parse_reference(data)  # canonical / uri
    elif isinstance(data, dict) and "resourceType" in data:
        # Bundle.entry[0].resource: the resource itself stands for the reference.
        rid = data.get("id")
        value = ReferenceValue(data["resourceType"], rid) if isinstance(rid, str) else None
    elif isinstance(data, dict):
        ref = data.get("reference")
        value = parse_reference(ref) if isinstance(ref, str) else None
        ident = data.get("identifier")
        ident_value = _str(ident.get("value")) if isinstance(ident, dict) else None
        if ident_value is not None:
            # Reference.identifier, for :identifier (search.html#reference).
            ident_system = _str(cast(dict[str, Any], ident).get("system"))
            base = value or ReferenceValue(None, None)
            value = replace(base, ident_system=ident_system, ident_value=ident_value)
    else:
        value = None
    return [value] if value else []


def _period(data: Any) -> tuple[datetime, datetime] | None:
    if not isinstance(data, dict):
        return None
    start, end = data.get("start"), data.get("end")
    low = date_range(start) if isinstance(start, str) else None
    high = date_range(end) if isinstance(end, str) else None
    if low is None and high is None:
        return None
    # An open Period end extends to the extreme instant.
    return (low[0] if low else datetime.min, high[1] if high else datetime.max)


def _date(data: Any, type_: str | None) -> Iterable[IndexValue]:
    if isinstance(data, str):
        found = date_range(data)
    elif not isinstance(data, dict):
        found = None
    elif type_ == "Timing" or "event" in data or "repeat" in data:
        # https://hl7.org/fhir/R4/search.html#date: for a Timing only the outer limits count.
        ranges = [r for e in data.get("event") or () if isinstance(e, str) and (r := date_range(e))]
        repeat = data.get("repeat")
        bounds = _period(repeat.get("boundsPeriod")) if isinstance(repeat, dict) else None
        ranges += [bounds] if bounds else []
        found = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None
    else:
        found = _period(data)
    return [DateValue(*found)] if found else []


def _bound(data: Any) -> tuple[float, dict[str, Any]] | None:
    if isinstance(data, dict):
        found = decimal_range(data.get("value"))
        if found:
            return found[0], data
    return None


def _range(data: dict[str, Any]) -> tuple[tuple[float, float, float], dict[str, Any]] | None:
    """A Range as (value, low, high) and the bound carrying its unit.

    Ranges use their bounds as written; an absent bound is open (±infinity). The value
    is the low bound, else the high one.
    """
    low, high = _bound(data.get("low")), _bound(data.get("high"))
    first = low or high
    if first is None:
        return None
    lo = low[0] if low else float("-inf")
    hi = high[0] if high else float("inf")
    return (first[0], lo, hi), first[1]


def _is_range(data: dict[str, Any], type_: str | None) -> bool:
    return type_ == "Range" or (type_ is None and ("low" in data or "high" in data))


def with_canonical(value: QuantityValue) -> QuantityValue:
    """A UCUM quantity with its canonical value, range and unit added (``ucum.py``)."""
    if value.system != UCUM:
        return value
    found = try_canonical(value.code)
    if found is None:
        return value
    f = found.factor
    return replace(
        value,
        canon_value=scale(value.value, f),
        canon_low=scale(value.low, f),
        canon_high=scale(value.high, f),
        canon_unit=found.unit,
    )


def _quantity(data: Any, type_: str | None) -> Iterable[IndexValue]:
    if not isinstance(data, dict):
        return []
    if _is_range(data, type_):
        found = _range(data)
        if found is None:
            return []
        unit = found[1]
        system, code, name = (_str(unit.get(k)) for k in ("system", "code", "unit"))
        return [with_canonical(QuantityValue(*found[0], system, code, name))]
    number = decimal_range(data.get("value"))
    if number is None:
        return []
    if type_ == "Money" or (type_ is None and "currency" in data):
        return [QuantityValue(*number, ISO_4217, _str(data.get("currency")), None)]
    system, code, name = (_str(data.get(k)) for k in ("system", "code", "unit"))
    return [with_canonical(QuantityValue(*number, system, code, name))]


def _number(data: Any, type_: str | None) -> Iterable[IndexValue]:
    if isinstance(data, dict):
        found = _range(data) if _is_range(data, type_) else None
        return [NumberValue(*found[0])] if found else []
    number = decimal_range(data)
    return [NumberValue(*number)] if number else []


def _uri(data: Any, type_: str | None) -> Iterable[IndexValue]:
    return [UriValue(data)] if isinstance(data, str) and data else []


def _position(data: Any, type_: str | None) -> Iterable[IndexValue]:
    found = position(data)
    return [found] if found else []


CONVERTERS: dict[str, Converter] = {
    "token": _token,
    "string": _string,
    "reference": _reference,
    "date": _date,
    "number": _number,
    "quantity": _quantity,
    "uri": _uri,
    "special": _position,  # Location-near, on Location.position
}


def _extension_value(extension: dict[str, Any]) -> Node:
    """An Extension's ``value[x]`` and its datatype (None for a primitive)."""
    for key, value in extension.items():
        if key.startswith("value") and len(key) > 5:
            return value, key[5:] if type(value) is dict else None
    return None, None


def to_index_values(kind: str, nodes: list[Node]) -> list[IndexValue]:
    """Index values of a parameter of type ``kind`` for evaluated nodes, deduplicated."""
    convert = CONVERTERS[kind]
    values: list[IndexValue] = []
    for data, type_ in nodes:
        if type_ == "Extension" and type(data) is dict:
            # A parameter on an extension (``X.extension('url')``) indexes its value.
            data, type_ = _extension_value(data)
            if data is None:
                continue
        if type_ and type(data) is not dict and type_[0].isupper() and type_[:7] != "System.":
            continue  # a primitive where the model wants a datatype: invalid, not indexed
        values.extend(convert(data, type_))
    return list(dict.fromkeys(values)) if len(values) > 1 else values
