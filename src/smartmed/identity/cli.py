"""``smartmed client ...``: register OAuth clients."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from smartmed.config import get_settings

client_app = typer.Typer(help="OAuth clients of the identity provider.", no_args_is_help=True)


@client_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="A name people recognise")],
    scope: Annotated[str, typer.Option(help="The most a token of this client may hold")],
    redirect_uri: Annotated[
        list[str] | None, typer.Option(help="For the code grant (repeatable)")
    ] = None,
    public: Annotated[bool, typer.Option(help="A public client (no secret; PKCE only)")] = False,
) -> None:
    """Register a client; prints its id and, once, its secret (stored only as a hash)."""
    client_id, secret = asyncio.run(_create(name, scope, redirect_uri or [], not public))
    typer.echo(f"client_id: {client_id}")
    if secret:
        typer.echo(f"client_secret: {secret}")


async def _create(
    name: str, scope: str, redirect_uris: list[str], confidential: bool
) -> tuple[str, str | None]:
    from smartmed.cli import _prepare
    from smartmed.fhir.storage.database import Database
    from smartmed.identity.oauth import Clients

    await _prepare()
    db = Database(get_settings().database_url)
    try:
        return await Clients(db).create(
            name, scope, redirect_uris=redirect_uris or None, confidential=confidential
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    finally:
        await db.dispose()
