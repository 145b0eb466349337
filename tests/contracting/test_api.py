"""The contracting API end to end: signing methods, review, lifecycle, bad input, and the
access policy following the contract (the team's doctor reads the resident's records
through the FHIR API; after termination or transfer the old team cannot)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from smartmed.access.guard import ACTORS_TTL  # noqa: F401 - documents the 30 s team cache

API = "/api/contracting"
SIG = {"typedName": "王 签名", "agreed": True}
Clients = dict[str, httpx.AsyncClient]


async def contracts(county: Clients, patient: str) -> list[dict[str, Any]]:
    r = await county["system"].get("/fhir/R4/Contract", params={"subject": patient})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


async def can_read(client: httpx.AsyncClient, ref: str) -> bool:
    r = await client.get(f"/fhir/R4/{ref}")
    assert r.status_code in (200, 403), r.text
    return r.status_code == 200


async def test_card_link_application_review_access_and_termination(county: Clients) -> None:
    doc1, p1 = county["doc1"], county["p1"]
    assert not await can_read(doc1, "Observation/o-p1")
    card = await doc1.get(f"{API}/card", params={"team": "CareTeam/team1"})
    assert card.status_code == 200, card.text
    token = card.json()["token"]
    assert card.json()["url"].endswith(f"/contracting/apply?t={token}")
    info = await p1.get(f"{API}/links/{token}")
    assert info.json()["teamName"] == "第一团队" and info.json()["method"] == "qr-card"
    r = await p1.post(f"{API}/applications/by-link", json={"token": token, "signature": SIG})
    assert r.status_code == 201, r.text
    application = r.json()
    assert application["status"] == "offered"
    assert application["signer"][0]["type"]["code"] == "PAT"
    # Pending applications give no access yet.
    assert not await can_read(doc1, "Observation/o-p1")
    queue = await county["nurse1"].get(
        f"{API}/team/applications", params={"team": "CareTeam/team1"}
    )
    assert [c["id"] for c in queue.json()["items"]] == [application["id"]]
    # A doctor of another team may not review it.
    r = await county["doc2"].post(
        f"{API}/contracts/{application['id']}/review", json={"accept": True}
    )
    assert r.status_code == 403
    r = await doc1.post(f"{API}/contracts/{application['id']}/review", json={"accept": True})
    assert r.status_code == 200, r.text
    contract = r.json()
    assert contract["status"] == "executed"
    assert [s["type"]["code"] for s in contract["signer"]] == ["PAT", "HPROV"]
    start, end = contract["applies"]["start"], contract["applies"]["end"]
    assert int(end[:4]) == int(start[:4]) + 1
    assert await can_read(doc1, "Observation/o-p1")
    assert await can_read(county["nurse1"], "Observation/o-p1")
    assert not await can_read(county["doc2"], "Observation/o-p1")
    residents = await doc1.get(f"{API}/team/residents", params={"team": "CareTeam/team1"})
    row = next(i for i in residents.json()["items"] if i["patient"] == "Patient/p1")
    assert row["keyPopulations"] == ["elderly", "hypertension"]  # E11.9 is resolved
    # Termination with a reason ends access at once.
    r = await p1.post(f"{API}/contracts/{contract['id']}/terminate", json={"reason": "bogus"})
    assert r.status_code == 400
    r = await p1.post(
        f"{API}/contracts/{contract['id']}/terminate",
        json={"reason": "moved-away", "text": "搬到城里"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "terminated"
    assert not await can_read(doc1, "Observation/o-p1")
    assert not await can_read(county["nurse1"], "Observation/o-p1")


async def test_invitation_is_single_use_and_for_one_resident(county: Clients) -> None:
    doc1 = county["doc1"]
    r = await doc1.post(
        f"{API}/invitations", json={"patient": "Patient/p2", "team": "CareTeam/team1"}
    )
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    other = await county["p6"].post(
        f"{API}/applications/by-link", json={"token": token, "signature": SIG}
    )
    assert other.status_code == 403
    assert await contracts(county, "Patient/p6") == []
    first = await county["p2"].post(
        f"{API}/applications/by-link", json={"token": token, "signature": SIG}
    )
    assert first.status_code == 201, first.text
    assert first.json()["extension"][1] == {
        "url": "urn:smartmed:extension:contract-signing-method",
        "valueCode": "invitation",
    }
    withdrawn = await county["p2"].post(f"{API}/contracts/{first.json()['id']}/withdraw")
    assert withdrawn.json()["status"] == "revoked"
    again = await county["p2"].post(
        f"{API}/applications/by-link", json={"token": token, "signature": SIG}
    )
    assert again.status_code == 409
    assert "already been used" in again.text
    assert len(await contracts(county, "Patient/p2")) == 1


async def test_bad_links_and_bad_input(county: Clients) -> None:
    p2 = county["p2"]
    card = (await county["doc1"].get(f"{API}/card", params={"team": "CareTeam/team1"})).json()
    body, sig = card["token"].split(".")
    forged = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + sig
    for token in (forged, "nonsense", "a.b", card["token"] + "x"):
        r = await p2.get(f"{API}/links/{token}")
        assert r.status_code == 400, token
        assert r.json()["resourceType"] == "OperationOutcome"
    bad = [
        {"team": "Team/1", "signature": SIG},
        {"team": "CareTeam/team1"},
        {"team": "CareTeam/team1", "signature": {"typedName": "", "agreed": True}},
        {"team": "CareTeam/team1", "signature": SIG, "extra": 1},
    ]
    for payload in bad:
        r = await p2.post(f"{API}/applications", json=payload)
        assert r.status_code == 400, payload
        assert r.json()["resourceType"] == "OperationOutcome"
    r = await p2.post(
        f"{API}/applications",
        json={"team": "CareTeam/team1", "signature": {"typedName": "王", "agreed": False}},
    )
    assert r.status_code == 400 and "agree" in r.text
    r = await p2.post(f"{API}/applications", json={"team": "CareTeam/nope", "signature": SIG})
    assert r.status_code == 404
    r = await county["doc1"].post(
        f"{API}/applications", json={"team": "CareTeam/team1", "signature": SIG}
    )
    assert r.status_code == 403
    r = await p2.get(f"{API}/card", params={"team": "CareTeam/team1"})
    assert r.status_code == 403
    r = await httpx_anonymous(county).get(f"{API}/me")
    assert r.status_code == 401
    assert [c["status"] for c in await contracts(county, "Patient/p2")] == ["revoked"]


def httpx_anonymous(county: Clients) -> httpx.AsyncClient:
    client = county["p2"]
    return httpx.AsyncClient(transport=client._transport, base_url=client.base_url)  # noqa: SLF001


async def test_agent_signing_needs_sign_on_behalf(county: Clients) -> None:
    # p2 only holds view-records from p5: refused, nothing stored.
    r = await county["p2"].post(
        f"{API}/applications",
        json={"team": "CareTeam/team2", "patient": "Patient/p5", "signature": SIG},
    )
    assert r.status_code == 403
    assert await contracts(county, "Patient/p5") == []
    # p3 signs for their parent p4.
    r = await county["p3"].post(
        f"{API}/applications",
        json={"team": "CareTeam/team2", "patient": "Patient/p4", "signature": SIG},
    )
    assert r.status_code == 201, r.text
    signer = r.json()["signer"][0]
    assert signer["type"]["code"] == "AGNT"
    assert signer["signature"][0]["onBehalfOf"] == {"reference": "Patient/p4"}
    me = await county["p3"].get(f"{API}/me")
    assert me.json()["members"] == ["Patient/p4"]
    assert [c["status"] for c in me.json()["people"]["Patient/p4"]["pending"]] == ["offered"]
    r = await county["doc2"].post(
        f"{API}/contracts/{r.json()['id']}/review", json={"accept": False}
    )
    assert r.status_code == 400  # a rejection needs a reason
    pending = (await contracts(county, "Patient/p4"))[0]
    r = await county["doc2"].post(
        f"{API}/contracts/{pending['id']}/review", json={"accept": False, "reason": "不在服务区域"}
    )
    assert r.status_code == 200
    assert r.json()["status"] == "rejected"
    reason = next(e for e in r.json()["extension"] if e["url"].endswith("status-reason"))
    assert reason["valueCodeableConcept"]["text"] == "不在服务区域"


async def test_in_person_transfer_and_history(county: Clients) -> None:
    doc1, doc2 = county["doc1"], county["doc2"]
    r = await county["doc3"].post(
        f"{API}/in-person",
        json={"patient": "Patient/p6", "team": "CareTeam/team1", "signature": SIG},
    )
    assert r.status_code == 403  # not a member of team1
    r = await doc1.post(
        f"{API}/in-person",
        json={"patient": "Patient/p6", "team": "CareTeam/team1", "signature": SIG},
    )
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["status"] == "executed"
    again = await doc1.post(
        f"{API}/in-person",
        json={"patient": "Patient/p6", "team": "CareTeam/team1", "signature": SIG},
    )
    assert again.status_code == 409
    assert await can_read(doc1, "Observation/o-p6")
    r = await doc1.post(f"{API}/contracts/{first['id']}/transfer", json={"team": "CareTeam/team2"})
    assert r.status_code == 201, r.text
    assert r.json()["ended"]["status"] == "terminated"
    new = r.json()["contract"]
    assert new["status"] == "executed"
    assert not await can_read(doc1, "Observation/o-p6")
    assert await can_read(doc2, "Observation/o-p6")
    history = await contracts(county, "Patient/p6")
    assert sorted(c["status"] for c in history) == ["executed", "terminated"]
    replaces = next(e for e in new["extension"] if e["url"].endswith("contract-replaces"))
    assert replaces["extension"][0]["valueReference"]["reference"] == f"Contract/{first['id']}"
    # Renewal is refused while the end is more than 90 days away.
    r = await county["p6"].post(f"{API}/contracts/{new['id']}/renew")
    assert r.status_code == 409 and "90 days" in r.text


@pytest.mark.parametrize("path", ["/contracts/nope/renew", "/contracts/nope/withdraw"])
async def test_unknown_contract(county: Clients, path: str) -> None:
    r = await county["p1"].post(API + path)
    assert r.status_code == 404


async def test_share_link_between_residents(county: Clients) -> None:
    r = await county["p5"].post(f"{API}/share")
    assert r.status_code == 409 and "contract" in r.text  # p5 has no contract to share
    r = await county["doc2"].post(
        f"{API}/in-person",
        json={"patient": "Patient/p4", "team": "CareTeam/team2", "signature": SIG},
    )
    assert r.status_code == 201, r.text
    shared = await county["p4"].post(f"{API}/share")
    assert shared.status_code == 201, shared.text
    token = shared.json()["token"]
    info = (await county["p5"].get(f"{API}/links/{token}")).json()
    assert (info["kind"], info["team"], info["method"]) == ("share", "CareTeam/team2", "share-link")
    r = await county["p5"].post(
        f"{API}/applications/by-link", json={"token": token, "signature": SIG}
    )
    assert r.status_code == 201, r.text
    method = next(e for e in r.json()["extension"] if e["url"].endswith("signing-method"))
    assert method["valueCode"] == "share-link"
    assert r.json()["subject"] == [{"reference": "Patient/p5"}]


async def test_contracts_written_elsewhere_appear_in_the_team_lists(county: Clients) -> None:
    """Like the demo county's: no team tag, found through the team's organisation."""
    body = {
        "resourceType": "Contract",
        "id": "demo-like",
        "status": "executed",
        "subject": [{"reference": "Patient/p3"}],
        "authority": [{"reference": "Organization/town"}],
        "applies": {"start": "2020-01-01", "end": "2099-12-31"},
        "extension": [
            {
                "url": "urn:smartmed:extension:contract-care-team",
                "valueReference": {"reference": "CareTeam/team1"},
            }
        ],
    }
    r = await county["system"].put("/fhir/R4/Contract/demo-like", json=body)
    assert r.status_code == 201, r.text
    residents = await county["doc1"].get(f"{API}/team/residents", params={"team": "CareTeam/team1"})
    rows = [i for i in residents.json()["items"] if i["contract"] == "Contract/demo-like"]
    assert [(i["patient"], i["keyPopulations"]) for i in rows] == [("Patient/p3", ["elderly"])]
    other = await county["doc2"].get(f"{API}/team/residents", params={"team": "CareTeam/team2"})
    assert all(i["contract"] != "Contract/demo-like" for i in other.json()["items"])
