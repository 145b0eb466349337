"""Expand FHIR R4 ValueSets from their ``compose`` using only the CodeSystems on disk.

Only what is needed to check **required** bindings: the expansion is a set of
``(system, code)`` pairs. A ValueSet that cannot be expanded completely from the
material at hand (filters, external or incomplete CodeSystems, unknown imports)
expands to ``None`` and its bindings are not checked — a missing code system must
never turn into a false rejection (https://hl7.org/fhir/R4/valueset.html#expansion).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

Codes = frozenset[tuple[str, str]]


def _canonical(url: str) -> str:
    """The canonical URL without its ``|version`` suffix."""
    return url.split("|", 1)[0]


def _concept_codes(concepts: Iterable[dict[str, Any]]) -> Iterator[str]:
    """All codes of a CodeSystem concept tree, nested concepts included."""
    for concept in concepts:
        code = concept.get("code")
        if isinstance(code, str):
            yield code
        nested = concept.get("concept")
        if nested:
            yield from _concept_codes(nested)


class Terminology:
    """ValueSets and CodeSystems by canonical URL, with memoised expansion."""

    def __init__(self, resources: Iterable[dict[str, Any]]) -> None:
        self._valuesets: dict[str, dict[str, Any]] = {}
        self._codesystems: dict[str, dict[str, Any]] = {}
        for resource in resources:
            url = resource.get("url")
            if not isinstance(url, str):
                continue
            kind = resource.get("resourceType")
            # The first definition of a URL wins: valuesets.json is read before
            # the v2/v3 bundles, which repeat some of its entries.
            if kind == "ValueSet":
                self._valuesets.setdefault(url, resource)
            elif kind == "CodeSystem":
                self._codesystems.setdefault(url, resource)
        self._expanded: dict[str, Codes | None] = {}

    def expand(self, url: str) -> Codes | None:
        """The ``(system, code)`` pairs of a ValueSet, or None when it cannot be fully expanded."""
        key = _canonical(url)
        if key in self._expanded:
            return self._expanded[key]
        self._expanded[key] = None  # guards against import cycles
        valueset = self._valuesets.get(key)
        result = self._expand_valueset(valueset) if valueset is not None else None
        self._expanded[key] = result
        return result

    def _expand_valueset(self, valueset: dict[str, Any]) -> Codes | None:
        compose = valueset.get("compose")
        if not isinstance(compose, dict):
            return self._from_expansion(valueset.get("expansion"))
        included: set[tuple[str, str]] = set()
        for include in compose.get("include", []):
            part = self._expand_include(include)
            if part is None:
                return None
            included |= part
        for exclude in compose.get("exclude", []):
            # An exclusion we cannot expand only makes the set larger than the
            # truth: that can accept a wrong code but never reject a right one.
            part = self._expand_include(exclude)
            if part is not None:
                included -= part
        return frozenset(included)

    @staticmethod
    def _from_expansion(expansion: object) -> Codes | None:
        """A pre-computed ``expansion`` when it is complete (no paging, no nesting)."""
        if not isinstance(expansion, dict):
            return None
        contains = expansion.get("contains", [])
        total = expansion.get("total")
        if total is not None and total != len(contains):
            return None
        if any("contains" in item for item in contains):
            return None
        return frozenset((item.get("system", ""), item["code"]) for item in contains)

    def _expand_include(self, include: dict[str, Any]) -> Codes | None:
        """One ``compose.include`` (or ``exclude``) entry: system part ∩ imported value sets."""
        if include.get("filter"):
            return None
        system = include.get("system")
        result: Codes | None = None
        if isinstance(system, str):
            concepts = include.get("concept")
            if concepts:
                # An enumerated list needs no CodeSystem (e.g. UCUM units-of-time).
                result = frozenset((system, c["code"]) for c in concepts if "code" in c)
            else:
                result = self._whole_codesystem(system)
                if result is None:
                    return None
        for imported in include.get("valueSet", []):
            part = self.expand(imported)
            if part is None:
                return None
            result = part if result is None else result & part
        return result

    def _whole_codesystem(self, system: str) -> Codes | None:
        """Every code of a CodeSystem, if the file holds all of its content."""
        codesystem = self._codesystems.get(system)
        if codesystem is None or codesystem.get("content") != "complete":
            return None
        return frozenset((system, code) for code in _concept_codes(codesystem.get("concept", [])))
