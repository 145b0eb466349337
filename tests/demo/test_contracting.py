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


async def test_demo_contracts_look_like_contracts_signed_through_the_module(
    county: Loaded,
) -> None:
    """Every demo contract has the shape ``contracting`` writes (compared with one the
    module signs in the same database) and reads as one: its team, signing method,
    signers with the resident's electronic signature and the accepting member, the term,
    and the member responsible for the resident."""
    import base64

    import orjson

    from smartmed.contracting import service
    from smartmed.contracting.contracts import (
        METHOD_EXT,
        METHODS,
        STATEMENT,
        TYPE_SYSTEM,
        Signature,
        extension,
        team_of,
    )
    from smartmed.contracting.teamwork import ASSIGNMENT_EXT, assignee_of

    engine = county.engine
    contracts = county.of("Contract")
    teams = {f"CareTeam/{t['id']}": t for t in await _all(county, "CareTeam")}
    members: dict[str, set[str]] = {}
    async with engine.db.read() as conn:
        for ref, body in teams.items():
            members[ref] = await service.team_members(engine, conn, body)
    # A resident the demo did not sign, signed in person through the module.
    signed = {c["subject"][0]["reference"] for c in contracts}
    patients = await _all(county, "Patient")
    free = next(f"Patient/{p['id']}" for p in patients if f"Patient/{p['id']}" not in signed)
    team_ref = sorted(teams)[0]
    doctor = sorted(m for m in members[team_ref] if m.startswith("Practitioner/"))[0]
    async with engine.db.write() as conn:
        real = await service.do_sign_in_person(
            engine, conn, patient=free, team=team_ref, doctor=doctor, signature=Signature("x", True)
        )
    shape = set(real) - {"id", "meta"}
    known_urls = {e["url"] for e in real["extension"]} | {
        "urn:smartmed:extension:contract-service-package",
        "urn:smartmed:extension:contract-replaces",
        "urn:smartmed:extension:contract-status-reason",
        ASSIGNMENT_EXT,
    }
    methods: Counter[str] = Counter()
    for c in contracts:
        assert set(c) - {"id", "meta"} == shape, (c["id"], set(c) ^ set(real))
        assert {e["url"] for e in c["extension"]} <= known_urls
        team = team_of(c)
        assert team in teams, c["id"]
        assert c["type"]["coding"][0] == real["type"]["coding"][0]
        assert c["type"]["coding"][0]["system"] == TYPE_SYSTEM
        method = str((extension(c, METHOD_EXT) or {}).get("valueCode"))
        assert method in METHODS
        methods[method] += 1
        patient = c["subject"][0]["reference"]
        resident, accepted = c["signer"]
        assert (resident["type"]["code"], resident["party"]["reference"]) == ("PAT", patient)
        data = orjson.loads(base64.b64decode(resident["signature"][0]["data"]))
        assert data["agreed"] is True and data["statement"] == STATEMENT and data["typedName"]
        assert resident["signature"][0]["sigFormat"] == "application/json"
        assert accepted["type"]["code"] == "HPROV"
        assert accepted["party"]["reference"] == c["author"]["reference"]
        assert c["author"]["reference"] in members[team]
        assert c["issued"].endswith("Z") and c["issued"] == resident["signature"][0]["when"]
        assert c["authority"] == [
            {"reference": o["reference"]} for o in teams[team]["managingOrganization"]
        ]
        low, high = bounds(c)
        if c["status"] == "executed":
            assert 364 <= (high - low).days <= 366, c["id"]
        assignee = assignee_of(c)
        assert assignee == c["author"]["reference"], c["id"]
    assert methods["qr-card"] > methods["portal"] > 0


async def _all(county: Loaded, type_: str) -> list[dict[str, Any]]:
    async with county.engine.db.read() as conn:
        return [r async for r in search_every(county.engine, conn, type_, [("_sort", "_id")])]


async def test_demo_doctors_workbench_lists_their_demo_residents(county: Loaded) -> None:
    """A demo family doctor's workbench (scope "mine") lists the residents whose contract
    in force they signed, found by the same reader as contracts signed in the portal."""
    from smartmed.contracting import service, teamwork
    from smartmed.contracting.contracts import is_in_force, team_of

    engine = county.engine
    at = datetime(2026, 11, 1, tzinfo=UTC)
    expected: dict[tuple[str, str], set[str]] = {}
    for c in county.of("Contract"):
        if is_in_force(c, at):
            key = (str(team_of(c)), str(teamwork.assignee_of(c)))
            expected.setdefault(key, set()).add(c["subject"][0]["reference"])
    assert expected
    checked = 0
    for (team, doctor), residents in sorted(expected.items())[:4]:
        async with engine.db.read() as conn:
            found = await service.contracted_with_team(engine, conn, team=team, at=at)
            bench = await teamwork.workbench(
                engine,
                conn,
                team=team,
                practitioner=doctor,
                filters=teamwork.Filters(scope="mine", size=teamwork.MAX_PAGE_SIZE),
                at=at,
            )
        assert {c["subject"][0]["reference"] for c in found} >= residents
        assert {r["patient"] for r in bench.rows} == residents, (team, doctor)
        assert bench.total == len(residents)
        checked += 1
    assert checked > 0


def test_loaded_demo_contracts_carry_the_team_and_assignee_tags(county: Loaded) -> None:
    """The loader tags every demo Contract as contracting does when it signs: the team's
    CareTeam id and the responsible member, the same as its extension and assignment."""
    from smartmed.contracting.contracts import TEAM_TAG, team_of
    from smartmed.contracting.teamwork import ASSIGNEE_TAG, assignee_of

    contracts = county.of("Contract")
    assert contracts
    for c in contracts:
        tags = {t["system"]: t["code"] for t in c.get("meta", {}).get("tag", [])}
        assert f"CareTeam/{tags[TEAM_TAG]}" == team_of(c), c["id"]
        if assignee_of(c):
            assert tags[ASSIGNEE_TAG] == assignee_of(c)


def test_tag_contracts_adds_the_tags_the_module_writes() -> None:
    """Given the loader's resolved references, demo Contracts get the team and assignee
    tags exactly as contracting writes them (``new_contract``, ``teamwork.assign``)."""
    from smartmed.contracting.contracts import TEAM_TAG, team_of
    from smartmed.contracting.teamwork import ASSIGNEE_TAG, assignee_of
    from smartmed.demo.contracting import tag_contracts

    bundles = list(generate_county(residents=60, seed=SEED))
    targets: dict[str, str] = {}
    for bundle in bundles[1:]:
        for item in bundle["entry"]:
            resource = item["resource"]
            if resource["resourceType"] == "Contract":
                for ref in (team_of(resource), assignee_of(resource)):
                    assert ref is not None and "?identifier=" in ref
                    kind = ref.split("?", 1)[0]
                    targets.setdefault(ref, f"{kind}/{kind.lower()}-{len(targets)}")
    tagged = 0
    for bundle in bundles[1:]:
        tagged += tag_contracts(bundle, targets)
        for item in bundle["entry"]:
            resource = item["resource"]
            if resource["resourceType"] != "Contract":
                continue
            tags = {t["system"]: t["code"] for t in resource["meta"]["tag"]}
            team = targets[str(team_of(resource))]
            assert tags[TEAM_TAG] == team.split("/", 1)[1]
            assert tags[ASSIGNEE_TAG] == targets[str(assignee_of(resource))]
    assert tagged > 0
