"""``python -m smartmed.portal create-admin``: the first platform administrator.

A new installation has no account that could open the portal's account pages; this
creates one (a platform administrator with a TOTP secret, printed once) on the database
named by ``SMARTMED_DATABASE_URL``. Later accounts are made in the portal.
"""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

import typer

app = typer.Typer(help="Portal administration.", no_args_is_help=True, add_completion=False)


@app.callback()
def main() -> None:
    """Portal administration."""


@app.command("create-admin")
def create_admin(
    username: Annotated[str, typer.Option(help="Account name")],
    password_env: Annotated[
        str | None, typer.Option(help="Read the password from this environment variable")
    ] = None,
) -> None:
    """Create a platform administrator; prints its TOTP secret once."""
    if password_env:
        password = os.environ.get(password_env, "")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        secret = asyncio.run(_create(username, password))
    except ValueError as exc:
        typer.echo(f"not created: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"platform administrator {username!r} created")
    typer.echo(f"TOTP secret (shown once): {secret}")
    typer.echo(f"otpauth://totp/smartmed:{username}?secret={secret}&issuer=smartmed")


async def _create(username: str, password: str) -> str:
    from smartmed.config import Settings
    from smartmed.fhir.storage.database import Database
    from smartmed.fhir.storage.migrate import is_current, migrate
    from smartmed.identity.accounts import Accounts
    from smartmed.identity.crypto import Box, load_secret
    from smartmed.identity.principal import Role, RoleAssignment

    settings = Settings()
    db = Database(settings.database_url)
    try:
        if not await is_current(db):
            await migrate(db)
        accounts = Accounts(db, Box(load_secret(settings)))
        _account, secret = await accounts.create(
            username,
            password,
            roles=[RoleAssignment(Role.PLATFORM_ADMIN, None)],
            with_totp=True,
        )
    finally:
        await db.dispose()
    assert secret is not None
    return secret


if __name__ == "__main__":
    app()
