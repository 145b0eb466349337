"""``_summary`` and ``_elements`` subsets of resources (https://hl7.org/fhir/R4/search.html#summary).

- ``true``: the elements marked ``isSummary`` in the resource's StructureDefinition, plus
  the mandatory ones (``min`` ≥ 1), applied inside kept backbone elements too; datatype
  values are kept whole.
- ``text``: ``text``, ``id``, ``meta`` and the mandatory top-level elements.
- ``data``: everything but ``text``.

Every subset carries the ``SUBSETTED`` tag, so nobody mistakes it for the whole resource.
``_summary`` applies to matches and included resources alike and takes precedence over
``_elements``, which applies to the matches only.
The flags are read from the definitions package, one StructureDefinition per type, cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from smartmed.config import get_settings
from smartmed.fhir import jsonio
from smartmed.fhir.definitions import package
from smartmed.fhir.definitions.locate import locate_definitions

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
SUBSET_MODES = frozenset({"true", "text", "data"})


@dataclass(frozen=True, slots=True)
class _Slot:
    """One element of a resource or backbone element: its flags and, if backbone, its path."""

    summary: bool
    required: bool
    child: str | None


_Table = dict[str, dict[str, _Slot]]  # element path -> JSON name (choices as `value[x]`)


@lru_cache(maxsize=4)
def definitions_folder(configured: Path | None) -> Path:
    """The definitions package folder for a configured path (None: look it up)."""
    return locate_definitions(configured)


@lru_cache(maxsize=256)
def _table(folder: Path, type_: str) -> _Table:
    sd = package.structure_definition(folder, type_)
    if sd is None:
        raise KeyError(type_)
    elements = sd["snapshot"]["element"]
    parents = {el["path"].rsplit(".", 1)[0] for el in elements[1:]}
    table: _Table = {elements[0]["path"]: {}}
    for el in elements[1:]:
        path: str = el["path"]
        parent, name = path.rsplit(".", 1)
        if path in parents:
            table[path] = {}
            child: str | None = path
        else:
            ref = el.get("contentReference")
            child = ref.split("#", 1)[1] if ref else None
        slot = _Slot(bool(el.get("isSummary")), el.get("min", 0) > 0, child)
        table.setdefault(parent, {})[name] = slot
    return table


def _slot(node: dict[str, _Slot], key: str) -> _Slot | None:
    name = key[1:] if key.startswith("_") else key  # a primitive's extension sibling
    found = node.get(name)
    if found is not None:
        return found
    # A choice: valueQuantity is value[x] (formats.html#choice).
    for end in range(len(name) - 1, 0, -1):
        if name[end].isupper() and (slot := node.get(name[:end] + "[x]")) is not None:
            return slot
    return None


def _keep_summary(table: _Table, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    node = table.get(path, {})
    out: dict[str, Any] = {}
    for key, value in obj.items():
        slot = _slot(node, key)
        if key == "resourceType":
            out[key] = value
        elif slot is None or not (slot.summary or slot.required):
            continue
        elif slot.child is None or key.startswith("_"):
            out[key] = value
        elif isinstance(value, list):
            out[key] = [
                _keep_summary(table, slot.child, v) if isinstance(v, dict) else v for v in value
            ]
        else:
            out[key] = _keep_summary(table, slot.child, value) if isinstance(value, dict) else value
    return out


def _keep_text(table: _Table, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    node = table.get(path, {})
    keep = {"resourceType", "id", "meta", "text"}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        slot = _slot(node, key)
        if key in keep or (slot is not None and slot.required):
            out[key] = value
    return out


def _tagged(document: dict[str, Any]) -> str:
    meta = dict(document.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    document["meta"] = meta
    return jsonio.dumps(document)


def summarize(content: str, mode: str, folder: Path | None = None) -> str:
    """The ``_summary=true|text|data`` subset of a stored resource's JSON."""
    document = jsonio.loads(content)
    type_ = str(document.get("resourceType", ""))
    if mode == "data":
        document.pop("text", None)
        return _tagged(document)
    try:
        table = _table(folder or definitions_folder(get_settings().definitions_dir), type_)
    except KeyError:
        return _tagged(document)  # not a base resource type: nothing to subset by
    keep = _keep_summary if mode == "true" else _keep_text
    return _tagged(keep(table, type_, document))


def only_elements(content: str, elements: set[str]) -> str:
    """The ``_elements`` subset: the named top-level elements plus id and meta."""
    document = jsonio.loads(content)
    keep = {"resourceType", "id", "meta"} | elements
    return _tagged({k: v for k, v in document.items() if k in keep})
