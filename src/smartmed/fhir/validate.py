"""Fast structural validation of FHIR R4 JSON resources against the compiled definitions.

Checks the JSON rules of https://hl7.org/fhir/R4/json.html (property names, JSON
types, arrays, primitive ``_name`` siblings), cardinalities, primitive formats,
reference formats and target types, and codes of **required** bindings. FHIRPath
invariants (``constraint``) and extension/profile conformance are out of scope.

Issue expressions are FHIRPath-style locations built from JSON property names:
``Patient.name[0].given[1]``, ``Observation.valueQuantity.value``; a repeating
element always carries its index. A primitive's ``_name`` sibling is reported at
the primitive (``Patient.birthDate.extension[0]``), since FHIRPath does not tell
them apart. Resources nested in other resources (``contained``,
``Bundle.entry.resource``, ``Parameters.parameter.resource`` …) continue with
``.ofType(Type)``: ``Bundle.entry[0].resource.ofType(Patient).name``. Problems
with a resource's own ``resourceType`` are reported at the resource
(``Bundle.entry[0].resource``; at the top level: its type name, or ``Resource``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smartmed.fhir.definitions.structures import (
    COMPLEX,
    POST_CODING,
    POST_CONCEPT,
    POST_REFERENCE,
    PRIMITIVE,
    PRIMITIVE_EXT,
    RESOURCE,
    Element,
    Struct,
    json_type,
    load_model,
)

ERROR = "error"

# references.html#literal: relative ``Type/id[/_history/vid]``, local ``#id``,
# absolute URLs, and the ``urn:uuid:``/``urn:oid:`` forms used in Bundles.
# ``Type?query`` is a conditional reference, allowed in transactions (http.html#trules).
_ID = r"[A-Za-z0-9\-\.]{1,64}"
_REFERENCE = re.compile(
    rf"#(?:{_ID})?"
    rf"|(?P<type>[A-Z][A-Za-z]*)(?:/{_ID}(?:/_history/{_ID})?|\?\S*)"
    r"|https?://\S+"
    r"|urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|urn:oid:[0-2](?:\.(?:0|[1-9][0-9]*))+",
    re.ASCII,
).fullmatch


@dataclass(frozen=True, slots=True)
class Issue:
    """One validation problem: severity, FHIR issue-type code, message and FHIRPath location."""

    severity: str
    code: str
    diagnostics: str
    expression: str


def _cardinality(element: Element) -> str:
    return f"{element.min}..{'*' if element.max < 0 else element.max}"


class Validator:
    """A structural validator for one set of FHIR R4 definitions."""

    def __init__(self, definitions_dir: Path) -> None:
        model = load_model(definitions_dir)
        self._resources = model.resources
        self.resource_types: frozenset[str] = frozenset(model.resources)

    def validate(
        self, resource: dict[str, Any], *, resource_type: str | None = None
    ) -> list[Issue]:
        """Check one resource; an empty list means valid, any error means reject."""
        out: list[Issue] = []
        if type(resource) is not dict:
            where = resource_type or "Resource"
            out.append(Issue(ERROR, "structure", "a resource must be a JSON object", where))
            return out
        try:
            self._resource(resource, resource_type, None, out)
        except RecursionError:  # orjson accepts 1024 levels of nesting, Python recursion 1000
            where = resource_type or "Resource"
            out.append(Issue(ERROR, "structure", "resource is nested too deeply", where))
        return out

    def _resource(
        self, obj: dict[str, Any], expected: str | None, path: str | None, out: list[Issue]
    ) -> None:
        """A whole resource; ``path`` is None at the top level."""
        kind = obj.get("resourceType")
        where = path if path is not None else expected or "Resource"
        if kind is None:
            out.append(Issue(ERROR, "required", "missing resourceType", where))
            return
        struct = self._resources.get(kind) if type(kind) is str else None
        if struct is None:
            text = f"unknown resourceType {kind!r}"
            out.append(Issue(ERROR, "not-supported", text, where))
            return
        if path is None:
            path = where = kind
        else:
            path = f"{path}.ofType({kind})"
        if expected is not None and kind != expected:
            text = f"resourceType {kind!r} where {expected!r} is expected"
            out.append(Issue(ERROR, "invalid", text, where))
        self._walk(struct, obj, path, out)

    def _walk(self, struct: Struct, obj: dict[str, Any], path: str, out: list[Issue]) -> None:
        """Every property of one JSON object against its element table."""
        elements = struct.elements
        choices: dict[str, str] | None = None
        for key, value in obj.items():
            element = elements.get(key)
            if element is None:
                if key != "resourceType" or not struct.is_resource:
                    out.append(
                        Issue(ERROR, "structure", f"unknown element '{key}'", f"{path}.{key}")
                    )
                continue
            if element.choice is not None:  # at most one type of a choice element
                if choices is None:
                    choices = {}
                first = choices.setdefault(element.choice, element.name)
                if first != element.name:
                    text = f"only one {element.choice}[x] allowed: '{first}' and '{element.name}'"
                    out.append(Issue(ERROR, "structure", text, f"{path}.{element.name}"))
            if element.is_array:
                if type(value) is list and value:
                    self._array(element, value, obj, f"{path}.{element.name}", out)
                else:
                    self._bad_array(element, value, f"{path}.{element.name}", out)
            elif type(value) is list:
                text = f"'{key}' has max cardinality 1, must not be an array"
                out.append(Issue(ERROR, "structure", text, f"{path}.{element.name}"))
            elif element.kind == PRIMITIVE:
                problem = element.check(value)  # type: ignore[misc]
                if problem is not None:
                    out.append(Issue(ERROR, problem[0], problem[1], f"{path}.{key}"))
                elif element.post and value not in element.codes:
                    self._bad_code(element, value, f"{path}.{key}", out)
            elif type(value) is dict:
                if value and element.kind == COMPLEX and not element.post:
                    self._walk(element.struct, value, f"{path}.{key}", out)  # type: ignore[arg-type]
                else:
                    self._one(element, value, f"{path}.{element.name}", out)
            else:
                text = f"expected an object ({element.type_name}), got {json_type(value)}"
                out.append(Issue(ERROR, "structure", text, f"{path}.{element.name}"))
        for name, keys in struct.required:
            for key in keys:
                if key in obj:
                    break
            else:
                out.append(
                    Issue(ERROR, "required", f"missing required element '{name}'", f"{path}.{name}")
                )
        if struct.is_extension and "extension" in obj and choices:
            text = "an extension must have either a value[x] or nested extensions, not both"
            out.append(Issue(ERROR, "structure", text, path))

    def _bad_array(self, element: Element, value: Any, where: str, out: list[Issue]) -> None:
        if type(value) is list:
            text = f"empty array is not allowed for '{element.key}' (json.html: no empty arrays)"
        else:
            text = f"'{element.key}' repeats ({_cardinality(element)}): expected a JSON array"
            text += f", got {json_type(value)}"
        out.append(Issue(ERROR, "structure", text, where))

    def _array(
        self, element: Element, items: list[Any], obj: dict[str, Any], where: str, out: list[Issue]
    ) -> None:
        """The items of a repeating element (``where`` is its path without index)."""
        count = len(items)
        if 0 <= element.max < count or count < element.min:
            text = f"'{element.key}' has {count} items, cardinality is {_cardinality(element)}"
            out.append(Issue(ERROR, "structure", text, where))
        kind = element.kind
        if kind == PRIMITIVE:
            check = element.check
            assert check is not None
            for i, item in enumerate(items):
                if item is None:
                    # json.html#primitive: null only keeps the arrays aligned with ``_name``
                    ext = obj.get("_" + element.key)
                    if not (type(ext) is list and i < len(ext) and ext[i] is not None):
                        text = "null value without a matching '_" + element.key + "' entry"
                        out.append(Issue(ERROR, "structure", text, f"{where}[{i}]"))
                    continue
                problem = check(item)
                if problem is not None:
                    out.append(Issue(ERROR, problem[0], problem[1], f"{where}[{i}]"))
                elif element.post and item not in element.codes:
                    self._bad_code(element, item, f"{where}[{i}]", out)
            return
        if kind == PRIMITIVE_EXT:
            values = obj.get(element.name)
            if type(values) is list and len(values) != count:
                text = f"'{element.key}' must have as many items as '{element.name}'"
                out.append(Issue(ERROR, "structure", text, where))
        struct = element.struct if kind == COMPLEX and not element.post else None
        for i, item in enumerate(items):
            if type(item) is dict:
                if item and struct is not None:
                    self._walk(struct, item, f"{where}[{i}]", out)
                else:
                    self._one(element, item, f"{where}[{i}]", out)
            elif item is None and kind == PRIMITIVE_EXT:
                values = obj.get(element.name)
                if not (type(values) is list and i < len(values) and values[i] is not None):
                    text = f"null in '{element.key}' without a value in '{element.name}'"
                    out.append(Issue(ERROR, "structure", text, f"{where}[{i}]"))
            else:
                text = f"expected an object ({element.type_name}), got {json_type(item)}"
                out.append(Issue(ERROR, "structure", text, f"{where}[{i}]"))

    def _one(self, element: Element, obj: dict[str, Any], where: str, out: list[Issue]) -> None:
        """One JSON object value: a complex type, a nested resource or a ``_name`` sibling."""
        if element.kind == RESOURCE:
            self._resource(obj, element.resource_type, where, out)
            return
        if not obj:
            text = "empty object is not allowed (an element must have a value or children)"
            out.append(Issue(ERROR, "structure", text, where))
            return
        self._walk(element.struct, obj, where, out)  # type: ignore[arg-type]
        post = element.post
        if post == POST_REFERENCE:
            self._reference(element, obj.get("reference"), where, out)
        elif post == POST_CONCEPT:
            self._concept(element, obj, where, out)
        elif post == POST_CODING:
            if not self._coding_ok(element, obj):
                text = f"code not in required value set {element.binding}"
                out.append(Issue(ERROR, "code-invalid", text, where))

    def _reference(self, element: Element, ref: Any, where: str, out: list[Issue]) -> None:
        if type(ref) is not str or not ref:
            return  # absent, or its JSON type was already reported
        found = _REFERENCE(ref)
        if found is None:
            text = f"invalid reference format {ref!r}"
            out.append(Issue(ERROR, "value", text, f"{where}.reference"))
            return
        target = found.group("type")
        if target is None:
            return
        if target not in self._resources:
            text = f"reference to unknown resource type {target!r}"
            out.append(Issue(ERROR, "value", text, f"{where}.reference"))
        elif element.targets is not None and target not in element.targets:
            allowed = ", ".join(sorted(element.targets))
            text = f"reference to {target} is not allowed here (allowed: {allowed})"
            out.append(Issue(ERROR, "invalid", text, f"{where}.reference"))

    @staticmethod
    def _coding_ok(element: Element, coding: dict[str, Any]) -> bool:
        code = coding.get("code")
        if type(code) is not str:
            return False
        system = coding.get("system")
        if type(system) is str:
            return (system, code) in element.codings
        return code in element.codes

    def _concept(
        self, element: Element, concept: dict[str, Any], where: str, out: list[Issue]
    ) -> None:
        # terminologies.html#required: a CodeableConcept bound with strength required
        # must carry a coding from the value set.
        codings = concept.get("coding")
        if type(codings) is list:
            for coding in codings:
                if type(coding) is dict and self._coding_ok(element, coding):
                    return
            text = f"none of the codings is in the required value set {element.binding}"
        else:
            text = f"no coding given; the required value set is {element.binding}"
        out.append(Issue(ERROR, "code-invalid", text, where))

    @staticmethod
    def _bad_code(element: Element, code: str, where: str, out: list[Issue]) -> None:
        text = f"code {code!r} is not in the required value set {element.binding}"
        out.append(Issue(ERROR, "code-invalid", text, where))


@functools.lru_cache(maxsize=4)
def get_validator(definitions_dir: Path) -> Validator:
    """The Validator for a definitions folder, built once per process."""
    return Validator(definitions_dir)
