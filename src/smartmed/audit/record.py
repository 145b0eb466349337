"""An :class:`AuditRecord` as canonical JSON (the text that is stored and hashed) and back.

Canonical form: UTF-8 JSON with sorted keys, no whitespace, empty and missing fields
left out, ``recorded`` as a UTC instant with microseconds (``2026-11-22T01:02:03.000004Z``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from smartmed.fhir.hooks import AuditRecord

ACTIONS = frozenset("CRUDE")
OUTCOMES = frozenset({"0", "4", "8", "12"})


class BadRecord(ValueError):
    """An audit record the log refuses (unknown action or outcome, missing subtype)."""


def utc_naive(moment: datetime) -> datetime:
    """``moment`` as naive UTC (how the database stores times); naive input is taken as UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def instant(moment: datetime) -> str:
    """A FHIR instant in UTC with microseconds."""
    return utc_naive(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check(record: AuditRecord) -> None:
    """Raise :class:`BadRecord` unless the record can become a valid AuditEvent."""
    if record.action not in ACTIONS:
        raise BadRecord(f"audit action {record.action!r} is not one of C R U D E")
    if record.outcome not in OUTCOMES:
        raise BadRecord(f"audit outcome {record.outcome!r} is not one of 0 4 8 12")
    if not record.subtype:
        raise BadRecord("an audit record needs a subtype")
    if not isinstance(record.recorded, datetime):
        raise BadRecord("an audit record needs its recorded time")


def to_dict(record: AuditRecord) -> dict[str, Any]:
    """The record as a plain dict without empty fields."""
    out: dict[str, Any] = {
        "action": record.action,
        "subtype": record.subtype,
        "outcome": record.outcome,
        "recorded": instant(record.recorded),
    }
    for name in ("agent", "account", "client_id", "source_ip", "purpose_of_use", "query", "detail"):
        value = getattr(record, name)
        if value:
            out[name] = str(value)
    for name in ("roles", "entities", "patients"):
        values = getattr(record, name)
        if values:
            out[name] = [str(v) for v in values]
    if record.extra:
        out["extra"] = {str(k): str(v) for k, v in record.extra.items()}
    return out


def canonical(record: AuditRecord) -> str:
    """The canonical JSON text of a record (checked first)."""
    check(record)
    return orjson.dumps(to_dict(record), option=orjson.OPT_SORT_KEYS).decode()


def from_body(body: str) -> AuditRecord:
    """The record back from its stored canonical JSON."""
    data = orjson.loads(body)
    recorded = datetime.strptime(data["recorded"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return AuditRecord(
        action=data["action"],
        subtype=data["subtype"],
        outcome=data["outcome"],
        recorded=recorded.replace(tzinfo=UTC),
        agent=data.get("agent"),
        account=data.get("account"),
        client_id=data.get("client_id"),
        roles=tuple(data.get("roles", ())),
        source_ip=data.get("source_ip"),
        purpose_of_use=data.get("purpose_of_use"),
        entities=tuple(data.get("entities", ())),
        patients=tuple(data.get("patients", ())),
        query=data.get("query"),
        detail=data.get("detail"),
        extra=dict(data.get("extra", {})),
    )
