"""Who is calling: the :class:`Principal` built from a bearer token, and the scope check.

The principal carries everything later access policies need (docs/identity.md): roles with
their organisations, the FHIR identity (``fhirUser``), the patient in context (SMART
``launch/patient``), the client and the token id. Today only SMART scopes are enforced
(:func:`check_scope`); resident/doctor/consent policies will take the same object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from smartmed.fhir.errors import Forbidden
from smartmed.identity.scopes import ScopeSet


class Role(StrEnum):
    """Roles of issue 4; one account may hold several, each in an organisation."""

    RESIDENT = "resident"
    FAMILY_REPRESENTATIVE = "family-representative"
    FAMILY_DOCTOR = "family-doctor"
    NURSE = "nurse"
    PUBLIC_HEALTH_WORKER = "public-health-worker"
    SPECIALIST = "specialist"
    PHARMACIST = "pharmacist"
    INSTITUTION_ADMIN = "institution-admin"
    HEALTH_AUTHORITY_ANALYST = "health-authority-analyst"
    PLATFORM_ADMIN = "platform-admin"
    # MLPS 2.0 (GB/T 22239-2019) level 3 separation of duties: three distinct administrators.
    SYSTEM_ADMIN = "system-admin"
    SECURITY_ADMIN = "security-admin"
    AUDIT_ADMIN = "audit-admin"


# Roles held by members of the public; every other role is staff and needs a second factor.
PUBLIC_ROLES = frozenset({Role.RESIDENT, Role.FAMILY_REPRESENTATIVE})
# No account may hold two of these (separation of duties).
SEPARATED_ADMIN_ROLES = frozenset({Role.SYSTEM_ADMIN, Role.SECURITY_ADMIN, Role.AUDIT_ADMIN})


@dataclass(frozen=True, slots=True)
class RoleAssignment:
    """A role held in an organisation (``Organization/123``; None when not tied to one)."""

    role: Role
    organization: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request."""

    subject: str  # account id, or the client id for client credentials
    client_id: str
    scopes: ScopeSet
    roles: tuple[RoleAssignment, ...] = ()
    fhir_user: str | None = None  # "Practitioner/123", "Patient/9", ...
    patient: str | None = None  # patient id in context (launch/patient)
    token_id: str | None = None  # the access token's jti
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def is_system(self) -> bool:
        """A system or device acting for itself (client credentials), not a person."""
        return self.subject == self.client_id and not self.roles

    def has_role(self, role: Role, organization: str | None = None) -> bool:
        return any(
            r.role == role and (organization is None or r.organization == organization)
            for r in self.roles
        )

    def organizations(self, role: Role | None = None) -> set[str]:
        return {
            r.organization
            for r in self.roles
            if r.organization and (role is None or r.role == role)
        }


# FHIR interaction -> the SMART permission letter it needs.
INTERACTION_PERMS = {
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "history-type": "s",
    "history-system": "s",
    "search-type": "s",
    "search-system": "s",
    "search": "s",
    "create": "c",
    "update": "u",
    "patch": "u",
    "delete": "d",
}

# Operations that need more than read on their type.
OPERATION_PERMS = {"validate": "r", "everything": "r", "meta-add": "u", "meta-delete": "u"}


def required_perm(interaction: str) -> str:
    """The permission letter ``interaction`` needs (``$name`` for an operation)."""
    if interaction.startswith("$"):
        return OPERATION_PERMS.get(interaction[1:], "r")
    try:
        return INTERACTION_PERMS[interaction]
    except KeyError:
        raise ValueError(f"unknown FHIR interaction {interaction!r}") from None


def check_scope(principal: Principal, resource_type: str, interaction: str) -> None:
    """Raise :class:`Forbidden` (403) unless the principal's scopes allow the interaction.

    ``resource_type`` ``*`` stands for every type (system-level history and operations).
    """
    perm = required_perm(interaction)
    if not principal.scopes.allows(resource_type, perm):
        what = "every resource type" if resource_type == "*" else resource_type
        raise Forbidden(
            f"the access token's scopes do not allow {interaction} on {what} "
            f"(needs '{perm}'; granted: {principal.scopes or 'none'})"
        )
