"""Notification tables, on the resource store's ``metadata`` (migration 0013).

- ``notification``: one call of :func:`smartmed.notify.notify`: who, which template in
  which language, the rendered texts, the channel plan and where delivery stands. The
  FHIR ``Communication`` it points to is the clinical record of the delivery; this row
  is the working state (plan step, attempts) the record has no place for.
- ``notify_attempt``: every send tried, with its outcome; what staff read when asking
  "why did this not arrive".
- ``notify_inbox``: the in-app inbox; ``pk`` orders it and is the SSE event id.
- ``notify_preference``: per person, channels switched off and quiet hours.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String, Table, Text

from smartmed.fhir.storage.tables import ID_LEN, PK, metadata

REF_LEN = 200  # a FHIR reference such as "Patient/123"
KEY_LEN = 255

notification = Table(
    "notification",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("key", String(KEY_LEN), nullable=True),  # the caller's idempotency key
    Column("recipient", String(REF_LEN), nullable=False),  # as addressed
    Column("owner", String(REF_LEN), nullable=False),  # the person whose inbox/preferences
    Column("template", String(100), nullable=False),
    Column("locale", String(10), nullable=False),
    Column("urgency", String(10), nullable=False),  # routine | urgent
    Column("data", Text, nullable=False),  # JSON given by the caller
    Column("rendered", Text, nullable=False),  # JSON: subject, body, sms, wechat fields
    Column("inapp", Integer, nullable=False),  # 1: write to the inbox at delivery
    Column("plan", Text, nullable=False),  # JSON [[channel, address], ...] tried in order
    Column("skipped", Text, nullable=False),  # JSON {channel: why it is not in the plan}
    # queued | delivered | undeliverable
    Column("status", String(16), nullable=False),
    Column("step", Integer, nullable=False),  # index into plan being tried
    Column("attempts", Integer, nullable=False),  # sends tried on that step
    Column("delivered_by", Text, nullable=True),  # JSON list of channels that delivered
    Column("reason", Text, nullable=True),  # why undeliverable
    Column("communication_id", String(ID_LEN), nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("not_before", DateTime(timezone=False), nullable=False),  # quiet hours
    Column("finished_at", DateTime(timezone=False), nullable=True),
    Index("uq_notification_key", "key", unique=True),
    Index("ix_notification_status_created_at", "status", "created_at"),
)

notify_attempt = Table(
    "notify_attempt",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("notification_id", String(36), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),  # 1-based, per channel
    Column("at", DateTime(timezone=False), nullable=False),
    # sent | retry | failed (permanent or attempts exhausted)
    Column("outcome", String(8), nullable=False),
    Column("detail", Text, nullable=True),
    Index("ix_notify_attempt_notification_id", "notification_id"),
)

notify_inbox = Table(
    "notify_inbox",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("notification_id", String(36), nullable=False),
    Column("owner", String(REF_LEN), nullable=False),
    Column("recipient", String(REF_LEN), nullable=False),
    Column("template", String(100), nullable=False),
    Column("urgency", String(10), nullable=False),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("read_at", DateTime(timezone=False), nullable=True),
    Index("uq_notify_inbox_notification_id", "notification_id", unique=True),
    Index("ix_notify_inbox_owner_pk", "owner", "pk"),
)

notify_preference = Table(
    "notify_preference",
    metadata,
    Column("owner", String(REF_LEN), primary_key=True),
    Column("disabled", Text, nullable=False),  # JSON list of channels switched off
    Column("quiet_start", String(5), nullable=True),  # "22:00" local time
    Column("quiet_end", String(5), nullable=True),  # "07:00"
    Column("timezone", String(64), nullable=True),  # IANA zone; None: the platform's
    Column("updated_at", DateTime(timezone=False), nullable=False),
)
