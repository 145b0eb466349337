"""Write-time extraction of search index values (https://hl7.org/fhir/R4/search.html).

Each parameter's expression is compiled once per resource type (fast subset, else
fhirpathpy; see ``fhirpath_fast``). The matched elements are turned into typed index
values according to the parameter type and the element's FHIR type, which the evaluator
infers exactly like fhirpathpy does (choice suffixes included).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import orjson

from smartmed.fhir.search import support
from smartmed.fhir.search.convert import (
    date_range,
    decimal_range,
    parse_reference,
    to_index_values,
)
from smartmed.fhir.search.fhirpath_fast import (
    Evaluator,
    Node,
    RelativeEvaluator,
    Unsupported,
    compile_expression,
    compile_fhirpathpy,
    compile_relative,
    required_keys,
    shared_steps,
)
from smartmed.fhir.search.index import (
    CompositeValue,
    IndexValue,
    ResourceIndex,
    SimpleValue,
    TextValue,
)
from smartmed.fhir.search.params import SearchParam, SearchRegistry, get_registry
from smartmed.fhir.search.text import content_text, narrative_text, normalize

__all__ = [
    "IndexExtractor",
    "date_range",
    "decimal_range",
    "get_extractor",
    "normalize",
    "parse_reference",
]

log = logging.getLogger(__name__)

# Stored in the main resource columns by the storage layer, not in index tables.
SKIPPED_CODES = frozenset({"_id", "_lastUpdated"})
# Composites are extracted by their own plan; the only R4 `special` parameter is Location-near.
EXTRACTED_TYPES = frozenset(
    {"token", "string", "reference", "date", "number", "quantity", "uri", "special"}
)


# --- the extractor --------------------------------------------------------------------

_Plan = list[tuple[str, str, Evaluator, tuple[str, ...] | None]]
# A composite: code, base evaluator, keys that must all be present (one tuple per component,
# None when unknown), and per component its kind and evaluator relative to the base.
_Component = tuple[tuple[str, str], RelativeEvaluator]  # ((kind, expression), evaluator)
_CompositePlan = list[tuple[str, Evaluator, list[tuple[str, ...] | None], list[_Component]]]
# Component values of one element, shared by the composites that have the same component
# (Observation's eight composites all start with `code`): (kind, expression, element id).
_Memo = dict[tuple[str, str, int], list[IndexValue]]

# --- conversions shared across resources ------------------------------------------------

# The index values of one node depend on the parameter kind, the node's FHIR type and its
# JSON value only, and the demo's (or an import's) resources repeat the same codings,
# references, units and names thousands of times: 85-98 % of the nodes of a demo county
# convert to values already made for an earlier resource. Keys: (kind, type, text) for a
# string, (kind, type, JSON bytes) for an object (orjson, key order as written). Only for
# documents known to hold plain JSON values (decoded from JSON text): a tuple, UUID or
# enum would serialise like a list or a string and must not share their values.
_CACHE_LIMIT = 100_000
_JSON_KEY = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
_JSON_KEY |= orjson.OPT_PASSTHROUGH_DATACLASS
_Converted = dict[tuple[str, str | None, Any], tuple[IndexValue, ...]]


def _convert_cached(kind: str, nodes: list[Node], cache: _Converted) -> list[IndexValue]:
    """``to_index_values(kind, nodes)``, per node from ``cache`` when converted before."""
    values: list[IndexValue] = []
    for node in nodes:
        data, type_ = node
        if type(data) is str:
            key: tuple[str, str | None, Any] = (kind, type_, data)
        elif type(data) is dict:
            try:
                key = (kind, type_, orjson.dumps(data, option=_JSON_KEY))
            except TypeError:
                values.extend(to_index_values(kind, [node]))
                continue
        else:  # numbers and booleans: cheap, and 1 == 1.0 == True, 0.0 == -0.0 as keys
            values.extend(to_index_values(kind, [node]))
            continue
        found = cache.get(key)
        if found is None:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            found = cache[key] = tuple(to_index_values(kind, [node]))
        values.extend(found)
    # Each node's values are deduplicated already; across nodes as to_index_values does.
    return list(dict.fromkeys(values)) if len(nodes) > 1 and len(values) > 1 else values


def _composite_plan(
    resource_type: str, param: SearchParam
) -> tuple[str, Evaluator, list[tuple[str, ...] | None], list[_Component]]:
    """How to extract one composite parameter; raises Unsupported when it cannot be."""
    kinds = support.component_kinds(param)
    if kinds is None or not param.expression:
        raise Unsupported(f"composite {param.code}: unknown components")
    evaluator = compile_expression(param.expression)[0]
    # R4's code-value-date says `value.as(DateTime)`, which is System.DateTime and matches
    # nothing; its own component parameter (Observation-value-date) uses `dateTime`.
    expressions = [e.replace("as(DateTime)", "as(dateTime)") for _, e in param.components]
    components = [((k, e), compile_relative(e)) for k, e in zip(kinds, expressions, strict=True)]
    keys: list[tuple[str, ...] | None] = []
    if param.expression.strip() == resource_type:
        # Based on the resource itself: each component needs one of its top-level keys.
        keys = [
            None if e.startswith("%") else required_keys(f"{resource_type}.{e}", resource_type)
            for _, e in param.components
        ]
    else:
        keys = [required_keys(param.expression, resource_type)]
    return param.code, evaluator, keys, components


def _composite_values(
    resource: dict[str, Any],
    base: Evaluator,
    components: list[_Component],
    memo: _Memo,
    cache: _Converted | None,
) -> list[IndexValue]:
    """One CompositeValue per base element that has a value for every component."""
    found: list[IndexValue] = []
    for node in base(resource):
        parts: list[tuple[SimpleValue, ...]] = []
        for (kind, expression), evaluate in components:
            key = (kind, expression, id(node[0]))
            values = memo.get(key)
            if values is None:
                nodes = evaluate([node], resource)
                values = memo[key] = (
                    to_index_values(kind, nodes)
                    if cache is None
                    else _convert_cached(kind, nodes, cache)
                )
            if not values:
                break
            parts.append(tuple(cast(list[SimpleValue], values)))
        else:
            found.append(CompositeValue(tuple(parts)))
    return list(dict.fromkeys(found)) if len(found) > 1 else found


class IndexExtractor:
    """Extracts every supported search parameter of a resource into a ``ResourceIndex``."""

    def __init__(self, registry: SearchRegistry, *, fast: bool = True) -> None:
        self._registry = registry
        self._fast = fast  # False: fhirpathpy only, the reference path for tests and bench
        self._plans: dict[str, tuple[_Plan, _CompositePlan, bool, bool]] = {}
        # Per type: the plan positions each top-level key makes possible, and those
        # possible whatever the keys (no required keys known).
        self._by_key: dict[str, tuple[dict[str, list[int]], list[int]]] = {}
        self._converted: _Converted = {}
        support.prepare(registry, None)

    def plan(self, resource_type: str) -> _Plan:
        """(code, type, evaluator, required top-level keys) per extracted parameter of a type."""
        return self._plan(resource_type)[0]

    def _plan(self, resource_type: str) -> tuple[_Plan, _CompositePlan, bool, bool]:
        found = self._plans.get(resource_type)
        if found is not None:
            return found
        plan: _Plan = []
        composites: _CompositePlan = []
        params = self._registry.params_for(resource_type)
        for code, param in params.items():
            if code in SKIPPED_CODES or not param.expression:
                continue
            if param.type == "composite":
                try:
                    composites.append(_composite_plan(resource_type, param))
                except Unsupported:
                    log.warning("composite %s.%s is not indexed", resource_type, code)
                continue
            if param.type not in EXTRACTED_TYPES or (param.type == "special" and code != "near"):
                continue
            expression = param.expression
            if self._fast:
                evaluator = compile_expression(expression)[0]
                keys = required_keys(expression, resource_type)
            else:
                evaluator, keys = compile_fhirpathpy(expression), None
            plan.append((code, param.type, evaluator, keys))
        found = (plan, composites, "_text" in params, "_content" in params)
        by_key: dict[str, list[int]] = {}
        always: list[int] = []
        for position, (_, _, _, keys) in enumerate(plan):
            if keys is None:
                always.append(position)
            for key in keys or ():
                by_key.setdefault(key, []).append(position)
        self._by_key[resource_type] = (by_key, always)
        self._plans[resource_type] = found
        return found

    def extract(self, resource: dict[str, Any], *, plain: bool = False) -> ResourceIndex:
        """All index values of a resource, by parameter code.

        ``plain``: the caller knows the resource holds only JSON values (dict, list, str,
        int, float, bool, None: decoded from JSON text), so that conversions already made
        for equal elements of earlier resources are reused; same values either way.
        """
        index = ResourceIndex()
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str):
            return index
        with shared_steps():  # the expressions that start alike share their first step
            self._extract(resource, resource_type, self._converted if plain else None, index)
        return index

    def _extract(
        self,
        resource: dict[str, Any],
        resource_type: str,
        cache: _Converted | None,
        index: ResourceIndex,
    ) -> None:
        out = index.values
        plan, composites, text, content = self._plan(resource_type)
        # The parameters one of whose required keys is present (or with none known), in
        # plan order: a resource has a dozen keys, a type's plan several dozen entries.
        by_key, always = self._by_key[resource_type]
        positions = set(always)
        for key in resource:
            found = by_key.get(key)
            if found is not None:
                positions.update(found)
        for position in sorted(positions):
            code, kind, evaluator, _ = plan[position]
            try:
                nodes = evaluator(resource)
            except Exception:  # a bad expression or odd data must not block the write
                log.warning("search param %s.%s failed", resource_type, code, exc_info=True)
                continue
            if nodes:
                values = (
                    to_index_values(kind, nodes)
                    if cache is None
                    else _convert_cached(kind, nodes, cache)
                )
                if values:
                    out[code] = values
        memo: _Memo = {}
        for code, base, needed, components in composites:
            if any(keys is not None and not any(k in resource for k in keys) for keys in needed):
                continue
            try:
                values = _composite_values(resource, base, components, memo, cache)
            except Exception:
                log.warning("composite %s.%s failed", resource_type, code, exc_info=True)
                continue
            if values:
                out[code] = values
        narrative = narrative_text(resource) if text or content else None
        if text and narrative:
            out["_text"] = [TextValue(narrative)]
        if content and (everything := content_text(resource, narrative)):
            out["_content"] = [TextValue(everything)]


@lru_cache(maxsize=4)
def get_extractor(definitions_dir: Path) -> IndexExtractor:
    """The (fast) extractor for the definitions folder."""
    registry = get_registry(definitions_dir)
    support.prepare(registry, definitions_dir)
    return IndexExtractor(registry)
