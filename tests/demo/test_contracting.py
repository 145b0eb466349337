"""The demo's contracting programme, loaded (SQLite and PostgreSQL): packages named on
every contract, purchases, delivered services linked to live contracts of the same
resident, renewals / transfers / terminations with their links and reasons, and the
contracting service's used / remaining counts against a brute-force count."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from smartmed.config import Settings
from smartmed.contracting import services
from smartmed.contracting.contracts import (
    TERMINATION_REASONS,
    bounds,
    package_of,
    patient_of,
    replaces_of,
    status_reason,
)
from smartmed.contracting.packages import (
    ITEM_SYSTEM,
    PACKAGE_SYSTEM,
    ensure_catalogue,
    priced_plan,
)
from smartmed.contracting.service import search_every
from smartmed.demo.contracting import DEMO_ORDER_SYSTEM
from smartmed.demo.generator import generate_county
from smartmed.demo.load import load_county
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.migrate import migrate
from tests.conftest import ROOT, create_pg_database, drop_pg_database, need

RESIDENTS = 400
SEED = 11
TYPES = (
    "Contract",
    "PlanDefinition",
    "ChargeItemDefinition",
    "ChargeItem",
    "Invoice",
    "Encounter",
    "Procedure",
)


@dataclass(slots=True)
class Loaded:
    engine: FhirEngine
    stored: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # type → id →

    def of(self, type_: str) -> list[dict[str, Any]]:
        return list(self.stored[type_].values())

    def get(self, ref: str) -> dict[str, Any] | None:
        kind, _, id_ = ref.partition("/")
        return self.stored.get(kind, {}).get(id_)


async def _load(url: str) -> Loaded:
    settings = Settings(database_url=url, secret_key="test-secret-key-for-the-demo-tests")
    engine = FhirEngine.build(settings)
    await migrate(engine.db)
    await load_county(engine, residents=RESIDENTS, seed=SEED, show_progress=False, workers=0)
    loaded = Loaded(engine)
    async with engine.db.read() as conn:
        for type_ in TYPES:
            loaded.stored[type_] = {
                r["id"]: r async for r in search_every(engine, conn, type_, [("_sort", "_id")])
            }
    return loaded


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def county(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Loaded]:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('contracting')}/demo.db"
        loaded = await _load(url)
        try:
            yield loaded
        finally:
            await loaded.engine.db.dispose()
        return
    url = await create_pg_database()
    try:
        loaded = await _load(url)
        try:
            yield loaded
        finally:
            await loaded.engine.db.dispose()
    finally:
        await drop_pg_database(url)


def _links(loaded: Loaded) -> list[tuple[dict[str, Any], str, str]]:
    """(record, contract reference, item) of every delivered-service record."""
    out = []
    for type_ in services.SERVICE_TYPES:
        for record in loaded.of(type_):
            link = services.service_link(record)
            if link is not None:
                out.append((record, *link))
    return out


async def test_every_contract_names_a_catalogue_package(county: Loaded) -> None:
    contracts = county.of("Contract")
    assert len(contracts) > RESIDENTS * 0.3
    codes: Counter[str] = Counter()
    for contract in contracts:
        ref = package_of(contract)
        assert ref is not None and ref.startswith("PlanDefinition/"), contract["id"]
        plan = county.get(ref)
        assert plan is not None and plan["status"] == "active", ref
        codes[plan["identifier"][0]["value"]] += 1
    assert codes["basic"] > len(contracts) / 2  # the free package for most
    assert sum(n for code, n in codes.items() if code != "basic") > 0  # paid for some
    # The catalogue exists once, each package with its price.
    plans = {p["identifier"][0]["value"] for p in county.of("PlanDefinition")}
    assert len(plans) == len(county.of("PlanDefinition")) and "basic" in plans
    priced = {priced_plan(d) for d in county.of("ChargeItemDefinition")}
    assert {f"PlanDefinition/{p['id']}" for p in county.of("PlanDefinition")} == priced
    # Contracting's seeding finds the demo's catalogue: nothing published twice.
    async with county.engine.db.write() as conn:
        refs = await ensure_catalogue(county.engine, conn)
    assert set(refs) == {f"PlanDefinition/{p['id']}" for p in county.of("PlanDefinition")}


def test_paid_packages_have_a_balanced_invoice(county: Loaded) -> None:
    charges = {c["id"]: c for c in county.of("ChargeItem")}
    invoiced = {}
    for invoice in county.of("Invoice"):
        assert invoice["status"] == "balanced"
        (line,) = invoice["lineItem"]
        invoiced[line["chargeItemReference"]["reference"]] = invoice
    paid = 0
    for contract in county.of("Contract"):
        plan = county.get(package_of(contract) or "")
        assert plan is not None
        price = next(
            d
            for d in county.of("ChargeItemDefinition")
            if priced_plan(d) == f"PlanDefinition/{plan['id']}"
        )
        amount = price["propertyGroup"][0]["priceComponent"][0]["amount"]["value"]
        orders = [
            c
            for c in charges.values()
            if {"reference": f"Contract/{contract['id']}"} in c["supportingInformation"]
        ]
        if amount == 0:
            assert not orders
            continue
        paid += 1
        (charge,) = orders
        assert charge["status"] == "billed"
        assert charge["subject"]["reference"] == patient_of(contract)
        assert charge["identifier"][0]["system"] == DEMO_ORDER_SYSTEM
        assert {"reference": f"ChargeItemDefinition/{price['id']}"} in charge[
            "supportingInformation"
        ]
        invoice = invoiced[f"ChargeItem/{charge['id']}"]
        assert invoice["totalGross"]["value"] == amount == charge["priceOverride"]["value"]
    assert paid == len(charges) > 0


def test_services_name_live_contracts_of_the_same_resident(county: Loaded) -> None:
    links = _links(county)
    assert links
    items_of_plan: dict[str, set[str]] = {}
    for plan in county.of("PlanDefinition"):
        items_of_plan[f"PlanDefinition/{plan['id']}"] = {
            a["code"][0]["coding"][0]["code"] for a in plan["action"]
        }
    for record, contract_ref, item in links:
        contract = county.get(contract_ref)
        assert contract is not None, contract_ref
        assert patient_of(contract) == record["subject"]["reference"]
        assert item in items_of_plan[package_of(contract) or ""]  # never "not-in-package"
        when = services.service_date(record)
        low, high = bounds(contract)
        assert when is not None and low <= when < high  # counted, never "outside-term"
    ext = next(e for e in links[0][0]["extension"] if e["url"] == services.SERVICE_EXT)
    assert ext["extension"][1]["valueCoding"]["system"] == ITEM_SYSTEM
    # Some contracts served (HbA1c Procedures among them), some never.
    served = {ref for _, ref, _ in links}
    contracts = {f"Contract/{c['id']}" for c in county.of("Contract")}
    assert 0 < len(served) < len(contracts)
    assert len(contracts - served) > len(contracts) * 0.1
    assert any(r["resourceType"] == "Procedure" and i == "hba1c" for r, _, i in links)


def test_renewals_transfers_and_terminations(county: Loaded) -> None:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    kinds: Counter[str] = Counter()
    contracts = county.of("Contract")
    for contract in contracts:
        link = replaces_of(contract)
        if link is not None:
            previous = county.get(link[0])
            assert previous is not None and patient_of(previous) == patient_of(contract)
            kinds[link[1]] += 1
            start, _ = bounds(contract)
            _, previous_end = bounds(previous)
            assert previous_end <= start  # never two contracts at once
            if link[1] == "transfer":
                assert previous["status"] == "terminated"
                assert status_reason(previous)[0] == "transfer"
                assert previous["extension"][0] != contract["extension"][0]  # another team
            else:
                assert link[1] == "renewal" and previous["status"] == "executed"
        if contract["status"] == "terminated":
            code, _ = status_reason(contract)
            assert code in TERMINATION_REASONS or code == "transfer"
            if code != "transfer":
                kinds["terminated"] += 1
                assert bounds(contract)[1] <= now
    assert kinds["renewal"] > 0 and kinds["transfer"] > 0 and kinds["terminated"] > 0
    # No resident has two contracts in force.
    in_force = Counter(
        patient_of(c)
        for c in contracts
        if c["status"] == "executed" and bounds(c)[0] <= now < bounds(c)[1]
    )
    assert in_force and max(in_force.values()) == 1


async def test_used_and_remaining_equal_a_brute_force_count(county: Loaded) -> None:
    links = _links(county)
    per_contract = Counter(ref for _, ref, _ in links)
    sample = [ref for ref, _ in per_contract.most_common(3)]
    sample.append(
        next(
            f"Contract/{c['id']}"
            for c in county.of("Contract")
            if f"Contract/{c['id']}" not in per_contract
        )
    )
    for ref in sample:
        contract = county.get(ref)
        assert contract is not None
        plan = county.get(package_of(contract) or "")
        assert plan is not None
        quantity = {
            a["code"][0]["coding"][0]["code"]: a["extension"][0]["valueInteger"]
            for a in plan["action"]
        }
        used = Counter(item for _, r, item in links if r == ref)
        async with county.engine.db.read() as conn:
            found = await services.usage(county.engine, conn, contract_id=ref.split("/", 1)[1])
        by_item = {i["code"]: i for i in found.items}
        assert set(by_item) == set(quantity) | set(used)
        for code, row in by_item.items():
            assert row["used"] == used[code], (ref, code)
            assert row["remaining"] == max(quantity.get(code, 0) - used[code], 0)
        assert len(found.services) == sum(used.values())


def test_the_programme_is_deterministic() -> None:
    def contracting(seed: int) -> list[Any]:
        return [
            e
            for b in generate_county(residents=120, seed=seed)
            for e in b["entry"]
            if e["resource"]["resourceType"] in ("Contract", "ChargeItem", "Invoice", "Procedure")
        ]

    assert contracting(5) == contracting(5)
    assert contracting(5) != contracting(6)
    assert PACKAGE_SYSTEM  # the catalogue's identifier system names the packages


async def test_contract_analytics_show_a_living_programme(county: Loaded) -> None:
    """The administrators' analytics over the loaded demo: renewals, transfers and
    terminations in the last year, and fulfilment equal to a count of the records."""
    from smartmed.contracting import analytics

    at = datetime(2026, 11, 1, tzinfo=UTC)
    found = await analytics.compute(county.engine, at=at)
    changes, fulfilment = found["changes"], found["fulfilment"]
    assert changes["renewals"] > 0 and changes["transfers"] > 0 and changes["terminations"] > 0
    assert set(changes["terminationReasons"]) <= set(TERMINATION_REASONS) | {"transfer"}
    in_force = {
        f"Contract/{c['id']}"
        for c in county.of("Contract")
        if c["status"] == "executed" and bounds(c)[0] <= at < bounds(c)[1]
    }
    served = {ref for _, ref, _ in _links(county) if ref in in_force}
    assert fulfilment["active"] == len(in_force) == fulfilment["withPackage"]
    assert fulfilment["served"] == len(served)
    assert 0 < fulfilment["neverServed"] < fulfilment["active"]
