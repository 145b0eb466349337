"""The official SQL-on-FHIR v2 test suite: loading, row comparison and the test report.

The suite lives beside the project (``$SMARTMED_CONFORMANCE_DIR/sql-on-fhir-v2``) and is
never copied into it. Rows are compared as multisets (the suite does not fix row order),
numbers by value. The report follows the suite's published test report format:
``{"<file>.json": {"tests": [{"name": …, "result": {"passed": bool}}]}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.conftest import CONFORMANCE, ROOT

SUITE = CONFORMANCE / "sql-on-fhir-v2" / "tests"
REPORTS = ROOT / "test-artifacts"


@dataclass(frozen=True)
class Case:
    """One test of one suite file."""

    file: str
    title: str
    tags: tuple[str, ...]
    view: dict[str, Any]
    test: dict[str, Any]
    resources: list[dict[str, Any]]

    @property
    def id(self) -> str:
        return f"{self.file[:-5]}/{self.title}"

    @property
    def shareable(self) -> bool:
        return "experimental" not in self.tags


def cases() -> list[Case]:
    """Every test of every suite file (empty when the suite is absent)."""
    out = []
    for path in sorted(SUITE.glob("*.json")) if SUITE.is_dir() else []:
        data = json.loads(path.read_text())
        tags = tuple(data.get("tags", []))
        for test in data["tests"]:
            out.append(
                Case(
                    path.name,
                    test["title"],
                    tuple(test.get("tags", [])) or tags,
                    test["view"],
                    test,
                    data["resources"],
                )
            )
    return out


def _norm(value: Any) -> Any:
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    return value


def canonical(rows: list[dict[str, Any]]) -> list[str]:
    """Rows as a sorted list of canonical JSON texts (multiset comparison)."""
    return sorted(json.dumps({k: _norm(v) for k, v in r.items()}, sort_keys=True) for r in rows)


def check(case: Case, columns: list[str], rows: list[dict[str, Any]]) -> str | None:
    """Why the rows do not meet the test's expectation, or None when they do."""
    test = case.test
    if test.get("expectError"):
        return f"expected an error, got {len(rows)} rows"
    if "expectCount" in test:
        return None if len(rows) == test["expectCount"] else f"{len(rows)} rows"
    if "expectColumns" in test and columns != test["expectColumns"]:
        return f"columns {columns} != {test['expectColumns']}"
    got, want = canonical(rows), canonical(test["expect"])
    return None if got == want else f"rows differ:\n got  {got}\n want {want}"


class Report:
    """Collects results and writes test-artifacts/sql-on-fhir-report-<dialect>.json."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.results: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def add(self, case: Case, error: str | None) -> None:
        result: dict[str, Any] = {"passed": error is None}
        if error is not None:
            result["error"] = error[:500]
        tests = self.results.setdefault(case.file, {"tests": []})["tests"]
        tests.append({"name": case.title, "result": result})

    def write(self) -> Path | None:
        if not self.results:
            return None
        REPORTS.mkdir(exist_ok=True)
        path = REPORTS / f"sql-on-fhir-report-{self.dialect}.json"
        path.write_text(json.dumps(self.results, indent=2, ensure_ascii=False) + "\n")
        return path

    def counts(self) -> tuple[int, int]:
        results = [t["result"]["passed"] for f in self.results.values() for t in f["tests"]]
        return sum(results), len(results)
