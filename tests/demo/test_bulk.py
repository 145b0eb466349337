"""The bulk path (``fhir/storage/bulk.py``, ``pipeline.py``) against the ordinary engine.

Oracle: the same county loaded through the bulk path and through ``bundles.transaction``
(one transaction at a time, ids drawn from the same deterministic sequence) must leave
the same rows: resources and their JSON, history versions, every index row, outbox events
and access grants. The two databases start as copies of one, so they share the data and
blind-index keys: sealed identifiers then have the same blind tokens in the index, while
the stored ciphertexts differ only by their random nonces (compared revealed).
"""

from __future__ import annotations

import copy
import itertools
import re
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from sqlalchemy import select, text

from smartmed.access.tables import access_grant
from smartmed.config import Settings
from smartmed.demo.generator import generate_county
from smartmed.demo.load import load_county
from smartmed.fhir import bundles, repository
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError
from smartmed.fhir.search import rows as search_rows
from smartmed.fhir.storage import bulk
from smartmed.fhir.storage.migrate import migrate
from smartmed.fhir.storage.pipeline import load_transactions
from smartmed.fhir.storage.tables import INDEX_TABLES, outbox, resource, resource_history
from tests.conftest import EXAMPLES, PG_ADMIN_URL, ROOT, create_pg_database, drop_pg_database, need

SECRET = "test-secret-key-for-the-bulk-tests"
RESIDENTS, SEED = 45, 11
ID_NUMBER = re.compile(r"\d{17}[\dX]")
WRITE_TIME = re.compile(r"\d{4}-\d\d-\d\dt\d\d:\d\d:\d\d\.\d{6}z")


def _settings(url: str) -> Settings:
    return Settings(database_url=url, secret_key=SECRET)


def _need_definitions() -> None:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")


def _sequential_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every new id from one counter, whichever path draws it."""
    counter = itertools.count(1)

    def new_id() -> str:
        return f"id-{next(counter):06d}"

    for module in (repository, bundles, bulk):
        monkeypatch.setattr(module, "new_id", new_id)


def _untimed(value: Any) -> Any:
    """``_content`` text without the write time (meta.lastUpdated, normalised)."""
    return WRITE_TIME.sub("", value) if isinstance(value, str) else value


def _plain(content: str | None) -> Any:
    """Resource JSON without the write time (the only thing the two loads may differ in)."""
    if content is None:
        return None
    body = orjson.loads(content)
    body.get("meta", {}).pop("lastUpdated", None)
    return body


async def _snapshot(engine: FhirEngine) -> dict[str, Any]:
    """Every row the loads write, keyed by (type, id) instead of surrogate keys and times."""
    snap: dict[str, Any] = {}
    async with engine.db.read() as conn:
        r = resource.c
        rows = (
            await conn.execute(select(r.pk, r.type, r.id, r.version_id, r.deleted, r.content))
        ).all()
        keys = {row.pk: (row.type, row.id) for row in rows}
        snap["resource"] = sorted(
            (row.type, row.id, row.version_id, row.deleted, orjson.dumps(_plain(row.content)))
            for row in rows
        )
        h = resource_history.c
        snap["history"] = sorted(
            (row.type, row.id, row.version_id, row.action, orjson.dumps(_plain(row.content)))
            for row in (
                await conn.execute(select(h.type, h.id, h.version_id, h.action, h.content))
            ).all()
        )
        for kind, table in INDEX_TABLES.items():
            columns = [c for c in table.columns if c.name != "res_pk"]
            found = (await conn.execute(select(table.c.res_pk, *columns))).all()
            snap[kind] = Counter(
                (keys[row[0]], *(repr(_untimed(value)) for value in row[1:])) for row in found
            )
        o = outbox.c
        snap["outbox"] = Counter(
            tuple(row)
            for row in (
                await conn.execute(select(o.resource_type, o.resource_id, o.version_id, o.action))
            ).all()
        )
        grant_columns = [c for c in access_grant.columns if c.name not in ("pk", "created_at")]
        snap["grants"] = Counter(
            tuple(repr(v) for v in row)
            for row in (await conn.execute(select(*grant_columns))).all()
        )
        # The stored (not revealed) JSON: sensitive identifiers sealed in both loads.
        raw = (await conn.execute(text("SELECT content FROM resource"))).scalars().all()
        snap["plaintext ID numbers stored"] = sum(
            1 for content in raw if content and ID_NUMBER.search(str(content))
        )
    return snap


async def _load(url: str, *, fast: bool, workers: int) -> dict[str, Any]:
    engine = FhirEngine.build(_settings(url))
    try:
        report = await load_county(
            engine,
            residents=RESIDENTS,
            seed=SEED,
            households_per_transaction=4,
            concurrency=None if fast else 1,
            bulk=fast,
            workers=workers,
            show_progress=False,
        )
        expected = Counter(
            e["resource"]["resourceType"]
            for b in generate_county(residents=RESIDENTS, seed=SEED)
            for e in b["entry"]
        )
        assert report.created == expected
        return await _snapshot(engine)
    finally:
        await engine.db.dispose()


async def _prepared(url: str) -> None:
    """Migrate and create the keys (so copies of the database share them)."""
    engine = FhirEngine.build(_settings(url))
    try:
        await migrate(engine.db)
        async with engine.db.read():
            pass  # loads (first creates) the data and blind-index keys
    finally:
        await engine.db.dispose()


def _compare(fast: dict[str, Any], ordinary: dict[str, Any]) -> None:
    assert fast.keys() == ordinary.keys()
    for key in ordinary:
        assert fast[key] == ordinary[key], key
    assert len(ordinary["resource"]) > 300
    assert len(ordinary["history"]) == len(ordinary["resource"])
    assert sum(ordinary["token"].values()) > 1000
    assert sum(ordinary["quantity"].values()) > 100  # composites and UCUM included
    assert sum(ordinary["grants"].values()) > 50  # contracts, visits, prescriptions
    assert ordinary["plaintext ID numbers stored"] == 0  # sealed at rest either way


@pytest.mark.parametrize("workers", [0, 2])
async def test_bulk_load_equals_ordinary_load_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    _need_definitions()
    template = tmp_path / "template.db"
    await _prepared(f"sqlite+aiosqlite:///{template}")
    for name in ("fast.db", "ordinary.db"):
        shutil.copy(template, tmp_path / name)
    _sequential_ids(monkeypatch)
    fast = await _load(f"sqlite+aiosqlite:///{tmp_path / 'fast.db'}", fast=True, workers=workers)
    _sequential_ids(monkeypatch)
    ordinary = await _load(f"sqlite+aiosqlite:///{tmp_path / 'ordinary.db'}", fast=False, workers=0)
    _compare(fast, ordinary)


async def _copy_pg(template_url: str) -> str:
    name = f"{template_url.rsplit('/', 1)[1]}_copy"
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_url.rsplit("/", 1)[1]}"')
    finally:
        await conn.close()
    return f"{template_url.rsplit('/', 1)[0]}/{name}"


@pytest.mark.postgres
async def test_bulk_load_equals_ordinary_load_on_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    _need_definitions()
    fast_url = await create_pg_database()
    ordinary_url: str | None = None
    try:
        await _prepared(fast_url)
        ordinary_url = await _copy_pg(fast_url)
        _sequential_ids(monkeypatch)
        fast = await _load(fast_url, fast=True, workers=2)
        _sequential_ids(monkeypatch)
        ordinary = await _load(ordinary_url, fast=False, workers=0)
        _compare(fast, ordinary)
    finally:
        await drop_pg_database(fast_url)
        if ordinary_url is not None:
            await drop_pg_database(ordinary_url)


# -- which bundles the bulk path takes ----------------------------------------------------

TYPES = frozenset({"Patient", "Observation", "Organization"})


def _bundle(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _post(resource_: dict[str, Any], full_url: str | None = None, **request: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource_,
        "request": {"method": "POST", "url": resource_["resourceType"], **request},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def test_plan_resolves_bundle_references_in_place() -> None:
    patient = {"resourceType": "Patient"}
    obs = {
        "resourceType": "Observation",
        "subject": {"reference": "urn:uuid:p"},
        "performer": [{"reference": "Organization?identifier=s|1"}],
        "hasMember": [{"reference": "Observation/literal"}],
    }
    plan = bulk.plan_transaction(
        _bundle(_post(patient, "urn:uuid:p"), _post(obs)),
        TYPES,
        {"Organization?identifier=s|1": "Organization/7"},
    )
    assert plan is not None
    created = {c.type_: c.id_ for c in plan.creates}
    assert obs["subject"] == {"reference": f"Patient/{created['Patient']}"}
    assert obs["performer"] == [{"reference": "Organization/7"}]
    assert obs["hasMember"] == [{"reference": "Observation/literal"}]
    plan.restore()
    assert obs["subject"] == {"reference": "urn:uuid:p"}
    assert obs["performer"] == [{"reference": "Organization?identifier=s|1"}]


@pytest.mark.parametrize(
    "bundle",
    [
        _bundle(_post({"resourceType": "Patient"}, ifNoneExist="identifier=s|1")),
        _bundle(
            {
                "resource": {"resourceType": "Patient", "id": "x"},
                "request": {"method": "PUT", "url": "Patient/x"},
            }
        ),  # fmt: skip
        _bundle(_post({"resourceType": "Observation", "subject": {"reference": "urn:uuid:nope"}})),
        _bundle(_post({"resourceType": "Observation", "subject": {"reference": "Patient?name=x"}})),
        _bundle(
            {
                "resource": {"resourceType": "Observation"},
                "request": {"method": "POST", "url": "Patient"},
            }
        ),  # fmt: skip
        {"resourceType": "Bundle", "type": "batch", "entry": []},
        _bundle(),
    ],
)
def test_plan_leaves_other_bundles_to_the_ordinary_path(bundle: dict[str, Any]) -> None:
    before = orjson.dumps(bundle)
    assert bulk.plan_transaction(bundle, TYPES) is None
    assert orjson.dumps(bundle) == before  # untouched


async def test_bad_bundle_rejected_whole_and_the_others_load(tmp_path: Path) -> None:
    """An invalid resource sends its bundle to the ordinary path, which rejects it whole
    with the engine's error; the bundles around it are written by the bulk path."""
    _need_definitions()
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    await _prepared(url)
    engine = FhirEngine.build(_settings(url))

    def good(n: int) -> dict[str, Any]:
        patient = {"resourceType": "Patient", "name": [{"family": f"F{n}"}]}
        obs = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": f"urn:uuid:{n}"},
        }
        return _bundle(_post(patient, f"urn:uuid:{n}"), _post(obs))

    bad = good(2)
    bad["entry"][1]["resource"]["status"] = "not-a-status"
    untouched = copy.deepcopy(bad)
    items: list[dict[str, Any]] = [good(1), bad, good(3)]
    same: Callable[[dict[str, Any]], dict[str, Any]] = lambda b: b  # noqa: E731
    try:
        outcomes = [o async for o in load_transactions(engine, items, same, workers=0)]
        assert [o.error is None for o in outcomes] == [True, False, True]
        assert [o.bulk for o in outcomes] == [True, False, True]
        error = outcomes[1].error
        assert error is not None and "Bundle.entry[1]" in str(error.issues[0].expression)
        assert all(status == 201 for o in (outcomes[0], outcomes[2]) for status, _ in o.entries)
        # the very error the ordinary transaction gives the bundle as it was sent
        with pytest.raises(FhirError) as ordinary:
            async with engine.db.write() as conn:
                await bundles.transaction(
                    conn, engine.services, untouched, engine.resource_types, return_resources=False
                )
        assert error.issues == ordinary.value.issues and error.status == ordinary.value.status
        async with engine.db.read() as conn:
            r = resource.c
            stored = Counter((await conn.execute(select(r.type))).scalars().all())
            names = (
                (await conn.execute(text("SELECT content FROM resource WHERE type = 'Patient'")))
                .scalars()
                .all()
            )
        assert stored == Counter({"Patient": 2, "Observation": 2})
        assert sorted(orjson.loads(n)["name"][0]["family"] for n in names) == ["F1", "F3"]
    finally:
        await engine.db.dispose()


def test_index_tuples_are_the_ordinary_index_rows() -> None:
    """On every official R4 example (composites, duplicates, every kind): the bulk rows
    are the ``search.rows`` rows, column for column."""
    _need_definitions()
    engine = FhirEngine.build(_settings("sqlite+aiosqlite:///:memory:"))
    checked = 0
    for path in sorted(EXAMPLES.glob("*.json")):
        body = orjson.loads(path.read_bytes())
        if not isinstance(body, dict) or body.get("resourceType") not in engine.resource_types:
            continue
        type_ = body["resourceType"]
        index = engine.services.extractor.extract(body)
        ordinary = search_rows.index_rows(7, type_, index)
        fast: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in bulk.INDEX_COLUMNS}
        bulk.index_tuples(7, type_, index, fast)
        for kind, columns in bulk.INDEX_COLUMNS.items():
            assert fast[kind] == [tuple(row[c] for c in columns) for row in ordinary[kind]], (
                path.name,
                kind,
            )
        checked += 1
    assert checked > 2000
