"""``smartmed audit ...``: verify the chain, chain on demand, signed checkpoints, pruning.

``smartmed audit verify`` is a stable interface: exit 0 and "N records, chain intact up
to seq S", or exit 1 naming the first bad seq and what happened to it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from smartmed.config import get_settings

app = typer.Typer(help="Tamper-evident audit log (docs/audit.md).", no_args_is_help=True)


async def _database() -> Any:
    from smartmed.cli import _prepare
    from smartmed.fhir.storage.database import Database

    await _prepare()
    return Database(get_settings().database_url)


@app.command("verify")
def verify_command(
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="A checkpoint file: the chain must still hold its record"),
    ] = None,
    jwks: Annotated[
        Path | None,
        typer.Option(help="Check the checkpoint's signature with this saved JWKS"),
    ] = None,
) -> None:
    """Recompute the hash chain; exit 1 at the first altered, removed or reordered record."""
    ok, text = asyncio.run(_verify(checkpoint, jwks))
    typer.echo(text)
    if not ok:
        raise typer.Exit(code=1)


async def _verify(checkpoint_file: Path | None, jwks_file: Path | None) -> tuple[bool, str]:
    from smartmed.audit.checkpoint import CheckpointError, read_checkpoint
    from smartmed.audit.verify import verify

    db = await _database()
    try:
        point: tuple[int, str] | None = None
        if checkpoint_file is not None:
            try:
                keys = orjson.loads(jwks_file.read_bytes()) if jwks_file else None
                content = await read_checkpoint(
                    db, checkpoint_file.read_text(encoding="utf-8"), jwks=keys
                )
            except (OSError, orjson.JSONDecodeError, CheckpointError) as exc:
                return False, f"checkpoint not usable: {exc}"
            point = (content.seq, content.hash)
        report = await verify(db, checkpoint=point)
        return report.ok, report.summary()
    finally:
        await db.dispose()


@app.command("chain")
def chain_command() -> None:
    """Chain the records waiting for it and materialise them as AuditEvents, now."""
    chained, stored = asyncio.run(_chain())
    typer.echo(f"chained {chained} records; materialised {stored} AuditEvents")


async def _chain() -> tuple[int, int]:
    from smartmed.audit import catch_up
    from smartmed.cli import _prepare
    from smartmed.fhir.context import FhirEngine

    await _prepare()
    engine = FhirEngine.build(get_settings())
    try:
        return await catch_up(engine)
    finally:
        await engine.db.dispose()


@app.command("checkpoint")
def checkpoint_command(
    out: Annotated[Path, typer.Option(help="Where to write the signed checkpoint (compact JWS)")],
) -> None:
    """Sign the chain head with the platform's signing key, to keep outside the database."""
    ok, text = asyncio.run(_checkpoint(out))
    typer.echo(text)
    if not ok:
        raise typer.Exit(code=1)


async def _checkpoint(out: Path) -> tuple[bool, str]:
    from smartmed.audit.checkpoint import CheckpointError, make_checkpoint

    db = await _database()
    try:
        token, content = await make_checkpoint(db, get_settings())
    except CheckpointError as exc:
        return False, str(exc)
    finally:
        await db.dispose()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(token + "\n", encoding="utf-8")
    return True, (
        f"checkpoint of seq {content.seq} ({content.records} records, hash "
        f"{content.hash[:16]}…) signed with key {content.kid}, written to {out}"
    )


@app.command("prune")
def prune_command() -> None:
    """Remove records older than SMARTMED_AUDIT_RETENTION_DAYS, keeping an anchor to verify from."""
    ok, text = asyncio.run(_prune())
    typer.echo(text)
    if not ok:
        raise typer.Exit(code=1)


async def _prune() -> tuple[bool, str]:
    from smartmed.audit.retention import PruneRefused, prune
    from smartmed.cli import _prepare
    from smartmed.fhir.context import FhirEngine

    await _prepare()
    settings = get_settings()
    engine = FhirEngine.build(settings)
    try:
        result = await prune(engine, retention_days=settings.audit_retention_days)
    except PruneRefused as exc:
        return False, str(exc)
    finally:
        await engine.db.dispose()
    return True, result.summary()
