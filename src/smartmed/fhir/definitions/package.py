"""Read the FHIR R4 4.0.1 definitions from the official HL7 npm package.

The package (``hl7.fhir.r4.examples`` 4.0.1 from ``package.json``; an unpacked
``hl7.fhir.r4.core`` 4.0.1 has the same layout) holds every resource of the R4
specification as one JSON file named ``<resourceType>-<id>.json``: the definitions
(StructureDefinitions, SearchParameters, ValueSets, CodeSystems, CompartmentDefinitions,
OperationDefinitions) beside the examples. Only the files of the wanted kind are read
(by file-name prefix), and of those only the definitions of the core specification:

- **StructureDefinitions**: the base types, i.e. ``kind`` resource, complex-type or
  primitive-type that are specialisations (or the roots ``Element`` and ``Resource``, which
  have no base), at ``http://hl7.org/fhir/StructureDefinition/<type>``. Profiles (constraints
  such as ``vitalsigns`` or ``SimpleQuantity``), extensions and logical models are not
  base types.
- **SearchParameters** and **CompartmentDefinitions**: canonical URL
  ``http://hl7.org/fhir/<resourceType>/<id>`` and ``version`` 4.0.1. This leaves out the
  examples (``SearchParameter/example``, ``example-reference``, ``example-extension``,
  ``CompartmentDefinition/example``) and the ``_filter`` declaration (version 1, no
  expression).
- **ValueSets and CodeSystems**: all of them. They are exactly the content of the R4
  terminology bundles (``valuesets.json``, ``v2-tables.json``, ``v3-codesystems.json``);
  the v2 and v3 ones have ``terminology.hl7.org`` URLs and their own versions, so they
  cannot be told apart by URL or version, and the few examples among them are never the
  target of a binding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

FHIR_VERSION = "4.0.1"
PACKAGE_NAMES = ("hl7.fhir.r4.examples", "hl7.fhir.r4.core")
CANONICAL_BASE = "http://hl7.org/fhir/"
BASE_KINDS = frozenset({"resource", "complex-type", "primitive-type"})

Resource = dict[str, Any]


class PackageError(RuntimeError):
    """The folder is not an R4 4.0.1 definitions package."""


def package_manifest(folder: Path) -> dict[str, Any]:
    """The package's ``package.json``, checked to be an R4 4.0.1 core or examples package."""
    try:
        manifest = orjson.loads((folder / "package.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise PackageError(f"{folder}: no readable package.json ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("name") not in PACKAGE_NAMES:
        raise PackageError(f"{folder}: not one of the packages {', '.join(PACKAGE_NAMES)}")
    if manifest.get("version") != FHIR_VERSION:
        raise PackageError(f"{folder}: version {manifest.get('version')}, not {FHIR_VERSION}")
    return manifest


def resource_files(folder: Path, kind: str) -> list[Path]:
    """The files of one resource type, by name, sorted (``StructureDefinition-*.json``)."""
    prefix = kind + "-"
    names = [
        entry.name
        for entry in os.scandir(folder)
        if entry.name.startswith(prefix) and entry.name.endswith(".json")
    ]
    return [folder / name for name in sorted(names)]


def read_resources(folder: Path, kind: str) -> Iterator[Resource]:
    """Every resource of type ``kind`` in the package, in file-name order."""
    for path in resource_files(folder, kind):
        resource = orjson.loads(path.read_bytes())
        if isinstance(resource, dict) and resource.get("resourceType") == kind:
            yield resource


def is_core(resource: Resource) -> bool:
    """A definition of the R4 4.0.1 specification itself (not an example of one)."""
    expected = f"{CANONICAL_BASE}{resource.get('resourceType')}/{resource.get('id')}"
    return resource.get("url") == expected and resource.get("version") == FHIR_VERSION


def is_base_type(sd: Resource) -> bool:
    """A StructureDefinition of an R4 resource or datatype (not a profile or extension)."""
    name = sd.get("type")
    return (
        sd.get("kind") in BASE_KINDS
        and sd.get("fhirVersion") == FHIR_VERSION
        and sd.get("url") == f"{CANONICAL_BASE}StructureDefinition/{name}"
        and sd.get("id") == name
        and (
            sd.get("derivation") == "specialization"
            or ("derivation" not in sd and "baseDefinition" not in sd)  # Element, Resource
        )
    )


def base_structure_definitions(folder: Path) -> list[Resource]:
    """The StructureDefinitions of every R4 resource, complex and primitive datatype."""
    return [sd for sd in read_resources(folder, "StructureDefinition") if is_base_type(sd)]


def search_parameters(folder: Path) -> list[Resource]:
    """The SearchParameters of the specification (examples left out)."""
    return [sp for sp in read_resources(folder, "SearchParameter") if is_core(sp)]


def terminology(folder: Path) -> list[Resource]:
    """All ValueSets, then all CodeSystems."""
    return [*read_resources(folder, "ValueSet"), *read_resources(folder, "CodeSystem")]


def compartment_definitions(folder: Path) -> list[Resource]:
    """The CompartmentDefinitions of the specification (patient, encounter, ...)."""
    return [cd for cd in read_resources(folder, "CompartmentDefinition") if is_core(cd)]


def defines_extension(folder: Path, url: str) -> bool:
    """Whether the package defines the extension with this canonical URL. Core extensions
    live at ``http://hl7.org/fhir/StructureDefinition/<id>``, in the file of that id."""
    prefix = f"{CANONICAL_BASE}StructureDefinition/"
    name = url.removeprefix(prefix)
    if name == url or not name or "/" in name:
        return False
    try:
        sd = orjson.loads((folder / f"StructureDefinition-{name}.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(sd, dict) and sd.get("type") == "Extension" and sd.get("url") == url


def structure_definition(folder: Path, name: str) -> Resource | None:
    """The base StructureDefinition of one resource or datatype, read from its own file."""
    if not name.isalnum():
        return None
    try:
        sd = orjson.loads((folder / f"StructureDefinition-{name}.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return sd if isinstance(sd, dict) and is_base_type(sd) and sd.get("type") == name else None
