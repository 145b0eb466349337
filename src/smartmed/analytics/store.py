"""ViewDefinitions kept in the FHIR store, wrapped in a ``Basic`` resource.

ViewDefinition is not an R4 resource type, and the store validates every resource
against the R4 definitions. Rather than a table of our own (a migration, and a second
path for history, search and access rules), a ViewDefinition is stored as a ``Basic``
(https://hl7.org/fhir/R4/basic.html, "for resources not yet defined in FHIR") that
carries it whole as an Attachment of ``application/fhir+json``: versioned, in the
history, searchable by ``Basic?code=…|ViewDefinition&identifier=…|<name>``, and
unwrapped unchanged by ``$viewdefinition-run`` on the Basic.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from smartmed.fhir.errors import Invalid

# The ViewDefinition's canonical type (sql-on-fhir-v2 StructureDefinition-ViewDefinition)
VIEW_CODE_SYSTEM = "https://sql-on-fhir.org/ig/StructureDefinition"
VIEW_CODE = "ViewDefinition"
NAME_SYSTEM = "urn:smartmed:viewdefinition"
EXTENSION = "urn:smartmed:extension:viewdefinition"
MEDIA = "application/fhir+json"


def wrap(view: dict[str, Any]) -> dict[str, Any]:
    """A Basic resource carrying the ViewDefinition."""
    name = view.get("name")
    basic: dict[str, Any] = {
        "resourceType": "Basic",
        "code": {
            "coding": [{"system": VIEW_CODE_SYSTEM, "code": VIEW_CODE}],
            "text": view.get("title") or name or VIEW_CODE,
        },
        "extension": [
            {
                "url": EXTENSION,
                "valueAttachment": {
                    "contentType": MEDIA,
                    "data": base64.b64encode(orjson.dumps(view)).decode(),
                    "title": name or VIEW_CODE,
                },
            }
        ],
    }
    if isinstance(name, str) and name:
        basic["identifier"] = [{"system": NAME_SYSTEM, "value": name}]
    return basic


def unwrap(basic: dict[str, Any]) -> dict[str, Any]:
    """The ViewDefinition inside a Basic made by :func:`wrap`; Invalid otherwise."""
    for ext in basic.get("extension", []):
        attachment = ext.get("valueAttachment") if ext.get("url") == EXTENSION else None
        if isinstance(attachment, dict) and isinstance(attachment.get("data"), str):
            try:
                view = orjson.loads(base64.b64decode(attachment["data"]))
            except ValueError:
                break
            if isinstance(view, dict):
                return view
    raise Invalid(f"Basic/{basic.get('id')} does not hold a ViewDefinition", expression="Basic")
