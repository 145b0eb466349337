"""The FHIR Communication that records each notification's delivery.

One Communication per notification, written when it is queued and updated as delivery
ends:

- ``in-progress`` while queued (quiet hours, retries);
- ``completed`` with ``sent`` and one ``medium`` per channel that delivered;
- ``not-done`` with ``statusReason`` (communication-not-done-reason
  ``recipient-unavailable``, or ``system-error``) and the reasons in its text.

``priority`` is the urgency, ``category`` alert (urgent) or notification (routine),
``payload`` the rendered body in the recipient's language, and ``identifier`` the
notification id (system :data:`NOTIFICATION_SYSTEM`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from smartmed.fhir.model import fhir_instant
from smartmed.fhir.repository import Repository

NOTIFICATION_SYSTEM = "urn:smartmed:notification"
CHANNEL_SYSTEM = "urn:smartmed:notify:channel"
_MODE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
_NOT_DONE = "http://terminology.hl7.org/CodeSystem/communication-not-done-reason"
# Each channel as a v3 ParticipationMode (R4's example binding for medium) plus our code.
_MEDIUM = {
    "inapp": ("ONLINEWRIT", "online written"),
    "email": ("EMAILWRIT", "email"),
    "sms": ("WRITTEN", "written"),
    "wechat": ("ONLINEWRIT", "online written"),
}
_CHANNEL_DISPLAY = {"inapp": "in-app", "email": "email", "sms": "SMS", "wechat": "WeChat"}


def medium(channel: str) -> dict[str, Any]:
    code, display = _MEDIUM[channel]
    return {
        "coding": [
            {"system": _MODE, "code": code, "display": display},
            {"system": CHANNEL_SYSTEM, "code": channel},
        ],
        "text": _CHANNEL_DISPLAY[channel],
    }


def new_communication(
    *, notification_id: str, recipient: str, urgency: str, body: str
) -> dict[str, Any]:
    """The Communication of a notification just queued."""
    category = "alert" if urgency == "urgent" else "notification"
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [{"system": NOTIFICATION_SYSTEM, "value": notification_id}],
        "status": "in-progress",
        "category": [{"coding": [{"system": _CATEGORY, "code": category}]}],
        "priority": urgency,
        "recipient": [{"reference": recipient}],
        "payload": [{"contentString": body}],
    }
    if recipient.startswith("Patient/"):
        resource["subject"] = {"reference": recipient}
    return resource


def completed(resource: dict[str, Any], channels: list[str], sent: datetime) -> dict[str, Any]:
    """``resource`` marked delivered through ``channels`` at ``sent``."""
    out = dict(resource)
    out["status"] = "completed"
    out["medium"] = [medium(c) for c in channels]
    out["sent"] = fhir_instant(sent)
    out.pop("statusReason", None)
    return out


def not_done(
    resource: dict[str, Any], reason: str, *, system_error: bool = False
) -> dict[str, Any]:
    """``resource`` marked undeliverable because of ``reason``."""
    out = dict(resource)
    out["status"] = "not-done"
    code = "system-error" if system_error else "recipient-unavailable"
    out["statusReason"] = {"coding": [{"system": _NOT_DONE, "code": code}], "text": reason}
    return out


async def update_communication(
    repo: Repository, id_: str, change: Any, *args: Any, **kwargs: Any
) -> None:
    """Apply ``change(resource, *args, **kwargs)`` to Communication ``id_`` (a new version)."""
    stored = await repo.read("Communication", id_)
    resource = orjson.loads(stored.content or "{}")
    await repo.update("Communication", id_, change(resource, *args, **kwargs))
