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
    """Print the access policy in force: the shipped one (or SMARTMED_ACCESS_POLICY_FILE)
    with the rights per role last saved in the portal's rights editor, if any."""
    from smartmed.access.policy import Policy, load_policy

    settings = get_settings()
    shipped = load_policy(settings.access_policy_file)

    async def stored() -> tuple[int, Policy]:
        from smartmed.access.policy_store import PolicyStore, apply_rights
        from smartmed.fhir.storage.database import Database

        db = Database(settings.database_url)
        try:
            latest = await PolicyStore(db).latest()
        except Exception:  # noqa: BLE001 - a database without the table: the file applies
            latest = None
        finally:
            await db.dispose()
        if latest is None:
            return 0, shipped
        return latest.version, apply_rights(shipped, latest.rights)

    version, in_force = asyncio.run(stored())
    source = f"rights version {version} from the rights editor" if version else "the file"
    typer.echo(f"# access policy in force ({source})", err=True)
    document = in_force.model_dump(by_alias=True)
    typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
