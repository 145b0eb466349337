"""Keys: rotation, re-sealing old plaintext, wrong or missing keys, SM4, tampering, CLI."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

from smartmed.config import get_settings
from smartmed.crypto import CryptoConfigError
from smartmed.crypto.rotate import reseal, rotate
from smartmed.demo.idcard import make_id_number
from smartmed.fhir.context import FhirEngine
from tests.crypto.conftest import (
    KEY_A,
    KEY_B,
    RESIDENT,
    engine_of,
    leaks,
    patient,
    raw_rows,
    running,
    settings_for,
)

ID_1 = make_id_number("110105", date(1949, 12, 31), 2)
ID_2 = make_id_number("510104", date(1975, 3, 21), 44)
ID_3 = make_id_number("420106", date(1968, 8, 8), 77)
PHONE_1, PHONE_2, PHONE_3 = "13812345678", "17711112222", "18900001234"
SECRETS = [ID_1, ID_2, ID_3, PHONE_1, PHONE_2, PHONE_3]
ONCE = {"Idempotency-Key": "rotate-1"}


async def _create(client: httpx.AsyncClient, body: dict[str, object]) -> str:
    response = await client.post("Patient", content=orjson.dumps(body))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _found(client: httpx.AsyncClient, query: str) -> list[str]:
    response = await client.get(query)
    assert response.status_code == 200, response.text
    return sorted(e["resource"]["id"] for e in response.json().get("entry", []))


async def _readable(client: httpx.AsyncClient, pid: str, number: str, phone: str) -> None:
    body = (await client.get(f"Patient/{pid}")).json()
    assert body["identifier"][0]["value"] == number
    assert body["telecom"][0]["value"] == phone
    assert await _found(client, f"Patient?identifier={RESIDENT}|{number}") == [pid]
    assert await _found(client, f"Patient?phone={phone}") == [pid]


async def _keys(url: str) -> list[tuple[str, str, str, str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT kid, purpose, algorithm, state FROM crypto_key ORDER BY kid")
            )
            return [tuple(row) for row in rows]  # type: ignore[misc]
    finally:
        await engine.dispose()


async def _execute(url: str, statement: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def _kids(rows: list[str]) -> set[str]:
    found = set()
    for row in rows:
        for part in row.split("enc:v1:")[1:]:
            found.add(part.split(":", 1)[0])
    return found


async def test_rotate_reencrypts_everything_and_keeps_it_searchable(fresh_url: str) -> None:
    async with running(settings_for(fresh_url)) as (app, client):
        # given: two patients (one with two versions), sealed with the first data key
        p1 = await _create(client, patient(ID_1, PHONE_1))
        p2 = await _create(client, patient(ID_2, PHONE_2))
        body = (await client.get(f"Patient/{p1}")).json() | {"gender": "other"}
        assert (await client.put(f"Patient/{p1}", content=orjson.dumps(body))).status_code == 200
        saved = await client.post(
            "Patient", content=orjson.dumps(patient(ID_3, PHONE_3)), headers=ONCE
        )
        assert saved.status_code == 201
        before = await raw_rows(fresh_url, ("resource", "resource_history", "idempotency_key"))
        assert _kids(sum(before.values(), [])) == {"k1"}
        # when: the keys are rotated in batches of one row
        result = await rotate(engine_of(app), batch_size=1)
        # then: a new active key sealed every stored value; the old one is retired
        assert result.key == "k2"
        assert result.rewritten == {"resource": 3, "resource_history": 4, "idempotency_key": 1}
        after = await raw_rows(
            fresh_url, ("resource", "resource_history", "idempotency_key", "idx_token")
        )
        assert _kids(sum(after.values(), [])) == {"k2"}
        assert leaks(after, SECRETS) == []
        assert await _keys(fresh_url) == [
            ("b1", "blind", "AES-256-GCM", "active"),
            ("k1", "data", "AES-256-GCM", "retired"),
            ("k2", "data", "AES-256-GCM", "active"),
        ]
        await _readable(client, p1, ID_1, PHONE_1)
        await _readable(client, p2, ID_2, PHONE_2)
        assert (await client.get(f"Patient/{p1}/_history/1")).json()["gender"] == "male"
        replay = await client.post(
            "Patient", content=orjson.dumps(patient(ID_3, PHONE_3)), headers=ONCE
        )
        assert replay.json() == saved.json()  # the saved response, re-sealed, reads the same
        # a second rotation, then a reseal that finds nothing left to do
        again = await rotate(engine_of(app))
        assert again.key == "k3"
        assert again.rewritten["resource"] == 3
        idle = await reseal(engine_of(app))
        assert idle.rewritten == {"resource": 0, "resource_history": 0, "idempotency_key": 0}
    # and a restarted process reads and searches all of it
    async with running(settings_for(fresh_url)) as (_app, client):
        await _readable(client, p1, ID_1, PHONE_1)


async def test_rotation_by_another_process_is_picked_up(fresh_url: str) -> None:
    async with running(settings_for(fresh_url, encryption_refresh_seconds=0.2)) as (_app, client):
        p1 = await _create(client, patient(ID_1, PHONE_1))
        # when: another process (its own engine) rotates the keys
        other = FhirEngine.build(settings_for(fresh_url))
        try:
            result = await rotate(other)
        finally:
            await other.db.dispose()
        assert result.key == "k2"
        # then: this process reads values under the key it had never seen
        await _readable(client, p1, ID_1, PHONE_1)
        # and, once it looked at the key table again, seals new values with it
        await asyncio.sleep(0.3)
        p2 = await _create(client, patient(ID_2, PHONE_2))
        rows = await raw_rows(fresh_url, ("resource",))
        newest = [r for r in rows["resource"] if p2 in r]
        assert _kids(newest) == {"k2"}


async def test_reseal_protects_data_written_before_protection(fresh_url: str) -> None:
    # given: data written with protection off is stored in plaintext
    async with running(settings_for(fresh_url, encryption_enabled=False)) as (_app, client):
        pid = await _create(client, patient(ID_1, PHONE_1))
        await _readable(client, pid, ID_1, PHONE_1)  # no keys at all: plain search works
    plain = await raw_rows(fresh_url, ("resource", "resource_history", "idx_token"))
    assert leaks(plain, [ID_1, PHONE_1]) == [
        ("idx_token", ID_1),
        ("idx_token", PHONE_1),
        ("resource", ID_1),
        ("resource", PHONE_1),
        ("resource_history", ID_1),
        ("resource_history", PHONE_1),
    ]
    # when: protection is on and `keys reseal` runs
    async with running(settings_for(fresh_url)) as (app, client):
        result = await reseal(engine_of(app))
        # then: nothing is left in plaintext, and it all still reads and searches
        assert result.rewritten == {"resource": 1, "resource_history": 1, "idempotency_key": 0}
        assert result.reindexed == 1
        assert leaks(await raw_rows(fresh_url), [ID_1, PHONE_1]) == []
        await _readable(client, pid, ID_1, PHONE_1)


async def test_wrong_key_fails_at_start_up(fresh_url: str) -> None:
    async with running(settings_for(fresh_url)) as (_app, client):
        pid = await _create(client, patient(ID_1, PHONE_1))
    before = await raw_rows(fresh_url, ("resource", "crypto_key"))
    # when: the app starts with another key-encryption key
    with pytest.raises(CryptoConfigError, match="wrapped by key-encryption key [0-9a-f]{16}"):
        async with running(settings_for(fresh_url, encryption_key=KEY_B)):
            pass
    # or with none at all (derived from a secret key that is not the one used)
    with pytest.raises(CryptoConfigError, match="set SMARTMED_ENCRYPTION_KEY"):
        async with running(settings_for(fresh_url, encryption_key=None, secret_key="s" * 40)):
            pass
    # then: nothing was written, and the right key still opens everything
    assert await raw_rows(fresh_url, ("resource", "crypto_key")) == before
    async with running(settings_for(fresh_url, encryption_key=KEY_A)) as (_app, client):
        await _readable(client, pid, ID_1, PHONE_1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"encryption_key": "too-short"}, "at least 32 are needed"),
        ({"encryption_algorithm": "DES"}, "unknown encryption algorithm 'DES'"),
    ],
)
async def test_bad_configuration_fails_at_start_up(
    tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/bad.db"
    with pytest.raises(CryptoConfigError, match=message):
        async with running(settings_for(url, **overrides)):
            pass


async def test_tampered_or_unknown_key_values_are_errors_not_garbage(fresh_url: str) -> None:
    async with running(settings_for(fresh_url), raise_errors=False) as (_app, client):
        p1 = await _create(client, patient(ID_1, PHONE_1))
        p2 = await _create(client, patient(ID_2, PHONE_2))
        # when: one stored ciphertext is altered, another names a key that does not exist
        rows = await raw_rows(fresh_url, ("resource",))
        row = next(r for r in rows["resource"] if p1 in r and "enc:v1:k1:" in r)
        token = row.split("enc:v1:k1:", 1)[1][:20]
        flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
        await _execute(
            fresh_url,
            f"UPDATE resource SET content = REPLACE(CAST(content AS TEXT), '{token}', "
            f"'{flipped}'){'::jsonb' if 'postgresql' in fresh_url else ''} WHERE id = '{p1}'",
        )
        await _execute(
            fresh_url,
            "UPDATE resource SET content = REPLACE(CAST(content AS TEXT), 'enc:v1:k1:', "
            f"'enc:v1:k9:'){'::jsonb' if 'postgresql' in fresh_url else ''} WHERE id = '{p2}'",
        )
        # then: reading them fails loudly (500), never returns a wrong value
        for pid in (p1, p2):
            response = await client.get(f"Patient/{pid}")
            assert response.status_code == 500
            assert response.json()["resourceType"] == "OperationOutcome"
            assert "enc:v1" not in response.text


async def test_sm4_gcm_is_selectable(fresh_url: str) -> None:
    settings = settings_for(fresh_url, encryption_algorithm="sm4-gcm")
    async with running(settings) as (app, client):
        pid = await _create(client, patient(ID_1, PHONE_1))
        await _readable(client, pid, ID_1, PHONE_1)
        assert await _keys(fresh_url) == [
            ("b1", "blind", "SM4-GCM", "active"),
            ("k1", "data", "SM4-GCM", "active"),
        ]
        assert leaks(await raw_rows(fresh_url), [ID_1, PHONE_1]) == []
    # switching an AES deployment to SM4: a new SM4 data key seals new values at once,
    # the AES-sealed ones stay readable until a rotation re-seals them under SM4
    async with running(settings_for(fresh_url, encryption_algorithm="AES-256-GCM")) as (
        app,
        client,
    ):
        p2 = await _create(client, patient(ID_2, PHONE_2))
        assert ("k2", "data", "AES-256-GCM", "active") in await _keys(fresh_url)
    async with running(settings) as (app, client):
        await _readable(client, pid, ID_1, PHONE_1)
        await _readable(client, p2, ID_2, PHONE_2)
        result = await rotate(engine_of(app))
        assert result.key == "k3"
        rows = await raw_rows(fresh_url, ("resource",))
        assert _kids(rows["resource"]) == {"k3"}
        await _readable(client, p2, ID_2, PHONE_2)


def test_keys_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from smartmed.cli import app

    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("SMARTMED_DATABASE_URL", url)
    monkeypatch.setenv("SMARTMED_ENCRYPTION_KEY", KEY_A)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        generated = runner.invoke(app, ["keys", "generate"])
        assert generated.exit_code == 0
        assert len(generated.output.strip()) == 43
        listed = runner.invoke(app, ["keys", "list"])
        assert listed.exit_code == 0, listed.output
        assert [line.split()[:4] for line in listed.output.splitlines()] == [
            ["b1", "blind", "AES-256-GCM", "active"],
            ["k1", "data", "AES-256-GCM", "active"],
        ]
        rotated = runner.invoke(app, ["keys", "rotate", "--batch-size", "10"])
        assert rotated.exit_code == 0, rotated.output
        assert "new data key k2" in rotated.output
        # re-wrap under a new key-encryption key, which then opens the keys
        monkeypatch.setenv("SMARTMED_NEW_ENCRYPTION_KEY", KEY_B)
        rewrapped = runner.invoke(app, ["keys", "rewrap"])
        assert rewrapped.exit_code == 0, rewrapped.output
        assert "re-wrapped 3 keys" in rewrapped.output
        refused = runner.invoke(app, ["keys", "list"])
        assert isinstance(refused.exception, CryptoConfigError)
        monkeypatch.setenv("SMARTMED_ENCRYPTION_KEY", KEY_B)
        get_settings.cache_clear()
        listed = runner.invoke(app, ["keys", "list"])
        assert listed.exit_code == 0, listed.output
        assert [line.split()[0] for line in listed.output.splitlines()] == ["b1", "k1", "k2"]
    finally:
        get_settings.cache_clear()


async def test_processes_starting_together_agree_on_one_set_of_keys(fresh_url: str) -> None:
    from smartmed.crypto import policy_from_settings
    from smartmed.crypto.ciphers import suite
    from smartmed.crypto.keys import kek_from_settings
    from smartmed.crypto.protector import CryptoProtector
    from smartmed.fhir.storage.database import Database
    from smartmed.fhir.storage.migrate import migrate

    # given: a migrated database without keys, and three "processes" about to use it
    settings = settings_for(fresh_url)
    dbs = [Database(fresh_url) for _ in range(3)]
    await migrate(dbs[0])
    protectors = [
        CryptoProtector(
            kek=kek_from_settings(settings),
            algorithm=suite(settings.encryption_algorithm),
            policy=policy_from_settings(settings),
            url=fresh_url,
        )
        for _ in dbs
    ]
    try:
        # when: all three make the first keys at the same moment
        pairs = zip(protectors, dbs, strict=True)
        await asyncio.gather(*(p.load(db, create=True) for p, db in pairs))
        # then: one blind key and one data key, the same in every process
        assert await _keys(fresh_url) == [
            ("b1", "blind", "AES-256-GCM", "active"),
            ("k1", "data", "AES-256-GCM", "active"),
        ]
        assert len({p.blind("13812345678") for p in protectors}) == 1
        sealed = protectors[0].seal_value("110105194912310021")
        assert [p.reveal_text(sealed) for p in protectors] == ["110105194912310021"] * 3
    finally:
        for db in dbs:
            await db.dispose()
