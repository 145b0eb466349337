"""Typed settings, read once from ``SMARTMED_*`` environment variables.

Every knob of the platform is a field here; modules receive the settings object
instead of reading ``os.environ`` themselves.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/smartmed.db"


class Settings(BaseSettings):
    """Platform settings; each field is the env var ``SMARTMED_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SMARTMED_", extra="ignore")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL: sqlite+aiosqlite:///path or postgresql+asyncpg://...",
    )
    database_pool_size: int = Field(default=10, ge=1, le=200)
    definitions_dir: Path | None = Field(
        default=None,
        description="Folder of the HL7 FHIR R4 4.0.1 package (npm hl7.fhir.r4.examples)",
    )
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_json_depth: int = Field(default=64, ge=8, le=1000)
    default_page_size: int = Field(default=20, ge=1, le=1000)
    max_page_size: int = Field(default=1000, ge=1, le=10000)
    base_url: str | None = Field(
        default=None, description="Public base URL of the FHIR API; derived from requests if unset"
    )
    # Notifications (docs/notifications.md).
    notify_timezone: str = Field(
        default="Asia/Shanghai", description="Quiet hours clock when a person set no zone"
    )
    notify_max_attempts: int = Field(default=3, ge=1, le=20, description="sends per channel")
    notify_retry_seconds: float = Field(
        default=30.0, ge=0, description="Wait before the 2nd send on a channel; doubles"
    )
    notify_stream_poll_seconds: float = Field(
        default=2.0, gt=0, description="Inbox check of an open stream (other processes' sends)"
    )
    smtp_host: str | None = Field(default=None, description="SMTP server; unset: no email")
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = Field(default=True, description="STARTTLS after connecting")
    smtp_tls: bool = Field(default=False, description="Implicit TLS (port 465)")
    smtp_from: str = "smartmed <noreply@localhost>"
    smtp_timeout_seconds: float = Field(default=20.0, gt=0)
    sms_provider: Literal["file", "http"] = Field(
        default="file", description="file (development) or http"
    )
    sms_url: str | None = Field(default=None, description="The HTTP SMS provider's send URL")
    sms_api_key: SecretStr | None = None
    sms_sender: str | None = Field(default=None, description="Sender id or signature")
    sms_file: Path = Field(default=Path("var/sms.jsonl"), description="file provider's log")
    sms_timeout_seconds: float = Field(default=10.0, gt=0)
    wechat_app_id: str | None = Field(default=None, description="Official account; unset: off")
    wechat_app_secret: SecretStr | None = None
    wechat_api_base: str = "https://api.weixin.qq.com"
    wechat_templates: str = Field(
        default="", description="our template name=WeChat template_id, comma separated"
    )
    wechat_timeout_seconds: float = Field(default=10.0, gt=0)
    log_level: str = "INFO"
    # Identity and access (docs/identity.md).
    auth_required: bool = Field(
        default=False, description="Every /fhir/R4 request (but metadata) needs a bearer token"
    )
    access_policy_file: Path | None = Field(
        default=None, description="Access policy JSON replacing the shipped one (docs/access.md)"
    )
    secret_key: SecretStr | None = Field(
        default=None, description="Encrypts signing keys and TOTP secrets; dev default: var/"
    )
    issuer: str | None = Field(default=None, description="OAuth issuer; from the request if unset")
    access_token_seconds: int = Field(default=900, ge=30, le=86400)
    refresh_token_seconds: int = Field(default=30 * 86400, ge=60)
    session_idle_seconds: int = Field(default=900, ge=30)
    signing_key_rotation_seconds: int = Field(default=30 * 86400, ge=3600)
    login_max_failures: int = Field(default=5, ge=1)
    # Encryption at rest of sensitive identifiers (docs/encryption.md).
    encryption_enabled: bool = Field(
        default=True, description="Seal ID numbers and phones in what is written"
    )
    encryption_key: SecretStr | None = Field(
        default=None,
        description="Key-encryption key (32+ chars); unset: derived from secret_key",
    )
    encryption_algorithm: str = Field(default="AES-256-GCM", description="AES-256-GCM or SM4-GCM")
    encryption_identifier_systems: list[str] = Field(
        default=["urn:smartmed:id:resident"], description="Identifier systems sealed (JSON list)"
    )
    encryption_phone_resource_types: list[str] = Field(
        default=["Patient", "RelatedPerson", "Practitioner", "PractitionerRole", "Person"],
        description="Resource types whose phone/sms ContactPoints are sealed (JSON list)",
    )
    encryption_detect_id_numbers: bool = Field(
        default=True, description="Also seal valid 18-character ID numbers found anywhere"
    )
    encryption_refresh_seconds: float = Field(
        default=60.0, gt=0, description="How often a process looks for rotated keys"
    )
    auth_rate_per_minute: int = Field(default=60, ge=1, description="per client IP and account")
    log_json: bool = False
    # Audit (docs/audit.md).
    audit_enabled: bool = Field(default=True, description="Install the audit log as the sink")
    audit_retention_days: int = Field(
        default=2190,
        ge=183,
        description="Keep audit records this long (6 years); never under 183 days (6 months)",
    )
    audit_chain_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    audit_batch_window_ms: float = Field(
        default=0.0, ge=0, le=100, description="Extra wait to grow each group commit"
    )
    audit_site: str = Field(default="smartmed", description="AuditEvent.source.site")
    # Durable jobs, workflow handlers and subscriptions (docs/events.md).
    jobs_in_app: bool = Field(
        default=True, description="The app process runs jobs too (SQLite: the only runner)"
    )
    jobs_concurrency: int = Field(default=4, ge=1, le=256, description="Jobs run at once")
    jobs_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    jobs_lease_seconds: float = Field(
        default=30.0, ge=1, description="A killed worker's job runs again after this"
    )
    job_modules: str = Field(default="", description="Extra modules defining jobs, comma-separated")
    subscription_allowed_hosts: str = Field(
        default="", description="Hosts (or host:port) a rest-hook may reach despite being internal"
    )
    subscription_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    subscription_max_failures: int = Field(
        default=5, ge=1, description="Consecutive failed deliveries before status error"
    )
    # Payments (docs/payments.md).
    payments_provider: Literal["sandbox"] = Field(
        default="sandbox", description="Payment provider; sandbox: the local one at /sandbox/pay"
    )
    payments_sandbox_url: str = Field(
        default="http://127.0.0.1:8000", description="Base URL the sandbox provider is reached at"
    )
    payments_public_url: str | None = Field(
        default=None, description="Our base URL for provider callbacks; unset: the sandbox URL"
    )
    payments_merchant_id: str = Field(default="smartmed-dev", min_length=1, max_length=64)
    payments_signing_secret: SecretStr | None = Field(
        default=None, description="Shared HMAC secret with the provider; unset: from secret_key"
    )
    payments_order_minutes: int = Field(default=30, ge=1, le=7 * 24 * 60, description="Time to pay")
    payments_reviewer: str | None = Field(
        default=None, description="Who reviews odd payments (Practitioner/1, ...), told by notify"
    )
    # Web portal (docs/portal.md).
    portal_default_locale: str = Field(
        default="zh_CN", description="Portal language when neither account nor browser says"
    )
    portal_session_seconds: int = Field(
        default=12 * 3600, ge=60, description="Longest portal session, however active"
    )
    portal_assets_dir: Path | None = Field(
        default=None, description="node_modules with the portal's front-end packages"
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
