"""Definitions-derived search support that the parameter registry does not carry.

- The kinds of the components of each composite parameter (from the component
  SearchParameters, https://hl7.org/fhir/R4/searchparameter.html: ``component.definition``).
- ``_text`` and ``_content`` (search.html#text): R4 defines them without an expression, so
  the registry leaves them out; they are added to it here, as ``string`` parameters with no
  expression, handled by ``text.py`` at write time and by ``sql.py`` at search time.
- ValueSet expansion for ``:in``/``:not-in`` from the definitions package's terminology
  (``definitions/valuesets.py``, used read-only).

``prepare`` runs once per registry, when the index extractor is built for it.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

from smartmed.fhir.definitions import package
from smartmed.fhir.definitions.valuesets import Codes, Terminology
from smartmed.fhir.search.fhirpath_fast import is_type
from smartmed.fhir.search.params import SearchParam, SearchRegistry

TEXT_PARAMS = {
    "_text": ("http://hl7.org/fhir/SearchParameter/DomainResource-text", "DomainResource"),
    "_content": ("http://hl7.org/fhir/SearchParameter/Resource-content", "Resource"),
}
_component_kinds: dict[str, str] = {}
_folders: list[Path] = []
_lock = threading.Lock()


def prepare(registry: SearchRegistry, folder: Path | None) -> None:
    """Add ``_text``/``_content`` to the registry and learn its composites' component kinds."""
    with _lock:
        if folder is not None and folder not in _folders:
            _folders.append(folder)
        for resource_type in registry.resource_types:
            params = registry.params_for(resource_type)
            for code, (url, base) in TEXT_PARAMS.items():
                if code not in params and is_type(resource_type, base):
                    params[code] = SearchParam(code, "string", None, (), url)
            for param in params.values():
                for url, _ in param.components:
                    definition = registry.definition(url)
                    if definition is not None:
                        _component_kinds[url] = definition["type"]


def component_kinds(param: SearchParam) -> tuple[str, ...] | None:
    """The kinds of a composite's components, None if any is unknown."""
    kinds = tuple(_component_kinds.get(url, "") for url, _ in param.components)
    return kinds if kinds and all(kinds) else None


@lru_cache(maxsize=2)
def _terminology(folder: Path) -> Terminology:
    return Terminology(package.terminology(folder))


def expand_valueset(url: str) -> Codes | None:
    """The ``(system, code)`` pairs of a ValueSet of the definitions, None if unknown or
    not expandable from the definitions alone (filters, external code systems)."""
    for folder in list(_folders):
        with _lock:
            found = _terminology(folder).expand(url)
        if found is not None:
            return found
    return None
