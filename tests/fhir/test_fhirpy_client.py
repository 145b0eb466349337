"""A real, independent FHIR client (fhirpy, from PyPI) against the running server.

The server runs for real: uvicorn on 127.0.0.1 with a kernel-chosen port, in a thread with
its own event loop, on a fresh database per backend (SQLite and PostgreSQL). Every call
below goes through fhirpy's own API over TCP, so what is tested is what a third-party
client sees: status codes, headers, Bundle links and bodies as fhirpy interprets them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

from smartmed.app import create_app
from smartmed.config import Settings
from tests.conftest import ROOT, create_pg_database, drop_pg_database, need

RESIDENT = "urn:smartmed:id:resident"
STARTUP_TIMEOUT = 30.0


class ServerThread:
    """The smartmed ASGI app served by uvicorn on a pre-bound localhost socket."""

    def __init__(self, database_url: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(Settings(database_url=database_url)),
            lifespan="on",  # a failing startup (migration, definitions) stops the server
            log_config=None,  # leave the test process's logging alone
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        async with httpx.AsyncClient(base_url=self.base, timeout=2) as http:
            while True:
                if not self.thread.is_alive():
                    pytest.fail("the uvicorn server thread ended during startup")
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not answer /healthz in {STARTUP_TIMEOUT} s")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, 30)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not shut down"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServerThread]:
    """A running server on a database of its own (exact counts need a database to itself)."""
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    if request.param == "sqlite":
        folder: Path = tmp_path_factory.mktemp("fhirpy")
        url = f"sqlite+aiosqlite:///{folder}/smartmed.db"
    else:
        url = await create_pg_database()
    running = ServerThread(url)
    try:
        await running.start()
        yield running
    finally:
        await running.stop()
        if request.param == "postgres":
            await drop_pg_database(url)


@pytest.fixture
def fhir(server: ServerThread) -> AsyncFHIRClient:
    return AsyncFHIRClient(f"{server.base}/fhir/R4")


def outcome_code(exc: BaseException) -> str:
    """The first issue code of the OperationOutcome fhirpy put in the exception's text."""
    body: dict[str, Any] = json.loads(str(exc))
    assert body["resourceType"] == "OperationOutcome"
    code: str = body["issue"][0]["code"]
    return code


def resident(value: str) -> dict[str, str]:
    return {"system": RESIDENT, "value": value}


async def test_create_read_update_search_history_delete(fhir: AsyncFHIRClient) -> None:
    id_number = "110101199001011234"
    patient = fhir.resource(
        "Patient",
        name=[{"text": "王小明", "family": "王", "given": ["小明"]}],
        identifier=[resident(id_number)],
        gender="male",
        birthDate="1990-01-01",
    )
    # Near misses for the name search: neither starts with 王小.
    near = {}
    for text, family, given in (("王大明", "王", "大明"), ("李小明", "李", "小明")):
        other = fhir.resource("Patient", name=[{"text": text, "family": family, "given": [given]}])
        await other.save()
        near[text] = other.id

    # create
    await patient.save()
    pid = patient.id
    assert isinstance(pid, str) and pid
    assert patient["meta"]["versionId"] == "1"

    # read by id, two ways
    read = await fhir.reference("Patient", pid).to_resource()
    assert read.id == pid
    assert read["meta"]["versionId"] == "1"
    assert read["name"] == [{"text": "王小明", "family": "王", "given": ["小明"]}]
    assert read["identifier"] == [resident(id_number)]
    assert read["gender"] == "male"
    assert (await fhir.get("Patient", pid))["birthDate"] == "1990-01-01"

    # update: change gender, add telecom -> version 2
    read["gender"] = "female"
    read["telecom"] = [{"system": "phone", "value": "13800138000", "use": "mobile"}]
    await read.save()
    assert read.id == pid
    assert read["meta"]["versionId"] == "2"
    again = await fhir.reference("Patient", pid).to_resource()
    assert again["meta"]["versionId"] == "2"
    assert again["gender"] == "female"
    assert again["telecom"] == [{"system": "phone", "value": "13800138000", "use": "mobile"}]
    await again.refresh()  # fhirpy's conditional re-read (If-None-Match)
    assert again["meta"]["versionId"] == "2"

    # search: by name prefix (CJK) and by identifier system|value
    by_name = await fhir.resources("Patient").search(name="王小").fetch()
    assert [p.id for p in by_name] == [pid]
    by_identifier = (
        await fhir.resources("Patient").search(identifier=f"{RESIDENT}|{id_number}").fetch()
    )
    assert [p.id for p in by_identifier] == [pid]
    found = await fhir.resources("Patient").search(identifier=f"{RESIDENT}|{id_number}").get()
    assert (found.id, found["meta"]["versionId"]) == (pid, "2")
    assert [p.id for p in await fhir.resources("Patient").search(name="王大").fetch()] == [
        near["王大明"]
    ]
    by_given = await fhir.resources("Patient").search(given="小明").fetch()
    assert sorted(p.id for p in by_given) == sorted([pid, near["李小明"]])
    by_gender = await fhir.resources("Patient").search(gender="female", name="王").fetch()
    assert [p.id for p in by_gender] == [pid]

    # vread and instance history (newest first)
    v1 = await fhir.execute(f"Patient/{pid}/_history/1", method="get")
    assert (v1["meta"]["versionId"], v1["gender"]) == ("1", "male")
    history = await read.execute("_history", method="get")
    assert (history["resourceType"], history["type"], history["total"]) == (
        "Bundle",
        "history",
        2,
    )
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "POST"]
    assert [e["resource"]["gender"] for e in history["entry"]] == ["female", "male"]

    # delete, then a read is 410 Gone -> fhirpy's ResourceNotFound with code "deleted"
    await read.delete()
    with pytest.raises(ResourceNotFound) as gone:
        await fhir.reference("Patient", pid).to_resource()
    assert outcome_code(gone.value) == "deleted"
    with pytest.raises(ResourceNotFound) as gone_again:
        await fhir.get("Patient", pid)
    assert outcome_code(gone_again.value) == "deleted"
    # ... unlike an id that never existed (404)
    with pytest.raises(ResourceNotFound) as unknown:
        await fhir.get("Patient", "no-such-patient")
    assert outcome_code(unknown.value) == "not-found"
    assert await fhir.resources("Patient").search(name="王小").fetch() == []
    history = await fhir.execute(f"Patient/{pid}/_history", method="get")
    assert history["total"] == 3
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
    assert "resource" not in history["entry"][0]
    assert history["entry"][0]["response"]["etag"] == 'W/"3"'


async def test_paging_through_25_patients(fhir: AsyncFHIRClient) -> None:
    system = f"urn:smartmed:test:fhirpy-page:{uuid.uuid4().hex}"
    created = []
    for n in range(25):
        p = fhir.resource("Patient", identifier=[{"system": system, "value": f"{n:02d}"}])
        await p.save()
        created.append(p.id)
    assert len(set(created)) == 25

    search = fhir.resources("Patient").search(identifier=f"{system}|").limit(10)
    first_page = await search.fetch()
    assert len(first_page) == 10
    raw = await search.fetch_raw()
    assert [link["relation"] for link in raw["link"]] == ["self", "next"]

    everything = await search.fetch_all()  # follows Bundle.link "next": 10 + 10 + 5
    assert len(everything) == 25
    assert sorted(p.id for p in everything) == sorted(created)
    assert [p.id for p in everything[:10]] == [p.id for p in first_page]

    # async iteration (the same paging) with a sort: newest identifier value first
    descending = [p.id async for p in search.sort("-identifier")]
    assert descending == created[::-1]

    summary = await search.clone(_summary="count", override=True).fetch_raw()
    assert summary["total"] == 25


async def test_fhirpy_count(fhir: AsyncFHIRClient) -> None:
    system = f"urn:smartmed:test:fhirpy-count:{uuid.uuid4().hex}"
    for n in range(3):
        await fhir.resource("Patient", identifier=[{"system": system, "value": str(n)}]).save()
    assert await fhir.resources("Patient").search(identifier=f"{system}|").count() == 3


async def test_transaction_with_urn_uuid_reference(fhir: AsyncFHIRClient) -> None:
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    obs_urn = f"urn:uuid:{uuid.uuid4()}"
    id_number = "330102198502023456"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": obs_urn,
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {
                        "coding": [
                            {"system": "http://loinc.org", "code": "8867-4", "display": "心率"}
                        ]
                    },
                    "subject": {"reference": patient_urn},
                    "valueQuantity": {
                        "value": 72,
                        "unit": "/min",
                        "system": "http://unitsofmeasure.org",
                        "code": "/min",
                    },
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "fullUrl": patient_urn,
                "resource": {
                    "resourceType": "Patient",
                    "name": [{"text": "赵丽华", "family": "赵", "given": ["丽华"]}],
                    "identifier": [resident(id_number)],
                },
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    response = await fhir.execute("/", method="post", data=bundle)
    assert (response["resourceType"], response["type"]) == ("Bundle", "transaction-response")
    assert [e["response"]["status"][:3] for e in response["entry"]] == ["201", "201"]
    obs_location, patient_location = (e["response"]["location"] for e in response["entry"])
    obs_type, obs_id, *_ = obs_location.split("/")
    patient_type, patient_id, *_ = patient_location.split("/")
    assert (obs_type, patient_type) == ("Observation", "Patient")

    observation = await fhir.reference("Observation", obs_id).to_resource()
    assert observation["subject"]["reference"] == f"Patient/{patient_id}"
    assert observation["valueQuantity"]["value"] == 72
    subject = await observation["subject"].to_resource()  # fhirpy resolves the reference
    assert subject.id == patient_id
    assert subject["name"][0]["text"] == "赵丽华"

    by_subject = await fhir.resources("Observation").search(subject=f"Patient/{patient_id}").fetch()
    assert [o.id for o in by_subject] == [obs_id]
    by_patient = await fhir.resources("Patient").search(identifier=f"{RESIDENT}|{id_number}").get()
    assert by_patient.id == patient_id


async def test_conditional_create_and_update(server: ServerThread) -> None:
    id_number = "440103197703034567"
    criteria = f"identifier={RESIDENT}|{id_number}"
    # fhirpy has no If-None-Exist API of its own (its get_or_create puts the criteria in the
    # URL query, an Aidbox convention); the header goes through the client's extra_headers.
    conditional = AsyncFHIRClient(
        f"{server.base}/fhir/R4", extra_headers={"If-None-Exist": criteria}
    )

    def new_patient() -> Any:
        return conditional.resource(
            "Patient", name=[{"text": "陈建国"}], identifier=[resident(id_number)]
        )

    first = new_patient()
    await first.save()  # 201: nothing matched
    second = new_patient()
    await second.save()  # 200: the existing match is returned, nothing is created
    assert second.id == first.id
    assert second["meta"]["versionId"] == "1"
    plain = AsyncFHIRClient(f"{server.base}/fhir/R4")
    matches = await plain.resources("Patient").search(identifier=f"{RESIDENT}|{id_number}").fetch()
    assert [p.id for p in matches] == [first.id]

    # fhirpy's conditional update (PUT /Patient?identifier=...): updates the one match
    searchset = plain.resources("Patient").search(identifier=f"{RESIDENT}|{id_number}")
    changed = plain.resource(
        "Patient", name=[{"text": "陈建国"}], identifier=[resident(id_number)], gender="male"
    )
    updated, created = await searchset.update(changed)
    assert created is False
    assert (updated.id, updated["meta"]["versionId"], updated["gender"]) == (first.id, "2", "male")
    # ... and creates when nothing matches
    other = f"{RESIDENT}|440103197703039999"
    fresh, created = (
        await plain.resources("Patient")
        .search(identifier=other)
        .update(plain.resource("Patient", identifier=[resident("440103197703039999")]))
    )
    assert created is True
    assert fresh["meta"]["versionId"] == "1"
    assert fresh.id != first.id

    # fhirpy's get_or_create sends the criteria in the URL of the POST: honoured as a
    # conditional create, so a retry never makes a duplicate
    made, created = await (
        plain.resources("Patient")
        .search(identifier=other)
        .get_or_create(plain.resource("Patient", identifier=[resident("440103197703039999")]))
    )
    assert (created, made.id) == (False, fresh.id)
