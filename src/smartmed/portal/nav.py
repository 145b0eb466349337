"""What each role may use in the portal: the navigation and the home page's tiles.

One table, read by the layout (navigation), the home page (tiles) and the routes
(:func:`require`): a page a role cannot see in the navigation answers 403 to it too.
Entries marked ``planned`` name work that belongs to other parts of the platform; they
are shown as such, greyed out, with no page behind them.

Entries with a ``right`` (role rights, the audit trail) follow the access policy in force,
which administrators edit: a role sees them when its rights include that letter on that
category for everyone's records (not only its own patients'); ``roles`` is what the
shipped policy gives, used only where no policy is at hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from smartmed.access.policy import Category
from smartmed.access.policy_store import ADMINISTER, policy_in_force
from smartmed.identity.principal import Role
from smartmed.portal.session import get_session

STAFF = frozenset(Role) - {Role.RESIDENT, Role.FAMILY_REPRESENTATIVE}
ADMINS = frozenset({Role.INSTITUTION_ADMIN, Role.PLATFORM_ADMIN})
ACCOUNT_ADMINS = frozenset({Role.INSTITUTION_ADMIN, Role.PLATFORM_ADMIN, Role.SYSTEM_ADMIN})
PUBLIC = frozenset({Role.RESIDENT, Role.FAMILY_REPRESENTATIVE})
# Who may search every AuditEvent under the shipped policy (docs/access.md); the entry
# follows the policy in force (``right``), so granting ``audit: s`` opens it to a role.
AUDITORS = frozenset({Role.AUDIT_ADMIN})
# Members of family-doctor teams (docs/contracting.md).
CONTRACT_TEAM = frozenset({Role.FAMILY_DOCTOR, Role.NURSE, Role.PUBLIC_HEALTH_WORKER})
CONTRACT_ANALYSTS = frozenset({Role.INSTITUTION_ADMIN, Role.HEALTH_AUTHORITY_ANALYST})
# Who may edit the rights under the shipped policy: update on the system category.
RIGHTS_ADMINS = frozenset({Role.PLATFORM_ADMIN, Role.SYSTEM_ADMIN})


def _(text: str) -> str:
    """Marks a message for extraction; translated when rendered."""
    return text


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    label: str
    path: str
    roles: frozenset[Role]
    group: str
    hint: str = ""
    planned: bool = False
    right: tuple[Category, str] | None = None  # (category, letter) in the policy in force

    def allows(self, role: Role) -> bool:
        """Whether ``role`` may use this entry (under the policy in force, if it decides)."""
        policy = policy_in_force.get() if self.right is not None else None
        if policy is None or self.right is None:
            return role in self.roles
        rights = policy.roles.get(role.value)
        category, letter = self.right
        if rights is None or not rights.allows(category, letter):
            return False
        # Per-patient rights (a resident's own audit trail) are not the whole list.
        return category not in ("clinical", "audit") or not rights.patients


ENTRIES = (
    Entry("me", _("My information"), "/me", PUBLIC, _("For me"), _("Your details and language")),
    Entry(
        "access",
        _("Access log"),
        "/record-access",
        PUBLIC,
        _("For me"),
        _("Who read or changed your health record, when and why"),
    ),
    Entry(
        "contract",
        _("Family-doctor contract"),
        "/contracting",
        PUBLIC,
        _("For me"),
        _("Sign with a family-doctor team, renew, see your history"),
    ),
    Entry(
        "package",
        _("Service packages"),
        "/contracting/packages",
        PUBLIC,
        _("For me"),
        _("Choose and buy a package; what you have used and what is left"),
    ),
    Entry(
        "contracting",
        _("Contracting"),
        "/contracting/team",
        CONTRACT_TEAM,
        _("Work"),
        _("Applications to review and your contracted residents"),
    ),
    Entry(
        "workbench",
        _("Workbench"),
        "/contracting/workbench",
        CONTRACT_TEAM,
        _("Work"),
        _("Your residents, due follow-ups and open tasks"),
    ),
    Entry(
        "team-reports",
        _("Team reports"),
        "/contracting/reports",
        CONTRACT_TEAM,
        _("Work"),
        _("Weekly and monthly work reports, to view and download"),
    ),
    Entry(
        "contract-analytics",
        _("Contract analytics"),
        "/contracting/analytics",
        CONTRACT_ANALYSTS,
        _("Work"),
        _("Signing, coverage, renewals and fulfilment by area and team"),
    ),
    Entry(
        "directory",
        _("Directory"),
        "/directory/organizations",
        STAFF,
        _("Work"),
        _("Institutions, staff and teams"),
    ),
    Entry(
        "organizations",
        _("Organisations"),
        "/admin/organizations",
        ADMINS,
        _("Basic information"),
        _("Hierarchy of institutions and their sites"),
    ),
    Entry(
        "departments",
        _("Departments"),
        "/admin/departments",
        ADMINS,
        _("Basic information"),
        _("Departments of each institution"),
    ),
    Entry(
        "practitioners",
        _("Staff"),
        "/admin/practitioners",
        ADMINS,
        _("Basic information"),
        _("Practitioners, qualifications and roles"),
    ),
    Entry(
        "teams",
        _("Family-doctor teams"),
        "/admin/teams",
        ADMINS,
        _("Basic information"),
        _("Team members and service areas"),
    ),
    Entry(
        "packages",
        _("Service packages"),
        "/contracting/admin/packages",
        ADMINS,
        _("Basic information"),
        _("Publish, edit and retire family-doctor service packages"),
        right=("directory", "u"),  # PlanDefinition and ChargeItemDefinition are directory
    ),
    Entry(
        "refunds",
        _("Failed refunds"),
        "/payments/admin/refunds",
        ADMINS,  # the payments module's administrators (payments.router.ADMIN_ROLES);
        # beside the package administration, which links to it
        _("Basic information"),
        _("Refunds the payment provider refused or never confirmed; retry them"),
    ),
    Entry(
        "import",
        _("Import staff"),
        "/admin/import",
        ADMINS,
        _("Basic information"),
        _("CSV or Excel, with a preview"),
    ),
    Entry(
        "accounts",
        _("User accounts"),
        "/admin/accounts",
        ACCOUNT_ADMINS,
        _("Users and rights"),
        _("Accounts and their roles"),
    ),
    Entry(
        "rights",
        _("Role rights"),
        "/admin/rights",
        RIGHTS_ADMINS,
        _("Users and rights"),
        _("What each role may do, with its history"),
        right=ADMINISTER,
    ),
    Entry(
        "audit",
        _("Audit trail"),
        "/audit",
        AUDITORS,
        _("Users and rights"),
        _("Who accessed and changed which records"),
        right=("audit", "s"),
    ),
)
BY_KEY = {e.key: e for e in ENTRIES}

ROLE_LABELS = {
    Role.RESIDENT: _("Resident"),
    Role.FAMILY_REPRESENTATIVE: _("Family representative"),
    Role.FAMILY_DOCTOR: _("Family doctor"),
    Role.NURSE: _("Nurse"),
    Role.PUBLIC_HEALTH_WORKER: _("Public-health worker"),
    Role.SPECIALIST: _("Specialist"),
    Role.PHARMACIST: _("Pharmacist"),
    Role.INSTITUTION_ADMIN: _("Institution administrator"),
    Role.HEALTH_AUTHORITY_ANALYST: _("Health-authority analyst"),
    Role.PLATFORM_ADMIN: _("Platform administrator"),
    Role.SYSTEM_ADMIN: _("System administrator"),
    Role.SECURITY_ADMIN: _("Security administrator"),
    Role.AUDIT_ADMIN: _("Audit administrator"),
}


def entries_for(role: Role | None) -> list[Entry]:
    """The navigation entries of a role, in display order."""
    if role is None:
        return []
    return [e for e in ENTRIES if e.allows(role)]


def require(request: Request, key: str) -> None:
    """403 unless the active role may use the entry ``key``; 401-style redirect if anonymous."""
    session = get_session(request)
    if session.account is None:
        raise LoginRequired()
    role = session.active_role
    if role is None or not BY_KEY[key].allows(role):
        raise PageForbidden()


class LoginRequired(Exception):
    """Raised by a page that needs a logged-in account; answered with a redirect to login."""


class PageForbidden(Exception):
    """Raised by a page the active role may not use; answered with a 403 page."""
