"""A fast evaluator for the FHIRPath subset used by R4 search parameters, with fhirpathpy fallback.

fhirpathpy costs 10-30 µs per expression, far too slow to index every parameter of every
write. Almost all R4 SearchParameter expressions are plain paths with a few filters, so
``compile_fast`` turns that subset (path steps, choice types, ``as``/``ofType``, ``[n]``,
``where(resolve() is T)``, ``where(field = 'literal')``, ``extension('url')``, unions)
into closures. Anything else goes to fhirpathpy, compiled once.

Both evaluators return ``Node`` pairs ``(json data, type)``, where the type is what
fhirpathpy itself infers from its R4 model (``path2Type`` etc.): both use the same model
tables, so the fast path reproduces fhirpathpy's typing exactly, choice types included
(``Observation.value`` finds ``valueQuantity`` and types it ``Quantity``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from itertools import count
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode, TypeInfo
from fhirpathpy.models import models

_MODEL: dict[str, Any] = models["r4"]
_PATH2TYPE: dict[str, str] = _MODEL["path2Type"]
_CHOICES: dict[str, list[str]] = _MODEL["choiceTypePaths"]
_ELSEWHERE: dict[str, str] = _MODEL["pathsDefinedElsewhere"]
_PARENT: dict[str, str] = _MODEL["type2Parent"]
# fhirpathpy's ofType() reads the model from a class attribute that only is/as set; set it
# once so type filters behave the same whatever ran first.
TypeInfo.model = _MODEL  # type: ignore[assignment]

Node = tuple[Any, str | None]
"""One result item: the JSON value and its FHIR type (``None`` for computed values)."""
Evaluator = Callable[[dict[str, Any]], list[Node]]
_Step = Callable[[list[Node]], list[Node]]


def _ancestors(name: str) -> list[str]:
    chain: list[str] = []
    current: str | None = name
    while current and current not in chain:
        chain.append(current)
        current = _PARENT.get(current) or _PATH2TYPE.get(current)
    return chain


RESOURCE_TYPES: frozenset[str] = frozenset(
    t for t in _PARENT if "Resource" in _ancestors(t) and t not in ("Resource", "DomainResource")
)


class Unsupported(ValueError):
    """The expression is outside the fast subset."""


@cache
def is_type(type_path: str | None, target: str) -> bool:
    """Whether a node typed ``type_path`` is of type ``target``, as fhirpathpy decides it."""
    if type_path is None:
        return False
    namespace, _, name = target.rpartition(".")
    if type_path.startswith("System."):
        return namespace in ("", "System") and type_path[7:] == name
    if namespace == "System":
        return False
    own = type_path if "." not in type_path else "BackboneElement"
    return name in _ancestors(own)


def reference_type(value: Any) -> str | None:
    """The resource type a literal reference (Reference or canonical string) points to."""
    ref = value.get("reference") if isinstance(value, dict) else value
    if not isinstance(ref, str) or ref.startswith(("#", "urn:")):
        return None
    ref = ref.split("|", 1)[0]
    parts = ref.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2] in RESOURCE_TYPES and parts[-1]:
        return parts[-2]
    return None


def split_top_level(expression: str, separator: str) -> list[str]:
    """The parts of a FHIRPath expression between its top-level ``separator`` characters
    (outside parentheses and string literals), stripped; empty parts kept."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for i, char in enumerate(expression):
        if char == "'" and (i == 0 or expression[i - 1] != "\\"):
            quoted = not quoted
        elif quoted:
            continue
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return parts


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression on its top-level ``|`` operators."""
    return [p for p in split_top_level(expression, "|") if p]


# --- the fast subset -------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+)|(?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)"
    r"|(?P<op>[.()\[\]|=]))"
)
_DECEASED = re.compile(r"^(.+)\.exists\(\) and \1 != false$")


def _tokenize(expression: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = expression.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise Unsupported(f"cannot tokenize {text[pos:]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind).strip("`")))
        pos = match.end()
    return tokens


def _candidates(type_path: str | None, key: str) -> list[tuple[str, str]]:
    """(JSON key, type) alternatives for member ``key``, mirroring fhirpathpy's navigation."""
    child = f"{type_path}.{key}" if type_path else f"_.{key}"
    child = _ELSEWHERE.get(child, child)
    actual = _CHOICES.get(child)
    if actual:
        return [(key + t, _PATH2TYPE.get(child + t, child + t)) for t in actual]
    if key == "extension":
        child = "Extension"
    return [(key, _PATH2TYPE.get(child, child))]


def _member(key: str) -> _Step:
    cache: dict[str | None, list[tuple[str, str]]] = {}

    def step(nodes: list[Node]) -> list[Node]:
        out: list[Node] = []
        for data, type_path in nodes:
            if type(data) is not dict:
                continue
            cands = cache.get(type_path)
            if cands is None:
                cands = cache[type_path] = _candidates(type_path, key)
            for json_key, found_type in cands:
                value = data.get(json_key)
                if value is not None:
                    child_type = found_type
                    break
            else:
                continue
            for item in value if type(value) is list else (value,):
                if item is None:
                    continue
                if type(item) is dict and "resourceType" in item:
                    out.append((item, item["resourceType"]))
                else:
                    out.append((item, child_type))
        return out

    return step


# Results of the first member step of a root (``Patient.name`` in ``Patient.name.family``),
# shared by the expressions that start with it, within one ``shared_steps()`` block: the
# extractor evaluates some twenty expressions per resource and many start alike (every
# ``Observation.value as T``, ``Observation.component...``, ``Patient.address.x``).
# Keyed by (step, id of the input element): the block must not change the resource.
_SHARED: ContextVar[dict[tuple[int, int], list[Node]] | None] = ContextVar(
    "fhirpath_fast_shared", default=None
)
_STEP_IDS = count()


@contextmanager
def shared_steps() -> Iterator[None]:
    """Evaluate several expressions on resources that stay unchanged inside the block,
    sharing their common first steps."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


@cache
def _root_member(name: str, key: str) -> _Step:
    """``Name.key``: the root filter and the first member step in one (shared) step.

    A node passing the root filter is a resource of type ``name`` (typed by its
    ``resourceType`` wherever it comes from), so the member's candidates are known now.
    """
    cands = _candidates(name, key)
    ident = next(_STEP_IDS)

    def compute(nodes: list[Node]) -> list[Node]:
        out: list[Node] = []
        for data, _ in nodes:
            if type(data) is not dict or data.get("resourceType") != name:
                continue
            for json_key, found_type in cands:
                value = data.get(json_key)
                if value is not None:
                    child_type = found_type
                    break
            else:
                continue
            for item in value if type(value) is list else (value,):
                if item is None:
                    continue
                if type(item) is dict and "resourceType" in item:
                    out.append((item, item["resourceType"]))
                else:
                    out.append((item, child_type))
        return out

    def step(nodes: list[Node]) -> list[Node]:
        shared = _SHARED.get()
        if shared is None or len(nodes) != 1:
            return compute(nodes)
        memo_key = (ident, id(nodes[0][0]))
        found = shared.get(memo_key)
        if found is None:
            found = shared[memo_key] = compute(nodes)
        return found

    return step


def _root_filter(name: str) -> _Step:
    def step(nodes: list[Node]) -> list[Node]:
        return [n for n in nodes if type(n[0]) is dict and n[0].get("resourceType") == name]

    return step


def _type_filter(target: str) -> _Step:
    def step(nodes: list[Node]) -> list[Node]:
        return [n for n in nodes if is_type(n[1], target)]

    return step


def _resolve_is(target: str) -> _Step:
    def step(nodes: list[Node]) -> list[Node]:
        return [n for n in nodes if is_type(reference_type(n[0]), target)]

    return step


def _field_equals(field: str, literal: str) -> _Step:
    def matches(data: Any) -> bool:
        if type(data) is not dict:
            return False
        value = data.get(field)
        if type(value) is list:
            return len(value) == 1 and value[0] == literal
        return bool(value == literal)

    def step(nodes: list[Node]) -> list[Node]:
        return [n for n in nodes if matches(n[0])]

    return step


def _index(position: int) -> _Step:
    return lambda nodes: nodes[position : position + 1]


def _sequence(steps: list[_Step]) -> _Step:
    if len(steps) == 1:
        return steps[0]

    def step(nodes: list[Node]) -> list[Node]:
        for each in steps:
            nodes = each(nodes)
            if not nodes:  # most parameters are absent: stop at the first empty step
                break
        return nodes

    return step


def _union(parts: list[_Step]) -> _Step:
    def step(nodes: list[Node]) -> list[Node]:
        out: list[Node] = []
        for part in parts:
            out.extend(part(nodes))
        return out

    return step


class _Parser:
    """Recursive descent over the fast subset; raises ``Unsupported`` on anything else."""

    def __init__(self, expression: str) -> None:
        self.tokens = _tokenize(expression)
        self.pos = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def take(self, kind: str, text: str | None = None) -> str:
        token = self.peek()
        if token[0] != kind or (text is not None and token[1] != text):
            raise Unsupported(f"expected {text or kind}, got {token[1]!r}")
        self.pos += 1
        return token[1]

    def type_name(self) -> str:
        name = self.take("id")
        while self.peek() == ("op", "."):
            self.pos += 1
            name += "." + self.take("id")
        return name

    def parse(self) -> _Step:
        step = self.union()
        if self.pos != len(self.tokens):
            raise Unsupported(f"unexpected {self.peek()[1]!r}")
        return step

    def union(self) -> _Step:
        parts = [self.as_expression()]
        while self.peek() == ("op", "|"):
            self.pos += 1
            parts.append(self.as_expression())
        return parts[0] if len(parts) == 1 else _union(parts)

    def as_expression(self) -> _Step:
        step = self.path()
        if self.peek() == ("id", "as"):
            self.pos += 1
            # R4 search expressions mean "keep the items of that type" (R5 rewrote them
            # as ofType), so `as` filters per item instead of requiring a singleton.
            step = _sequence([step, _type_filter(self.type_name())])
        return step

    def path(self) -> _Step:
        steps: list[_Step] = []
        if self.peek() == ("op", "("):
            self.pos += 1
            steps.append(self.union())
            self.take("op", ")")
        else:
            name = self.take("id")
            if not name[:1].isupper():
                steps.append(_member(name))
            elif (
                self.peek() == ("op", ".")
                and self.pos + 2 <= len(self.tokens)
                and self.tokens[self.pos + 1][0] == "id"
                and (self.pos + 2 == len(self.tokens) or self.tokens[self.pos + 2] != ("op", "("))
            ):
                self.pos += 1
                steps.append(_root_member(name, self.take("id")))
            else:
                steps.append(_root_filter(name))
        while True:
            token = self.peek()
            if token == ("op", "."):
                self.pos += 1
                steps.append(self.invocation())
            elif token == ("op", "["):
                self.pos += 1
                position = int(self.take("num"))
                self.take("op", "]")
                steps.append(_index(position))
            else:
                return _sequence(steps)

    def invocation(self) -> _Step:
        name = self.take("id")
        if self.peek() != ("op", "("):
            return _member(name)
        self.pos += 1
        if name in ("as", "ofType"):
            step = _type_filter(self.type_name())
        elif name == "where":
            step = self.where_condition()
        elif name == "extension":
            # extension('url') is extension.where(url = 'url') (fhirpath.html#functions)
            step = _sequence([_member("extension"), _field_equals("url", self.literal())])
        else:
            raise Unsupported(f"function {name}()")
        self.take("op", ")")
        return step

    def where_condition(self) -> _Step:
        field = self.take("id")
        if field == "resolve" and self.peek() == ("op", "("):
            self.pos += 1
            self.take("op", ")")
            self.take("id", "is")
            return _resolve_is(self.type_name())
        self.take("op", "=")
        return _field_equals(field, self.literal())

    def literal(self) -> str:
        literal = self.take("str")[1:-1]
        if "\\" in literal:
            raise Unsupported("escaped literal")
        return literal


def compile_fast(expression: str) -> Evaluator:
    """Compile an expression of the fast subset; raises ``Unsupported`` otherwise."""
    deceased = _DECEASED.match(expression.strip())
    if deceased:
        # Patient-deceased: `X.exists() and X != false` is true unless absent or false.
        inner = compile_fast(deceased.group(1))

        def exists_not_false(resource: dict[str, Any]) -> list[Node]:
            found = inner(resource)
            return [(bool(found) and not (len(found) == 1 and found[0][0] is False), None)]

        return exists_not_false
    step = _Parser(expression).parse()

    def evaluate(resource: dict[str, Any]) -> list[Node]:
        return step([(resource, resource.get("resourceType"))])

    return evaluate


RelativeEvaluator = Callable[[list[Node], dict[str, Any]], list[Node]]


def compile_relative(expression: str) -> RelativeEvaluator:
    """Compile a composite component expression, evaluated on nodes of the composite's base
    (https://hl7.org/fhir/R4/search.html#composite); ``%resource.x`` starts from the
    resource instead. Raises ``Unsupported`` outside the fast subset."""
    text = expression.strip()
    if text.startswith("%resource."):
        from_root = _Parser(text[len("%resource.") :]).parse()

        def on_resource(nodes: list[Node], resource: dict[str, Any]) -> list[Node]:
            return from_root([(resource, resource.get("resourceType"))])

        return on_resource
    step = _Parser(text).parse()

    def on_nodes(nodes: list[Node], resource: dict[str, Any]) -> list[Node]:
        return step(nodes)

    return on_nodes


# --- fhirpathpy --------------------------------------------------------------------------

_AS_OPERATOR = re.compile(r"\(([^()]+?) as ([A-Za-z.]+)\)")


def _resolve(inputs: list[Any]) -> list[ResourceNode]:
    # Only the target type matters for `resolve() is T`: take it from the literal reference.
    out = []
    for item in inputs:
        target = reference_type(item)
        if target is not None:
            out.append(ResourceNode({"resourceType": target}, target))  # type: ignore[no-untyped-call]
    return out


_OPTIONS = {
    "returnRawData": True,
    "userInvocationTable": {"resolve": {"fn": _resolve, "arity": {0: []}}},
}


def compile_fhirpathpy(expression: str) -> Evaluator:
    """Compile with fhirpathpy (R4 model, ``resolve()`` by reference type, ``as`` as filter).

    Each top-level union part is compiled on its own because fhirpathpy's ``|`` drops the
    node types (its distinct() rebuilds untyped nodes); the caller deduplicates values.
    """
    parts = [
        fhirpathpy.compile(
            _AS_OPERATOR.sub(r"\1.ofType(\2)", part).replace(".as(", ".ofType("),
            _MODEL,
            options=_OPTIONS,
        )
        for part in split_union(expression)
    ]

    def evaluate(resource: dict[str, Any]) -> list[Node]:
        out: list[Node] = []
        for compiled in parts:
            for item in compiled(resource, {}):
                if isinstance(item, ResourceNode):
                    node: Node = (item.data, item.path)
                else:
                    node = (item, None)
                data = node[0]
                # fhirpathpy also returns `_element` primitive extensions: no value there.
                if data is None or (type(data) is dict and data.keys() <= {"id", "extension"}):
                    continue
                out.append(node)
        return out

    return evaluate


_FIRST_MEMBER = re.compile(r"\(*([A-Z]\w*)\.(\w+)(?![\w(])")
# The first member filtered by type at once: `(Observation.value as Quantity)`,
# `Observation.value.ofType(Quantity)`.
_FIRST_AS = re.compile(r"\(*[A-Z]\w*\.\w+(?:\s+as\s+|\.as\(|\.ofType\()([A-Za-z][\w.]*)")


def _typed_keys(part: str, candidates: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The candidates a type filter right after the first member can let through: only
    the JSON keys of that type (an element typed by its own ``resourceType`` aside)."""
    typed = _FIRST_AS.match(part)
    if typed is None:
        return candidates
    target = typed.group(1)
    if any(is_type(t, target) for t in RESOURCE_TYPES) or is_type("Resource", target):
        return candidates
    return [c for c in candidates if is_type(c[1], target)]


def required_keys(expression: str, resource_type: str) -> tuple[str, ...] | None:
    """Top-level JSON keys without which ``expression`` yields nothing, if that is known.

    Lets the extractor skip absent parameters without evaluating them. None when the
    expression can produce values from an empty resource or is not a plain path union.
    """
    if _DECEASED.match(expression.strip()):
        return None
    keys: list[str] = []
    for part in split_union(expression):
        match = _FIRST_MEMBER.match(part)
        if match is None or match.group(1) != resource_type:
            return None
        candidates = _typed_keys(part, _candidates(resource_type, match.group(2)))
        keys += [json_key for json_key, _ in candidates]
    return tuple(dict.fromkeys(keys))


def compile_expression(expression: str) -> tuple[Evaluator, bool]:
    """The fast evaluator if the expression allows it, else fhirpathpy; and whether fast."""
    try:
        return compile_fast(expression), True
    except Unsupported:
        return compile_fhirpathpy(expression), False
