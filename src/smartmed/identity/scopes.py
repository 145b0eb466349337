"""SMART App Launch scopes (v2 ``.cruds`` and v1 ``.read/.write``) and what they allow.

A resource scope is ``context/Type.perms``: context ``patient``, ``user`` or ``system``;
``Type`` a resource type or ``*``; perms a subset of ``cruds`` in that order (v2) or
``read``/``write``/``*`` (v1: read = ``rs``, write = ``cud``). Granular v2 scopes with a
query (``patient/Observation.rs?category=...``) are kept but grant nothing yet: honouring
only part of them would grant more than the user consented to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONTEXTS = ("patient", "user", "system")
PERMS = "cruds"
_RESOURCE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{1,63})\.([a-z*]+)(\?.*)?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}

# Scopes that are not about resources but that a client may be allowed to ask for.
OTHER_SCOPES = frozenset(
    {"openid", "fhirUser", "profile", "offline_access", "online_access", "launch", "launch/patient"}
)


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """One parsed resource scope."""

    context: str
    type: str
    perms: frozenset[str]
    query: str | None = None

    def covers(self, other: ResourceScope) -> bool:
        """Whether this scope grants everything ``other`` grants."""
        return (
            self.query is None
            and self.context == other.context
            and self.type in ("*", other.type)
            and other.perms <= self.perms
        )


def parse_resource_scope(text: str) -> ResourceScope | None:
    """The resource scope ``text``, or None when it is not one (``openid``) or malformed."""
    match = _RESOURCE.match(text)
    if match is None:
        return None
    context, type_, perms, query = match.groups()
    if perms in _V1:
        letters = _V1[perms]
    else:
        if any(p not in PERMS for p in perms) or list(perms) != sorted(perms, key=PERMS.index):
            return None
        if len(set(perms)) != len(perms):
            return None
        letters = perms
    return ResourceScope(context, type_, frozenset(letters), query[1:] if query else None)


def split(scope: str | None) -> list[str]:
    """The scope parameter as a list, duplicates removed, order kept."""
    return list(dict.fromkeys((scope or "").split()))


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """The scopes of a token."""

    scopes: tuple[str, ...]

    @classmethod
    def parse(cls, scope: str | None) -> ScopeSet:
        return cls(tuple(split(scope)))

    @property
    def resource_scopes(self) -> list[ResourceScope]:
        return [r for s in self.scopes if (r := parse_resource_scope(s)) is not None]

    def allows(self, resource_type: str, perm: str) -> bool:
        """Whether some scope grants ``perm`` (one of ``cruds``) on ``resource_type``.

        ``resource_type`` ``*`` asks for a grant over every type (system-wide history).
        """
        for scope in self.resource_scopes:
            if scope.query is not None or perm not in scope.perms:
                continue
            if scope.type == "*" or scope.type == resource_type:
                return True
        return False

    def __contains__(self, scope: str) -> bool:
        return scope in self.scopes

    def __str__(self) -> str:
        return " ".join(self.scopes)


def is_known(scope: str) -> bool:
    """Whether the server understands ``scope``."""
    return scope in OTHER_SCOPES or parse_resource_scope(scope) is not None


def covered_by(requested: str, allowed: list[str]) -> bool:
    """Whether one requested scope lies within the allowed ones (no escalation)."""
    if requested in allowed:
        return True
    wanted = parse_resource_scope(requested)
    if wanted is None:
        return False
    for text in allowed:
        have = parse_resource_scope(text)
        if have is not None and have.covers(wanted):
            return True
    return False


def narrow(requested: list[str], allowed: list[str]) -> list[str]:
    """The requested scopes that ``allowed`` covers, in request order."""
    return [s for s in requested if covered_by(s, allowed)]
