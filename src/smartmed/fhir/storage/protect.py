"""The seam for protecting sensitive values at rest; the policy lives outside the engine.

The engine knows nothing about ID numbers or phones. A deployment installs a
``Protector`` (``smartmed.crypto`` provides one) and the engine calls it at three points:

- **write** (``Repository``): ``seal`` gives the JSON text to store and the document to
  extract search index values from (sensitive values replaced by blind-index tokens);
- **read**: the ``content`` columns are of type ``ResourceJson``, whose result processing
  calls ``reveal`` on every stored text that carries a protection marker, so every way
  out of the store (read, vread, search, include, history, ``$everything``) gets the
  plaintext from one place, and a text without the marker costs one substring test;
- **search**: token values are matched as given *or* as their blind-index form
  (``BlindCode`` computes it while binding the query parameters).

The protector travels with the database engine's dialect (each ``Database`` has its own),
because SQLAlchemy type processing sees the dialect and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Dialect, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

if TYPE_CHECKING:
    from smartmed.fhir.storage.database import Database

_ATTRIBUTE = "smartmed_protector"


@dataclass(frozen=True, slots=True)
class Sealed:
    """A resource as stored (JSON text) and the document its search index comes from."""

    stored: str
    indexed: dict[str, Any]


class Protector(Protocol):
    """What the engine needs from a protection policy."""

    def seal(self, resource: dict[str, Any], text: str) -> Sealed | None:
        """The protected forms of a resource (``text`` is its JSON); None: nothing to protect."""
        ...

    def reveal(self, stored: str) -> str:
        """Stored JSON text back to the plaintext JSON text."""
        ...

    def seal_text(self, text: str) -> str:
        """A whole text (e.g. a saved response body) in protected form."""
        ...

    def reveal_text(self, stored: str) -> str:
        """The inverse of ``seal_text``; texts that were never sealed pass unchanged."""
        ...

    def blind(self, value: str) -> str:
        """The blind-index form of a token value, as ``seal`` puts it in the index."""
        ...

    def refresh_due(self) -> bool:
        """Whether keys should be (re)loaded before the next use of the database."""
        ...

    async def refresh(self, db: Database) -> None:
        """(Re)load keys, creating the first ones when the store has none."""
        ...


def install(dialect: Dialect, protector: Protector | None) -> None:
    """Attach ``protector`` to a database engine's dialect (None removes it)."""
    setattr(dialect, _ATTRIBUTE, protector)


def installed(dialect: Dialect) -> Protector | None:
    """The protector attached to a dialect, if any."""
    found: Protector | None = getattr(dialect, _ATTRIBUTE, None)
    return found


class ResourceJson(TypeDecorator[str]):
    """Resource JSON: JSONB on PostgreSQL, TEXT on SQLite; revealed on the way out."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(Text())

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        protector = getattr(dialect, _ATTRIBUTE, None)
        if protector is None or value is None:
            return value
        return protector.reveal(value)


class SealedText(TypeDecorator[str]):
    """Text sealed whole when a protector is installed (saved response bodies)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        protector = getattr(dialect, _ATTRIBUTE, None)
        if protector is None or value is None:
            return value
        return protector.seal_text(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        protector = getattr(dialect, _ATTRIBUTE, None)
        if protector is None or value is None:
            return value
        return protector.reveal_text(value)


class BlindCode(TypeDecorator[str]):
    """A search value bound in its blind-index form (itself when nothing is installed)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        protector = getattr(dialect, _ATTRIBUTE, None)
        if protector is None or value is None:
            return value
        return protector.blind(value)


__all__ = [
    "BlindCode",
    "Protector",
    "ResourceJson",
    "Sealed",
    "SealedText",
    "install",
    "installed",
]
