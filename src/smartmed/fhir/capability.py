"""The CapabilityStatement: generated from what the engine actually supports."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from smartmed import __version__
from smartmed.fhir.search.service import SUPPORTED_KINDS

if TYPE_CHECKING:
    from smartmed.fhir.context import FhirEngine

_INTERACTIONS = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
]


def capability_statement(engine: FhirEngine, base: str) -> str:
    """The CapabilityStatement JSON for this server at ``base`` (rendered once per base)."""
    cached = engine.capability_cache.get(base)
    if cached is None:
        cached = engine.capability_cache[base] = _render(engine, base)
    return cached


def _render(engine: FhirEngine, base: str) -> str:
    registry = engine.services.registry
    ops = engine.operations.operations.values()
    resources: list[dict[str, Any]] = []
    for type_ in sorted(engine.resource_types):
        params = [
            {"name": p.code, "definition": p.url, "type": p.type}
            for p in sorted(registry.params_for(type_).values(), key=lambda p: p.code)
            if p.type in SUPPORTED_KINDS
        ]
        entry: dict[str, Any] = {
            "type": type_,
            "interaction": [{"code": code} for code in _INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical"],
            "searchParam": params,
        }
        type_ops = [
            {
                "name": op.name,
                "definition": op.definition or f"{base}/OperationDefinition/{op.name}",
            }
            for op in ops
            if ({"type", "instance"} & op.levels)
            and (op.resource_types is None or type_ in op.resource_types)
        ]
        if type_ops:
            entry["operation"] = type_ops
        resources.append(entry)
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-21",
        "publisher": "smartmed",
        "kind": "instance",
        "software": {"name": "smartmed", "version": __version__},
        "implementation": {"description": "smartmed FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "security": _security(base),
                "resource": resources,
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                ],
                "operation": [
                    {
                        "name": op.name,
                        "definition": op.definition or f"{base}/OperationDefinition/{op.name}",
                    }
                    for op in ops
                    if "system" in op.levels
                ],
            }
        ],
    }
    return orjson.dumps(statement).decode()


def _security(base: str) -> dict[str, object]:
    """SMART App Launch: the OAuth endpoints (also at .well-known/smart-configuration)."""
    root = base.removesuffix("/fhir/R4")
    return {
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": "authorize", "valueUri": f"{root}/oauth/authorize"},
                    {"url": "token", "valueUri": f"{root}/oauth/token"},
                    {"url": "revoke", "valueUri": f"{root}/oauth/revoke"},
                    {"url": "introspect", "valueUri": f"{root}/oauth/introspect"},
                ],
            }
        ],
        "cors": False,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth 2.0 / OpenID Connect with SMART App Launch v2 scopes",
            }
        ],
        "description": "Bearer tokens from this server's OAuth 2.0 endpoints; access policies "
        "by role, care relationship and consent apply inside the engine.",
    }
