"""Typed search index values extracted from a resource at write time.

One value per (search parameter, matched element). The storage layer writes each
kind into its own table; the search layer queries them. Date and number values
are ranges, because a FHIR value has a precision: ``2024-03`` covers the whole
month and ``5.4`` covers [5.35, 5.45).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class TokenValue:
    """A coded value: Coding, CodeableConcept coding, Identifier, ContactPoint, code, boolean."""

    system: str | None
    code: str | None
    # Display/text for :text searches, normalised (casefold, accents removed); None if absent.
    text: str | None = None
    # An Identifier's type coding, for :of-type (search.html#token); None otherwise.
    type_system: str | None = None
    type_code: str | None = None


@dataclass(frozen=True, slots=True)
class StringValue:
    """A string value; ``norm`` is casefolded with accents removed, for default/contains."""

    value: str
    norm: str


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    """A reference: local ``Type/id`` (type and id set) or an absolute/canonical ``url``."""

    target_type: str | None
    target_id: str | None
    url: str | None = None
    # Reference.identifier, for :identifier (search.html#reference).
    ident_system: str | None = None
    ident_value: str | None = None


@dataclass(frozen=True, slots=True)
class DateValue:
    """An instant range [low, high] in naive UTC; open ends use the extreme datetimes."""

    low: datetime
    high: datetime


@dataclass(frozen=True, slots=True)
class NumberValue:
    """A decimal with its implicit precision range [low, high]."""

    value: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class QuantityValue:
    """A quantity with precision range and its unit coding.

    UCUM quantities also carry their canonical form (``ucum.py``): value and range times
    the unit's factor, and the canonical unit (``g.m-3``); None when not convertible.
    """

    value: float
    low: float
    high: float
    system: str | None
    code: str | None
    unit: str | None
    canon_value: float | None = None
    canon_low: float | None = None
    canon_high: float | None = None
    canon_unit: str | None = None


@dataclass(frozen=True, slots=True)
class UriValue:
    """A uri, url or canonical value."""

    value: str


@dataclass(frozen=True, slots=True)
class GeoValue:
    """A position (Location.position) in degrees, and its unit vector for exact distances."""

    lat: float
    lon: float
    x: float
    y: float
    z: float


@dataclass(frozen=True, slots=True)
class TextValue:
    """The normalised full text of a resource for ``_text`` (narrative) or ``_content``."""

    value: str


SimpleValue = (
    TokenValue | StringValue | ReferenceValue | DateValue | NumberValue | QuantityValue | UriValue
)


@dataclass(frozen=True, slots=True)
class CompositeValue:
    """One element matched by a composite parameter: the values of each of its components.

    Stored as rows of the components' own kinds, under the parameter ``code$i`` for
    component ``i`` and a group number shared by the rows of one element, so that a search
    pairs components within the same element (https://hl7.org/fhir/R4/search.html#composite).
    """

    parts: tuple[tuple[SimpleValue, ...], ...]


IndexValue = SimpleValue | CompositeValue | GeoValue | TextValue


@dataclass(slots=True)
class ResourceIndex:
    """All index values of one resource, by search parameter code."""

    values: dict[str, list[IndexValue]] = field(default_factory=dict)

    def add(self, code: str, value: IndexValue) -> None:
        self.values.setdefault(code, []).append(value)
