"""Static FHIR R4 types for the compiler: element lookup, arrays and choice elements.

Built on the engine's compiled StructureDefinitions (``fhir/definitions/structures.py``),
so that a path is checked against the same R4 definitions the store validates with:
an unknown element is reported before any query runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from smartmed.fhir.definitions.locate import locate_definitions
from smartmed.fhir.definitions.structures import PRIMITIVE_EXT, RESOURCE, Model, Struct, load_model

# SQL value kinds of FHIR primitives (https://hl7.org/fhir/R4/datatypes.html#primitive).
BOOL, INT, NUM, TEXT = "bool", "int", "num", "text"
_KINDS = {
    "boolean": BOOL,
    "integer": INT,
    "positiveInt": INT,
    "unsignedInt": INT,
    "integer64": INT,
    "decimal": NUM,
}
TEXT_TYPES = frozenset(
    "string code id uri url canonical oid uuid markdown base64Binary xhtml date dateTime "
    "instant time".split()
)


def kind_of(type_name: str) -> str | None:
    """The SQL kind of a FHIR primitive type; None for complex types and ``Any``."""
    if type_name in TEXT_TYPES:
        return TEXT
    return _KINDS.get(type_name)


@dataclass(frozen=True, slots=True)
class FType:
    """A static type: FHIR type name plus the element table of complex types.

    ``choices`` is set for a choice element not yet narrowed by ``ofType()``:
    (type name, JSON property, element table) for each allowed type.
    """

    name: str
    struct: Struct | None = None
    choices: tuple[tuple[str, str, Struct | None], ...] = ()

    @property
    def kind(self) -> str | None:
        """The SQL kind when primitive."""
        return kind_of(self.name)


ANY = FType("Any")


@dataclass(frozen=True, slots=True)
class Child:
    """The result of navigating to an element: its type, JSON key and whether it repeats."""

    type: FType
    key: str
    is_array: bool | None  # None: not known (navigation below an untyped node)


class TypeModel:
    """Element lookups over the R4 model."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def resource(self, name: str) -> FType | None:
        """The type of a resource, None if ``name`` is no R4 resource type."""
        struct = self.model.resources.get(name)
        return FType(name, struct) if struct is not None else None

    def named(self, name: str) -> FType | None:
        """Any R4 type by name: primitive, complex datatype or resource."""
        if kind_of(name) is not None:
            return FType(name)
        if name in self.model.types:
            return FType(name, self.model.types[name])
        return self.resource(name)

    def child(self, parent: FType, name: str) -> Child | None:
        """Navigate ``parent.name``; None if the element does not exist."""
        if parent.name == "Any" or parent.struct is None and parent.kind is None:
            return Child(ANY, name, None)
        struct = parent.struct
        if struct is None:
            return None  # primitives have no children in this subset
        element = struct.elements.get(name)
        if element is not None and element.kind != PRIMITIVE_EXT and element.choice is None:
            if element.kind == RESOURCE:
                return Child(ANY, name, element.is_array)
            sub = element.struct if element.kind != 0 else None
            return Child(FType(element.type_name, sub), name, element.is_array)
        options = tuple(
            (e.type_name, key, e.struct)
            for key, e in struct.elements.items()
            if e.choice == name and e.kind != PRIMITIVE_EXT
        )
        if not options:
            return None
        return Child(FType(f"{name}[x]", None, options), name, False)


@functools.lru_cache(maxsize=4)
def _load(folder: Path) -> TypeModel:
    return TypeModel(load_model(folder))


def type_model(definitions_dir: Path | None = None) -> TypeModel:
    """The R4 type model, loaded once per process."""
    return _load(locate_definitions(definitions_dir))
