"""``smartmed access``: derive grants again, show the policy in force."""

from __future__ import annotations

import asyncio

import orjson
import typer

from smartmed.config import get_settings

access_app = typer.Typer(help="Access policies and grants (docs/access.md).", no_args_is_help=True)


@access_app.command("rebuild")
def rebuild() -> None:
    """Derive every grant again from the stored contracts, consents, referrals, visits."""

    async def run() -> int:
        from smartmed.fhir.context import FhirEngine

        engine = FhirEngine.build(get_settings())
        try:
            async with engine.db.write() as conn:
                return int(await engine.access.deriver.rebuild(conn))
        finally:
            await engine.db.dispose()

    typer.echo(f"{asyncio.run(run())} grants derived")


@access_app.command("policy")
def policy() -> None:
    """Print the access policy in force (the shipped one or SMARTMED_ACCESS_POLICY_FILE)."""
    from smartmed.access.policy import load_policy

    loaded = load_policy(get_settings().access_policy_file)
    typer.echo(orjson.dumps(loaded.model_dump(by_alias=True), option=orjson.OPT_INDENT_2).decode())
