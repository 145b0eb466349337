"""``smartmed keys``: generate a key-encryption key, list, rotate, reseal, rewrap."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Annotated

import typer
from sqlalchemy import select

from smartmed.config import get_settings

keys_app = typer.Typer(
    help="Encryption keys of sensitive identifiers (docs/encryption.md).", no_args_is_help=True
)


@keys_app.command("generate")
def generate() -> None:
    """Print a new random key-encryption key for SMARTMED_ENCRYPTION_KEY."""
    typer.echo(secrets.token_urlsafe(32))


async def _engine_ready() -> object:
    from smartmed.fhir.context import FhirEngine
    from smartmed.fhir.storage.migrate import is_current, migrate

    engine = FhirEngine.build(get_settings())
    if not await is_current(engine.db):
        await migrate(engine.db)
    async with engine.db.read():
        pass  # loads the keys, making the first ones on a new database
    return engine


@keys_app.command("list")
def list_keys() -> None:
    """The keys in the database: id, purpose, algorithm, state, creation time."""
    from smartmed.crypto.tables import crypto_key
    from smartmed.fhir.context import FhirEngine

    async def main() -> list[str]:
        engine = await _engine_ready()
        assert isinstance(engine, FhirEngine)
        try:
            async with engine.db.read() as conn:
                rows = (await conn.execute(select(crypto_key).order_by(crypto_key.c.kid))).all()
        finally:
            await engine.db.dispose()
        return [
            f"{r.kid:<6} {r.purpose:<6} {r.algorithm:<12} {r.state:<8} "
            f"{r.created_at:%Y-%m-%d %H:%M} kek {r.kek_id}"
            for r in rows
        ]

    for line in asyncio.run(main()):
        typer.echo(line)


def _run(rotate_key: bool, batch_size: int) -> str:
    from smartmed.crypto.rotate import reseal, rotate
    from smartmed.fhir.context import FhirEngine

    async def main() -> str:
        engine = await _engine_ready()
        assert isinstance(engine, FhirEngine)
        try:
            with typer.progressbar(length=0, label="re-sealing") as bar:

                def advance(_table: str, done: int) -> None:
                    bar.update(done)

                run = rotate if rotate_key else reseal
                result = await run(engine, batch_size=batch_size, progress=advance)
        finally:
            await engine.db.dispose()
        return result.summary()

    return asyncio.run(main())


@keys_app.command("rotate")
def rotate_command(
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per transaction")] = 500,
) -> None:
    """Make a new data key and re-encrypt every stored value with it, in batches."""
    typer.echo(_run(True, batch_size))


@keys_app.command("reseal")
def reseal_command(
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per transaction")] = 500,
) -> None:
    """Seal what is stored in plaintext (data from before protection, new systems)."""
    typer.echo(_run(False, batch_size))


@keys_app.command("rewrap")
def rewrap_command(
    new_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the new key-encryption key")
    ] = "SMARTMED_NEW_ENCRYPTION_KEY",
) -> None:
    """Re-wrap every key under a new key-encryption key (then configure that one)."""
    from pydantic import SecretStr

    from smartmed.crypto import keys as keystore

    text = os.environ.get(new_key_env)
    if not text:
        raise typer.BadParameter(f"set {new_key_env} to the new key-encryption key")
    settings = get_settings()
    old = keystore.kek_from_settings(settings)
    changed = settings.model_copy(update={"encryption_key": SecretStr(text)})
    new = keystore.kek_from_settings(changed)

    async def main() -> int:
        from smartmed.fhir.storage.database import Database

        db = Database(settings.database_url)
        try:
            async with db.write() as conn:
                return await keystore.rewrap_all(conn, old, new)
        finally:
            await db.dispose()

    count = asyncio.run(main())
    typer.echo(
        f"re-wrapped {count} keys under key-encryption key {keystore.kek_id(new)}; "
        "now set SMARTMED_ENCRYPTION_KEY to the new key"
    )
