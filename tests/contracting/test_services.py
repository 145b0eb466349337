"""Service counting (SQLite and PostgreSQL): used / remaining per item derived from the
Encounters and Procedures that carry the contract-service extension — updates never
double count, deletions stop counting, over-quota is flagged, other contracts and
not-delivered records are left out; a hypothesis property against a brute-force count
over random create / update / delete sequences; many concurrent writers."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartmed.contracting import services
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError
from tests.contracting.test_packages import contract_for, county
from tests.payments.conftest import LOOP, engine, pay_app

__all__ = ["engine", "pay_app"]
ITEMS = ("bp-followup", "home-visit", "hba1c", "consultation")


def synced(test: Callable[..., Any]) -> Callable[..., None]:
    """The property is synchronous and drives the session's loop (as tests/payments)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        LOOP[-1].run_until_complete(test(*args, **kwargs))

    return run


async def with_package(engine: FhirEngine) -> tuple[dict[str, str], str, str]:
    """A contract of p1 with the hypertension package named (as the paid handler does),
    and a second contract (p2's)."""
    from smartmed.contracting.lifecycle import do_set_package

    c = await county(engine)
    mine = await contract_for(engine, c, c["p1"])
    other = await contract_for(engine, c, c["p2"])
    async with engine.db.write() as conn:
        await do_set_package(engine, conn, contract_id=mine, package=c["hypertension"])
    return c, mine, other


def record(
    c: dict[str, str],
    contract: str,
    item: str,
    *,
    kind: str = "Encounter",
    when: datetime | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    body = services.service_resource(
        kind=kind,
        contract={"id": contract, "subject": [{"reference": c["p1"]}]},
        item=item,
        performer=c["doctor"],
        when=when or datetime.now(UTC),
    )
    if status:
        body["status"] = status
    return body


async def write(engine: FhirEngine, body: dict[str, Any]) -> dict[str, Any]:
    async with engine.db.write() as conn:
        repo = engine.repository(conn)
        if body.get("id"):
            stored = (await repo.update(body["resourceType"], body["id"], body)).stored
        else:
            stored = await repo.create(body)
    out: dict[str, Any] = orjson.loads(stored.content or "{}")
    return out


async def delete(engine: FhirEngine, ref: str) -> None:
    async with engine.db.write() as conn:
        await engine.repository(conn).delete(*ref.split("/", 1))


async def used(engine: FhirEngine, contract: str) -> dict[str, tuple[int, int]]:
    async with engine.db.read() as conn:
        found = await services.usage(engine, conn, contract_id=contract)
    return {i["code"]: (i["used"], i["remaining"]) for i in found.items}


async def test_counts_follow_creates_updates_and_deletes(engine: FhirEngine) -> None:
    c, mine, other = await with_package(engine)
    assert (await used(engine, mine))["bp-followup"] == (0, 4)
    first = await write(engine, record(c, mine, "bp-followup"))
    await write(engine, record(c, mine, "hba1c", kind="Procedure"))
    assert (await used(engine, mine))["bp-followup"] == (1, 3)
    # Re-saved (updated) three times: still one service.
    for _ in range(3):
        first["period"]["end"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        first = await write(engine, first)
    assert (await used(engine, mine))["bp-followup"] == (1, 3)
    # Another contract's record and a cancelled one are not counted.
    await write(engine, record(c, other, "bp-followup"))
    await write(engine, record(c, mine, "bp-followup", status="cancelled"))
    # Re-saved as another item: moves from one item to the other.
    first["extension"][0]["extension"][1]["valueCoding"]["code"] = "home-visit"
    first = await write(engine, first)
    counts = await used(engine, mine)
    assert counts["bp-followup"] == (0, 4) and counts["home-visit"] == (1, 1)
    await delete(engine, f"Encounter/{first['id']}")
    assert (await used(engine, mine))["home-visit"] == (0, 2)


async def test_over_quota_and_outside_term_are_flagged_not_dropped(engine: FhirEngine) -> None:
    c, mine, _other = await with_package(engine)
    for _ in range(3):
        await write(engine, record(c, mine, "home-visit"))
    await write(engine, record(c, mine, "home-visit", when=datetime.now(UTC) - timedelta(days=3)))
    await write(engine, record(c, mine, "tcm-care"))  # not in this package
    async with engine.db.read() as conn:
        found = await services.usage(engine, conn, contract_id=mine)
    home = next(i for i in found.items if i["code"] == "home-visit")
    assert (home["quantity"], home["used"], home["remaining"], home["over"]) == (2, 3, 0, 1)
    flags = [s.flag for s in found.services if s.item == "home-visit"]
    assert flags.count("over-quota") == 1 and flags.count("outside-term") == 1
    assert [s.flag for s in found.services if s.item == "tcm-care"] == ["not-in-package"]
    out = found.json()
    assert len(out["services"]) == 5
    assert all(s["performers"][0]["reference"] == c["doctor"] for s in out["services"])
    assert out["services"][0]["performers"][0]["name"]


async def test_record_through_the_service(engine: FhirEngine) -> None:
    c, mine, _ = await with_package(engine)
    async with engine.db.write() as conn:
        await services.do_record(
            engine, conn, contract_id=mine, item="hba1c", performer=c["doctor"], kind="Procedure"
        )
        for bad, reason in (
            ({"item": "x-ray"}, "bad-item"),
            ({"kind": "Observation"}, "bad-kind"),
            ({"when": datetime.now(UTC) + timedelta(days=2)}, "bad-date"),
        ):
            args: dict[str, Any] = {"item": "hba1c", "kind": "Procedure", **bad}
            with pytest.raises(FhirError) as caught:
                await services.do_record(
                    engine, conn, contract_id=mine, performer=c["doctor"], **args
                )
            assert getattr(caught.value, "reason", None) == reason
    assert (await used(engine, mine))["hba1c"] == (1, 0)  # not in the hypertension package


OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("create"),
            st.sampled_from(ITEMS),
            st.integers(-3, 5),  # days from today (before the contract's start: outside)
            st.sampled_from(["finished", "finished", "finished", "cancelled"]),
            st.booleans(),  # the other contract
            st.sampled_from(["Encounter", "Procedure"]),
        ),
        st.tuples(st.just("update"), st.integers(0, 30), st.sampled_from(ITEMS), st.booleans()),
        st.tuples(st.just("delete"), st.integers(0, 30)),
    ),
    max_size=12,
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
@synced
async def test_counts_equal_a_brute_force_count(pay_app: FastAPI, ops: list[Any]) -> None:
    engine: FhirEngine = pay_app.state.fhir
    c, mine, other = await with_package(engine)
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    live: dict[str, dict[str, Any]] = {}  # ref -> current body (the model)
    order: list[str] = []
    for op in ops:
        if op[0] == "create":
            _, item, days, status, on_other, kind = op
            body = record(
                c,
                other if on_other else mine,
                item,
                kind=kind,
                when=today + timedelta(days=days),
                status=status if kind == "Encounter" else None,
            )
            if kind == "Procedure" and status == "cancelled":
                body["status"] = "not-done"
            stored = await write(engine, body)
            ref = f"{kind}/{stored['id']}"
            live[ref] = stored
            order.append(ref)
        elif order:
            ref = order[op[1] % len(order)]
            if ref not in live:
                continue
            if op[0] == "update":
                body = live[ref]
                body["extension"][0]["extension"][1]["valueCoding"]["code"] = op[2]
                if op[3]:
                    body["status"] = "finished" if ref.startswith("Encounter") else "completed"
                live[ref] = await write(engine, body)
            else:
                await delete(engine, ref)
                del live[ref]
    # Brute force: every live record of this contract, delivered, dated in its term.
    start = today.replace(hour=0)
    expected: dict[str, int] = {}
    for body in live.values():
        link = services.service_link(body)
        assert link is not None
        when = services.service_date(body)
        assert when is not None
        if link[0] != f"Contract/{mine}" or body["status"] in ("cancelled", "not-done"):
            continue
        if when < start:
            continue
        expected[link[1]] = expected.get(link[1], 0) + 1
    quantities = {"bp-followup": 4, "home-visit": 2, "medication-review": 2, "consultation": 12}
    got = await used(engine, mine)
    for item in set(expected) | set(quantities):
        n = expected.get(item, 0)
        assert got[item] == (n, max(quantities.get(item, 0) - n, 0)), (item, got, expected)
    assert set(got) == set(expected) | set(quantities)


async def test_concurrent_recording_counts_every_service_once(engine: FhirEngine) -> None:
    """40 services recorded at once (own transactions), 20 of them re-saved at once while
    others are written: the counts are exactly 40 (PostgreSQL runs them truly in parallel)."""
    c, mine, _ = await with_package(engine)
    made = await asyncio.gather(*(write(engine, record(c, mine, ITEMS[i % 2])) for i in range(40)))
    resaved = [{**m, "status": "finished"} for m in made[:20]]
    await asyncio.gather(
        *(write(engine, m) for m in resaved),
        *(write(engine, record(c, mine, "consultation")) for _ in range(10)),
    )
    counts = await used(engine, mine)
    assert counts["bp-followup"] == (20, 0)
    assert counts["home-visit"] == (20, 0)
    assert counts["consultation"] == (10, 2)
    async with engine.db.read() as conn:
        found = await services.usage(engine, conn, contract_id=mine)
    assert sum(1 for s in found.services if s.flag == "over-quota") == 16 + 18
