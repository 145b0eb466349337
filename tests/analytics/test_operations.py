"""$viewdefinition-run and $viewdefinition-export through the FHIR API (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pytest

from smartmed.analytics import store

VIEW = {
    "resourceType": "ViewDefinition",
    "name": "pt_names",
    "resource": "Patient",
    "select": [
        {"column": [{"name": "id", "path": "getResourceKey()"}]},
        {"forEach": "name", "column": [{"name": "family", "path": "family"}]},
    ],
}
PATIENTS = [
    {"resourceType": "Patient", "id": "a", "name": [{"family": "Wang"}, {"family": "Li"}]},
    {"resourceType": "Patient", "id": "b", "name": [{"family": "Zhao"}]},
]


def params(*items: tuple[str, Any]) -> dict[str, Any]:
    out = []
    for name, value in items:
        if isinstance(value, dict):
            out.append({"name": name, "resource": value})
        elif isinstance(value, bool):
            out.append({"name": name, "valueBoolean": value})
        elif isinstance(value, int):
            out.append({"name": name, "valueInteger": value})
        else:
            out.append({"name": name, "valueCode" if name == "_format" else "valueString": value})
    return {"resourceType": "Parameters", "parameter": out}


async def test_run_inline_resources_as_json(client: httpx.AsyncClient) -> None:
    body = params(("viewResource", VIEW), *[("resource", p) for p in PATIENTS])
    response = await client.post("$viewdefinition-run", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    rows = sorted(response.json(), key=lambda r: r["family"])
    assert rows == [
        {"id": "a", "family": "Li"},
        {"id": "a", "family": "Wang"},
        {"id": "b", "family": "Zhao"},
    ]


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "parquet"])
async def test_run_formats(client: httpx.AsyncClient, fmt: str, tmp_path: Path) -> None:
    body = params(("viewResource", VIEW), ("_format", fmt), *[("resource", p) for p in PATIENTS])
    response = await client.post("$viewdefinition-run", json=body)
    assert response.status_code == 200, response.text
    if fmt == "csv":
        lines = response.text.strip().splitlines()
        assert lines[0] == "id,family" and sorted(lines[1:]) == ["a,Li", "a,Wang", "b,Zhao"]
    elif fmt == "ndjson":
        rows = [orjson.loads(line) for line in response.content.splitlines()]
        assert len(rows) == 3 and {"id": "b", "family": "Zhao"} in rows
    else:
        path = tmp_path / "rows.parquet"
        path.write_bytes(response.content)
        got = duckdb.sql(f"SELECT id, family FROM '{path}' ORDER BY family").fetchall()
        assert got == [("a", "Li"), ("a", "Wang"), ("b", "Zhao")]


async def test_bad_view_is_an_outcome_naming_the_element(client: httpx.AsyncClient) -> None:
    bad = {
        "resourceType": "ViewDefinition",
        "resource": "Patient",
        "select": [{"column": [{"name": "x", "path": "name.family.shout()"}]}],
    }
    response = await client.post("$viewdefinition-run", json=params(("viewResource", bad)))
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["ViewDefinition.select[0].column[0].path"]
    assert "shout()" in issue["diagnostics"]
    typo = {**bad, "select": [{"column": [{"name": "x", "path": "name.famly"}]}]}
    response = await client.post("$viewdefinition-run", json=params(("viewResource", typo)))
    assert response.status_code == 400
    assert "famly" in response.json()["issue"][0]["diagnostics"]


async def test_stored_view_runs_over_the_store(client: httpx.AsyncClient) -> None:
    marker = "Parity-" + str(id(client))
    created = await client.post(
        "Patient", json={"resourceType": "Patient", "name": [{"family": marker}]}
    )
    assert created.status_code == 201
    view = {**VIEW, "where": [{"path": f"name.family = '{marker}'"}]}
    saved = await client.post("Basic", json=store.wrap(view))
    assert saved.status_code == 201, saved.text
    basic_id = saved.json()["id"]
    response = await client.post(f"Basic/{basic_id}/$viewdefinition-run", json=params())
    assert response.status_code == 200, response.text
    assert response.json() == [{"id": created.json()["id"], "family": marker}]
    by_ref = params(("viewReference", f"Basic/{basic_id}"), ("_format", "csv"), ("header", False))
    response = await client.post("$viewdefinition-run", json=by_ref)
    assert response.text.strip() == f"{created.json()['id']},{marker}"


async def test_export_writes_parquet(
    client: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMARTMED_ANALYTICS_EXPORT_DIR", str(tmp_path))
    body = params(("viewResource", VIEW), ("name", "nightly"))
    response = await client.post("$viewdefinition-export", json=body)
    assert response.status_code == 200, response.text
    parts = {p["name"]: p for p in response.json()["parameter"]}
    assert parts["status"]["valueCode"] == "completed"
    output = {
        p["name"]: next(iter(v for k, v in p.items() if k.startswith("value")))
        for p in parts["output"]["part"]
    }
    path = tmp_path / "nightly" / "pt_names.parquet"
    assert path.is_file() and output["location"] == path.resolve().as_uri()
    assert duckdb.sql(f"SELECT count(*) FROM '{path}'").fetchall() == [(output["rows"],)]
