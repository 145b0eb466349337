"""A parser for the FHIRPath subset that ViewDefinitions use, into a small AST.

The subset is the one of https://build.fhir.org/ig/FHIR/sql-on-fhir-v2/#fhirpath-functionality
(paths, indexers, literals, ``%constants``, ``$this``, operators and the listed functions);
grammar and precedence follow https://hl7.org/fhirpath/N1/#grammar. Parsing never looks at
data: type checks happen in the compiler, before any SQL runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal


class PathError(ValueError):
    """A FHIRPath expression that cannot be parsed or compiled."""


@dataclass(frozen=True, slots=True)
class Literal:
    """A literal value; ``type`` is a FHIR primitive type name (``string``, ``boolean`` …)."""

    value: object
    type: str


@dataclass(frozen=True, slots=True)
class Empty:
    """The empty collection ``{}``."""


@dataclass(frozen=True, slots=True)
class This:
    """``$this``: the focus."""


@dataclass(frozen=True, slots=True)
class Constant:
    """``%name``: a ViewDefinition constant or ``%rowIndex``."""

    name: str


@dataclass(frozen=True, slots=True)
class Member:
    """``target.name`` (``target`` None: a name on the focus)."""

    target: Node | None
    name: str


@dataclass(frozen=True, slots=True)
class Call:
    """``target.name(args)`` (``target`` None: a function on the focus)."""

    target: Node | None
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Index:
    """``target[index]``."""

    target: Node
    index: Node


@dataclass(frozen=True, slots=True)
class Binary:
    """``left op right``."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Unary:
    """``-x`` or ``+x``."""

    op: str
    operand: Node


@dataclass(frozen=True, slots=True)
class TypeName:
    """A type specifier as a function argument: ``ofType(Quantity)``."""

    name: str


Node = Literal | Empty | This | Constant | Member | Call | Index | Binary | Unary | TypeName

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<datetime>@\d{4}(?:-\d{2}(?:-\d{2})?)?(?:T[\d:.]*(?:Z|[+-]\d{2}:\d{2})?)?)
   |(?P<time>@T\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)
   |(?P<number>\d+(?:\.\d+)?)
   |(?P<string>'(?:[^'\\]|\\.)*')
   |(?P<ident>[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`)
   |(?P<special>\$this|\$index|\$total|%[A-Za-z_][A-Za-z0-9_]*|%`[^`]*`|%'[^']*')
   |(?P<op><=|>=|!=|!~|[-+*/&|=~<>()\[\],.{}])
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "f": "\f"}
# https://hl7.org/fhirpath/N1/#operator-precedence, lowest first
_LEVELS: tuple[tuple[str, ...], ...] = (
    ("implies",),
    ("or", "xor"),
    ("and",),
    ("in", "contains"),
    ("=", "~", "!=", "!~"),
    ("<", ">", "<=", ">="),
    ("|",),
    ("is", "as"),
    ("+", "-", "&"),
    ("*", "/", "div", "mod"),
)
_WORD_OPS = {"implies", "or", "xor", "and", "in", "contains", "is", "as", "div", "mod"}
CALENDAR_UNITS = {
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
}


def _unescape(text: str) -> str:
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", _escape, text)


def _escape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code.startswith("u") and len(code) == 5:
        return chr(int(code[1:], 16))
    return _ESCAPES.get(code, code)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise PathError(f"unexpected character {text[pos:].strip()[:1]!r} at {pos}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else ("end", "")

    def take(self) -> tuple[str, str]:
        token = self.peek()
        self.pos += 1
        return token

    def expect(self, value: str) -> None:
        kind, got = self.take()
        if got != value:
            raise PathError(f"expected {value!r} but found {got or 'the end'!r}")

    def parse(self) -> Node:
        node = self.expression(0)
        if self.peek()[0] != "end":
            raise PathError(f"unexpected {self.peek()[1]!r}")
        return node

    def expression(self, level: int) -> Node:
        if level == len(_LEVELS):
            return self.unary()
        left = self.expression(level + 1)
        while True:
            kind, value = self.peek()
            if value not in _LEVELS[level] or (kind == "ident" and value not in _WORD_OPS):
                return left
            self.take()
            if value in ("is", "as"):
                left = Call(left, "ofType" if value == "as" else "is", (self.type_name(),))
                continue
            left = Binary(value, left, self.expression(level + 1))

    def type_name(self) -> TypeName:
        kind, name = self.take()
        if kind != "ident":
            raise PathError("expected a type name")
        while self.peek()[1] == "." and self.peek(1)[0] == "ident":
            self.take()
            name = self.take()[1]  # FHIR.Quantity / System.String: keep the last part
        return TypeName(name.strip("`"))

    def unary(self) -> Node:
        if self.peek()[1] in ("-", "+"):
            op = self.take()[1]
            return Unary(op, self.unary())
        return self.postfix(self.term())

    def postfix(self, node: Node) -> Node:
        while True:
            value = self.peek()[1]
            if value == ".":
                self.take()
                node = self.invocation(node)
            elif value == "[":
                self.take()
                index = self.expression(0)
                self.expect("]")
                node = Index(node, index)
            else:
                return node

    def invocation(self, target: Node | None) -> Node:
        kind, name = self.take()
        if kind != "ident":
            raise PathError(f"expected a name but found {name or 'the end'!r}")
        name = name.strip("`")
        if self.peek()[1] != "(":
            return Member(target, name)
        self.take()
        args: list[Node] = []
        while self.peek()[1] != ")":
            if name in ("ofType", "is", "as", "getReferenceKey") and self.peek()[0] == "ident":
                args.append(self.type_name())
            else:
                args.append(self.expression(0))
            if self.peek()[1] == ",":
                self.take()
            elif self.peek()[1] != ")":
                raise PathError(f"expected ',' or ')' in {name}() arguments")
        self.take()
        return Call(target, name, tuple(args))

    def term(self) -> Node:
        kind, value = self.peek()
        if kind == "number":
            self.take()
            unit = self.peek()
            if unit[0] == "string" or (unit[0] == "ident" and unit[1] in CALENDAR_UNITS):
                self.take()  # a quantity: 15 'years' / 15 years
                return Literal((Decimal(value), unit[1].strip("'")), "Quantity")
            if "." in value:
                return Literal(Decimal(value), "decimal")
            return Literal(int(value), "integer")
        if kind == "string":
            self.take()
            return Literal(_unescape(value[1:-1]), "string")
        if kind == "datetime":
            self.take()
            text = value[1:]
            return Literal(text, "dateTime" if "T" in text else "date")
        if kind == "time":
            self.take()
            return Literal(value[2:], "time")
        if kind == "special":
            self.take()
            if value == "$this":
                return This()
            if value.startswith("%"):
                return Constant(value[1:].strip("`'"))
            raise PathError(f"{value} is not supported")
        if value == "(":
            self.take()
            node = self.expression(0)
            self.expect(")")
            return node
        if value == "{":
            self.take()
            self.expect("}")
            return Empty()
        if kind == "ident":
            if value in ("true", "false"):
                self.take()
                return Literal(value == "true", "boolean")
            return self.invocation(None)
        raise PathError(f"unexpected {value or 'end of expression'!r}")


def parse(text: str) -> Node:
    """Parse a FHIRPath expression; PathError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise PathError("the expression is empty")
    return _Parser(text).parse()
