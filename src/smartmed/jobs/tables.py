"""Tables of the jobs package (on the engine's ``metadata``; migration 0012).

- ``job``: one durable job: kind, JSON payload, optional idempotency ``key`` (unique),
  state queued -> running -> done | dead, ``run_at`` (not before), attempts, and the lease
  (``locked_by``, ``locked_until``, ``lease``) that fences a claim: only the holder of the
  current ``lease`` token may finish the job.
- ``job_schedule``: per recurring schedule, the next cron occurrence still to enqueue.
- ``subscription``: the delivery view of each FHIR ``Subscription`` (criteria split into
  type and query, channel, owner, consecutive failures); the resource stays the truth.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String, Table, Text

from smartmed.fhir.storage.tables import ID_LEN, PK, TYPE_LEN, metadata

KIND_LEN = 100
KEY_LEN = 255

job = Table(
    "job",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("kind", String(KIND_LEN), nullable=False),
    Column("payload", Text, nullable=False),
    Column("key", String(KEY_LEN), nullable=True),
    # queued | running | done | dead
    Column("state", String(16), nullable=False),
    Column("run_at", DateTime(timezone=False), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("locked_by", String(100), nullable=True),
    Column("locked_until", DateTime(timezone=False), nullable=True),
    Column("lease", String(32), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("finished_at", DateTime(timezone=False), nullable=True),
    Index("uq_job_key", "key", unique=True),
    Index("ix_job_state_run_at", "state", "run_at"),
)

job_schedule = Table(
    "job_schedule",
    metadata,
    Column("name", String(KIND_LEN), primary_key=True),
    Column("cron", String(100), nullable=False),
    Column("next_run", DateTime(timezone=False), nullable=False),
)

subscription = Table(
    "subscription",
    metadata,
    Column("id", String(ID_LEN), primary_key=True),
    Column("resource_type", String(TYPE_LEN), nullable=False),
    Column("query", Text, nullable=False),
    # requested | active | error | off (as in Subscription.status)
    Column("status", String(16), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("endpoint", Text, nullable=True),
    Column("payload", String(64), nullable=True),
    Column("headers", Text, nullable=False),  # JSON list of "Name: value"
    Column("owner", Text, nullable=True),  # JSON claims of the creating principal
    Column("failures", Integer, nullable=False),  # consecutive failed deliveries
    Index("ix_subscription_resource_type_status", "resource_type", "status"),
)
