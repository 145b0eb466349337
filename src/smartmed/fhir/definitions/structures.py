"""Load the R4 StructureDefinitions and compile them into compact per-type element tables.

The snapshots of every resource and datatype are turned into :class:`Struct` tables
keyed by **JSON property name** (choice elements are expanded, e.g. ``value[x]`` →
``valueQuantity``, ``valueString`` …; primitive ``_name`` siblings get their own
entry), so the validator walks a resource with one dict lookup per property.
Primitive types become pre-compiled checker functions built from the regexes in
the datatype definitions (https://hl7.org/fhir/R4/datatypes.html#primitive).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from smartmed.fhir.definitions import package
from smartmed.fhir.definitions.valuesets import Terminology

# Element.kind; PRIMITIVE_EXT is a primitive's ``_name`` sibling (json.html#primitive)
PRIMITIVE, COMPLEX, RESOURCE, PRIMITIVE_EXT = 0, 1, 2, 3

# Element.post: what to check after the element's own content
POST_NONE = 0
POST_CODE = 1  # ``code`` with a required binding
POST_CODING = 2  # ``Coding`` with a required binding
POST_CONCEPT = 3  # ``CodeableConcept`` with a required binding
POST_REFERENCE = 4  # ``Reference``: format of ``reference`` and allowed target types

Problem = tuple[str, str]  # (issue type code, diagnostics)
Checker = Callable[[Any], Problem | None]

FHIR_VERSION = "4.0.1"
_FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
_REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
_SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
# datatypes.html: integers are 32-bit; positiveInt ≥ 1 and unsignedInt ≥ 0.
_INT_RANGES = {"integer": (-(2**31), 2**31 - 1), "positiveInt": (1, 2**31 - 1)}
_INT_RANGES["unsignedInt"] = (0, 2**31 - 1)
_DATE_TYPES = frozenset({"date", "dateTime", "instant"})
# The published base64Binary regex ``(\s*([0-9a-zA-Z\+/=]){4}\s*)+`` backtracks
# exponentially on a bad value with whitespace runs (ReDoS: 18 groups take ~50 s).
# This form accepts the same language without ambiguity, hence in linear time.
_SAFE_PATTERNS = {"base64Binary": r"\s*+(?:[0-9a-zA-Z+/=]{4}\s*+)++"}


class Struct:
    """The element table of one complex type, resource or backbone element."""

    __slots__ = ("name", "elements", "required", "is_resource", "is_extension")

    def __init__(self, name: str, *, is_resource: bool = False) -> None:
        self.name = name
        self.elements: dict[str, Element] = {}
        # (FHIRPath name, JSON keys any of which satisfies it) for each min ≥ 1 element
        self.required: tuple[tuple[str, tuple[str, ...]], ...] = ()
        self.is_resource = is_resource
        self.is_extension = name == "Extension"


class Element:
    """One JSON property of a Struct, with everything the validator needs to check it."""

    __slots__ = (
        "key",
        "name",
        "kind",
        "type_name",
        "check",
        "struct",
        "resource_type",
        "min",
        "max",
        "is_array",
        "choice",
        "post",
        "codes",
        "codings",
        "binding",
        "targets",
    )

    def __init__(self, key: str, type_name: str, kind: int, el: dict[str, Any]) -> None:
        self.key = key
        self.name = key  # FHIRPath name; differs from key only for ``_name`` siblings
        self.kind = kind
        self.type_name = type_name
        self.check: Checker | None = None
        self.struct: Struct | None = None
        self.resource_type: str | None = None  # RESOURCE: required resourceType, None = any
        self.min: int = el.get("min", 0)
        self.max = -1 if el.get("max", "*") == "*" else int(el["max"])
        # JSON arrays follow the *base* cardinality (https://hl7.org/fhir/R4/json.html#arrays)
        self.is_array = el.get("base", el).get("max", "*") != "1"
        self.choice: str | None = None
        self.post = POST_NONE
        self.codes: frozenset[str] = frozenset()
        self.codings: frozenset[tuple[str, str]] = frozenset()
        self.binding = ""
        self.targets: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Model:
    """All compiled tables: resources and complex datatypes by name."""

    resources: dict[str, Struct]
    types: dict[str, Struct]


def json_type(value: object) -> str:
    """The JSON type name of a parsed value, for diagnostics."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _show(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _bad_date(value: str) -> bool:
    """True for a well-formed but impossible calendar date such as 2019-02-30."""
    day = int(value[8:10])
    return day > calendar.monthrange(int(value[:4]), int(value[5:7]))[1]


# string and markdown: ``[ \r\n\t\S]+`` with ASCII classes rejects exactly \v and \f;
# testing for those two characters is ~8x faster than running the regex.
_TEXT_PATTERN = r"[ \r\n\t\S]+"
# https://hl7.org/fhir/R4/datatypes.html#string: "Strings SHALL NOT contain Unicode character
# points below 32, except for u0009 (horizontal tab), u0010 (carriage return) and u0013
# (line feed)" -- for every string-based primitive (PostgreSQL JSONB also refuses \u0000).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]").search


def _string_checker(name: str, pattern: str | None, max_length: int) -> Checker:
    # re.ASCII: the spec's regexes use XML-Schema/Java semantics, where \s and \S are ASCII.
    match = re.compile(pattern or ".*", re.ASCII | re.DOTALL).fullmatch
    is_text = pattern == _TEXT_PATTERN
    is_date = name in _DATE_TYPES
    is_xhtml = name == "xhtml"
    invalid = f"is not a valid {name}"

    def check(value: Any) -> Problem | None:
        if type(value) is not str:
            return "structure", f"expected a string ({name}), got {json_type(value)}"
        if not value:
            return "value", f"empty string is not a valid {name} (json.html: no empty strings)"
        if len(value) > max_length:
            return "too-long", f"{name} is longer than {max_length} characters"
        if _CONTROL(value) is not None:
            return "value", f"{_show(value)} {invalid}: control character"
        if is_text:
            pass
        elif match(value) is None:
            return "value", f"{_show(value)} {invalid}"
        elif is_date:
            if len(value) >= 10 and value[8:10] > "28" and _bad_date(value):
                return "value", f"{_show(value)} {invalid}: no such day"
        elif is_xhtml and not value.startswith("<div"):
            return "value", "narrative div must be XHTML starting with '<div'"
        return None

    return check


def _integer_checker(name: str, low: int, high: int) -> Checker:
    def check(value: Any) -> Problem | None:
        if type(value) is not int:
            return "structure", f"expected an integer ({name}), got {json_type(value)}"
        if value < low or value > high:
            return "value", f"{value} is out of range for {name} ({low}..{high})"
        return None

    return check


def _decimal_check(value: Any) -> Problem | None:
    # Decimal: smartmed.fhir.jsonio parses fractional numbers exactly (precision matters).
    if type(value) is float or type(value) is int or type(value) is Decimal:
        return None
    return "structure", f"expected a number (decimal), got {json_type(value)}"


def _boolean_check(value: Any) -> Problem | None:
    if type(value) is bool:
        return None
    return "structure", f"expected a boolean, got {json_type(value)}"


def _fhir_type(type_entry: dict[str, Any]) -> str:
    """The FHIR type of an ElementDefinition.type, mapping FHIRPath System types back."""
    code: str = type_entry["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in type_entry.get("extension", []):
            if ext.get("url") == _FHIR_TYPE_EXT:
                return str(ext.get("valueUrl") or ext.get("valueUri"))
        return "string"
    return code


def _primitive_checkers(sds: dict[str, dict[str, Any]]) -> dict[str, Checker]:
    """One checker per primitive type, from the regex on its ``value`` element."""
    prims = {name: sd for name, sd in sds.items() if sd.get("kind") == "primitive-type"}

    def ancestors(name: str) -> list[str]:
        chain = [name]
        while (base := prims[chain[-1]].get("baseDefinition", "")).startswith(_SD_PREFIX):
            parent = base[len(_SD_PREFIX) :]
            if parent not in prims:
                break
            chain.append(parent)
        return chain

    checkers: dict[str, Checker] = {}
    for name, sd in prims.items():
        value_el = next(e for e in sd["snapshot"]["element"] if e["path"] == f"{name}.value")
        pattern = None
        for ext in value_el.get("type", [{}])[0].get("extension", []):
            if ext.get("url") == _REGEX_EXT:
                pattern = _SAFE_PATTERNS.get(name, ext["valueString"])
        chain = ancestors(name)
        if name == "boolean":
            checkers[name] = _boolean_check
        elif name == "decimal":
            checkers[name] = _decimal_check
        elif "integer" in chain:
            checkers[name] = _integer_checker(name, *_INT_RANGES.get(name, _INT_RANGES["integer"]))
        else:
            # The 1 MB limit is declared on string.value and inherited by its specialisations.
            max_length = 2**63
            for ancestor in chain:
                for el in prims[ancestor]["snapshot"]["element"]:
                    if el["path"] == f"{ancestor}.value" and "maxLength" in el:
                        max_length = min(max_length, el["maxLength"])
            checkers[name] = _string_checker(name, pattern, max_length)
    return checkers


class _Compiler:
    def __init__(self, sds: Iterable[dict[str, Any]], terminology: Terminology) -> None:
        self.sds = {
            sd["id"]: sd for sd in sds if sd.get("fhirVersion", FHIR_VERSION) == FHIR_VERSION
        }
        self.terminology = terminology
        self.checkers = _primitive_checkers(self.sds)
        specialised = {
            name: sd
            for name, sd in self.sds.items()
            if sd.get("derivation") == "specialization" and sd.get("kind") != "primitive-type"
        }
        concrete = {n: sd for n, sd in specialised.items() if not sd["abstract"]}
        self.resource_sds = {n: sd for n, sd in concrete.items() if sd["kind"] == "resource"}
        self.type_sds = {n: sd for n, sd in concrete.items() if sd["kind"] == "complex-type"}
        self.resources = {name: Struct(name, is_resource=True) for name in self.resource_sds}
        self.types = {name: Struct(name) for name in self.type_sds}
        self.url_types = {sd["url"]: sd.get("type", name) for name, sd in self.sds.items()}
        # The content of a primitive's ``_name`` sibling: Element.id and Element.extension.
        self.primitive_ext = Struct("Element")

    def compile(self) -> Model:
        self._compile_sd(self.sds["Element"], self.primitive_ext)
        for name, sd in self.type_sds.items():
            self._compile_sd(sd, self.types[name])
        for name, sd in self.resource_sds.items():
            struct = self.resources[name]
            self._compile_sd(sd, struct)
            # Resource.id is an ``id`` (https://hl7.org/fhir/R4/resource.html#id), though
            # the R4 snapshots give it the fhir-type ``string``.
            struct.elements["id"].check = self.checkers["id"]
            struct.elements["id"].type_name = "id"
        return Model(resources=self.resources, types=self.types)

    def _compile_sd(self, sd: dict[str, Any], root: Struct) -> None:
        elements = sd["snapshot"]["element"]
        parents = {el["path"].rsplit(".", 1)[0] for el in elements[1:]}
        structs = {elements[0]["path"]: root}
        required: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        references: list[tuple[Element, str]] = []
        for el in elements[1:]:
            path: str = el["path"]
            parent_path, name = path.rsplit(".", 1)
            owner = structs[parent_path]
            if path in parents:  # a backbone element: its children follow in the snapshot
                sub = structs[path] = Struct(path)
                new = [self._complex(name, "BackboneElement", sub, el)]
            elif "contentReference" in el:
                new = [Element(name, "BackboneElement", COMPLEX, el)]
                references.append((new[0], el["contentReference"].split("#", 1)[1]))
            else:
                new = self._typed(name, el)
            for element in new:
                owner.elements[element.key] = element
                if element.kind == PRIMITIVE:
                    owner.elements["_" + element.key] = self._primitive_ext(element, el)
            if el.get("min", 0) > 0:
                keys = tuple(k for e in new for k in (e.key, "_" + e.key))
                required.setdefault(parent_path, []).append((name.removesuffix("[x]"), keys))
        for element, target in references:
            element.struct = structs[target]
        for struct_path, entries in required.items():
            structs[struct_path].required = tuple(entries)

    def _complex(self, key: str, type_name: str, struct: Struct, el: dict[str, Any]) -> Element:
        element = Element(key, type_name, COMPLEX, el)
        element.struct = struct
        return element

    def _primitive_ext(self, base: Element, el: dict[str, Any]) -> Element:
        element = self._complex("_" + base.key, "Element", self.primitive_ext, el)
        element.kind = PRIMITIVE_EXT
        element.name = base.key
        element.choice = base.choice
        return element

    def _typed(self, name: str, el: dict[str, Any]) -> list[Element]:
        types = el.get("type", [])
        choice = name.endswith("[x]")
        out = []
        for type_entry in types:
            type_name = _fhir_type(type_entry)
            key = name[:-3] + type_name[0].upper() + type_name[1:] if choice else name
            element = self._element(key, type_name, type_entry, el)
            if choice:
                element.choice = name[:-3]
                element.min = 0  # the choice group's min is checked through Struct.required
            out.append(element)
        return out

    def _element(
        self, key: str, type_name: str, type_entry: dict[str, Any], el: dict[str, Any]
    ) -> Element:
        if type_name in self.checkers:
            element = Element(key, type_name, PRIMITIVE, el)
            element.check = self.checkers[type_name]
        elif type_name in ("Resource", "DomainResource") or type_name in self.resources:
            element = Element(key, type_name, RESOURCE, el)
            element.resource_type = type_name if type_name in self.resources else None
        elif type_name in self.types:
            element = self._complex(key, type_name, self.types[type_name], el)
            if type_name == "Reference":
                element.post = POST_REFERENCE
                element.targets = self._targets(type_entry.get("targetProfile", []))
        else:
            raise ValueError(f"{el['path']}: unknown type {type_name!r}")
        binding = el.get("binding", {})
        if binding.get("strength") == "required" and "valueSet" in binding:
            self._bind(element, binding["valueSet"])
        return element

    def _bind(self, element: Element, valueset: str) -> None:
        post = {"code": POST_CODE, "Coding": POST_CODING, "CodeableConcept": POST_CONCEPT}
        if element.type_name not in post:
            return
        codings = self.terminology.expand(valueset)
        if codings is None:  # not expandable from the files at hand: leave unchecked
            return
        element.post = post[element.type_name]
        element.codings = codings
        element.codes = frozenset(code for _, code in codings)
        element.binding = valueset.split("|", 1)[0]

    def _targets(self, profiles: list[str]) -> frozenset[str] | None:
        """Resource types a Reference may point to; None when any type is allowed."""
        names = {self.url_types.get(p, "") for p in profiles}
        if not profiles or "Resource" in names or "DomainResource" in names:
            return None
        known = frozenset(n for n in names if n in self.resources)
        return known or None


def load_model(definitions_dir: Path) -> Model:
    """Read the base StructureDefinitions and the terminology of the definitions package
    and compile them into a Model."""
    sds = package.base_structure_definitions(definitions_dir)
    terminology = Terminology(package.terminology(definitions_dir))
    return _Compiler(sds, terminology).compile()
