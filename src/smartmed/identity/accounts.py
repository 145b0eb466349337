"""Accounts, role assignments, password login with lockout, and browser sessions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.storage.database import Database
from smartmed.identity import passwords, totp
from smartmed.identity.crypto import Box, new_token, token_hash
from smartmed.identity.principal import (
    PUBLIC_ROLES,
    SEPARATED_ADMIN_ROLES,
    Role,
    RoleAssignment,
)
from smartmed.identity.tables import account, login_session, refresh_token, role_assignment
from smartmed.identity.tokens import utcnow

LOCKOUT_BASE_SECONDS = 60
LOCKOUT_MAX_SECONDS = 3600


class AccountError(ValueError):
    """A request about an account that cannot be honoured; the message says why."""


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    username: str
    fhir_user: str | None
    roles: tuple[RoleAssignment, ...]
    has_totp: bool

    @property
    def needs_second_factor(self) -> bool:
        """Staff and administrators must use TOTP; residents and family may."""
        return self.has_totp or any(r.role not in PUBLIC_ROLES for r in self.roles)

    @property
    def public_only(self) -> bool:
        return bool(self.roles) and all(r.role in PUBLIC_ROLES for r in self.roles)


@dataclass(frozen=True, slots=True)
class LoginResult:
    account: Account | None
    error: str | None = None


class Accounts:
    """Account storage and the password / second-factor checks."""

    def __init__(self, db: Database, box: Box, max_failures: int = 5) -> None:
        self.db = db
        self.box = box
        self.max_failures = max_failures

    async def create(
        self,
        username: str,
        password: str,
        *,
        fhir_user: str | None = None,
        roles: list[RoleAssignment] | None = None,
        with_totp: bool = False,
    ) -> tuple[Account, str | None]:
        """A new account; returns it and the TOTP secret when one was made."""
        problems = passwords.policy_problems(password, username)
        if problems:
            raise AccountError("; ".join(problems))
        roles = roles or []
        _check_separation(roles)
        secret = totp.new_secret() if with_totp else None
        account_id = str(uuid.uuid4())
        async with self.db.write() as conn:
            taken = await conn.scalar(sa.select(account.c.id).where(account.c.username == username))
            if taken is not None:
                raise AccountError(f"the account name {username!r} is taken")
            await conn.execute(
                account.insert().values(
                    id=account_id,
                    username=username,
                    password_hash=passwords.hash_password(password),
                    fhir_user=fhir_user,
                    totp_secret=self.box.seal(secret) if secret else None,
                    failed_logins=0,
                    active=True,
                    created_at=utcnow(),
                )
            )
            for r in roles:
                await conn.execute(
                    role_assignment.insert().values(
                        account_id=account_id, role=r.role.value, organization=r.organization or ""
                    )
                )
        found = await self.get(account_id)
        assert found is not None
        return found, secret

    async def assign(self, account_id: str, assignment: RoleAssignment) -> None:
        """Give the account one more role (separation of duties checked)."""
        current = await self.get(account_id)
        if current is None:
            raise AccountError("no such account")
        _check_separation([*current.roles, assignment])
        async with self.db.write() as conn:
            await conn.execute(
                role_assignment.insert().values(
                    account_id=account_id,
                    role=assignment.role.value,
                    organization=assignment.organization or "",
                )
            )

    async def get(self, account_id: str) -> Account | None:
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(account).where(account.c.id == account_id))).first()
            if row is None or not row.active:
                return None
            return await _account(conn, row)

    async def login(self, username: str, password: str) -> LoginResult:
        """Check a password, counting failures; repeated failures lock with back-off."""
        now = utcnow()
        async with self.db.read() as conn:
            row = (
                await conn.execute(sa.select(account).where(account.c.username == username))
            ).first()
        if row is None or not row.active:
            passwords.verify_password(password, None)
            return LoginResult(None, "wrong account name or password")
        if row.locked_until is not None and row.locked_until > now:
            wait = int((row.locked_until - now).total_seconds()) + 1
            return LoginResult(None, f"too many failed logins: the account is locked for {wait} s")
        if not passwords.verify_password(password, row.password_hash):
            failures = row.failed_logins + 1
            locked_until = None
            if failures >= self.max_failures:
                seconds = min(
                    LOCKOUT_MAX_SECONDS, LOCKOUT_BASE_SECONDS * 2 ** (failures - self.max_failures)
                )
                locked_until = now + timedelta(seconds=seconds)
            async with self.db.write() as conn:
                await conn.execute(
                    account.update()
                    .where(account.c.id == row.id)
                    .values(failed_logins=failures, locked_until=locked_until)
                )
            if locked_until is not None:
                return LoginResult(
                    None, "too many failed logins: the account is locked for a while"
                )
            return LoginResult(None, "wrong account name or password")
        if row.failed_logins:
            async with self.db.write() as conn:
                await conn.execute(
                    account.update()
                    .where(account.c.id == row.id)
                    .values(failed_logins=0, locked_until=None)
                )
        async with self.db.read() as conn:
            return LoginResult(await _account(conn, row))

    async def verify_totp(self, account_id: str, code: str) -> bool:
        async with self.db.read() as conn:
            sealed = await conn.scalar(
                sa.select(account.c.totp_secret).where(account.c.id == account_id)
            )
        return sealed is not None and totp.verify(self.box.open(sealed), code)

    # Browser sessions of the login page.

    async def open_session(self, account_id: str, *, mfa_ok: bool) -> str:
        value = new_token()
        now = utcnow()
        async with self.db.write() as conn:
            await conn.execute(
                login_session.insert().values(
                    session_hash=token_hash(value),
                    account_id=account_id,
                    mfa_ok=mfa_ok,
                    created_at=now,
                    last_seen=now,
                )
            )
        return value

    async def session(self, value: str | None, idle_seconds: int) -> tuple[str, bool] | None:
        """(account id, second factor passed) of a live session, touching it; else None."""
        if not value:
            return None
        key = token_hash(value)
        now = utcnow()
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    sa.select(login_session).where(login_session.c.session_hash == key)
                )
            ).first()
            if row is None:
                return None
            if row.last_seen + timedelta(seconds=idle_seconds) < now:
                await conn.execute(
                    login_session.delete().where(login_session.c.session_hash == key)
                )
                return None
            await conn.execute(
                login_session.update()
                .where(login_session.c.session_hash == key)
                .values(last_seen=now)
            )
        return str(row.account_id), bool(row.mfa_ok)

    async def pass_second_factor(self, value: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                login_session.update()
                .where(login_session.c.session_hash == token_hash(value))
                .values(mfa_ok=True)
            )

    async def logout_everywhere(self, account_id: str) -> None:
        """End every session of the account and revoke all its refresh tokens."""
        async with self.db.write() as conn:
            await conn.execute(
                login_session.delete().where(login_session.c.account_id == account_id)
            )
            await conn.execute(
                refresh_token.update()
                .where(refresh_token.c.account_id == account_id)
                .values(revoked=True)
            )


def _check_separation(roles: list[RoleAssignment]) -> None:
    held = {r.role for r in roles} & SEPARATED_ADMIN_ROLES
    if len(held) > 1:
        names = ", ".join(sorted(held))
        raise AccountError(
            f"separation of duties: one account may not be {names} at once "
            "(GB/T 22239-2019 level 3)"
        )


async def _account(conn: AsyncConnection, row: sa.Row[tuple[object, ...]]) -> Account:
    roles = (
        await conn.execute(
            sa.select(role_assignment.c.role, role_assignment.c.organization).where(
                role_assignment.c.account_id == row.id
            )
        )
    ).all()
    return Account(
        id=str(row.id),
        username=str(row.username),
        fhir_user=row.fhir_user,
        roles=tuple(RoleAssignment(Role(r.role), r.organization or None) for r in roles),
        has_totp=row.totp_secret is not None,
    )
