"""The engine assembled: database, definitions-derived services and operations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.config import Settings
from smartmed.fhir.definitions.locate import locate_definitions
from smartmed.fhir.hooks import AuditSink
from smartmed.fhir.operations import OperationRegistry
from smartmed.fhir.repository import EngineServices, Repository
from smartmed.fhir.search.extract import get_extractor
from smartmed.fhir.search.params import get_registry
from smartmed.fhir.storage.database import Database
from smartmed.fhir.validate import get_validator


@dataclass(slots=True)
class FhirEngine:
    """Everything a request needs to reach the store, built once per process."""

    settings: Settings
    db: Database
    services: EngineServices
    resource_types: frozenset[str]
    operations: OperationRegistry = field(default_factory=OperationRegistry)
    capability_cache: dict[str, str] = field(default_factory=dict)
    audit: AuditSink | None = None  # installed by the application (smartmed.audit)
    access: Any = None  # smartmed.access.AccessControl, installed by build()

    @classmethod
    def build(cls, settings: Settings) -> FhirEngine:
        """Load the definitions and open the database named by the settings."""
        folder = locate_definitions(settings.definitions_dir)
        validator = get_validator(folder)
        db = Database(settings.database_url, pool_size=settings.database_pool_size)
        from smartmed.crypto import build_protector

        # Sensitive identifiers sealed at rest (docs/encryption.md); a wrong key fails here.
        protector = build_protector(settings, db)
        db.protect(protector)
        services = EngineServices(
            validator=validator,
            extractor=get_extractor(folder),
            registry=get_registry(folder),
            is_postgres=db.is_postgres,
            default_count=settings.default_page_size,
            max_count=settings.max_page_size,
            protector=protector,
        )
        engine = cls(settings, db, services, validator.resource_types)
        from smartmed.analytics.operations import register_view_operations
        from smartmed.fhir.builtin_operations import register_builtin_operations

        register_builtin_operations(engine.operations)
        register_view_operations(engine.operations)
        from smartmed.access import install_access

        install_access(engine, folder)
        return engine

    def repository(self, conn: AsyncConnection) -> Repository:
        """A repository working on ``conn`` (inside the caller's transaction)."""
        return Repository(conn, self.services)
