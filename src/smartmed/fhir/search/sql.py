"""Turn a parsed search into SQL over the ``resource`` table and the typed ``idx_*`` tables.

Every parameter becomes an ``EXISTS`` over its index table, correlated on the resource's
surrogate key; values of one parameter are OR-ed, parameters are AND-ed. Date, number
and quantity comparisons work on ranges, as https://hl7.org/fhir/R4/search.html#prefix
defines them: the search value's precision gives [sl, sh], the stored value's [vl, vh].
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, false, not_, or_, select
from sqlalchemy.sql import FromClause

from smartmed.fhir.errors import Invalid
from smartmed.fhir.search.query import (
    DateQuery,
    NumberQuery,
    ParsedParam,
    QuantityQuery,
    ReferenceQuery,
    SearchTerm,
    TokenQuery,
)
from smartmed.fhir.storage.tables import INDEX_TABLES, resource

# A resource type: a literal, or a column when an unqualified chain allows several.
TypeExpr = str | ColumnElement[str]

SUPPORTED_KINDS = frozenset({"token", "string", "reference", "date", "number", "quantity", "uri"})


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _date(term: SearchTerm) -> tuple[datetime, datetime]:
    if not isinstance(term.value, DateQuery):
        raise Invalid(f"'{term.raw}' is not a date", expression="_lastUpdated")
    return term.value.low, term.value.high


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
    if kind not in INDEX_TABLES:
        raise Invalid(f"searching by {kind} parameter '{code}' is not supported", expression=code)
    table = INDEX_TABLES[kind].alias()
    # ``pk IN (SELECT res_pk ...)`` rather than a correlated EXISTS: both databases then
    # drive from the (small) set of matching index rows instead of probing every resource.
    base = and_(table.c.resource_type == type_, table.c.param == code)
    if parsed.modifier == "missing":
        wanted = parsed.values[0].raw == "true" if parsed.values else True
        having = select(table.c.res_pk).where(base)
        return res.c.pk.not_in(having) if wanted else res.c.pk.in_(having)
    options = [
        _value_condition(table, kind, parsed.modifier, t, is_postgres) for t in parsed.values
    ]
    matching = select(table.c.res_pk).where(base, or_(*options))
    if parsed.modifier == "not" and kind == "token":
        # :not matches resources that have no value equal to any of the terms.
        return res.c.pk.not_in(matching)
    return res.c.pk.in_(matching)


def _value_condition(
    t: FromClause, kind: str, modifier: str | None, term: SearchTerm, is_postgres: bool
) -> ColumnElement[bool]:
    value = term.value
    c = t.c
    if kind == "token" and isinstance(value, TokenQuery):
        system, code, system_given = value
        if not system_given:
            return c.code == code
        if code is None:
            return c.system == system
        if system is None:
            return and_(c.system.is_(None), c.code == code)
        return and_(c.system == system, c.code == code)
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
        return cond
    if kind == "uri" and isinstance(value, str):
        if modifier == "below":
            return c.value.like(f"{_escape_like(value)}%", escape="\\")
        return c.value == value
    raise Invalid(
        f"searching {kind} parameters with ':{modifier}' is not supported", expression=term.raw
    )


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
    return res.c.pk.in_(select(ref.c.res_pk).select_from(joined).where(cond, inner_cond))
