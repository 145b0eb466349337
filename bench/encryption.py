"""What sealing ID numbers and phones costs: create, read and search, protection on vs off.

Two apps in this process, each on its own scratch database of the same backend: one with
the crypto protector (the default), one with it removed (plain storage, plain index).
Both get the same residents (ID number, phone, name) and Observations; the timed rounds
alternate between them so that machine noise hits both alike. Figures are µs per request
through the in-process HTTP API (httpx ASGI transport), median of the rounds.

    .venv/bin/python bench/encryption.py [--db sqlite|postgres|both] [--residents 400]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smartmed.app import create_app  # noqa: E402
from smartmed.config import Settings  # noqa: E402
from smartmed.demo.idcard import make_id_number  # noqa: E402

RESIDENT = "urn:smartmed:id:resident"
KEY = "bench-key-encryption-key-0123456789abcdef"


def residents(n: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    people = []
    for i in range(n):
        birth = date(1940, 1, 1) + timedelta(days=rng.randrange(30000))
        people.append(
            {
                "resourceType": "Patient",
                "identifier": [
                    {"system": RESIDENT, "value": make_id_number("330106", birth, 1 + i % 999)}
                ],
                "telecom": [{"system": "phone", "value": f"139{i:08d}", "use": "mobile"}],
                "name": [{"family": f"F{i:05d}", "given": ["测试"]}],
                "gender": "female" if i % 2 else "male",
                "birthDate": birth.isoformat(),
            }
        )
    return people


def observation(pid: str, i: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"2026-0{1 + i % 9}-1{i % 9}T08:00:00Z",
        "valueQuantity": {
            "value": 60 + i % 40,
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


class Side:
    """One app, its client and what it holds."""

    def __init__(self, name: str, url: str, protect: bool) -> None:
        self.name, self.url, self.protect = name, url, protect
        self.app = create_app(
            Settings(database_url=url, encryption_key=KEY, log_level="WARNING", jobs_in_app=False)
        )
        self.patients: list[str] = []
        self.observations: list[str] = []

    async def __aenter__(self) -> Side:
        self.lifespan = self.app.router.lifespan_context(self.app)
        await self.lifespan.__aenter__()
        if not self.protect:
            engine = self.app.state.fhir
            engine.db.protect(None)
            engine.services = dataclasses.replace(engine.services, protector=None)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://bench/fhir/R4/",
            headers={"Content-Type": "application/fhir+json"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.lifespan.__aexit__(None, None, None)


Call = tuple[str, dict[str, str] | None]  # (path, query parameters)


async def timed(client: httpx.AsyncClient, calls: list[Call]) -> float:
    """µs per GET for running ``calls`` one after another."""
    started = time.perf_counter()
    for path, params in calls:
        response = await client.get(path, params=params)
        assert response.status_code == 200, response.text
    return (time.perf_counter() - started) / len(calls) * 1e6


def reads_and_searches(
    side: Side, people: list[dict[str, Any]], sample: list[int], obs_sample: list[int]
) -> dict[str, list[Call]]:
    """The timed GETs of one round, by operation."""
    loinc = {"code": "http://loinc.org|8867-4"}
    return {
        "read Patient": [(f"Patient/{side.patients[i]}", None) for i in sample],
        "read Observation": [(f"Observation/{side.observations[i]}", None) for i in obs_sample],
        "search identifier=sys|ID": [
            ("Patient", {"identifier": f"{RESIDENT}|{people[i]['identifier'][0]['value']}"})
            for i in sample
        ],
        "search phone=": [("Patient", {"phone": people[i]["telecom"][0]["value"]}) for i in sample],
        "search family= (not protected)": [
            ("Patient", {"family": people[i]["name"][0]["family"]}) for i in sample
        ],
        "search Observation code (20/page)": [("Observation", loinc) for _ in range(50)],
    }


async def run(db: str, n: int, rounds: int) -> list[tuple[str, float, float]]:
    with tempfile.TemporaryDirectory() as folder:
        urls = []
        for name in ("on", "off"):
            if db == "sqlite":
                urls.append(f"sqlite+aiosqlite:///{folder}/{name}.db")
            else:
                from tests.conftest import create_pg_database

                urls.append(await create_pg_database())
        try:
            async with Side("on", urls[0], True) as on, Side("off", urls[1], False) as off:
                return await measure(on, off, n, rounds)
        finally:
            if db == "postgres":
                from tests.conftest import drop_pg_database

                for url in urls:
                    await drop_pg_database(url)


async def measure(on: Side, off: Side, n: int, rounds: int) -> list[tuple[str, float, float]]:
    people = residents(n)
    results: dict[str, dict[str, list[float]]] = {}

    def note(op: str, side: Side, value: float) -> None:
        results.setdefault(op, {"on": [], "off": []})[side.name].append(value)

    # create: the residents in alternating slices
    size = max(1, n // rounds)
    for start in range(0, n, size):
        chunk = people[start : start + size]
        for side in (on, off) if start // size % 2 == 0 else (off, on):
            ids: list[str] = []
            started = time.perf_counter()
            for body in chunk:
                response = await side.client.post("Patient", content=orjson.dumps(body))
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
            note("create Patient", side, (time.perf_counter() - started) / len(chunk) * 1e6)
            side.patients += ids
    for side in (on, off):
        for i, pid in enumerate(side.patients[: n // 2]):
            body = orjson.dumps(observation(pid, i))
            response = await side.client.post("Observation", content=body)
            side.observations.append(response.json()["id"])
    rng = random.Random(11)
    sample = [rng.randrange(n) for _ in range(200)]
    obs_sample = [rng.randrange(n // 2) for _ in range(200)]
    for r in range(rounds):
        for side in (on, off) if r % 2 == 0 else (off, on):
            for op, calls in reads_and_searches(side, people, sample, obs_sample).items():
                note(op, side, await timed(side.client, calls))
    return [
        (op, statistics.median(v["off"]), statistics.median(v["on"])) for op, v in results.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--residents", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    for db in backends:
        rows = asyncio.run(run(db, args.residents, args.rounds))
        print(f"\n{db}: {args.residents} residents, {args.rounds} alternating rounds, µs/request")
        print(f"{'operation':<36}{'off':>9}{'on':>9}{'overhead':>10}")
        for op, off, on in rows:
            print(f"{op:<36}{off:>9.0f}{on:>9.0f}{(on / off - 1) * 100:>9.1f}%")


if __name__ == "__main__":
    main()
