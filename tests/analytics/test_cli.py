"""``smartmed views``: list, sql, run and export over Bulk Data NDJSON files."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson
from typer.testing import CliRunner

from smartmed.cli import app
from smartmed.demo.generator import generate_county

runner = CliRunner()


def _bulk(folder: Path) -> None:
    by_type: dict[str, list[bytes]] = {}
    for bundle in generate_county(residents=40, seed=5):
        for entry in bundle["entry"]:
            resource = entry["resource"]
            resource.setdefault("id", entry["fullUrl"].rsplit(":", 1)[-1])
            by_type.setdefault(resource["resourceType"], []).append(orjson.dumps(resource))
    for type_, lines in by_type.items():
        (folder / f"{type_}.ndjson").write_bytes(b"\n".join(lines) + b"\n")


def test_views_run_and_export(tmp_path: Path) -> None:
    _bulk(tmp_path)
    listed = runner.invoke(app, ["views", "list"])
    assert listed.exit_code == 0 and "patient_demographics" in listed.output
    ran = runner.invoke(app, ["views", "run", "patient_demographics", "--ndjson", str(tmp_path)])
    assert ran.exit_code == 0, ran.output
    lines = ran.stdout.strip().splitlines()
    assert lines[0].startswith("id,gender,birth_date,age_band") and len(lines) == 41
    out = tmp_path / "out"
    exported = runner.invoke(
        app,
        [
            "views",
            "export",
            "observations",
            "conditions",
            "--ndjson",
            str(tmp_path),
            "--to",
            str(out),
        ],
    )
    assert exported.exit_code == 0, exported.output
    rows = duckdb.sql(f"SELECT count(*) FROM '{out / 'observations.parquet'}'").fetchall()
    assert rows[0][0] > 40
    sql = runner.invoke(app, ["views", "sql", "conditions", "--dialect", "postgresql"])
    assert sql.exit_code == 0 and "jsonb_array_elements" in sql.output


def test_bad_view_names_the_element(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    view = {
        "resource": "Patient",
        "select": [{"forEach": "name.given.frob()", "column": [{"name": "g", "path": "$this"}]}],
    }
    bad.write_bytes(orjson.dumps(view))
    result = runner.invoke(app, ["views", "sql", str(bad)])
    assert result.exit_code == 2
    assert "ViewDefinition.select[0].forEach" in result.output
