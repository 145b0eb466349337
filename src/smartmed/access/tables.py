"""Access tables, on the resource store's ``metadata``.

``access_grant`` holds who may see which patient's records, and until when. Rows are
derived from FHIR resources by the policy's grant rules (a Contract grants its family-doctor
team, a Consent a family representative or an institution, a referral the specialist, a
visit the nurse, a prescription the pharmacy) and kept in step by after-write hooks, or
written directly for break-the-glass access. The resources stay the source of truth:
``smartmed access rebuild`` derives the table again from them.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String, Table, Text

from smartmed.fhir.storage.tables import metadata

REF = String(200)

access_grant = Table(
    "access_grant",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    # What grants it: "Contract/12" (its grants are replaced when it changes), or
    # "break-glass/<uuid>" for an emergency grant.
    Column("source", REF, nullable=False),
    Column("kind", String(32), nullable=False),  # care-team, delegation, referral, ...
    Column("grantee", REF, nullable=False),  # CareTeam/3, RelatedPerson/4, Organization/9
    Column("patient_id", String(64), nullable=False),
    # A grant for one resource only (a prescription sent to a pharmacy); None: the patient.
    Column("resource_type", String(64), nullable=True),
    Column("resource_id", String(64), nullable=True),
    Column("actions", Text, nullable=True),  # space-separated delegated actions
    Column("valid_from", DateTime(timezone=False), nullable=True),
    Column("valid_to", DateTime(timezone=False), nullable=True),
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("reviewed_at", DateTime(timezone=False), nullable=True),
    Column("reviewed_by", REF, nullable=True),
    Index("ix_access_grant_grantee", "grantee", "kind", "patient_id"),
    Index("ix_access_grant_source", "source"),
    Index("ix_access_grant_patient", "patient_id"),
)
