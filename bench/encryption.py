"""What sealing ID numbers and phones costs: create, read and search, protection on vs off.

Two engines in this process, each on its own scratch database of the same backend: one
with the crypto protector (the default), one with it removed (plain storage, plain
index). Both get the same residents (ID number, phone, name) and Observations; the timed
rounds alternate between them so that machine noise hits both alike. The work goes
through the engine's public calls (repository create/read, ``search_bundle``), without
HTTP, so the figures are the store's own. Printed per operation: µs of CPU time of this
process (stable on a busy machine; it includes SQLite's work, not PostgreSQL's) and µs
of wall time, median of the rounds, off vs on.

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
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smartmed.config import Settings  # noqa: E402
from smartmed.demo.idcard import make_id_number  # noqa: E402
from smartmed.fhir.context import FhirEngine  # noqa: E402
from smartmed.fhir.search.service import search_bundle  # noqa: E402
from smartmed.fhir.storage.migrate import migrate  # noqa: E402

RESIDENT = "urn:smartmed:id:resident"
KEY = "bench-key-encryption-key-0123456789abcdef"
LOINC = "http://loinc.org"


def residents(n: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    people = []
    for i in range(n):
        birth = date(1940, 1, 1) + timedelta(days=rng.randrange(30000))
        people.append(
            {
                "resourceType": "Patient",
                "identifier": [
                    {"system": RESIDENT, "value": make_id_number("330106", birth, 1 + i % 999)},
                    {"system": "urn:smartmed:mrn", "value": f"M{i:06d}"},
                ],
                "telecom": [{"system": "phone", "value": f"139{i:08d}", "use": "mobile"}],
                "name": [{"family": f"F{i:05d}", "given": ["测试"]}],
                "gender": "female" if i % 2 else "male",
                "birthDate": birth.isoformat(),
                "address": [{"city": "杭州市", "district": "西湖区", "line": ["文三路 1 号"]}],
            }
        )
    return people


def observation(pid: str, i: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"2026-0{1 + i % 9}-1{i % 9}T08:00:00Z",
        "valueQuantity": {
            "value": 60 + i % 40,
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


class Side:
    """One engine and what it holds."""

    def __init__(self, name: str, url: str, protect: bool) -> None:
        self.name, self.url, self.protect = name, url, protect
        self.patients: list[str] = []
        self.observations: list[str] = []

    async def start(self) -> None:
        self.engine = FhirEngine.build(
            Settings(database_url=self.url, encryption_key=KEY, log_level="WARNING")
        )
        await migrate(self.engine.db)
        if not self.protect:
            self.engine.db.protect(None)
            self.engine.services = dataclasses.replace(self.engine.services, protector=None)

    async def create(self, body: dict[str, Any]) -> str:
        async with self.engine.db.write() as conn:
            return (await self.engine.repository(conn).create(body)).id

    async def add_patient(self, body: dict[str, Any]) -> None:
        self.patients.append(await self.create(body))

    async def add_observation(self, i: int) -> None:
        self.observations.append(await self.create(observation(self.patients[i], i)))

    async def read(self, type_: str, id_: str) -> None:
        async with self.engine.db.read() as conn:
            await self.engine.repository(conn).read(type_, id_)

    async def search(self, type_: str, items: list[tuple[str, str]], expect: int | None) -> None:
        async with self.engine.db.read() as conn:
            bundle = await search_bundle(
                conn, self.engine.services, type_, items, base_url="http://b", strict=True
            )
        if expect is not None:
            assert bundle.count('"mode":"match"') == expect, (items, bundle[:300])


Call = tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]


async def timed(calls: list[Call]) -> tuple[float, float]:
    """(CPU µs, wall µs) per call for running ``calls`` one after another."""
    cpu, wall = time.process_time(), time.perf_counter()
    for function, args in calls:
        await function(*args)
    return (
        (time.process_time() - cpu) / len(calls) * 1e6,
        (time.perf_counter() - wall) / len(calls) * 1e6,
    )


def operations(
    side: Side, people: list[dict[str, Any]], sample: list[int]
) -> dict[str, list[Call]]:
    """The timed reads and searches of one side."""
    few = sample[:50]
    code = [("code", f"{LOINC}|8867-4")]
    return {
        "read Patient": [(side.read, ("Patient", side.patients[i])) for i in sample],
        "read Observation": [
            (side.read, ("Observation", side.observations[i % len(side.observations)]))
            for i in sample
        ],
        "search Patient identifier=sys|ID": [
            (side.search, ("Patient", [("identifier", f"{RESIDENT}|{_ident(people, i)}")], 1))
            for i in sample
        ],
        "search Patient phone=": [
            (side.search, ("Patient", [("phone", people[i]["telecom"][0]["value"])], 1))
            for i in sample
        ],
        "search Patient family= (not sealed)": [
            (side.search, ("Patient", [("family", people[i]["name"][0]["family"])], 1))
            for i in sample
        ],
        "search Patient gender, 20/page": [
            (side.search, ("Patient", [("gender", "male")], None)) for _ in few
        ],
        "search Observation code, 20/page": [
            (side.search, ("Observation", code, None)) for _ in few
        ],
    }


def _ident(people: list[dict[str, Any]], i: int) -> str:
    return str(people[i]["identifier"][0]["value"])


async def measure(
    on: Side, off: Side, n: int, rounds: int
) -> list[tuple[str, float, float, float, float]]:
    people = residents(n)
    cpu: dict[str, dict[str, list[float]]] = {}
    wall: dict[str, dict[str, list[float]]] = {}

    def note(op: str, side: Side, figures: tuple[float, float]) -> None:
        cpu.setdefault(op, {"on": [], "off": []})[side.name].append(figures[0])
        wall.setdefault(op, {"on": [], "off": []})[side.name].append(figures[1])

    # warm-up, untimed: extraction plans, statement caches, connections of both sides
    warm = residents(n + 10)[n:]
    for side in (on, off):
        for body in warm:
            await side.add_patient(body)
            await side.add_observation(len(side.patients) - 1)
        for calls in operations(side, warm, list(range(10))).values():
            await timed(calls[:5])
        side.patients.clear()
        side.observations.clear()
    size = max(1, n // rounds)
    for number, start in enumerate(range(0, n, size)):
        chunk = people[start : start + size]
        for side in (on, off) if number % 2 == 0 else (off, on):
            before = len(side.patients)
            note("create Patient", side, await timed([(side.add_patient, (b,)) for b in chunk]))
            calls: list[Call] = [
                (side.add_observation, (i,)) for i in range(before, before + len(chunk))
            ]
            note("create Observation", side, await timed(calls))
    rng = random.Random(11)
    sample = [rng.randrange(n) for _ in range(200)]
    for r in range(rounds):
        for side in (on, off) if r % 2 == 0 else (off, on):
            for op, calls in operations(side, people, sample).items():
                note(op, side, await timed(calls))
    rows = []
    for op in cpu:
        c, w = cpu[op], wall[op]
        rows.append(
            (
                op,
                statistics.median(c["off"]),
                statistics.median(c["on"]),
                statistics.median(w["off"]),
                statistics.median(w["on"]),
            )
        )
    return rows


async def run(db: str, n: int, rounds: int) -> list[tuple[str, float, float, float, float]]:
    with tempfile.TemporaryDirectory() as folder:
        urls = []
        for name in ("on", "off"):
            if db == "sqlite":
                urls.append(f"sqlite+aiosqlite:///{folder}/{name}.db")
            else:
                from tests.conftest import create_pg_database

                urls.append(await create_pg_database())
        sides = [Side("on", urls[0], True), Side("off", urls[1], False)]
        try:
            for side in sides:
                await side.start()
            return await measure(sides[0], sides[1], n, rounds)
        finally:
            for side in sides:
                await side.engine.db.dispose()
            if db == "postgres":
                from tests.conftest import drop_pg_database

                for url in urls:
                    await drop_pg_database(url)


def micro(repeat: int = 2000) -> list[tuple[str, float]]:
    """Best-of-5 µs of the protector's own steps (no database), with real keys."""
    return [figure for name in ("AES-256-GCM", "SM4-GCM") for figure in _micro(name, repeat)]


def _micro(name: str, repeat: int) -> list[tuple[str, float]]:
    import os
    import timeit

    from smartmed.crypto.ciphers import suite
    from smartmed.crypto.keys import Key
    from smartmed.crypto.policy import Policy
    from smartmed.crypto.protector import CryptoProtector
    from smartmed.fhir import jsonio

    algorithm = suite(name)
    p = CryptoProtector(kek=os.urandom(32), algorithm=algorithm, policy=Policy(), url="")
    now = datetime(2026, 11, 22)
    p._install(
        {
            "k1": Key("k1", "data", algorithm, os.urandom(algorithm.key_bytes), "active", now),
            "b1": Key("b1", "blind", algorithm, os.urandom(32), "active", now),
        }
    )
    patient = residents(1)[0]
    text = jsonio.dumps(patient)
    sealed = p.seal(patient, text)
    assert sealed is not None
    obs = observation("x", 1)
    obs_text = jsonio.dumps(obs)
    steps = {
        "seal a Patient (ID + phone)": lambda: p.seal(patient, text),
        "reveal a stored Patient": lambda: p.reveal(sealed.stored),
        "blind a search value": lambda: p.blind("13900000001"),
        "seal an Observation (fast path)": lambda: p.seal(obs, obs_text),
        "reveal an Observation (fast path)": lambda: p.reveal(obs_text),
    }
    return [
        (f"{name}: {label}", min(timeit.repeat(step, number=repeat, repeat=5)) / repeat * 1e6)
        for label, step in steps.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--residents", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--micro", action="store_true", help="protector steps only")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    print("protector steps, µs (best of 5)")
    for label, figure in micro():
        print(f"  {label:<48}{figure:>8.1f}")
    if args.micro:
        return
    for db in backends:
        rows = asyncio.run(run(db, args.residents, args.rounds))
        print(f"\n{db}: {args.residents} residents, {args.rounds} alternating rounds")
        head = f"{'µs per operation':<36}{'CPU off':>9}{'CPU on':>9}{'':>8}"
        print(head + f"{'wall off':>10}{'wall on':>9}")
        for op, c_off, c_on, w_off, w_on in rows:
            print(
                f"{op:<36}{c_off:>9.0f}{c_on:>9.0f}{(c_on / c_off - 1) * 100:>+7.1f}%"
                f"{w_off:>10.0f}{w_on:>9.0f}{(w_on / w_off - 1) * 100:>+7.1f}%"
            )


if __name__ == "__main__":
    main()
