"""ViewDefinition JSON → checked dataclasses (structure, names, constants, FHIRPath syntax).

Follows https://build.fhir.org/ig/FHIR/sql-on-fhir-v2/StructureDefinition-ViewDefinition.html.
Every problem is an :class:`~smartmed.fhir.errors.Invalid` whose expression names the
offending element (``ViewDefinition.select[0].column[1].path``), raised before any SQL
is built or run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from smartmed.analytics.fhirpath import Node, PathError, parse
from smartmed.fhir.errors import Invalid

# ViewDefinition.select.column.name: "^[A-Za-z][A-Za-z0-9_]*$" (sql-name invariant)
_COLUMN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_ROOT = "ViewDefinition"
# Constant types: ViewDefinition.constant.value[x]
CONSTANT_TYPES = (
    "base64Binary boolean canonical code date dateTime decimal id instant integer integer64 "
    "oid string positiveInt time unsignedInt uri url uuid"
).split()


@dataclass(slots=True)
class Expr:
    """A FHIRPath expression with its source text and location in the ViewDefinition."""

    text: str
    node: Node
    where: str


@dataclass(slots=True)
class Column:
    """ViewDefinition.select.column."""

    name: str
    path: Expr
    type: str | None
    collection: bool | None
    where: str


@dataclass(slots=True)
class Select:
    """ViewDefinition.select (also each unionAll branch)."""

    where: str
    columns: list[Column] = field(default_factory=list)
    selects: list[Select] = field(default_factory=list)
    union_all: list[Select] = field(default_factory=list)
    for_each: Expr | None = None
    or_null: bool = False  # forEachOrNull rather than forEach
    repeat: list[Expr] = field(default_factory=list)

    def column_names(self) -> list[str]:
        """Output columns in spec order: own columns, nested selects, then unionAll."""
        names = [c.name for c in self.columns]
        for child in self.selects:
            names += child.column_names()
        if self.union_all:
            names += self.union_all[0].column_names()
        return names


@dataclass(slots=True)
class View:
    """A checked ViewDefinition."""

    resource: str
    select: list[Select]
    where: list[Expr]
    constants: dict[str, tuple[object, str]]
    name: str | None
    raw: dict[str, Any]

    def column_names(self) -> list[str]:
        """The view's output columns, in order."""
        return [name for s in self.select for name in s.column_names()]


def _fail(text: str, where: str) -> Invalid:
    return Invalid(text, expression=where)


def _expr(value: object, where: str) -> Expr:
    if not isinstance(value, str):
        raise _fail("a FHIRPath expression must be a string", where)
    try:
        return Expr(value, parse(value), where)
    except PathError as exc:
        raise _fail(f"bad FHIRPath {value!r}: {exc}", where) from None


def _list(parent: dict[str, Any], key: str, where: str) -> list[Any]:
    value = parent.get(key, [])
    if not isinstance(value, list):
        raise _fail(f"{key} must be an array", f"{where}.{key}")
    return value


def _column(raw: object, where: str) -> Column:
    if not isinstance(raw, dict):
        raise _fail("a column must be an object", where)
    name = raw.get("name")
    if not isinstance(name, str) or not _COLUMN_NAME.fullmatch(name):
        raise _fail("column name must match ^[A-Za-z][A-Za-z0-9_]*$", f"{where}.name")
    if "path" not in raw:
        raise _fail("a column needs a path", f"{where}.path")
    type_ = raw.get("type")
    if type_ is not None and not isinstance(type_, str):
        raise _fail("column type must be a string", f"{where}.type")
    collection = raw.get("collection")
    if collection is not None and not isinstance(collection, bool):
        raise _fail("collection must be true or false", f"{where}.collection")
    return Column(name, _expr(raw["path"], f"{where}.path"), type_, collection, where)


def _select(raw: object, where: str) -> Select:
    if not isinstance(raw, dict):
        raise _fail("a select must be an object", where)
    node = Select(where)
    if "forEach" in raw and "forEachOrNull" in raw:
        raise _fail("a select may have forEach or forEachOrNull, not both", where)
    for key in ("forEach", "forEachOrNull"):
        if key in raw:
            node.for_each = _expr(raw[key], f"{where}.{key}")
            node.or_null = key == "forEachOrNull"
    repeat = _list(raw, "repeat", where)
    if repeat and node.for_each is not None:
        raise _fail("a select may not combine repeat with forEach", f"{where}.repeat")
    node.repeat = [_expr(p, f"{where}.repeat[{i}]") for i, p in enumerate(repeat)]
    if "repeat" in raw and not repeat:
        raise _fail("repeat needs at least one expression", f"{where}.repeat")
    cols = _list(raw, "column", where)
    node.columns = [_column(c, f"{where}.column[{i}]") for i, c in enumerate(cols)]
    subs = _list(raw, "select", where)
    node.selects = [_select(s, f"{where}.select[{i}]") for i, s in enumerate(subs)]
    branches = _list(raw, "unionAll", where)
    node.union_all = [_select(s, f"{where}.unionAll[{i}]") for i, s in enumerate(branches)]
    if not (node.columns or node.selects or node.union_all):
        raise _fail("a select needs a column, select or unionAll", where)
    if node.union_all:
        first = node.union_all[0].column_names()
        for branch in node.union_all[1:]:
            if branch.column_names() != first:
                # sql-on-fhir-v2: unionAll branches must have the same columns in the same order
                raise _fail(
                    f"unionAll branches differ in columns: {first} vs {branch.column_names()}",
                    branch.where,
                )
    return node


def _constants(raw: dict[str, Any]) -> dict[str, tuple[object, str]]:
    out: dict[str, tuple[object, str]] = {}
    for i, c in enumerate(_list(raw, "constant", _ROOT)):
        where = f"{_ROOT}.constant[{i}]"
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise _fail("a constant needs a name", where)
        values = [(k[5:], v) for k, v in c.items() if k.startswith("value")]
        if len(values) != 1:
            raise _fail(f"constant '{c['name']}' needs exactly one value[x]", where)
        type_, value = values[0]
        type_ = type_[:1].lower() + type_[1:]
        if type_ not in CONSTANT_TYPES:
            raise _fail(f"constant type value{values[0][0]} is not allowed", where)
        out[c["name"]] = (value, type_)
    return out


def parse_view(raw: object) -> View:
    """Check a ViewDefinition's structure and FHIRPath syntax; Invalid on the first problem."""
    if not isinstance(raw, dict):
        raise _fail("a ViewDefinition must be a JSON object", _ROOT)
    resource = raw.get("resource")
    if not isinstance(resource, str) or not resource:
        raise _fail("ViewDefinition.resource (the FHIR resource type) is required", _ROOT)
    selects = _list(raw, "select", _ROOT)
    if not selects:
        raise _fail("a ViewDefinition needs at least one select", f"{_ROOT}.select")
    view = View(
        resource=resource,
        select=[_select(s, f"{_ROOT}.select[{i}]") for i, s in enumerate(selects)],
        where=[],
        constants=_constants(raw),
        name=raw.get("name") if isinstance(raw.get("name"), str) else None,
        raw=raw,
    )
    for i, w in enumerate(_list(raw, "where", _ROOT)):
        where = f"{_ROOT}.where[{i}]"
        if not isinstance(w, dict) or "path" not in w:
            raise _fail("a where needs a path", where)
        view.where.append(_expr(w["path"], f"{where}.path"))
    seen: set[str] = set()
    for name in view.column_names():
        if name in seen:
            raise _fail(f"column name '{name}' is used twice", f"{_ROOT}.select")
        seen.add(name)
    return view
