"""Turn a parsed search into SQL over the ``resource`` table and the typed ``idx_*`` tables.

Every parameter becomes ``pk IN (SELECT res_pk ...)`` over its index table; values of
one parameter are OR-ed, parameters are AND-ed. Date, number and quantity comparisons
work on ranges, as https://hl7.org/fhir/R4/search.html#prefix defines them: the search
value's precision gives [sl, sh], the stored value's [vl, vh]. A composite joins the rows
of its components on (res_pk, grp) (see ``storage/tables.py``); ``near`` tests a bounding
box and the exact great-circle distance (``geo.py``); ``_text``/``_content`` are substring
matches on the normalised texts (``text.py``). A token value also matches its blind-index
form, which is what the index holds for a protected value (``storage/protect.py``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Text, and_, false, literal, not_, or_, select, true
from sqlalchemy.sql import FromClause

from smartmed.fhir.errors import Invalid
from smartmed.fhir.hooks import current_access
from smartmed.fhir.search import geo, support
from smartmed.fhir.search.query import (
    CompositeQuery,
    DateQuery,
    NearQuery,
    NumberQuery,
    OfTypeQuery,
    ParsedParam,
    QuantityQuery,
    ReferenceQuery,
    SearchTerm,
    TokenQuery,
    ValueSetQuery,
)
from smartmed.fhir.search.rows import composite_param
from smartmed.fhir.search.text import search_words
from smartmed.fhir.storage.protect import BlindCode
from smartmed.fhir.storage.tables import INDEX_TABLES, resource

# A resource type: a literal, or a column when an unqualified chain allows several.
TypeExpr = str | ColumnElement[str]

SUPPORTED_KINDS = frozenset(
    {"token", "string", "reference", "date", "number", "quantity", "uri", "composite", "special"}
)
# The index table of each parameter kind (composites use their components' tables).
_TABLE_OF_KIND = {**{k: k for k in INDEX_TABLES if k not in ("geo", "text")}, "special": "geo"}
_MAX_VALUESET_CODES = 10_000


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _date(term: SearchTerm) -> tuple[datetime, datetime]:
    if not isinstance(term.value, DateQuery):
        raise Invalid(f"'{term.raw}' is not a date", expression="_lastUpdated")
    return term.value.low, term.value.high


# One alias per index table for the ``pk IN (SELECT res_pk FROM …)`` subqueries. Each
# subquery is its own scope, so several parameters share the alias; making a fresh alias
# per parameter copied every column of the table on every search (a third of the time
# spent building a query). Chains and ``_has`` keep fresh aliases for the tables of their
# enclosing SELECTs, so a subquery here never correlates with them.
_MATCH = {kind: table.alias(f"m_{kind}") for kind, table in INDEX_TABLES.items()}


def param_condition(
    res: FromClause, type_: TypeExpr, parsed: ParsedParam, *, is_postgres: bool
) -> ColumnElement[bool]:
    """The SQL condition for one (AND-ed) search parameter on resource alias ``res``."""
    code = parsed.code
    if code == "_id":
        ids = [term.raw for term in parsed.values]
        cond = res.c.id.in_(ids)
        return not_(cond) if parsed.modifier == "not" else cond
    if code == "_lastUpdated":
        return or_(
            *[
                range_compare(res.c.last_updated, res.c.last_updated, t.prefix, *_date(t))
                for t in parsed.values
            ]
        )
    if parsed.chain:
        return _chain_condition(res, type_, parsed, is_postgres=is_postgres)
    kind = parsed.param.type
    if code in support.TEXT_PARAMS:
        kind = "text"
    elif kind == "composite" and parsed.modifier != "missing":
        return _composite_condition(res, type_, parsed, is_postgres=is_postgres)
    if kind == "composite":  # :missing looks for the first component's rows
        kinds = support.component_kinds(parsed.param)
        if kinds is None:
            raise Invalid(f"composite parameter '{code}' is not supported", expression=code)
        kind, code = kinds[0], composite_param(code, 0)
    table_kind = "text" if kind == "text" else _TABLE_OF_KIND.get(kind)
    if table_kind is None or (kind == "special" and code != "near"):
        raise Invalid(f"searching by {kind} parameter '{code}' is not supported", expression=code)
    table = _MATCH[table_kind]
    # ``pk IN (SELECT res_pk ...)`` rather than a correlated EXISTS: both databases then
    # drive from the (small) set of matching index rows instead of probing every resource.
    base = and_(table.c.resource_type == type_, table.c.param == code)
    if parsed.modifier == "missing":
        # Values are OR-ed: `:missing=true,false` asks for resources with or without one.
        wanted = {t.raw == "true" for t in parsed.values} or {True}
        having = select(table.c.res_pk).where(base)
        if wanted == {True, False}:
            return true()
        return res.c.pk.not_in(having) if True in wanted else res.c.pk.in_(having)
    options = [
        _value_condition(table, kind, parsed.modifier, t, is_postgres) for t in parsed.values
    ]
    matching = select(table.c.res_pk).where(base, or_(*options))
    if parsed.modifier in ("not", "not-in") and kind == "token":
        # :not (:not-in) matches resources that have no value equal to (in) any of the terms.
        return res.c.pk.not_in(matching)
    return res.c.pk.in_(matching)


def _value_condition(
    t: FromClause, kind: str, modifier: str | None, term: SearchTerm, is_postgres: bool
) -> ColumnElement[bool]:
    value = term.value
    c = t.c
    if kind == "text" and isinstance(value, str):
        words = search_words(value)
        likes = [c.value.like(f"%{_escape_like(w)}%", escape="\\") for w in words]
        return and_(*likes) if likes else true()
    if kind == "reference" and modifier == "identifier" and isinstance(value, TokenQuery):
        # search.html#reference: :identifier matches Reference.identifier like a token.
        return _token_match(c.ident_system, c.ident_value, value)
    if kind == "token" and isinstance(value, TokenQuery):
        return _token_match(c.system, c.code, value)
    if kind == "token" and isinstance(value, OfTypeQuery):
        # search.html#token: Identifier.type coding and Identifier.value; not its system.
        conds = [_code_is(c.code, value.value), c.type_code.is_not(None)]
        if value.system is not None:
            conds.append(c.type_system == value.system)
        if value.code is not None:
            conds.append(c.type_code == value.code)
        return and_(*conds)
    if kind == "token" and isinstance(value, ValueSetQuery):
        return _in_valueset(c, value)
    if kind == "special" and isinstance(value, NearQuery):
        return _near(c, value)
    if kind == "token" and modifier == "text" and isinstance(value, str):
        return c.text.like(f"{_escape_like(value)}%", escape="\\")
    if kind == "string" and isinstance(value, str):
        if modifier == "exact":
            return c.value == value
        if modifier == "contains":
            return c.norm.like(f"%{_escape_like(value)}%", escape="\\")
        if is_postgres:
            return c.norm.like(f"{_escape_like(value)}%", escape="\\")
        # SQLite uses the index for a range, not for LIKE under its case-insensitive default.
        return and_(c.norm >= value, c.norm < value + "\U0010ffff")
    if kind == "reference" and isinstance(value, ReferenceQuery):
        ref_type, ref_id, url = value
        if modifier and modifier[0].isupper():
            ref_type = modifier
        if url is not None and ref_id is None:
            return c.url == url
        cond = c.target_id == ref_id
        return and_(cond, c.target_type == ref_type) if ref_type else cond
    if kind == "date" and isinstance(value, DateQuery):
        return range_compare(c.low, c.high, term.prefix, value.low, value.high)
    if kind == "number" and isinstance(value, NumberQuery):
        return _number_compare(c.value, term.prefix, value.value, value.low, value.high)
    if kind == "quantity" and isinstance(value, QuantityQuery):
        cond = _number_compare(c.value, term.prefix, value.value, value.low, value.high)
        if value.code is not None:
            unit_match = (
                or_(c.code == value.code, c.unit == value.code)
                if value.system is None
                else and_(c.system == value.system, c.code == value.code)
            )
            cond = and_(cond, unit_match)
        if value.canon is None:
            return cond
        # UCUM: compare canonical forms (ucum.py); rows without one (not convertible, or
        # indexed before canonical values existed) still match by their own unit.
        cv, cl, ch, unit = value.canon
        canonical = and_(
            c.canon_unit == unit, _number_compare(c.canon_value, term.prefix, cv, cl, ch)
        )
        return or_(canonical, and_(c.canon_unit.is_(None), cond))
    if kind == "uri" and isinstance(value, str):
        if modifier == "below":
            # search.html#uri: the value and everything under it, at path boundaries.
            stem = value.rstrip("/")
            below = c.value.like(f"{_escape_like(stem)}/%", escape="\\")
            return or_(c.value.in_(sorted({value, stem})), below)
        if modifier == "above":
            return c.value.in_(_uri_prefixes(value))
        return c.value == value
    raise Invalid(
        f"searching {kind} parameters with ':{modifier}' is not supported", expression=term.raw
    )


def _code_is(code: Any, wanted: str | None) -> ColumnElement[bool]:
    """The code column equals ``wanted`` as given or in its blind-index form."""
    if wanted is None:
        return cast(ColumnElement[bool], code.is_(None))
    return cast(
        ColumnElement[bool], code.in_([literal(wanted, Text()), literal(wanted, BlindCode())])
    )


def _token_match(system: Any, code: Any, value: TokenQuery) -> ColumnElement[bool]:
    """``[system]|[code]`` semantics (search.html#token) on a system and a code column."""
    wanted_system, wanted_code, system_given = value
    if not system_given:
        return _code_is(code, wanted_code)
    if wanted_code is None:
        return cast(ColumnElement[bool], system == wanted_system)
    if wanted_system is None:
        return and_(system.is_(None), _code_is(code, wanted_code))
    return and_(system == wanted_system, _code_is(code, wanted_code))


def _in_valueset(c: Any, value: ValueSetQuery) -> ColumnElement[bool]:
    """A coding in the expansion; a bare code (``code`` elements) by its code alone."""
    if len(value.codes) > _MAX_VALUESET_CODES:
        raise Invalid(f"value set '{value.url}' is too large to search with", expression=value.url)
    by_system: dict[str, list[str]] = {}
    for system, code in value.codes:
        by_system.setdefault(system, []).append(code)
    codes = sorted({code for _, code in value.codes})
    options = [and_(c.system == s, c.code.in_(sorted(cs))) for s, cs in sorted(by_system.items())]
    options.append(and_(c.system.is_(None), c.code.in_(codes)))
    return or_(*options)


def _near(c: Any, value: NearQuery) -> ColumnElement[bool]:
    """Within the distance: a bounding box (indexable), then the exact chord test."""
    area = geo.area(value.lat, value.lon, value.distance_m)
    conds = [c.lat >= area.lat_low, c.lat <= area.lat_high]
    if area.lon_ranges:
        conds.append(or_(*[and_(c.lon >= low, c.lon <= high) for low, high in area.lon_ranges]))
    x, y, z = area.center
    chord = (c.x - x) * (c.x - x) + (c.y - y) * (c.y - y) + (c.z - z) * (c.z - z)
    conds.append(chord <= area.max_chord_squared)
    return and_(*conds)


def _uri_prefixes(value: str) -> list[str]:
    """The value and its parents at ``/`` boundaries past the authority (uri :above)."""
    start = value.find("://")
    start = value.find("/", start + 3) if start >= 0 else value.find("/")
    prefixes = [value]
    while start > 0:
        prefixes.append(value[:start])
        start = value.find("/", start + 1)
    return sorted(set(prefixes))


def _composite_condition(
    res: FromClause, type_: TypeExpr, parsed: ParsedParam, *, is_postgres: bool
) -> ColumnElement[bool]:
    """Components matched within one element: rows joined on (res_pk, grp)."""
    kinds = support.component_kinds(parsed.param)
    if kinds is None:
        raise Invalid(
            f"composite parameter '{parsed.code}' is not supported", expression=parsed.code
        )
    options = []
    for term in parsed.values:
        if not isinstance(term.value, CompositeQuery):
            raise Invalid(f"'{term.raw}' is not a composite value", expression=parsed.code)
        tables = [INDEX_TABLES[kind].alias() for kind in kinds]
        first = tables[0]
        joined: Any = first
        conds = []
        for position, (table, kind, sub) in enumerate(
            zip(tables, kinds, term.value.terms, strict=True)
        ):
            if position:
                joined = joined.join(
                    table, and_(table.c.res_pk == first.c.res_pk, table.c.grp == first.c.grp)
                )
            conds += [
                table.c.resource_type == type_,
                table.c.param == composite_param(parsed.code, position),
                _value_condition(table, kind, None, sub, is_postgres),
            ]
        options.append(res.c.pk.in_(select(first.c.res_pk).select_from(joined).where(*conds)))
    return or_(*options)


def range_compare(
    low: Any, high: Any, prefix: str, sl: datetime, sh: datetime
) -> ColumnElement[bool]:
    """Compare a stored range [low, high] with the search range [sl, sh] under ``prefix``."""
    eq = and_(low >= sl, high <= sh)
    match prefix:
        case "eq":
            return eq
        case "ne":
            return not_(eq)
        case "gt":
            return cast(ColumnElement[bool], high > sh)
        case "lt":
            return cast(ColumnElement[bool], low < sl)
        case "ge":
            return or_(high > sh, eq)
        case "le":
            return or_(low < sl, eq)
        case "sa":
            return cast(ColumnElement[bool], low > sh)
        case "eb":
            return cast(ColumnElement[bool], high < sl)
        case "ap":
            # 'ap': within 10% of the gap between the value and now (search.html#prefix).
            now = datetime.now()
            slack = max(abs(now - sl), timedelta(days=1)) * 0.1
            return and_(high >= sl - slack, low <= sh + slack)
    raise Invalid(f"unknown prefix '{prefix}'")


def _number_compare(
    v: Any, prefix: str, number: float, sl: float, sh: float
) -> ColumnElement[bool]:
    match prefix:
        case "eq":
            return and_(v >= sl, v < sh)
        case "ne":
            return or_(v < sl, v >= sh)
        case "gt" | "sa":
            return cast(ColumnElement[bool], v > number)
        case "lt" | "eb":
            return cast(ColumnElement[bool], v < number)
        case "ge":
            return cast(ColumnElement[bool], v >= number)
        case "le":
            return cast(ColumnElement[bool], v <= number)
        case "ap":
            slack = abs(number) * 0.1
            return and_(v >= number - slack, v <= number + slack)
    raise Invalid(f"unknown prefix '{prefix}'")


def _chain_condition(
    res: FromClause, type_: TypeExpr, parsed: ParsedParam, *, is_postgres: bool
) -> ColumnElement[bool]:
    """``subject:Patient.name=x``: the reference points at a live resource matching the rest."""
    (ref_code, target_type), *rest = parsed.chain
    ref = INDEX_TABLES["reference"].alias()
    target = resource.alias()
    joined = ref.join(
        target, and_(target.c.type == ref.c.target_type, target.c.id == ref.c.target_id)
    )
    cond = and_(
        ref.c.resource_type == type_,
        ref.c.param == ref_code,
        target.c.deleted == false(),
    )
    if target_type:
        cond = and_(cond, ref.c.target_type == target_type)
    # Unqualified chains (several possible target types) match on the target's own type.
    inner_type: TypeExpr = target_type or target.c.type
    inner = replace(parsed, chain=tuple(rest))
    inner_cond = param_condition(target, inner_type, inner, is_postgres=is_postgres)
    # Criteria on resources the caller may not see would reveal them (a patient's name
    # found through a chain): the chain only follows references to what the caller sees.
    guard = current_access.get()
    if guard is not None:
        allowed = (
            guard.search_condition(target, target_type)
            if target_type
            else guard.any_condition(target)
        )
        if allowed is not None:
            inner_cond = and_(inner_cond, allowed)
    return res.c.pk.in_(select(ref.c.res_pk).select_from(joined).where(cond, inner_cond))
