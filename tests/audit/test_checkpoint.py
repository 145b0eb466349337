"""Signed checkpoints: made by the CLI, checked by `verify --checkpoint`; truncation caught."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
from joserfc import jws
from joserfc.jwk import KeySet

from smartmed.audit.chain import link_hash
from smartmed.fhir.context import FhirEngine
from tests.audit.conftest import cli, raw, rows, seed


def _payload(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    return dict(orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


async def _checkpoint(engine: FhirEngine, monkeypatch: pytest.MonkeyPatch, out: Path) -> str:
    result = await cli(engine, monkeypatch, "audit", "checkpoint", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out.read_text().strip()


async def test_checkpoint_is_a_signed_jws_of_the_head_and_verifies(
    engine: FhirEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await seed(engine, 5)
    token = await _checkpoint(engine, monkeypatch, tmp_path / "cp.jws")
    assert token.count(".") == 2
    header = orjson.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "ES256" and header["typ"] == "smartmed-audit-checkpoint"
    payload = _payload(token)
    head = (await rows(engine))[-1]
    assert (payload["seq"], payload["hash"], payload["records"]) == (5, head[3], 5)
    # The signature holds with the key the identity provider publishes (kid in the header).
    async with engine.db.read() as conn:
        from sqlalchemy import select

        from smartmed.identity.tables import signing_key

        public = await conn.scalar(
            select(signing_key.c.public_jwk).where(signing_key.c.kid == header["kid"])
        )
    jwks = {"keys": [orjson.loads(public)]}
    jws.deserialize_compact(token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    (tmp_path / "jwks.json").write_bytes(orjson.dumps(jwks))

    await seed(engine, 3, start=6)  # the chain grows past the checkpoint: still fine
    result = await cli(
        engine, monkeypatch, "audit", "verify", "--checkpoint", str(tmp_path / "cp.jws")
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        "8 records, chain intact up to seq 8; checkpoint at seq 5 verified"
    )
    with_jwks = await cli(
        engine,
        monkeypatch,
        "audit",
        "verify",
        "--checkpoint",
        str(tmp_path / "cp.jws"),
        "--jwks",
        str(tmp_path / "jwks.json"),
    )
    assert with_jwks.exit_code == 0, with_jwks.output


async def test_truncated_chain_is_caught_only_with_the_checkpoint(
    engine: FhirEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await seed(engine, 8)
    await _checkpoint(engine, monkeypatch, tmp_path / "cp.jws")
    await raw(engine, "DELETE FROM audit_log WHERE seq > 5")
    plain = await cli(engine, monkeypatch, "audit", "verify")
    assert plain.exit_code == 0  # what is left is a valid chain...
    assert plain.output.strip() == "5 records, chain intact up to seq 5"
    checked = await cli(
        engine, monkeypatch, "audit", "verify", "--checkpoint", str(tmp_path / "cp.jws")
    )
    assert checked.exit_code == 1  # ...but the signed head is gone
    assert checked.output.startswith("chain broken at seq 8: truncated")


async def test_rewritten_history_is_caught_with_the_checkpoint(
    engine: FhirEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await seed(engine, 6)
    await _checkpoint(engine, monkeypatch, tmp_path / "cp.jws")
    # An intruder alters record 2 and recomputes every hash after it: a consistent chain.
    stored = await rows(engine)
    statements = []
    prev_seq, prev_hash = 0, "0" * 64
    for seq, body, _, _ in stored:
        if seq == 2:
            body = body.replace('"outcome":"0"', '"outcome":"4"')
        digest = link_hash(prev_hash, seq, prev_seq, body)
        statements.append(
            f"UPDATE audit_log SET body = '{body}', hash = '{digest}' WHERE seq = {seq}"
        )
        prev_seq, prev_hash = seq, digest
    await raw(engine, *statements)
    plain = await cli(engine, monkeypatch, "audit", "verify")
    assert plain.exit_code == 0, plain.output
    checked = await cli(
        engine, monkeypatch, "audit", "verify", "--checkpoint", str(tmp_path / "cp.jws")
    )
    assert checked.exit_code == 1
    assert checked.output.startswith("chain broken at seq 6: rewritten")


async def test_a_forged_or_broken_checkpoint_is_refused(
    engine: FhirEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await seed(engine, 3)
    token = await _checkpoint(engine, monkeypatch, tmp_path / "cp.jws")
    header, payload, signature = token.split(".")
    claims = _payload(token)
    claims["seq"] = 2
    forged_payload = base64.urlsafe_b64encode(orjson.dumps(claims)).decode().rstrip("=")
    (tmp_path / "forged.jws").write_text(f"{header}.{forged_payload}.{signature}")
    (tmp_path / "junk.jws").write_text("not a checkpoint")
    for name, reason in (
        ("forged.jws", "signature does not hold"),
        ("junk.jws", "not a compact JWS"),
        ("missing.jws", "No such file"),
    ):
        result = await cli(
            engine, monkeypatch, "audit", "verify", "--checkpoint", str(tmp_path / name)
        )
        assert result.exit_code == 1, name
        assert result.output.startswith("checkpoint not usable:"), result.output
        assert reason in result.output


async def test_no_checkpoint_of_an_empty_or_broken_chain(
    engine: FhirEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = await cli(engine, monkeypatch, "audit", "checkpoint", "--out", str(tmp_path / "a"))
    assert empty.exit_code == 1 and "empty" in empty.output
    await seed(engine, 3)
    await raw(engine, "DELETE FROM audit_log WHERE seq = 2")
    broken = await cli(engine, monkeypatch, "audit", "checkpoint", "--out", str(tmp_path / "b"))
    assert broken.exit_code == 1
    assert "refusing to sign a broken chain: chain broken at seq 2: removed" in broken.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


async def test_a_checkpoint_older_than_retention(
    engine: FhirEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from smartmed.audit.retention import prune

    await seed(engine, 3, days_ago=400)
    await _checkpoint(engine, monkeypatch, tmp_path / "at3.jws")
    await seed(engine, 2, days_ago=400, start=4)
    await _checkpoint(engine, monkeypatch, tmp_path / "at5.jws")
    await seed(engine, 2, start=6)
    assert (await prune(engine, retention_days=365)).anchor_seq == 5
    # The anchor is the checkpoint's record: still proven.
    at5 = await cli(
        engine, monkeypatch, "audit", "verify", "--checkpoint", str(tmp_path / "at5.jws")
    )
    assert at5.exit_code == 0, at5.output
    assert at5.output.strip() == (
        "2 records, chain intact up to seq 7 (from the retention anchor at seq 5); "
        "checkpoint at seq 5 verified"
    )
    # Record 3 is gone and no anchor names it: cannot be proven either way.
    at3 = await cli(
        engine, monkeypatch, "audit", "verify", "--checkpoint", str(tmp_path / "at3.jws")
    )
    assert at3.exit_code == 1
    assert at3.output.startswith("chain broken at seq 3: unprovable")
