"""FHIRPath functions of the ViewDefinition subset, compiled to SQL.

The required set of https://build.fhir.org/ig/FHIR/sql-on-fhir-v2/#required-additional-functions
and #fhirpath-functionality: ``where``, ``exists``, ``empty``, ``first``, ``not``, ``join``,
``ofType``, ``extension``, ``getResourceKey``, ``getReferenceKey``; plus ``count``,
``iif`` and ``today`` (FHIRPath N1) used by the starter views.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smartmed.analytics import fhirpath as fp
from smartmed.analytics.compiler import _REF, CompileError, Compiler, Val, native_type
from smartmed.analytics.types import ANY, BOOL, INT, NUM, TEXT, FType, kind_of

Fn = Callable[[Compiler, fp.Call, Val, Val, str], Val]


def _arity(node: fp.Call, low: int, high: int) -> None:
    if not low <= len(node.args) <= high:
        wanted = str(low) if low == high else f"{low} to {high}"
        raise CompileError(f"{node.name}() takes {wanted} argument(s), got {len(node.args)}")


def _where(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
    _arity(node, 1, 1)
    coll = c.coll(base)
    item = Val(base.type, many=coll)
    criterion = c.compile(node.args[0], c.element(item), ri)
    coll.conds.append(c.boolean(criterion, "the where() criterion"))
    c.list_filter(
        coll,
        base.type,
        lambda x: c.boolean(c.compile(node.args[0], x, ri), "the where() criterion"),
    )
    return item


def _exists(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
    _arity(node, 0, 1)
    if node.args:
        base = _where(c, node, base, focus, ri)
    if base.many is None:
        sql = f"({base.one or 'NULL'} IS NOT NULL)"
    else:
        sql = c.d.exists(base.many)
    return Val(native_type(BOOL), one=sql, native=BOOL)


def _empty(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
    _arity(node, 0, 0)
    exists = _exists(c, node, base, focus, ri)
    return Val(native_type(BOOL), one=f"(NOT {exists.one})", native=BOOL)


def _first(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
    _arity(node, 0, 0)
    return c.single(base)


def _count(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
    _arity(node, 0, 0)
    if base.many is None:
        sql = f"(CASE WHEN {base.one or 'NULL'} IS NULL THEN 0 ELSE 1 END)"
    else:
        sql = c.d.count(base.many)
    return Val(native_type(INT), one=sql, native=INT)


def _not(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
    _arity(node, 0, 0)
    return Val(native_type(BOOL), one=f"(NOT {c.boolean(base, 'not()')})", native=BOOL)


def _join(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
    _arity(node, 0, 1)
    sep = c.native(c.compile(node.args[0], focus, ri), TEXT) if node.args else "''"
    coll = c.coll(base)
    item = c.element(Val(base.type, many=coll))
    return Val(native_type(TEXT), one=c.d.join(coll, c.text(item), sep), native=TEXT)


def _type_arg(node: fp.Call) -> str:
    _arity(node, 1, 1)
    arg = node.args[0]
    if isinstance(arg, fp.TypeName):
        return arg.name
    if isinstance(arg, fp.Member) and arg.target is None:
        return arg.name
    raise CompileError(f"{node.name}() needs a type name")


def _of_type(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
    type_name = _type_arg(node)
    if base.type.choices:
        return c.resolve_choice(base, type_name)
    if c.model.named(type_name) is None:
        raise CompileError(f"unknown type '{type_name}' in ofType()")
    if base.type.name == "Any" or base.type.name.lower() == type_name.lower():
        return base
    return Val(FType(type_name), one="NULL", native=kind_of(type_name))


def _extension(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
    _arity(node, 1, 1)
    url = c.native(c.compile(node.args[0], focus, ri), TEXT)
    ext = c.coll(c.member(base, "extension"))
    item = Val(c.model.named("Extension") or ANY, many=ext)
    ext.conds.append(f"{c.native(c.member(c.element(item), 'url'), TEXT)} = {url}")
    c.list_filter(ext, item.type, lambda x: f"{c.native(c.member(x, 'url'), TEXT)} = {url}")
    return item


def _resource_key(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
    _arity(node, 0, 0)
    if base.type.struct is None or not base.type.struct.is_resource:
        raise CompileError("getResourceKey() applies to a resource")
    # sql-on-fhir-v2 #getresourcekey: an opaque key; here the logical id
    return Val(native_type(TEXT), one=c.native(c.member(base, "id"), TEXT), native=TEXT)


def _reference_key(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
    _arity(node, 0, 1)
    if base.type.name not in ("Reference", "Any"):
        raise CompileError(f"getReferenceKey() applies to a Reference, not {base.type.name}")
    wanted = _type_arg(node) if node.args else None
    if wanted is not None and c.model.resource(wanted) is None:
        raise CompileError(f"unknown resource type '{wanted}' in getReferenceKey()")
    ref = c.native(c.member(c.single(base), "reference"), TEXT)
    type_, key = c.d.reference_parts(ref, _REF)
    if wanted is not None:
        key = f"(CASE WHEN {type_} = {c.d.literal(wanted)} THEN {key} END)"
    return Val(native_type(TEXT), one=key, native=TEXT)


def _iif(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
    _arity(node, 2, 3)
    cond = c.boolean(c.compile(node.args[0], focus, ri), "the iif() criterion")
    then = c.compile(node.args[1], focus, ri)
    other = c.compile(node.args[2], focus, ri) if len(node.args) == 3 else Val(ANY, one="NULL")
    kind = then.kind or other.kind or TEXT
    sql = f"(CASE WHEN {cond} THEN {c.native(then, kind)} ELSE {c.native(other, kind)} END)"
    return Val(native_type(kind), one=sql, native=kind)


def _today(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
    _arity(node, 0, 0)
    return Val(FType("date"), one=c.d.today(), native=TEXT)


def _boundary(high: bool) -> Fn:
    """lowBoundary() / highBoundary() (FHIRPath R5 / N1, sql-on-fhir-v2 fn_boundary).

    The least / greatest value a primitive of this precision may stand for: a decimal
    ±half a unit in its last digit (1.0 → 0.95 / 1.05); a partial date its first / last
    day; a dateTime its first / last millisecond, in the earliest (+14:00) / latest
    (-12:00) zone when it has none; a time its first / last millisecond.
    """

    def fn(c: Compiler, node: fp.Call, base: Val, focus: Val, ri: str) -> Val:
        _arity(node, 0, 0)
        name = base.type.name
        value = c.single(base)
        if value.one is None or value.one == "NULL":
            return Val(base.type, one="NULL", native=value.native)
        t = c.native(value, TEXT)
        d = c.d
        if name == "decimal" or (name == "Any" and value.native == NUM):
            dot = d.strpos(t, "'.'")
            digits = f"(CASE WHEN {dot} > 0 THEN length({t}) - {dot} ELSE 0 END)"
            half = f"{d.decimal(f'(0.5 * power(10, -{digits}))')}"
            sql = f"({d.decimal(t)} {'+' if high else '-'} {half})"
            return Val(native_type(NUM), one=d.cast(sql, NUM), native=NUM)
        if name in ("integer", "positiveInt", "unsignedInt", "integer64"):
            return value
        if name == "date":
            return Val(FType("date"), one=_date_edge(d, t, high), native=TEXT)
        if name in ("dateTime", "instant"):
            day = _date_edge(d, t, high)
            fill = "T23:59:59.999-12:00" if high else "T00:00:00.000+14:00"
            time_part = f"substr({t}, 11)"
            with_time = f"({t} || {_time_fill(d, time_part, high, zone=True)})"
            sql = f"(CASE WHEN length({t}) <= 10 THEN {day} || '{fill}' ELSE {with_time} END)"
            return Val(FType(name), one=sql, native=TEXT)
        if name == "time":
            return Val(FType("time"), one=f"({t} || {_time_fill(d, t, high)})", native=TEXT)
        raise CompileError(f"{node.name}() applies to decimal, date, dateTime or time, not {name}")

    return fn


def _date_edge(d: Any, t: str, high: bool) -> str:
    """First / last day of a partial ISO date text (YYYY, YYYY-MM, YYYY-MM-DD...)."""
    if high:
        month = f"{d.last_day(f'(substr({t}, 1, 7) || {chr(39)}-01{chr(39)})')}"
        return (
            f"(CASE WHEN length({t}) = 4 THEN {t} || '-12-31' "
            f"WHEN length({t}) = 7 THEN {month} ELSE substr({t}, 1, 10) END)"
        )
    return (
        f"(CASE WHEN length({t}) = 4 THEN {t} || '-01-01' "
        f"WHEN length({t}) = 7 THEN {t} || '-01' ELSE substr({t}, 1, 10) END)"
    )


def _time_fill(d: Any, t: str, high: bool, *, zone: bool = False) -> str:
    """What completes a time text (``HH:MM``, ``HH:MM:SS``, fraction) to milliseconds.

    ``t`` may end in a zone (dateTime): then it already carries one and only a missing
    fraction is added before it is impossible to splice, so such values keep their form.
    """
    minutes = "':59.999'" if high else "':00.000'"
    millis = "'.999'" if high else "'.000'"
    no_zone = "'-12:00'" if high else "'+14:00'"
    plain = (
        f"(CASE WHEN length({t}) = 5 THEN {minutes} WHEN length({t}) = 8 THEN {millis} ELSE '' END)"
    )
    if not zone:
        return plain
    # dateTime tail after the date: 'THH:MM:SS[.fff][zone]'
    tail = f"substr({t}, 2)"
    z, plus, minus = d.strpos(t, "'Z'"), d.strpos(tail, "'+'"), d.strpos(tail, "'-'")
    has_zone = f"({z} > 0 OR {plus} > 0 OR {minus} > 0)"
    bare = f"(CASE WHEN length({t}) = 9 THEN {millis} ELSE '' END)"
    return f"(CASE WHEN {has_zone} THEN '' ELSE {bare} || {no_zone} END)"


FUNCTIONS: dict[str, Fn] = {
    "lowBoundary": _boundary(high=False),
    "highBoundary": _boundary(high=True),
    "where": _where,
    "exists": _exists,
    "empty": _empty,
    "first": _first,
    "count": _count,
    "not": _not,
    "join": _join,
    "ofType": _of_type,
    "extension": _extension,
    "getResourceKey": _resource_key,
    "getReferenceKey": _reference_key,
    "iif": _iif,
    "today": _today,
}


def call(c: Compiler, node: fp.Call, base: Val, focus: Val, row_index: str) -> Val:
    """Compile the function call ``node`` on ``base``."""
    fn = FUNCTIONS.get(node.name)
    if fn is None:
        raise CompileError(f"unknown or unsupported function {node.name}()")
    if base.type.choices and fn is not _of_type:
        base = c.resolve_choice(base, None)  # value[x] without ofType(): any present type
    return fn(c, node, base, focus, row_index)
