"""Notifications: in-app inbox with live push, email, SMS and WeChat (docs/notifications.md).

Public API for other modules::

    from smartmed.notify import notify

    notification_id = await notify(
        engine, conn,                      # the caller's transaction; nothing is sent yet
        recipient="Practitioner/12",       # Patient, RelatedPerson, Practitioner, PractitionerRole
        template="bp-alert",               # templates/<locale>/bp-alert.j2
        data={"patient": "张三", "systolic": 182, "diastolic": 110, "measured_at": "..."},
        channels=("inapp", "sms", "email"),
        urgency="urgent",                  # routine waits out quiet hours; urgent never does
        key="bp-alert:Observation/991",    # same key -> the same notification, sent once
    )

Delivery happens after commit in the ``notify.deliver`` job: retries with back-off, then
the next channel; each notification's outcome is a FHIR Communication.
"""

from smartmed.notify.errors import (
    PermanentFailure,
    TemporaryFailure,
    UnknownChannel,
    UnknownRecipient,
    UnknownTemplate,
    UnusableData,
)
from smartmed.notify.recipients import WECHAT_OPENID_SYSTEM
from smartmed.notify.service import DEFAULT_CHANNELS, URGENCIES, notify

__all__ = [
    "DEFAULT_CHANNELS",
    "URGENCIES",
    "WECHAT_OPENID_SYSTEM",
    "PermanentFailure",
    "TemporaryFailure",
    "UnknownChannel",
    "UnknownRecipient",
    "UnknownTemplate",
    "UnusableData",
    "notify",
]
