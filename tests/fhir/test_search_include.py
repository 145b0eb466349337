"""_include/_revinclude (iterate, wildcards, limits) and _has reverse chains, both backends."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from smartmed.fhir.definitions.locate import locate_definitions
from smartmed.fhir.search import include
from smartmed.fhir.search.params import get_registry
from smartmed.fhir.search.query import HasParam, IncludeParam, parse_search

SYSTEM = "urn:smartmed:test:include"


async def entries(client: httpx.AsyncClient, type_: str, params: Any) -> dict[str, set[str]]:
    """Ids by search mode (``Type/id``), checking the request succeeded."""
    response = await client.get(type_, params=params)
    assert response.status_code == 200, response.text
    found: dict[str, set[str]] = {"match": set(), "include": set(), "outcome": set()}
    keys: list[str] = []
    for entry in response.json().get("entry", []):
        resource = entry["resource"]
        key = f"{resource['resourceType']}/{resource.get('id')}"
        found[entry["search"]["mode"]].add(key)
        keys.append(key)
    assert len(keys) == len(set(keys)), f"a resource appears twice: {keys}"
    return found


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post(body["resourceType"], json=body)
    assert response.status_code == 201, response.text
    return f"{body['resourceType']}/{response.json()['id']}"


def ref(key: str) -> dict[str, str]:
    return {"reference": key}


@pytest.fixture(scope="module")
async def world(client: httpx.AsyncClient) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    org = await create(client, {"resourceType": "Organization", "name": f"org-{tag}"})
    doc = await create(client, {"resourceType": "Practitioner", "name": [{"family": f"d{tag}"}]})
    gone_doc = await create(client, {"resourceType": "Practitioner", "active": False})
    p1 = await create(
        client,
        {
            "resourceType": "Patient",
            "gender": "male",
            "generalPractitioner": [ref(doc)],
            "managingOrganization": ref(org),
        },
    )
    p2 = await create(
        client, {"resourceType": "Patient", "gender": "female", "generalPractitioner": [ref(doc)]}
    )
    p3 = await create(
        client, {"resourceType": "Patient", "link": [{"other": ref(p1), "type": "seealso"}]}
    )
    enc = await create(
        client,
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": ref(p1),
        },
    )

    def obs(code: str, subject: str, **more: Any) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": SYSTEM, "code": f"{code}-{tag}"}]},
            "subject": ref(subject),
            **more,
        }

    o1 = await create(client, obs("A", p1, performer=[ref(doc), ref(gone_doc)]))
    o2 = await create(client, obs("B", p1, hasMember=[ref(o1)], encounter=ref(enc)))
    o3 = await create(client, obs("A", p2, performer=[ref(doc)]))
    gone_obs = await create(client, obs("Z", p2))
    prov = await create(
        client,
        {
            "resourceType": "Provenance",
            "target": [ref(o1)],
            "recorded": "2024-01-01T00:00:00Z",
            "agent": [{"who": ref(doc)}],
        },
    )
    for key in (gone_doc, gone_obs):
        assert (await client.delete(key)).status_code in (200, 204)
    return {
        "tag": tag, "org": org, "doc": doc, "gone_doc": gone_doc, "p": [p1, p2, p3],
        "enc": enc, "o": [o1, o2, o3], "gone_obs": gone_obs, "prov": prov,
    }  # fmt: skip


def code(world: dict[str, Any], letter: str) -> str:
    return f"{SYSTEM}|{letter}-{world['tag']}"


def id_of(key: str) -> str:
    return key.split("/")[1]


async def test_include_forward_and_target_type(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    (p1, p2, _), (o1, _, o3), doc = world["p"], world["o"], world["doc"]
    found = await entries(
        client, "Observation", {"code": code(world, "A"), "_include": "Observation:subject"}
    )
    assert found["match"] == {o1, o3} and found["include"] == {p1, p2}
    typed = await entries(
        client,
        "Observation",
        [("code", code(world, "A")), ("_include", "Observation:performer:Practitioner")],
    )
    # doc is referenced by both matches and included once; the deleted practitioner never.
    assert typed["include"] == {doc}
    other = await entries(
        client,
        "Observation",
        [("code", code(world, "A")), ("_include", "Observation:performer:Patient")],
    )
    assert other["include"] == set()


async def test_include_iterate_and_recurse(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    (p1, p2, _), doc, org = world["p"], world["doc"], world["org"]
    base = [("code", code(world, "A")), ("_include", "Observation:subject")]
    plain = await entries(client, "Observation", [*base, ("_include", "Patient:organization")])
    assert plain["include"] == {p1, p2}  # not :iterate, so not applied to included patients
    for modifier in ("iterate", "recurse"):
        deep = await entries(
            client,
            "Observation",
            [*base, (f"_include:{modifier}", "Patient:general-practitioner"),
             (f"_include:{modifier}", "Patient:organization")],
        )  # fmt: skip
        assert deep["include"] == {p1, p2, doc, org}


async def test_include_wildcards(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    (p1, _, _), (o1, o2, _), doc, enc = world["p"], world["o"], world["doc"], world["enc"]
    for value in ("*", "Observation:*"):
        found = await entries(client, "Observation", {"_id": id_of(o2), "_include": value})
        assert found["match"] == {o2} and found["include"] == {p1, o1, enc}
    only = await entries(
        client, "Observation", {"_id": id_of(o1), "_include": "Observation:*:Practitioner"}
    )
    assert only["include"] == {doc}
    # A wildcard for another source type applies to nothing on the first round.
    assert (await entries(client, "Observation", {"_id": id_of(o1), "_include": "Patient:*"}))[
        "include"
    ] == set()


async def test_revinclude_iterate_and_wildcard(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    (p1, _, p3), (o1, o2, _), enc, prov = world["p"], world["o"], world["enc"], world["prov"]
    found = await entries(
        client, "Patient", {"_id": id_of(p1), "_revinclude": "Observation:subject"}
    )
    assert found["match"] == {p1} and found["include"] == {o1, o2}
    deep = await entries(
        client,
        "Patient",
        [("_id", id_of(p1)), ("_revinclude", "Observation:subject"),
         ("_revinclude:iterate", "Provenance:target")],
    )  # fmt: skip
    assert deep["include"] == {o1, o2, prov}
    everyone = await entries(client, "Patient", {"_id": id_of(p1), "_revinclude": "*"})
    # The platform's audit trail of this test's own requests refers to p1 too.
    audit = {ref for ref in everyone["include"] if ref.startswith("AuditEvent/")}
    assert everyone["include"] - audit == {o1, o2, enc, p3}
    typed = await entries(
        client, "Observation", {"_id": id_of(o1), "_revinclude": "Observation:has-member"}
    )
    assert typed["include"] == {o2}


async def test_never_a_match_twice_nor_deleted(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    (_, p2, _), (o1, o2, o3), gone_obs = world["p"], world["o"], world["gone_obs"]
    both = await entries(
        client,
        "Observation",
        {"_id": f"{id_of(o1)},{id_of(o2)}", "_include": "Observation:has-member"},
    )
    assert both["match"] == {o1, o2} and both["include"] == set()
    rev = await entries(client, "Patient", {"_id": id_of(p2), "_revinclude": "Observation:subject"})
    assert rev["include"] == {o3} and gone_obs not in rev["include"]


async def test_includes_follow_the_page(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    (p1, p2, _), (o1, _, o3) = world["p"], world["o"]
    params = {"code": code(world, "A"), "_include": "Observation:subject", "_count": 1}
    first = (await client.get("Observation", params=params)).json()
    modes = [(e["search"]["mode"], e["resource"]["id"]) for e in first["entry"]]
    assert modes == [("match", id_of(o1)), ("include", id_of(p1))]
    assert first.get("total") is None or first["total"] == 2
    next_url = next(x["url"] for x in first["link"] if x["relation"] == "next")
    assert "_include=Observation%3Asubject" in next_url
    second = (await client.get(next_url)).json()
    modes = [(e["search"]["mode"], e["resource"]["id"]) for e in second["entry"]]
    assert modes == [("match", id_of(o3)), ("include", id_of(p2))]


async def test_include_limits_warn(
    client: httpx.AsyncClient, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = [("code", code(world, "A")), ("_include", "Observation:subject")]
    monkeypatch.setattr(include, "MAX_INCLUDED", 1)
    capped = await client.get("Observation", params=base)
    body = capped.json()
    assert [e["search"]["mode"] for e in body["entry"]] == ["match", "match", "include", "outcome"]
    assert "first 1 included" in body["entry"][-1]["resource"]["issue"][0]["diagnostics"]
    monkeypatch.setattr(include, "MAX_INCLUDED", 1000)
    monkeypatch.setattr(include, "MAX_INCLUDE_ROUNDS", 1)
    shallow = await entries(
        client, "Observation", [*base, ("_include:iterate", "Patient:general-practitioner")]
    )
    assert shallow["include"] == set(world["p"][:2]) and len(shallow["outcome"]) == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("_include", "Foo:bar"),
        ("_include", "Observation"),
        ("_include", "Observation:status"),
        ("_include", "Observation:subject:Practitioner"),
        ("_include", "Foo:*"),
        ("_include:deep", "Observation:subject"),
        ("_revinclude", "Observation:nope"),
    ],
)
async def test_bad_includes(client: httpx.AsyncClient, key: str, value: str) -> None:
    response = await client.get("Observation", params={key: value})
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def test_parsed_includes_and_has() -> None:
    items = [
        ("_include", "Observation:subject:Patient"),
        ("_include:recurse", "Patient:*"),
        ("_revinclude:iterate", "*"),
        ("_has:Observation:subject:_has:Provenance:target:agent", "Practitioner/1"),
    ]
    registry = get_registry(locate_definitions(None))
    request = parse_search("Patient", items, registry, strict=True, default_count=20, max_count=100)
    assert request.includes == (
        IncludeParam(False, "Observation", "subject", "Patient", False),
        IncludeParam(False, "Patient", "*", None, True),
        IncludeParam(True, "*", "*", None, True),
    )
    assert request.include == ("Observation:subject:Patient", "Patient:*")
    assert request.revinclude == ("*",)
    (has,) = request.has
    assert (has.source, has.reference) == ("Observation", "subject")
    assert isinstance(has.inner, HasParam) and has.inner.source == "Provenance"
    assert has.inner.inner.code == "agent"  # type: ignore[union-attr]


# --- _has ------------------------------------------------------------------------------------


async def test_has(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    (p1, p2, _), doc = world["p"], world["doc"]
    has_a = {"_has:Observation:subject:code": code(world, "A")}
    assert (await entries(client, "Patient", has_a))["match"] == {p1, p2}
    assert (await entries(client, "Patient", {**has_a, "gender": "male"}))["match"] == {p1}
    both = [("_has:Observation:subject:code", code(world, "A")),
            ("_has:Observation:subject:code", code(world, "B"))]  # fmt: skip
    assert (await entries(client, "Patient", both))["match"] == {p1}
    # The deleted observation (code Z, subject p2) makes no patient match.
    gone = {"_has:Observation:subject:code": code(world, "Z")}
    assert (await entries(client, "Patient", gone))["match"] == set()
    nested = {"_has:Observation:subject:_has:Provenance:target:agent": doc}
    assert (await entries(client, "Patient", nested))["match"] == {p1}
    chained = {"_has:Observation:performer:subject:Patient.gender": "female"}
    assert (await entries(client, "Practitioner", chained))["match"] == {doc}
    with_include = await entries(
        client, "Patient", {**has_a, "gender": "female", "_revinclude": "Observation:subject"}
    )
    assert with_include["match"] == {p2} and with_include["include"] == {world["o"][2]}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("_has:Observation:nope:code", "x"),
        ("_has:Observation:subject:nope", "x"),
        ("_has:Observation:subject", "x"),
        ("_has:Foo:subject:code", "x"),
        ("_has:Observation:encounter:code", "x"),
        ("_has:Observation:subject:_has:Provenance:nope:agent", "x"),
    ],
)
async def test_bad_has(client: httpx.AsyncClient, key: str, value: str) -> None:
    response = await client.get("Patient", params={key: value})
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
