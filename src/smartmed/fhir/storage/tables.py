"""SQLAlchemy Core tables of the resource store (one definition for SQLite and PostgreSQL).

- ``resource``: the current version of every resource, its JSON as stored and served.
- ``resource_history``: every version ever written (create, update, delete), never changed.
- ``idx_*``: typed search index rows extracted at write time, one row per value.
  Composite parameters (search.html#composite) have no table of their own: component
  ``i`` of parameter ``p`` is a row of the component's kind under param ``p$i``, and the
  rows of one matched element share ``grp`` (NULL for plain rows), so a search joins the
  components on (res_pk, grp). ``idx_geo`` holds Location positions (``near``), ``idx_text``
  the normalised narrative (``_text``) and full content (``_content``) of each resource.
- ``outbox``: one change event per write, in the same transaction, for subscriptions and jobs.
- ``idempotency_key``: the first response to a POST carrying an ``Idempotency-Key``.

On PostgreSQL resource JSON is ``JSONB``; on SQLite ``TEXT``. The engine is created with
identity JSON (de)serialisers, so Python always passes and receives the JSON *text*: a
read never parses and re-serialises a resource. Columns that may hold sensitive values
(resource JSON, saved response bodies) are revealed on the way out by the installed
protector, if any (``protect.py``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeEngine

from smartmed.fhir.storage.protect import ResourceJson, SealedText

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Surrogate keys: BIGINT identity on PostgreSQL, INTEGER PRIMARY KEY (rowid) on SQLite.
PK: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")
# Resource JSON: JSONB on PostgreSQL, TEXT on SQLite; always str on the Python side, and
# revealed (protected values decrypted) by the installed protector when read.
RESOURCE_JSON: TypeEngine[str] = ResourceJson()

TYPE_LEN = 64
ID_LEN = 64

resource = Table(
    "resource",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("type", String(TYPE_LEN), nullable=False),
    Column("id", String(ID_LEN), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=False), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", RESOURCE_JSON, nullable=True),
    Index("uq_resource_type_id", "type", "id", unique=True),
    Index("ix_resource_type_last_updated", "type", "last_updated"),
)

resource_history = Table(
    "resource_history",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("type", String(TYPE_LEN), nullable=False),
    Column("id", String(ID_LEN), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=False), nullable=False),
    # create | update | delete (FHIR Bundle.entry.request.method is derived from it)
    Column("action", String(8), nullable=False),
    Column("content", RESOURCE_JSON, nullable=True),
    Index("uq_resource_history_type_id_version_id", "type", "id", "version_id", unique=True),
    Index("ix_resource_history_last_updated", "last_updated"),
    Index("ix_resource_history_type_last_updated", "type", "last_updated"),
)


def _index_table(
    name: str, *columns: Column[object], indexes: list[Index], grouped: bool = True
) -> Table:
    # grp: the element of a composite parameter a component row belongs to (see above).
    group = [Column("grp", Integer, nullable=True)] if grouped else []
    return Table(
        name,
        metadata,
        Column("res_pk", PK, nullable=False),
        Column("resource_type", String(TYPE_LEN), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
        *group,
        Index(f"ix_{name}_res_pk", "res_pk"),
        *indexes,
    )


idx_token = _index_table(
    "idx_token",
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=True),
    Column("text", Text, nullable=True),
    # Identifier.type coding, for :of-type.
    Column("type_system", Text, nullable=True),
    Column("type_code", Text, nullable=True),
    indexes=[Index("ix_idx_token_lookup", "resource_type", "param", "code", "system")],
)
idx_string = _index_table(
    "idx_string",
    Column("value", Text, nullable=False),
    Column("norm", Text, nullable=False),
    indexes=[
        Index(
            "ix_idx_string_lookup",
            "resource_type",
            "param",
            "norm",
            postgresql_ops={"norm": "text_pattern_ops"},
        )
    ],
)
idx_reference = _index_table(
    "idx_reference",
    Column("target_type", String(TYPE_LEN), nullable=True),
    Column("target_id", String(ID_LEN), nullable=True),
    Column("url", Text, nullable=True),
    # Reference.identifier, for :identifier.
    Column("ident_system", Text, nullable=True),
    Column("ident_value", Text, nullable=True),
    indexes=[
        Index("ix_idx_reference_lookup", "resource_type", "param", "target_id", "target_type"),
        Index("ix_idx_reference_target", "target_type", "target_id"),
        Index("ix_idx_reference_identifier", "resource_type", "param", "ident_value"),
    ],
)
idx_date = _index_table(
    "idx_date",
    Column("low", DateTime(timezone=False), nullable=False),
    Column("high", DateTime(timezone=False), nullable=False),
    indexes=[Index("ix_idx_date_lookup", "resource_type", "param", "low", "high")],
)
idx_number = _index_table(
    "idx_number",
    Column("value", Float, nullable=False),
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    indexes=[Index("ix_idx_number_lookup", "resource_type", "param", "value")],
)
idx_quantity = _index_table(
    "idx_quantity",
    Column("value", Float, nullable=False),
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=True),
    Column("unit", Text, nullable=True),
    # UCUM canonical form (search/ucum.py): value and range in canonical units, and the unit.
    Column("canon_value", Float, nullable=True),
    Column("canon_low", Float, nullable=True),
    Column("canon_high", Float, nullable=True),
    Column("canon_unit", Text, nullable=True),
    indexes=[
        Index("ix_idx_quantity_lookup", "resource_type", "param", "code", "value"),
        Index("ix_idx_quantity_canonical", "resource_type", "param", "canon_unit", "canon_value"),
    ],
)
idx_uri = _index_table(
    "idx_uri",
    Column("value", Text, nullable=False),
    indexes=[Index("ix_idx_uri_lookup", "resource_type", "param", "value")],
    grouped=False,
)
idx_geo = _index_table(
    "idx_geo",
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    # The unit vector of the position, for exact great-circle distances (search/geo.py).
    Column("x", Float, nullable=False),
    Column("y", Float, nullable=False),
    Column("z", Float, nullable=False),
    indexes=[Index("ix_idx_geo_lookup", "resource_type", "param", "lat", "lon")],
    grouped=False,
)
idx_text = _index_table(
    "idx_text",
    Column("value", Text, nullable=False),
    indexes=[Index("ix_idx_text_lookup", "resource_type", "param")],
    grouped=False,
)

INDEX_TABLES = {
    "token": idx_token,
    "string": idx_string,
    "reference": idx_reference,
    "date": idx_date,
    "number": idx_number,
    "quantity": idx_quantity,
    "uri": idx_uri,
    "geo": idx_geo,
    "text": idx_text,
}

outbox = Table(
    "outbox",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("resource_type", String(TYPE_LEN), nullable=False),
    Column("resource_id", String(ID_LEN), nullable=False),
    Column("version_id", Integer, nullable=False),
    # create | update | delete
    Column("action", String(8), nullable=False),
    Column("processed_at", DateTime(timezone=False), nullable=True),
    Index("ix_outbox_unprocessed", "processed_at", "pk"),
)

idempotency_key = Table(
    "idempotency_key",
    metadata,
    Column("scope", String(128), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("status", Integer, nullable=True),
    Column("headers", Text, nullable=True),
    Column("body", SealedText, nullable=True),
)
