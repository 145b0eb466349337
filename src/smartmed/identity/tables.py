"""Identity tables, on the resource store's ``metadata`` so Alembic sees one schema.

- ``account``: a person who logs in, linked to a FHIR identity (``Practitioner/123``).
- ``role_assignment``: (account, role, organisation) — several roles in several organisations.
- ``oauth_client``: registered OAuth clients; the secret only as a hash.
- ``auth_code``: one-time authorization codes (hashed) with their PKCE challenge.
- ``refresh_token``: refresh tokens (hashed) in rotation families.
- ``login_session``: browser sessions of the login page (hashed cookie value).
- ``signing_key``: JWT signing keys; the private key encrypted with the secret key.
- ``revoked_token``: the denylist of revoked access-token ``jti`` until they expire.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Index, Integer, String, Table, Text

from smartmed.fhir.storage.tables import metadata

REF_LEN = 200  # a FHIR reference such as "Practitioner/123" or "Organization/abc"
HASH_LEN = 64  # hex SHA-256

account = Table(
    "account",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("username", String(100), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("fhir_user", String(REF_LEN), nullable=True),
    Column("totp_secret", Text, nullable=True),  # encrypted
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", DateTime(timezone=False), nullable=True),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime(timezone=False), nullable=False),
)

role_assignment = Table(
    "role_assignment",
    metadata,
    Column("account_id", String(36), primary_key=True),
    Column("role", String(40), primary_key=True),
    # "" when the role is not tied to an organisation (e.g. a resident).
    Column("organization", String(REF_LEN), primary_key=True),
)

oauth_client = Table(
    "oauth_client",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("secret_hash", String(HASH_LEN), nullable=True),  # None: a public client
    Column("redirect_uris", Text, nullable=False),  # space separated
    Column("scope", Text, nullable=False),  # the most a token of this client may hold
    Column("grant_types", Text, nullable=False),  # space separated
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime(timezone=False), nullable=False),
)

auth_code = Table(
    "auth_code",
    metadata,
    Column("code_hash", String(HASH_LEN), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("account_id", String(36), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("code_challenge", String(128), nullable=False),
    Column("nonce", String(255), nullable=True),
    Column("patient", String(64), nullable=True),
    Column("expires_at", DateTime(timezone=False), nullable=False),
    Column("used", Boolean, nullable=False, default=False),
)

refresh_token = Table(
    "refresh_token",
    metadata,
    Column("token_hash", String(HASH_LEN), primary_key=True),
    Column("family_id", String(36), nullable=False),
    Column("client_id", String(64), nullable=False),
    Column("account_id", String(36), nullable=True),
    Column("scope", Text, nullable=False),
    Column("patient", String(64), nullable=True),
    Column("issued_at", DateTime(timezone=False), nullable=False),
    Column("expires_at", DateTime(timezone=False), nullable=False),
    Column("rotated", Boolean, nullable=False, default=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Index("ix_refresh_token_family_id", "family_id"),
    Index("ix_refresh_token_account_id", "account_id"),
)

login_session = Table(
    "login_session",
    metadata,
    Column("session_hash", String(HASH_LEN), primary_key=True),
    Column("account_id", String(36), nullable=False),
    Column("mfa_ok", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("last_seen", DateTime(timezone=False), nullable=False),
    Index("ix_login_session_account_id", "account_id"),
)

signing_key = Table(
    "signing_key",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(10), nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("private_enc", Text, nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("sign_until", DateTime(timezone=False), nullable=False),
    Column("publish_until", DateTime(timezone=False), nullable=False),
)

revoked_token = Table(
    "revoked_token",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires_at", DateTime(timezone=False), nullable=False),
)
