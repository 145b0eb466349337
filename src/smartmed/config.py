"""Typed settings, read once from ``SMARTMED_*`` environment variables.

Every knob of the platform is a field here; modules receive the settings object
instead of reading ``os.environ`` themselves.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
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
    log_level: str = "INFO"
    log_json: bool = False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
