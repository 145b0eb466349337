"""Registry of the official FHIR R4 search parameters, per resource type.

Loaded from ``search-parameters.json`` (the R4 4.0.1 SearchParameter bundle). Many
definitions are shared by several resource types, with an expression such as
``AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | ...``; the
registry splits such unions so that each type keeps only its own part
(https://hl7.org/fhir/R4/searchparameter.html: ``base`` lists the types, ``expression``
their paths). ``Resource.x`` parts are rewritten as ``<Type>.x`` because FHIRPath
engines (fhirpathpy included) filter the root by the concrete resource type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from smartmed.fhir.search.fhirpath_fast import RESOURCE_TYPES, is_type, split_union

_ABSTRACT = ("Resource", "DomainResource")
_ROOT = re.compile(r"^\(*([A-Za-z_]\w*)")


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One search parameter as it applies to one resource type."""

    code: str
    type: str
    expression: str | None
    targets: tuple[str, ...]
    url: str
    components: tuple[tuple[str, str], ...] = ()


def _restrict(parts: list[str], resource_type: str) -> str | None:
    """The union of the parts that apply to ``resource_type``, roots made concrete."""
    kept: list[str] = []
    for part in parts:
        match = _ROOT.match(part)
        root = match.group(1) if match else ""
        if root in _ABSTRACT:
            start, end = match.span(1) if match else (0, 0)
            kept.append(part[:start] + resource_type + part[end:])
        elif root == resource_type or not root[:1].isupper():
            # A lowercase root (e.g. InsurancePlan-name `name | alias`) is relative to the
            # resource itself, so it applies to every base.
            kept.append(part)
    return " | ".join(kept) if kept else None


class SearchRegistry:
    """Search parameters by resource type and code."""

    def __init__(self, definitions: list[dict[str, Any]]) -> None:
        self._by_type: dict[str, dict[str, SearchParam]] = {t: {} for t in RESOURCE_TYPES}
        self._by_url: dict[str, dict[str, Any]] = {}
        for sp in definitions:
            self._add(sp)

    def _add(self, sp: dict[str, Any]) -> None:
        self._by_url[sp["url"]] = sp
        expression = sp.get("expression")
        if not expression:
            # _text, _content and _query have no expression: they are not supported.
            return
        parts = split_union(expression)
        components = tuple((c["definition"], c["expression"]) for c in sp.get("component", ()))
        for base in sp.get("base", ()):
            types = [t for t in self._by_type if is_type(t, base)] if base in _ABSTRACT else [base]
            for resource_type in types:
                params = self._by_type.setdefault(resource_type, {})
                if sp["code"] in params:
                    continue
                params[sp["code"]] = SearchParam(
                    code=sp["code"],
                    type=sp["type"],
                    expression=_restrict(parts, resource_type) or expression,
                    targets=tuple(sp.get("target", ())),
                    url=sp["url"],
                    components=components,
                )

    @property
    def resource_types(self) -> frozenset[str]:
        """All resource types known to the registry."""
        return frozenset(self._by_type)

    def params_for(self, resource_type: str) -> dict[str, SearchParam]:
        """All parameters of a type, common Resource ones (``_id``, ``_tag``...) included."""
        return self._by_type.get(resource_type, {})

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        """One parameter of a type, or None."""
        return self._by_type.get(resource_type, {}).get(code)

    def definition(self, url: str) -> dict[str, Any] | None:
        """The raw SearchParameter resource with this canonical url (for composites)."""
        return self._by_url.get(url)


@lru_cache(maxsize=4)
def get_registry(definitions_dir: Path) -> SearchRegistry:
    """The registry built from ``search-parameters.json`` in the definitions folder."""
    bundle = orjson.loads((definitions_dir / "search-parameters.json").read_bytes())
    return SearchRegistry([entry["resource"] for entry in bundle.get("entry", ())])
