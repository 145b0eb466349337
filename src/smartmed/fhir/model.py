"""Small value types shared by the engine: stored resources and FHIR time formats."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def utcnow() -> datetime:
    """The current time as a naive UTC datetime (how the store keeps instants)."""
    return datetime.now(UTC).replace(tzinfo=None)


def fhir_instant(moment: datetime) -> str:
    """A naive UTC datetime as a FHIR ``instant`` (microseconds, ``Z``)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def http_date(moment: datetime) -> str:
    """A naive UTC datetime as an HTTP date (``Last-Modified``)."""
    return format_datetime(moment.replace(tzinfo=UTC), usegmt=True)


@dataclass(frozen=True, slots=True)
class StoredResource:
    """One version of a resource as the store holds it; ``content`` is its JSON text."""

    type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: str | None

    @property
    def etag(self) -> str:
        """The weak ETag of this version, as FHIR prescribes: ``W/"3"``."""
        return f'W/"{self.version_id}"'

    @property
    def reference(self) -> str:
        """The relative reference ``Type/id``."""
        return f"{self.type}/{self.id}"
