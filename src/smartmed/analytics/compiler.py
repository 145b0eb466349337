"""FHIRPath (the ViewDefinition subset) → typed SQL expressions for one dialect.

Each expression is checked against the R4 types while it is compiled: an unknown
element or function, a criterion that is not boolean or an operator on the wrong
types is an error before any SQL runs. A value is a singleton (a SQL scalar: JSON, or
native text/boolean/number) or a collection (:class:`~smartmed.analytics.dialects.Coll`).
Semantics: https://build.fhir.org/ig/FHIR/sql-on-fhir-v2/#fhirpath-functionality and
https://hl7.org/fhirpath/N1/.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from smartmed.analytics import fhirpath as fp
from smartmed.analytics.dialects import Coll, Dialect
from smartmed.analytics.types import ANY, BOOL, INT, NUM, TEXT, FType, TypeModel, kind_of

# getReferenceKey(): the type and id of a literal reference (references.html#literal)
_REF = r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-\.]{1,64})(/_history/[^/]+)?$"
_KIND_TYPE = {BOOL: "boolean", INT: "integer", NUM: "decimal", TEXT: "string"}
_MONTHS = {"year": 12, "years": 12, "month": 1, "months": 1}
_DAYS = {"week": 7, "weeks": 7, "day": 1, "days": 1}
_STEPS = re.compile(r'\."[^"]*"|\[0\]')  # the steps of a path made by Dialect.json_path
ROOT = "r.content"  # the resource being flattened
HOISTED = "__elements"  # DuckDB: its top-level elements, parsed once


class CompileError(ValueError):
    """A type or name error in an expression."""


@dataclass(slots=True)
class Val:
    """A compiled FHIRPath value: exactly one of ``one`` (singleton) or ``many``."""

    type: FType
    one: str | None = None
    many: Coll | None = None
    native: str | None = None  # SQL kind of ``one`` when it is not JSON
    text: str | None = None  # a cheaper way to the singleton's text, when known
    quantity: tuple[Decimal, str] | None = None  # a quantity literal (date arithmetic)

    @property
    def kind(self) -> str | None:
        """The SQL kind (native or primitive JSON); None for complex values."""
        if self.one is not None and self.native:
            return self.native
        if self.many is not None and self.many.native:
            return self.many.native
        return self.type.kind


def native_type(kind: str) -> FType:
    """The FHIR type of a native SQL kind."""
    return FType(_KIND_TYPE[kind])


class Compiler:
    """Compiles expressions of one ViewDefinition for one dialect."""

    def __init__(
        self, d: Dialect, model: TypeModel, constants: dict[str, tuple[object, str]]
    ) -> None:
        self.d = d
        self.model = model
        self.constants = constants
        self._ids = itertools.count(1)
        # DuckDB: top-level elements of the resource read (parsed once per row, see
        # Dialect.hoist); their position in the list HOISTED.
        self.hoisted: dict[str, int] = {}
        # DuckDB: a field of a field … as (JSON, keys), so that a chain is one path
        self._paths: dict[str, tuple[str, list[str]]] = {}

    def field(self, json: str, key: str) -> str:
        """The JSON child ``key`` (from the once-parsed list when it is the resource's)."""
        if not self.d.lists:
            return self.d.field(json, key)
        if json == ROOT:
            index = self.hoisted.setdefault(key, len(self.hoisted) + 1)
            return f"r.{HOISTED}[{index}]"
        base, keys = self._paths.get(json, (json, []))
        sql = f"({base} -> {self.d.literal(self.d.json_path([*keys, key]))})"
        self._paths[sql] = (base, [*keys, key])
        return sql

    def field_text(self, json: str, key: str) -> str:
        """The child ``key`` as text."""
        if not self.d.lists:
            return self.d.field_text(json, key)
        if json == ROOT:
            return self.d.text(self.field(json, key))
        base, keys = self._paths.get(json, (json, []))
        return f"({base} ->> {self.d.literal(self.d.json_path([*keys, key]))})"

    def array_of(self, json: str) -> tuple[str, str]:
        """(JSON, wildcard path) of the elements of the array ``json`` (DuckDB)."""
        base, keys = self._paths.get(json, (json, []))
        return base, self.d.json_path([*keys, "[*]"])

    def alias(self) -> str:
        """A fresh table alias."""
        return f"t{next(self._ids)}"

    # --- conversions ------------------------------------------------------------------
    def coll(self, v: Val) -> Coll:
        """The value as a collection."""
        if v.many is not None:
            return dataclasses.replace(v.many, sources=list(v.many.sources))
        a = self.alias()
        value = v.one if v.one is not None else "NULL"
        if self.d.lists:  # the singleton itself, filtered in place (no subquery)
            return Coll([self.d.one_row(a)], value, [], native=v.native, single=True)
        return Coll([f"(SELECT {value} AS v) AS {a}"], f"{a}.v", [], native=v.native)

    def single(self, v: Val) -> Val:
        """The value as a singleton (a collection's first element)."""
        if v.many is None:
            return v
        c = v.many
        if c.jpath is not None and c.jpath[1].endswith("[*]") and c.jpath[1].count("[*]") == 1:
            # DuckDB: the first element of one array is a plain path (``coding[0]``), and
            # fields below it extend that path (no list is built)
            base, path = c.jpath
            steps = _STEPS.findall(path[1:-3])
            keys = [k if k == "[0]" else k[2:-1] for k in steps] + ["[0]"]
            sql = f"({base} -> {self.d.literal(self.d.json_path(keys))})"
            self._paths[sql] = (base, keys)
            return Val(v.type, one=sql, native=c.native)
        return Val(v.type, one=self.d.first(c), native=c.native)

    def element(self, v: Val) -> Val:
        """A collection's element as a singleton focus (for where() and forEach)."""
        c = v.many
        assert c is not None
        return Val(v.type, one=c.value, native=c.native)

    def native(self, v: Val, kind: str) -> str:
        """The singleton as a native SQL value of ``kind``."""
        s = self.single(v)
        if s.one is None or s.one == "NULL":
            return "NULL"
        if s.native == kind:
            return s.one
        if s.native is not None:
            return self.d.cast(s.one, kind)
        text = s.text or self.d.text(s.one)
        return text if kind == TEXT else self.d.cast(text, kind)

    def text(self, v: Val) -> str:
        """The singleton as text (JSON text for complex values)."""
        if v.kind is None:
            s = self.single(v)
            return "NULL" if s.one is None else self.d.json_text(s.one)
        return self.native(v, TEXT)

    def boolean(self, v: Val, what: str) -> str:
        """The singleton as a SQL boolean; CompileError when it cannot be one."""
        if v.kind not in (BOOL, None) or (v.kind is None and v.type.name != "Any"):
            raise CompileError(f"{what} must be boolean but is {v.type.name}")
        return self.native(v, BOOL)

    # --- expressions ------------------------------------------------------------------
    def compile(self, node: fp.Node, focus: Val, row_index: str) -> Val:
        """Compile ``node`` evaluated on ``focus`` (a bare choice element resolved)."""
        v = self._compile(node, focus, row_index)
        return self.resolve_choice(v, None) if v.type.choices else v

    def _compile(self, node: fp.Node, focus: Val, row_index: str) -> Val:
        if isinstance(node, fp.Literal):
            return self._literal(node)
        if isinstance(node, fp.Empty):
            return Val(ANY, one="NULL")
        if isinstance(node, fp.This):
            return focus
        if isinstance(node, fp.Constant):
            return self._constant(node.name, row_index)
        if isinstance(node, fp.Member):
            base = focus if node.target is None else self._compile(node.target, focus, row_index)
            return self.member(base, node.name)
        if isinstance(node, fp.Call):
            base = focus if node.target is None else self._compile(node.target, focus, row_index)
            from smartmed.analytics.functions import call

            return call(self, node, base, focus, row_index)
        if isinstance(node, fp.Index):
            base = self.compile(node.target, focus, row_index)
            index = self.native(self.compile(node.index, focus, row_index), INT)
            if base.many is None:
                one = base.one or "NULL"
                return dataclasses.replace(base, one=f"(CASE WHEN {index} = 0 THEN {one} END)")
            return Val(base.type, one=self.d.first(base.many, index), native=base.many.native)
        if isinstance(node, fp.Unary):
            v = self.compile(node.operand, focus, row_index)
            if v.kind not in (INT, NUM):
                raise CompileError(f"unary {node.op} needs a number, not {v.type.name}")
            kind = v.kind or NUM
            return Val(native_type(kind), one=f"({node.op}{self.native(v, kind)})", native=kind)
        if isinstance(node, fp.Binary):
            from smartmed.analytics.operators import binary

            left = self.compile(node.left, focus, row_index)
            right = self.compile(node.right, focus, row_index)
            return binary(self, node.op, left, right)
        raise CompileError(f"{type(node).__name__} is not supported here")

    def _literal(self, node: fp.Literal) -> Val:
        if node.type == "Quantity":
            assert isinstance(node.value, tuple)
            return Val(FType("Quantity"), one="NULL", quantity=(node.value[0], node.value[1]))
        kind = kind_of(node.type) or TEXT
        return Val(FType(node.type), one=self.d.literal(node.value), native=kind)

    def _constant(self, name: str, row_index: str) -> Val:
        if name == "rowIndex":  # sql-on-fhir-v2: 0-based index in the enclosing forEach
            return Val(FType("integer"), one=row_index, native=INT)
        if name not in self.constants:
            raise CompileError(f"undefined constant %{name}")
        value, type_ = self.constants[name]
        kind = kind_of(type_) or TEXT
        if kind == NUM and not isinstance(value, bool) and isinstance(value, int | float):
            value = Decimal(str(value))
        checks = {BOOL: bool, INT: int, NUM: Decimal, TEXT: str}
        if not isinstance(value, checks[kind]) or (kind != BOOL and isinstance(value, bool)):
            raise CompileError(f"constant %{name} is not a valid {type_}")
        return Val(FType(type_), one=self.d.literal(value), native=kind)

    def member(self, base: Val, name: str) -> Val:
        """``base.name``, checked against the R4 model."""
        if base.native is not None and base.one is not None or base.many and base.many.native:
            raise CompileError(f"{base.type.name} has no element '{name}'")
        if base.type.choices:
            base = self.resolve_choice(base, None)
        child = self.model.child(base.type, name)
        if child is None:
            raise CompileError(f"{base.type.name} has no element '{name}'")
        if child.type.choices:  # value[x]: stays on the parent until ofType() picks one
            return dataclasses.replace(base, type=child.type, text=None)
        if base.many is not None:
            c = self.coll(base)
            json = self.field(c.value, child.key)
            if child.is_array:
                a = self.alias()
                c.sources.append(self.d.elements(json, a))
                c.value, c.order = f"{a}.v", [*c.order, self.d.index(a)]
            else:
                c.value = json
            if c.single and child.is_array:  # a singleton's array: a list from here on
                c.single = False
                if not c.conds:
                    c.jpath = self.array_of(json)
                    c.lst = self.d.list_of(*c.jpath)
            elif c.lst is not None:
                self._list_step(c, child.key, bool(child.is_array))
            return Val(child.type, many=c)
        parent = base.one or "NULL"
        json = self.field(parent, child.key)
        if child.is_array:
            a = self.alias()
            coll = Coll([self.d.elements(json, a)], f"{a}.v", [self.d.index(a)])
            if self.d.lists:
                coll.jpath = self.array_of(json)
                coll.lst = self.d.list_of(*coll.jpath)
            return Val(child.type, many=coll)
        return Val(child.type, one=json, text=self.field_text(parent, child.key))

    def _list_step(self, c: Coll, key: str, is_array: bool) -> None:
        """``c.lst`` (DuckDB list form) extended by one member step."""
        assert c.lst is not None
        step = [key, "[*]"] if is_array else [key]
        if c.jpath is not None:  # one wildcard path from the same JSON: extend it
            json, path = c.jpath
            c.jpath = (json, path + self.d.json_path(step)[1:])
            c.lst = self.d.list_of(json, c.jpath[1])
            return
        x = self.alias()
        if is_array:
            inner = self.d.list_of(x, self.d.json_path(step))
            c.lst = f"flatten(list_transform({c.lst}, lambda {x}: {inner}))"
        else:
            got = f"list_transform({c.lst}, lambda {x}: {self.d.field(x, key)})"
            c.lst = f"list_filter({got}, lambda {x}: {x} IS NOT NULL)"

    def list_filter(self, c: Coll, item_type: FType, criterion: Callable[[Val], str]) -> None:
        """Keep ``c.lst`` in step with a filter just added to ``c.conds`` (DuckDB): the
        criterion compiled again on a lambda variable, or no list form when it needs a
        subquery (DuckDB lambdas cannot hold one)."""
        if c.lst is None or c.single:
            return
        x = self.alias()
        sql = criterion(Val(item_type, one=x))
        if "SELECT" in sql:
            c.lst = c.jpath = None
            return
        c.lst, c.jpath = f"list_filter({c.lst}, lambda {x}: {sql})", None

    def resolve_choice(self, v: Val, type_name: str | None) -> Val:
        """Narrow a choice element to one type (``ofType``), or to any present type."""
        options = v.type.choices
        if type_name is not None:
            picked = [o for o in options if o[0].lower() == type_name.lower()]
            if not picked:
                return Val(FType(type_name), one="NULL", native=kind_of(type_name))
            type_, key, struct = picked[0]
            result = self.member(dataclasses.replace(v, type=FType("Any")), key)
            return dataclasses.replace(result, type=FType(type_, struct))
        keys = [key for _, key, _ in options]
        if v.many is not None:
            c = self.coll(v)
            c.value = "COALESCE(" + ", ".join(self.field(c.value, k) for k in keys) + ")"
            if not c.single:
                c.lst = c.jpath = None
            return Val(ANY, many=c)
        parent = v.one or "NULL"
        return Val(ANY, one="COALESCE(" + ", ".join(self.field(parent, k) for k in keys) + ")")
