"""Index values to ``idx_*`` table rows (the table layout is described in ``storage/tables.py``).

Every row of one table has the same keys, so that a batch goes in as one executemany.
A composite value becomes rows of its components' kinds under ``code$i``, one group
number per matched element (``grp``), so searches pair components of the same element.
"""

from __future__ import annotations

from typing import Any

from smartmed.fhir.search.index import (
    CompositeValue,
    DateValue,
    GeoValue,
    IndexValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    ResourceIndex,
    StringValue,
    TextValue,
    TokenValue,
    UriValue,
)
from smartmed.fhir.storage.tables import INDEX_TABLES


def composite_param(code: str, position: int) -> str:
    """The ``param`` of the rows of component ``position`` of composite ``code``."""
    return f"{code}${position}"


def _row(value: IndexValue, grp: int | None) -> tuple[str, dict[str, Any]]:
    """(table kind, columns) of one value."""
    match value:
        case TokenValue():
            return "token", {
                "system": value.system,
                "code": value.code,
                "text": value.text,
                "type_system": value.type_system,
                "type_code": value.type_code,
                "grp": grp,
            }
        case StringValue():
            return "string", {"value": value.value, "norm": value.norm, "grp": grp}
        case ReferenceValue():
            return "reference", {
                "target_type": value.target_type,
                "target_id": value.target_id,
                "url": value.url,
                "ident_system": value.ident_system,
                "ident_value": value.ident_value,
                "grp": grp,
            }
        case DateValue():
            return "date", {"low": value.low, "high": value.high, "grp": grp}
        case NumberValue():
            return "number", {
                "value": value.value,
                "low": value.low,
                "high": value.high,
                "grp": grp,
            }
        case QuantityValue():
            return "quantity", {
                "value": value.value,
                "low": value.low,
                "high": value.high,
                "system": value.system,
                "code": value.code,
                "unit": value.unit,
                "canon_value": value.canon_value,
                "canon_low": value.canon_low,
                "canon_high": value.canon_high,
                "canon_unit": value.canon_unit,
                "grp": grp,
            }
        case UriValue():
            return "uri", {"value": value.value}
        case GeoValue():
            return "geo", {
                "lat": value.lat,
                "lon": value.lon,
                "x": value.x,
                "y": value.y,
                "z": value.z,
            }
        case TextValue():
            return "text", {"value": value.value}
    raise TypeError(f"not an index value: {value!r}")


def index_rows(pk: int, type_: str, index: ResourceIndex) -> dict[str, list[dict[str, Any]]]:
    """The rows to insert into each ``idx_*`` table (by kind) for one resource's values."""
    rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in INDEX_TABLES}
    for param, values in index.values.items():
        if values and type(values[0]) is CompositeValue:
            for grp, composite in enumerate(values):
                assert type(composite) is CompositeValue
                for position, part in enumerate(composite.parts):
                    name = composite_param(param, position)
                    for simple in dict.fromkeys(part):
                        kind, columns = _row(simple, grp)
                        base = {"res_pk": pk, "resource_type": type_, "param": name}
                        rows[kind].append(base | columns)
            continue
        for value in dict.fromkeys(values):  # one row per distinct value is enough to match
            kind, columns = _row(value, None)
            rows[kind].append({"res_pk": pk, "resource_type": type_, "param": param} | columns)
    return rows
