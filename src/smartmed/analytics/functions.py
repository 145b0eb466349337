"""FHIRPath functions of the ViewDefinition subset, compiled to SQL.

The required set of https://build.fhir.org/ig/FHIR/sql-on-fhir-v2/#required-additional-functions
and #fhirpath-functionality: ``where``, ``exists``, ``empty``, ``first``, ``not``, ``join``,
``ofType``, ``extension``, ``getResourceKey``, ``getReferenceKey``; plus ``count``,
``iif`` and ``today`` (FHIRPath N1) used by the starter views.
"""

from __future__ import annotations

from collections.abc import Callable

from smartmed.analytics import fhirpath as fp
from smartmed.analytics.compiler import _REF, CompileError, Compiler, Val, native_type
from smartmed.analytics.types import ANY, BOOL, INT, TEXT, FType, kind_of

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
    key = c.d.regex_group(ref, _REF, 2)
    if wanted is not None:
        type_ = c.d.regex_group(ref, _REF, 1)
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


FUNCTIONS: dict[str, Fn] = {
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
