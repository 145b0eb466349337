"""Registry of the official FHIR R4 search parameters, per resource type.

Loaded from the SearchParameters of the R4 4.0.1 definitions package (``package.py``:
those of the specification, examples left out). Many
definitions are shared by several resource types, with an expression such as
``AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | ...``; the
registry splits such unions so that each type keeps only its own part
(https://hl7.org/fhir/R4/searchparameter.html: ``base`` lists the types, ``expression``
their paths). ``Resource.x`` parts are rewritten as ``<Type>.x`` because FHIRPath
engines (fhirpathpy included) filter the root by the concrete resource type.

Besides the 1375 parameters of the resources, the package defines 21 on extensions
(``<resource>-extensions-*``, ``*-genetic-*``). Those that cannot work are dropped
(:func:`load_search_parameters` says which and why):

- no ``base`` (``SearchParameter.base`` is 1..*): the ten ``codesystem-extensions-*`` and
  ``valueset-extensions-*`` ones, which have no expression either;
- an expression naming an extension R4 does not define, so it can never match:
  ``device-extensions-Device-din`` (its "extension" URL is the SearchParameter's own),
  ``patient-extensions-Patient-mothersMaidenName`` (the extension is
  ``patient-mothersMaidenName``), the four ``observation-genetic-*`` ones on
  ``observation-geneticsAminoAcidChangeName``/``observation-geneticsDnaVariant`` (R4 has
  ``observation-geneticsAminoAcidChange``/``observation-geneticsVariant``, complex
  extensions), ``questionnaireresponse-extensions-QuestionnaireResponse-item-subject``
  (``questionnaireresponse-isSubject`` is not an R4 extension).

Kept and indexed: ``gene-identifier`` (Observation) and ``assessed-condition``
(DiagnosticReport); the extractor indexes an Extension by its value. Kept but not
searchable, like ``_text``/``_content``/``_query``: ``patient-extensions-Patient-age`` and
``-birthOrderBoolean``, which have an XPath but no FHIRPath expression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from smartmed.fhir.definitions import package
from smartmed.fhir.search.fhirpath_fast import RESOURCE_TYPES, is_type, split_union

_ABSTRACT = ("Resource", "DomainResource")
_ROOT = re.compile(r"^\(*([A-Za-z_]\w*)")
_EXTENSION_URL = re.compile(r"\b(?:extension|hasExtension)\(\s*'([^']*)'\s*\)")


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
                restricted = _restrict(parts, resource_type)
                if sp["code"] in params or restricted is None:
                    continue  # None: no part of the expression is about this type
                params[sp["code"]] = SearchParam(
                    code=sp["code"],
                    type=sp["type"],
                    expression=restricted,
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


def _unusable(sp: dict[str, Any], definitions_dir: Path) -> str | None:
    """Why a SearchParameter of the package cannot be used, or None."""
    if not sp.get("base"):
        return "no base (SearchParameter.base is 1..*)"
    for url in _EXTENSION_URL.findall(sp.get("expression") or ""):
        if not package.defines_extension(definitions_dir, url):
            return f"the expression uses the extension {url}, which R4 does not define"
    return None


def load_search_parameters(
    definitions_dir: Path,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The usable SearchParameters of the definitions package, and the dropped ones'
    canonical URLs with the reason for each."""
    kept: list[dict[str, Any]] = []
    dropped: dict[str, str] = {}
    for sp in package.search_parameters(definitions_dir):
        reason = _unusable(sp, definitions_dir)
        if reason is None:
            kept.append(sp)
        else:
            dropped[sp["url"]] = reason
    return kept, dropped


@lru_cache(maxsize=4)
def get_registry(definitions_dir: Path) -> SearchRegistry:
    """The registry built from the SearchParameters of the definitions package."""
    return SearchRegistry(load_search_parameters(definitions_dir)[0])
