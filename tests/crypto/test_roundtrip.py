"""Arbitrary identifier and phone values through the API: stored sealed, read back exact,
found by exact search (property test on both backends)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import create_pg_database, drop_pg_database
from tests.crypto.conftest import RESIDENT, leaks, raw_rows, running, settings_for

LOOP: list[asyncio.AbstractEventLoop] = []
STATE: dict[str, Any] = {}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """One app per backend for the module, on its own database."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('rt')}/roundtrip.db"
    else:
        url = await create_pg_database()
    try:
        async with running(settings_for(url)) as (_app, client):
            LOOP.append(asyncio.get_running_loop())
            yield url, client
    finally:
        if request.param == "postgres":
            await drop_pg_database(url)


# pytest-asyncio runs an async hypothesis test in a way that hides the failing example on
# replay; the property is synchronous and drives the session's (idle) loop itself, as the
# search oracle does.
def synced(test: Callable[..., Any]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        LOOP[-1].run_until_complete(test(*args, **kwargs))

    return run


# FHIR strings: no control characters, no surrounding whitespace (the validator says so).
VALUES = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40
).filter(lambda s: s.strip() == s)


def _escape(value: str) -> str:
    """A token search value with the search separators escaped (search.html#escaping)."""
    for char in ("\\", ",", "|", "$"):
        value = value.replace(char, "\\" + char)
    return value


async def _ids(client: httpx.AsyncClient, key: str, value: str) -> list[str]:
    response = await client.get("Patient", params={key: value, "_tag": STATE["tag"]})
    assert response.status_code == 200, response.text
    return sorted(e["resource"]["id"] for e in response.json().get("entry", []))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(number=VALUES, phone=VALUES)
@synced
async def test_any_value_round_trips_and_is_found(
    api: tuple[str, httpx.AsyncClient], number: str, phone: str
) -> None:
    url, client = api
    STATE.setdefault("tag", f"rt-{id(api)}")
    body = {
        "resourceType": "Patient",
        "meta": {"tag": [{"system": "urn:test", "code": STATE["tag"]}]},
        "identifier": [{"system": RESIDENT, "value": number}],
        "telecom": [{"system": "phone", "value": phone}],
    }
    response = await client.post("Patient", content=orjson.dumps(body))
    assert response.status_code == 201, response.text
    pid = response.json()["id"]
    read = (await client.get(f"Patient/{pid}")).json()
    assert read["identifier"] == body["identifier"]
    assert read["telecom"] == body["telecom"]
    assert pid in await _ids(client, "identifier", f"{RESIDENT}|{_escape(number)}")
    assert pid in await _ids(client, "phone", _escape(phone))
    # every patient found by the exact value really has it (blind index collisions: none)
    for found in await _ids(client, "identifier", f"{RESIDENT}|{_escape(number)}"):
        other = (await client.get(f"Patient/{found}")).json()
        assert other["identifier"][0]["value"] == number
    await client.delete(f"Patient/{pid}")


async def test_no_value_of_the_property_run_is_stored_plainly(
    api: tuple[str, httpx.AsyncClient], tmp_path: Path
) -> None:
    url, client = api
    secret = "110105194912310021"
    body = {"resourceType": "Patient", "identifier": [{"system": RESIDENT, "value": secret}]}
    assert (await client.post("Patient", content=orjson.dumps(body))).status_code == 201
    assert leaks(await raw_rows(url), [secret]) == []
