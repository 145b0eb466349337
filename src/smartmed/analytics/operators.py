"""FHIRPath operators compiled to SQL (https://hl7.org/fhirpath/N1/#operations).

Operands are singletons (a collection contributes its first element); an empty operand
gives an empty result, which is SQL NULL, so SQL's three-valued AND/OR match FHIRPath's
(https://hl7.org/fhirpath/N1/#boolean-logic).
"""

from __future__ import annotations

from smartmed.analytics.compiler import _DAYS, _MONTHS, CompileError, Compiler, Val, native_type
from smartmed.analytics.types import BOOL, INT, NUM, TEXT, FType

_COMPARE = {"=": "=", "!=": "<>", "~": "=", "!~": "<>", "<": "<", ">": ">", "<=": "<=", ">=": ">="}
_ARITH = {"+", "-", "*", "/", "div", "mod"}
_DATES = frozenset({"date", "dateTime", "instant"})


def _common_kind(c: Compiler, op: str, left: Val, right: Val) -> str:
    kinds = {left.kind, right.kind} - {None}
    if left.kind is None and left.type.name not in ("Any",) and left.one != "NULL":
        kinds.add("json")
    if right.kind is None and right.type.name not in ("Any",) and right.one != "NULL":
        kinds.add("json")
    if kinds <= {INT, NUM}:
        return NUM if NUM in kinds else INT
    if len(kinds) == 1:
        return str(kinds.pop())
    if not kinds:
        return TEXT
    names = f"{left.type.name} {op} {right.type.name}"
    raise CompileError(f"cannot compare {names}")


def _logic(c: Compiler, op: str, left: Val, right: Val) -> Val:
    a = c.boolean(left, f"the left operand of '{op}'")
    b = c.boolean(right, f"the right operand of '{op}'")
    sql = {
        "and": f"({a} AND {b})",
        "or": f"({a} OR {b})",
        "xor": f"({a} <> {b})",
        "implies": f"((NOT {a}) OR {b})",
    }[op]
    return Val(native_type(BOOL), one=sql, native=BOOL)


def _date_shift(c: Compiler, op: str, date: Val, amount: Val) -> Val:
    assert amount.quantity is not None
    value, unit = amount.quantity
    if value != int(value) or unit not in {**_MONTHS, **_DAYS}:
        raise CompileError(f"date arithmetic needs whole calendar durations, not {unit!r}")
    sign = -1 if op == "-" else 1
    months = sign * int(value) * _MONTHS.get(unit, 0)
    days = sign * int(value) * _DAYS.get(unit, 0)
    sql = c.d.shift_date(c.native(date, TEXT), months, days)
    return Val(FType("date"), one=sql, native=TEXT)


def _arith(c: Compiler, op: str, left: Val, right: Val) -> Val:
    if right.quantity is not None and left.type.name in _DATES and op in "+-":
        return _date_shift(c, op, left, right)
    if op == "+" and left.kind == TEXT and right.kind == TEXT:
        sql = f"({c.native(left, TEXT)} || {c.native(right, TEXT)})"
        return Val(native_type(TEXT), one=sql, native=TEXT)
    if left.kind not in (INT, NUM) or right.kind not in (INT, NUM):
        raise CompileError(f"'{op}' needs numbers, not {left.type.name} and {right.type.name}")
    kind = NUM if NUM in (left.kind, right.kind) or op == "/" else INT
    a, b = c.native(left, kind), c.native(right, kind)
    if op == "/":
        sql = f"({a} / NULLIF({b}, 0))"
    elif op == "div":
        sql = f"CAST(floor({a} / NULLIF({b}, 0)) AS {c.d.types[INT]})"
    elif op == "mod":
        sql = f"({a} % NULLIF({b}, 0))"
    else:
        sql = f"({a} {op} {b})"
    return Val(native_type(kind), one=sql, native=kind)


def binary(c: Compiler, op: str, left: Val, right: Val) -> Val:
    """Compile ``left op right``."""
    if op in ("and", "or", "xor", "implies"):
        return _logic(c, op, left, right)
    if op in _COMPARE:
        kind = _common_kind(c, op, left, right)
        if kind == "json":
            a, b = c.text(left), c.text(right)
        else:
            a, b = c.native(left, kind), c.native(right, kind)
        return Val(native_type(BOOL), one=f"({a} {_COMPARE[op]} {b})", native=BOOL)
    if op == "&":  # string concatenation; empty operands count as ''
        a = f"COALESCE({c.native(left, TEXT)}, '')"
        b = f"COALESCE({c.native(right, TEXT)}, '')"
        return Val(native_type(TEXT), one=f"({a} || {b})", native=TEXT)
    if op in _ARITH:
        return _arith(c, op, left, right)
    raise CompileError(f"operator '{op}' is not supported")
