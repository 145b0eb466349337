"""The key table: data keys and blind-index keys, each wrapped by the key-encryption key.

- ``kid``: the key id written into every value it sealed (``enc:v1:<kid>:...``); data
  keys are ``k1``, ``k2`` ..., blind-index keys ``b1`` ...; a fixed sequence so that two
  processes creating the first key at once collide on the primary key instead of
  silently creating two.
- ``purpose``: ``data`` (encrypts values) or ``blind`` (keys the blind-index MAC).
- ``algorithm``: ``AES-256-GCM`` or ``SM4-GCM`` (the suite; a blind key's MAC follows it).
- ``wrapped``: the key sealed with a key derived from the key-encryption key (KEK).
- ``kek_id``: fingerprint of the KEK that wrapped it, to name a wrong KEK at start-up.
- ``state``: ``active`` (newest data key of its algorithm seals new values) or
  ``retired`` (still decrypts what it sealed, until a rotation re-encrypted it all).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, String, Table, Text

from smartmed.fhir.storage.tables import metadata

crypto_key = Table(
    "crypto_key",
    metadata,
    Column("kid", String(32), primary_key=True),
    Column("purpose", String(8), nullable=False),
    Column("algorithm", String(16), nullable=False),
    Column("wrapped", Text, nullable=False),
    Column("kek_id", String(32), nullable=False),
    Column("state", String(8), nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
)
