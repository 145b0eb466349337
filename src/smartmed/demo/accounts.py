"""Demo accounts: one or two per role, linked to the county's FHIR identities.

DEMO-ONLY CREDENTIALS. Every demo account has the password ``DEMO_PASSWORD``; staff
accounts (every role but resident and family representative) need a TOTP code at login,
and their TOTP secret is derived from the account name (``demo_totp_secret``), so it is
the same on every machine and printed by ``smartmed demo``. Anyone who reads this file
can log in as them: never load the demo into a database that holds real data.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from smartmed.config import Settings
from smartmed.demo.codes import ORG_SYSTEM, PRACTITIONER_SYSTEM
from smartmed.demo.generator import generate_county
from smartmed.fhir.context import FhirEngine
from smartmed.identity import totp
from smartmed.identity.accounts import AccountError, Accounts
from smartmed.identity.crypto import Box, load_secret
from smartmed.identity.principal import PUBLIC_ROLES, Role, RoleAssignment
from smartmed.identity.tables import account

DEMO_PASSWORD = "Demo-Pass-2026!"  # documented in docs/demo.md and README; demo only
_TOTP_LABEL = b"smartmed-demo-totp|"


@dataclass(frozen=True, slots=True)
class DemoAccount:
    """A demo account as printed: name, role, FHIR identity, organisation, TOTP secret."""

    username: str
    role: Role
    fhir_user: str | None
    organization: str | None
    description: str
    totp_secret: str | None
    created: bool

    @property
    def otpauth_uri(self) -> str | None:
        """The ``otpauth://`` URI an authenticator app scans (staff only)."""
        return totp.provisioning_uri(self.totp_secret, self.username) if self.totp_secret else None


def demo_totp_secret(username: str) -> str:
    """The demo account's TOTP secret: base32 of SHA-256("smartmed-demo-totp|" + name)[:20]."""
    digest = hashlib.sha256(_TOTP_LABEL + username.encode()).digest()[:20]
    return base64.b32encode(digest).decode()


@dataclass(frozen=True, slots=True)
class _Plan:
    username: str
    role: Role
    fhir_user: str | None
    organization: str | None
    description: str


def _staff_plan(references: dict[str, str], residents: int, seed: int) -> list[_Plan]:
    """Staff accounts from the organisation Bundle (regenerated: it does not depend on
    the households) and the ids the load gave its entries."""
    organisations = next(generate_county(residents=residents, seed=seed))
    roles: list[tuple[str, str, str, str]] = []  # staff code, org code, role code, specialty
    for item in organisations["entry"]:
        res = item["resource"]
        if res["resourceType"] == "PractitionerRole":
            staff_code, org_code = res["identifier"][0]["value"].split("-", 1)
            roles.append(
                (
                    staff_code,
                    org_code,
                    res["code"][0]["coding"][0]["code"],
                    res["specialty"][0]["coding"][0]["code"],
                )
            )
    names = {
        item["resource"]["identifier"][0]["value"]: item["resource"]["name"][0]["text"]
        for item in organisations["entry"]
        if item["resource"]["resourceType"] == "Practitioner"
    }

    def pick(role_code: str, org_prefix: str, specialty: str | None = None) -> tuple[str, str]:
        for staff_code, org_code, code, spec in roles:
            if (
                code == role_code
                and org_code.startswith(org_prefix)
                and (specialty is None or spec == specialty)
            ):
                return staff_code, org_code
        raise LookupError(f"no {role_code} in {org_prefix}")

    def ref(kind: str, system: str, value: str) -> str | None:
        return references.get(f"{kind}?identifier={system}|{value}")

    wanted = [
        ("doctor1", Role.FAMILY_DOCTOR, ("doctor", "TC", "394814009"), "乡镇卫生院家庭医生"),
        ("doctor2", Role.FAMILY_DOCTOR, ("doctor", "VC", "394814009"), "村卫生室乡村医生"),
        ("nurse1", Role.NURSE, ("nurse", "TC", "394814009"), "家庭医生团队护士"),
        ("phworker1", Role.PUBLIC_HEALTH_WORKER, ("doctor", "TC", "408440000"), "公共卫生医生"),
        ("specialist1", Role.SPECIALIST, ("doctor", "CH-CARD", None), "县医院心血管内科医生"),
        ("pharmacist1", Role.PHARMACIST, ("pharmacist", "CH-PHARM", None), "县医院药剂科药师"),
        ("hospadmin1", Role.INSTITUTION_ADMIN, ("institution-admin", "CH", None), "县医院管理员"),
        ("analyst1", Role.HEALTH_AUTHORITY_ANALYST, ("analyst", "HA", None), "卫健局统计分析员"),
        ("platformadmin1", Role.PLATFORM_ADMIN, ("ict", "HA", None), "平台管理员"),
    ]
    plans = []
    for username, role, (code, org_prefix, specialty), what in wanted:
        staff_code, org_code = pick(code, org_prefix, specialty)
        plans.append(
            _Plan(
                username,
                role,
                ref("Practitioner", PRACTITIONER_SYSTEM, staff_code),
                ref("Organization", ORG_SYSTEM, org_code),
                f"{what} {names[staff_code]}",
            )
        )
    return plans


def _public_plan(sample: list[tuple[dict[str, Any], str]]) -> list[_Plan]:
    """A resident (an adult household head) and a family representative (the adult
    member, as their RelatedPerson, to whom the rest of the household delegated)."""
    plans: list[_Plan] = []
    heads = [
        (item, stored)
        for item, stored in sample
        if item["resource"]["resourceType"] == "Patient"
        and "maritalStatus" in item["resource"]
        and "link" not in item["resource"]
    ]
    # Prefer a head with a chronic condition: their record has prescriptions and readings.
    chronic = {
        item["resource"]["subject"]["reference"]
        for item, _ in sample
        if item["resource"]["resourceType"] == "Condition"
    }
    # (The engine rewrites the Bundle's urn:uuid references in place: either form may show.)
    heads.sort(key=lambda head: head[0]["fullUrl"] not in chronic and head[1] not in chronic)
    if heads:
        item, stored = heads[0]
        name = item["resource"]["name"][0]["text"]
        plans.append(_Plan("resident1", Role.RESIDENT, stored, None, f"居民（户主）{name}"))
    # The family representative: the RelatedPerson the household's delegation Consents
    # name (either the Bundle's urn:uuid or the stored reference may show).
    delegates = {
        actor["reference"]["reference"]
        for item, _ in sample
        if item["resource"]["resourceType"] == "Consent"
        for actor in item["resource"]["provision"]["actor"]
    }
    for item, stored in sample:
        res = item["resource"]
        if res["resourceType"] == "RelatedPerson" and (
            item["fullUrl"] in delegates or stored in delegates
        ):
            name = res["name"][0]["text"]
            head = res["patient"].get("display", "")
            plans.append(
                _Plan(
                    "family1",
                    Role.FAMILY_REPRESENTATIVE,
                    stored,
                    None,
                    f"家庭代表 {name}（户主 {head} 的家属）",
                )
            )
            break
    return plans


async def create_demo_accounts(
    engine: FhirEngine,
    settings: Settings,
    *,
    residents: int,
    seed: int,
    references: dict[str, str],
    sample: list[tuple[dict[str, Any], str]],
) -> list[DemoAccount]:
    """Create the demo accounts that do not exist yet; all of them, as printed."""
    box = Box(load_secret(settings))
    accounts = Accounts(engine.db, box)
    plans = _public_plan(sample) + _staff_plan(references, residents, seed)
    made = []
    for plan in plans:
        staff = plan.role not in PUBLIC_ROLES
        secret = demo_totp_secret(plan.username) if staff else None
        created = True
        try:
            new, _ = await accounts.create(
                plan.username,
                DEMO_PASSWORD,
                fhir_user=plan.fhir_user,
                roles=[RoleAssignment(plan.role, plan.organization)],
            )
        except AccountError:  # already there from an earlier demo load: print it as it is
            created = False
            async with engine.db.read() as conn:
                row = (
                    await conn.execute(
                        sa.select(account.c.fhir_user).where(account.c.username == plan.username)
                    )
                ).first()
            if row is None:  # not a name clash with an existing account: a policy problem
                raise
            plan = replace(plan, fhir_user=row.fhir_user)
        else:
            if secret is not None:
                # The identity module draws a random secret; the demo's must be known in
                # advance, so it is sealed and stored the same way, in the account row.
                async with engine.db.write() as conn:
                    await conn.execute(
                        sa.update(account)
                        .where(account.c.id == new.id)
                        .values(totp_secret=box.seal(secret))
                    )
        made.append(
            DemoAccount(
                plan.username,
                plan.role,
                plan.fhir_user,
                plan.organization,
                plan.description,
                secret,
                created,
            )
        )
    return made


def accounts_table(accounts: list[DemoAccount]) -> str:
    """The accounts, the demo password and the staff TOTP secrets, for the terminal."""
    if not accounts:
        return "No demo accounts."
    rows = [("username", "role", "FHIR identity", "organisation", "TOTP secret")]
    for a in accounts:
        rows.append(
            (
                a.username + ("" if a.created else " (existed)"),
                a.role.value,
                a.fhir_user or "-",
                a.organization or "-",
                a.totp_secret or "- (not needed)",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "Demo accounts — DEMO-ONLY CREDENTIALS, never use them with real data.",
        f"Password of every demo account: {DEMO_PASSWORD}",
        "Staff must enter a TOTP code: add the secret (or scan the otpauth URI) in an "
        "authenticator app.",
        "",
    ]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    lines.append("")
    for a in accounts:
        lines.append(f"  {a.username:<15} {a.description}")
    uris = [a for a in accounts if a.otpauth_uri]
    if uris:
        lines.append("")
        lines.append("otpauth URIs:")
        lines += [f"  {a.otpauth_uri}" for a in uris]
    return "\n".join(lines)


__all__ = [
    "DEMO_PASSWORD",
    "DemoAccount",
    "accounts_table",
    "create_demo_accounts",
    "demo_totp_secret",
]
