"""Parse FHIR search request parameters (https://hl7.org/fhir/R4/search.html).

Turns ``[(name, value), ...]`` into a typed ``SearchRequest``: repeated parameters are
AND-ed, comma-separated values OR-ed (``\\,`` escapes a comma, see "Escaping Search
Parameters"), modifiers and prefixes are checked against the parameter type, and values
are parsed per type (dates and numbers into precision ranges, like the index values).
Errors raise ``SearchError``, which the API reports as a 400 OperationOutcome.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from smartmed.fhir.search import support
from smartmed.fhir.search.extract import date_range, decimal_range, normalize, parse_reference
from smartmed.fhir.search.geo import parse_near
from smartmed.fhir.search.params import SearchParam, SearchRegistry
from smartmed.fhir.search.ucum import UCUM, UcumError, canonical, scale


class SearchError(ValueError):
    """An invalid search request; ``expression`` names the offending parameter."""

    def __init__(self, message: str, expression: str) -> None:
        super().__init__(message)
        self.expression = expression


class TokenQuery(NamedTuple):
    """``[system]|[code]``: ``system_given`` tells ``|code`` (no system) from ``code``."""

    system: str | None
    code: str | None
    system_given: bool


class OfTypeQuery(NamedTuple):
    """``identifier:of-type=system|code|value``."""

    system: str | None
    code: str | None
    value: str


class DateQuery(NamedTuple):
    """The naive-UTC instant range the searched date covers at its precision."""

    low: datetime
    high: datetime


class NumberQuery(NamedTuple):
    """A number with its implicit precision range (``100`` is [99.5, 100.5])."""

    value: float
    low: float
    high: float


class QuantityQuery(NamedTuple):
    """``[number]|[system]|[code]``; UCUM ones also in canonical form (value, low, high, unit)."""

    value: float
    low: float
    high: float
    system: str | None
    code: str | None
    canon: tuple[float, float, float, str] | None = None


class ValueSetQuery(NamedTuple):
    """``:in``/``:not-in``: the value set and its expansion, ``(system, code)`` pairs."""

    url: str
    codes: frozenset[tuple[str, str]]


class NearQuery(NamedTuple):
    """Location ``near``: a point and a distance in metres."""

    lat: float
    lon: float
    distance_m: float


class CompositeQuery(NamedTuple):
    """A composite value: one parsed term per component, in order."""

    terms: tuple[SearchTerm, ...]


class ReferenceQuery(NamedTuple):
    """``[type]/[id]``, ``[id]`` or an absolute url (type and id filled when recognisable)."""

    type: str | None
    id: str | None
    url: str | None


Payload = (
    TokenQuery
    | OfTypeQuery
    | DateQuery
    | NumberQuery
    | QuantityQuery
    | ReferenceQuery
    | ValueSetQuery
    | NearQuery
    | CompositeQuery
    | str
    | bool
)
"""Per kind: token, of-type, date, number, quantity, reference, ``:in`` value set, near,
composite, string (normalised; raw for ``:exact``) / uri / ``:text``, ``:missing``."""


@dataclass(frozen=True, slots=True)
class SearchTerm:
    """One OR-ed value: its prefix (``eq`` unless given; date/number/quantity only)."""

    prefix: str
    raw: str
    value: Payload


@dataclass(frozen=True, slots=True)
class ParsedParam:
    """One search parameter occurrence, e.g. ``subject:Patient.name:exact=Zhang,Wang``."""

    code: str
    modifier: str | None
    param: SearchParam
    values: tuple[SearchTerm, ...]
    chain: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, slots=True)
class IncludeParam:
    """``_include``/``_revinclude`` ``source:param[:target]``; ``*`` stands for any."""

    reverse: bool
    source: str
    param: str
    target: str | None
    iterate: bool


@dataclass(frozen=True, slots=True)
class HasParam:
    """``_has:source:reference:rest``: a live ``source`` refers here and matches ``rest``."""

    source: str
    reference: str
    inner: ParsedParam | HasParam


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """A parsed search: AND-ed parameters plus the result controls."""

    resource_type: str
    params: tuple[ParsedParam, ...]
    count: int | None
    offset: int
    sort: tuple[tuple[str, bool], ...]
    summary: str | None
    elements: tuple[str, ...]
    total: str | None
    include: tuple[str, ...]
    revinclude: tuple[str, ...]
    unknown: tuple[str, ...]
    includes: tuple[IncludeParam, ...] = ()
    has: tuple[HasParam, ...] = ()


PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
# https://hl7.org/fhir/R4/search.html#modifiers; `missing` applies to every type and a
# resource type is a valid reference modifier (checked separately).
MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains"}),
    "token": frozenset({"text", "not", "above", "below", "in", "not-in", "of-type"}),
    "reference": frozenset({"identifier", "above", "below"}),
    "uri": frozenset({"above", "below"}),
}
RESULT_PARAMS = frozenset(
    {"_count", "_offset", "_sort", "_summary", "_elements", "_total", "_include"}
    | {"_revinclude", "_format", "_pretty"}
)
_SUMMARY = frozenset({"true", "false", "text", "data", "count"})
_TOTAL = frozenset({"none", "estimate", "accurate"})
_PREFIX = re.compile(r"([a-z]{2})(?=[-+.\d])")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_UNESCAPE = re.compile(r"\\([\\,$|])")


def split_escaped(text: str, separator: str) -> list[str]:
    """Split on ``separator`` unless backslash-escaped; pieces stay escaped."""
    pieces: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            current.append(char + next(chars, ""))
        elif char == separator:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def unescape(text: str) -> str:
    """Remove the search escapes ``\\,`` ``\\$`` ``\\|`` ``\\\\``."""
    return _UNESCAPE.sub(r"\1", text) if "\\" in text else text


def _non_negative(name: str, value: str) -> int:
    if not value.isdigit():
        raise SearchError(f"{name} must be a non-negative integer, got '{value}'", name)
    return int(value)


def _prefixed(key: str, raw: str) -> tuple[str, str]:
    match = _PREFIX.match(raw)
    if match is None:
        return "eq", raw
    if match.group(1) not in PREFIXES:
        raise SearchError(f"Unknown prefix '{match.group(1)}' in {key}={raw}", key)
    return match.group(1), raw[2:]


def _number(key: str, text: str) -> NumberQuery:
    found = decimal_range(text) if _NUMBER.fullmatch(text) else None
    if found is None:
        raise SearchError(f"Invalid number '{text}' for {key}", key)
    return NumberQuery(*found)


def _token(key: str, raw: str) -> TokenQuery:
    pieces = split_escaped(raw, "|")
    if len(pieces) == 1:
        return TokenQuery(None, unescape(raw), False)
    system, code = unescape(pieces[0]) or None, unescape("|".join(pieces[1:])) or None
    if system is None and code is None:
        raise SearchError(f"Empty token '{raw}' for {key}", key)
    return TokenQuery(system, code, True)


def _reference(key: str, raw: str, param: SearchParam, modifier: str | None) -> ReferenceQuery:
    text = unescape(raw)
    if "://" in text or text.startswith("urn:"):
        value = parse_reference(text)
        assert value is not None
        found = ReferenceQuery(value.target_type, value.target_id, value.url)
    elif "/" in text:
        parsed = parse_reference(text)
        if parsed is None or parsed.target_type is None:
            raise SearchError(f"Invalid reference '{text}' for {key}", key)
        found = ReferenceQuery(parsed.target_type, parsed.target_id, None)
    else:
        only = param.targets[0] if len(param.targets) == 1 else None
        found = ReferenceQuery(modifier or only, text, None)
    if modifier and found.type not in (None, modifier):
        raise SearchError(f"Reference '{text}' is not a {modifier} for {key}", key)
    if found.type and param.targets and found.type not in param.targets and found.url is None:
        raise SearchError(f"{key} cannot refer to a {found.type}", key)
    return found


def _term(key: str, raw: str, param: SearchParam, modifier: str | None) -> SearchTerm:
    """Parse one OR-ed value of a parameter according to its type and modifier."""
    kind = param.type
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise SearchError(f"{key} must be true or false", key)
        return SearchTerm("eq", raw, raw == "true")
    if kind in ("date", "number", "quantity"):
        prefix, rest = _prefixed(key, raw)
        if kind == "date":
            # A `+` of a time zone arrives as a space when the client did not encode it.
            found = date_range(rest.replace(" ", "+"))
            if found is None:
                raise SearchError(f"Invalid date '{rest}' for {key}", key)
            return SearchTerm(prefix, raw, DateQuery(*found))
        if kind == "number":
            return SearchTerm(prefix, raw, _number(key, rest))
        pieces = [unescape(p) for p in split_escaped(rest, "|")]
        if len(pieces) not in (1, 3):
            raise SearchError(f"Invalid quantity '{raw}' for {key}: use number|system|code", key)
        number = _number(key, pieces[0])
        system, code = (pieces[1] or None, pieces[2] or None) if len(pieces) == 3 else (None, None)
        return SearchTerm(
            prefix, raw, QuantityQuery(*number, system, code, _canon(key, number, system, code))
        )
    if kind == "string":
        text = unescape(raw)
        # :exact compares the value as written; the default and :contains are normalised.
        return SearchTerm("eq", raw, text if modifier == "exact" else normalize(text))
    if kind == "token":
        if modifier == "text":
            return SearchTerm("eq", raw, normalize(unescape(raw)))
        if modifier in ("in", "not-in"):
            url = unescape(raw)
            codes = support.expand_valueset(url)
            if codes is None:
                raise SearchError(
                    f"{key}: value set '{url}' is unknown or cannot be expanded by this server",
                    key,
                )
            return SearchTerm("eq", raw, ValueSetQuery(url, codes))
        if modifier in ("above", "below"):
            raise SearchError(f"{key}: ':{modifier}' (subsumption) is not supported", key)
        if modifier == "of-type":
            pieces = [unescape(p) for p in split_escaped(raw, "|")]
            if len(pieces) != 3 or not pieces[2]:
                raise SearchError(f"{key} needs system|code|value, got '{raw}'", key)
            return SearchTerm(
                "eq", raw, OfTypeQuery(pieces[0] or None, pieces[1] or None, pieces[2])
            )
        return SearchTerm("eq", raw, _token(key, raw))
    if kind == "reference":
        if modifier == "identifier":
            return SearchTerm("eq", raw, _token(key, raw))
        if modifier in ("above", "below"):
            raise SearchError(f"{key}: ':{modifier}' is not supported on references", key)
        return SearchTerm("eq", raw, _reference(key, raw, param, modifier))
    if kind == "composite":
        return SearchTerm("eq", raw, _composite(key, raw, param))
    if kind == "special" and param.code == "near":
        try:
            return SearchTerm("eq", raw, NearQuery(*parse_near(unescape(raw))))
        except ValueError as exc:
            raise SearchError(str(exc), key) from None
    return SearchTerm("eq", raw, unescape(raw))  # uri


def _canon(
    key: str, number: NumberQuery, system: str | None, code: str | None
) -> tuple[float, float, float, str] | None:
    """The canonical form of a UCUM search quantity (400 for an invalid unit code)."""
    if system != UCUM or code is None:
        return None
    try:
        found = canonical(code)
    except UcumError as exc:
        raise SearchError(f"{key}: {exc}", key) from None
    if found is None:
        return None  # a special unit (Cel, [pH]...): compared by its code only
    f = found.factor
    return scale(number.value, f), scale(number.low, f), scale(number.high, f), found.unit


def _composite(key: str, raw: str, param: SearchParam) -> CompositeQuery:
    """``a$b``: each part parsed as its component's kind (search.html#composite)."""
    kinds = support.component_kinds(param)
    if kinds is None:
        raise SearchError(f"composite parameter '{param.code}' is not supported", key)
    parts = split_escaped(raw, "$")
    if len(parts) != len(kinds) or not all(parts):
        raise SearchError(
            f"{key} needs {len(kinds)} '$'-separated values ({', '.join(kinds)}), got '{raw}'",
            key,
        )
    terms = []
    for position, (part, kind) in enumerate(zip(parts, kinds, strict=True)):
        url = param.components[position][0]
        component = SearchParam(f"{param.code}${position}", kind, None, (), url)
        terms.append(_term(key, part, component, None))
    return CompositeQuery(tuple(terms))


class _Parser:
    def __init__(self, resource_type: str, registry: SearchRegistry, strict: bool) -> None:
        self.resource_type = resource_type
        self.registry = registry
        self.strict = strict
        self.unknown: list[str] = []

    def unknown_param(self, key: str, message: str) -> None:
        if self.strict:
            raise SearchError(message, key)
        self.unknown.append(key)

    def chain(self, key: str) -> tuple[str, list[tuple[str, str | None]], str] | None:
        """Follow ``a:T.b.c``: the last link's type, the chain, and its ``code[:modifier]``."""
        links = key.split(".")
        current = self.resource_type
        chain: list[tuple[str, str | None]] = []
        for position, link in enumerate(links[:-1]):
            code, _, qualifier = link.partition(":")
            param = self.registry.get(current, code)
            if param is None:
                self.unknown_param(key, f"Unknown search parameter '{code}' for {current}")
                return None
            if param.type != "reference":
                raise SearchError(f"Cannot chain through '{code}': not a reference", key)
            following = links[position + 1].partition(":")[0]
            if qualifier:
                if qualifier not in param.targets:
                    raise SearchError(f"'{code}' cannot refer to a {qualifier}", key)
                targets: tuple[str, ...] = (qualifier,)
            else:
                targets = param.targets
            candidates = [t for t in targets if self.registry.get(t, following)]
            if not candidates:
                raise SearchError(f"No target of '{code}' has a parameter '{following}'", key)
            # Unqualified: when a single target type has the next parameter, only that type
            # can match, so record it; otherwise leave None and validate the rest against
            # the first candidate (shared parameters like `name` agree across types).
            only = candidates[0] if len(candidates) == 1 else None
            chain.append((code, qualifier or only))
            current = candidates[0]
        return current, chain, links[-1]

    def param(self, key: str, value: str) -> ParsedParam | None:
        found = self.chain(key)
        if found is None:
            return None
        resource_type, chain, last = found
        code, _, modifier_text = last.partition(":")
        modifier = modifier_text or None
        param = self.registry.get(resource_type, code)
        if param is None:
            self.unknown_param(key, f"Unknown search parameter '{code}' for {resource_type}")
            return None
        if modifier is not None and modifier != "missing":
            allowed = MODIFIERS.get(param.type, frozenset())
            is_type_modifier = param.type == "reference" and modifier in param.targets
            if modifier not in allowed and not is_type_modifier:
                raise SearchError(
                    f"Modifier ':{modifier}' is not valid for {param.type} parameter '{code}'",
                    key,
                )
        raws = [p for p in split_escaped(value, ",") if p]
        if not raws:
            return None  # an empty value is ignored
        terms = tuple(_term(key, raw, param, modifier) for raw in raws)
        return ParsedParam(code, modifier, param, terms, tuple(chain))

    def sort(self, value: str) -> list[tuple[str, bool]]:
        keys: list[tuple[str, bool]] = []
        for item in value.split(","):
            code = item.strip()
            descending = code.startswith("-")
            code = code.removeprefix("-")
            if not code or self.registry.get(self.resource_type, code) is None:
                raise SearchError(f"Unknown _sort key '{item}' for {self.resource_type}", "_sort")
            keys.append((code, descending))
        return keys

    def include(self, key: str, value: str) -> IncludeParam:
        """``Type:param[:target]``, ``Type:*`` or ``*`` (search.html#include)."""
        name, _, modifier = key.partition(":")
        # R4 names it :iterate; :recurse is the STU3 spelling, still accepted.
        if modifier not in ("", "iterate", "recurse"):
            raise SearchError(f"{name} does not take the modifier ':{modifier}'", name)
        reverse, iterate = name == "_revinclude", bool(modifier)
        if value == "*":
            return IncludeParam(reverse, "*", "*", None, iterate)
        pieces = value.split(":")
        if len(pieces) not in (2, 3):
            raise SearchError(f"{name} must be Type:parameter[:target], got '{value}'", name)
        source, code = pieces[0], pieces[1]
        target = pieces[2] if len(pieces) == 3 else None
        known = self.registry.resource_types
        if code == "*" and source in known:
            if target is not None and target not in known:
                raise SearchError(f"{name}: unknown target type '{target}'", name)
            return IncludeParam(reverse, source, code, target, iterate)
        param = self.registry.get(source, code)
        if param is None or param.type != "reference":
            raise SearchError(f"{name}: '{source}:{code}' is not a reference", name)
        if target is not None and target not in (param.targets or known):
            raise SearchError(f"{name}: '{code}' cannot refer to {target}", name)
        return IncludeParam(reverse, source, code, target, iterate)

    def has(self, key: str, value: str) -> HasParam | None:
        """``_has:Type:reference:param`` (search.html#has), nesting allowed."""
        pieces = key.split(":", 3)
        if len(pieces) != 4 or not all(pieces):
            raise SearchError(f"_has must be _has:Type:reference:parameter, got '{key}'", key)
        _, source, code, rest = pieces
        link = self.registry.get(source, code)
        if link is None or link.type != "reference":
            raise SearchError(f"_has: '{source}:{code}' is not a reference", key)
        if link.targets and self.resource_type not in link.targets:
            raise SearchError(f"_has: '{source}:{code}' cannot refer to {self.resource_type}", key)
        inner = _Parser(source, self.registry, strict=True)
        try:
            found = inner.has(rest, value) if rest.startswith("_has:") else inner.param(rest, value)
        except SearchError as exc:
            raise SearchError(str(exc), key) from None
        return None if found is None else HasParam(source, code, found)


def parse_search(
    resource_type: str,
    items: list[tuple[str, str]],
    registry: SearchRegistry,
    *,
    strict: bool,
    default_count: int,
    max_count: int,
) -> SearchRequest:
    """Parse search parameters; ``strict`` rejects unknown ones (``Prefer: handling``)."""
    parser = _Parser(resource_type, registry, strict)
    params: list[ParsedParam] = []
    count, offset, summary, total = default_count, 0, None, None
    sort: list[tuple[str, bool]] = []
    elements: list[str] = []
    include: list[str] = []
    revinclude: list[str] = []
    includes: list[IncludeParam] = []
    has: list[HasParam] = []
    for key, value in items:
        name = key.partition(":")[0]
        if name == "_has":
            found_has = parser.has(key, value)
            if found_has is not None:
                has.append(found_has)
        elif name not in RESULT_PARAMS:
            parsed = parser.param(key, value)
            if parsed is not None:
                params.append(parsed)
        elif name == "_count":
            # The spec lets servers cap the page size: larger counts are clamped silently.
            count = min(_non_negative("_count", value), max_count)
        elif name == "_offset":
            offset = _non_negative("_offset", value)
        elif name == "_sort":
            sort += parser.sort(value)
        elif name == "_summary":
            if value not in _SUMMARY:
                raise SearchError(f"_summary must be one of {sorted(_SUMMARY)}", "_summary")
            summary = value
        elif name == "_elements":
            elements += [e.strip() for e in value.split(",") if e.strip()]
        elif name == "_total":
            if value not in _TOTAL:
                raise SearchError(f"_total must be one of {sorted(_TOTAL)}", "_total")
            total = value
        elif name in ("_include", "_revinclude"):
            includes.append(parser.include(key, value))
            (revinclude if includes[-1].reverse else include).append(value)
        # _format and _pretty concern the response rendering only.
    return SearchRequest(
        resource_type=resource_type,
        params=tuple(params),
        count=count,
        offset=offset,
        sort=tuple(sort),
        summary=summary,
        elements=tuple(elements),
        total=total,
        include=tuple(include),
        revinclude=tuple(revinclude),
        unknown=tuple(parser.unknown),
        includes=tuple(includes),
        has=tuple(has),
    )
