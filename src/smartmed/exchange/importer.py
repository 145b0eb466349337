"""``smartmed import``: load external FHIR Bundles (e.g. Synthea output) through the engine.

Each ``transaction`` Bundle is one database transaction, so a bad bundle is rejected
whole and the others still load; a ``batch`` Bundle loads entry by entry. A file may
hold one Bundle (``.json``) or one Bundle per line (``.ndjson``). Every resource goes
through the same validation, indexing and history as an API write: bundles that only
create are prepared on every core and written in bulk (``fhir/storage/pipeline.py``),
the others go through the ordinary transaction, in the order given.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from smartmed.config import Settings
from smartmed.console import progress
from smartmed.fhir import jsonio
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import FhirError
from smartmed.fhir.storage.migrate import is_current, migrate
from smartmed.fhir.storage.pipeline import Outcome, load_transactions

_MAX_ISSUES_SHOWN = 3


@dataclass(slots=True)
class BundleReport:
    """What happened to one Bundle: where it came from, and its counts or its error."""

    source: str
    created: Counter[str] = field(default_factory=Counter)
    failed_entries: int = 0
    error: str | None = None


@dataclass(slots=True)
class ImportReport:
    """Every bundle's report and the time taken."""

    bundles: list[BundleReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[BundleReport]:
        """Bundles rejected whole (or, for a batch, with failed entries)."""
        return [b for b in self.bundles if b.error or b.failed_entries]

    def summary(self) -> str:
        """A human summary: totals by type, rate, and one line per failed bundle."""
        created: Counter[str] = Counter()
        for report in self.bundles:
            created.update(report.created)
        total = sum(created.values())
        rate = total / self.seconds if self.seconds > 0 else 0.0
        ok = len(self.bundles) - len(self.failed)
        lines = [
            f"Imported {ok} of {len(self.bundles)} bundles: {total:,} resources "
            f"in {self.seconds:.1f} s ({rate:,.0f} resources/s)."
        ]
        width = max((len(kind) for kind in created), default=0)
        for kind, count in sorted(created.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  {kind:<{width}}  {count:>9,}")
        for report in self.failed:
            why = report.error or f"{report.failed_entries} entries failed"
            lines.append(f"REJECTED {report.source}: {why}")
        return "\n".join(lines)


def _read_bundles(path: Path) -> Iterator[tuple[str, Any]]:
    """(source label, parsed JSON or the exception that stopped parsing) per bundle."""
    raw = path.read_bytes()
    if path.suffix == ".ndjson":
        for number, line in enumerate(raw.splitlines(), start=1):
            if line.strip():
                yield f"{path.name}:{number}", _parse(line)
    else:
        yield path.name, _parse(raw)


def _parse(raw: bytes) -> Any:
    try:
        return jsonio.loads(raw)
    except orjson.JSONDecodeError as exc:
        return exc


def _describe(exc: FhirError) -> str:
    parts = []
    for issue in exc.issues[:_MAX_ISSUES_SHOWN]:
        where = f" at {issue.expression}" if issue.expression else ""
        parts.append(f"{issue.diagnostics}{where}")
    more = len(exc.issues) - _MAX_ISSUES_SHOWN
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _refusal(document: Any) -> str | None:
    """Why a parsed document cannot load (None: a transaction or batch Bundle)."""
    if isinstance(document, Exception):
        return f"not valid JSON: {document}"
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        return "not a FHIR Bundle"
    kind = document.get("type")
    if kind not in ("transaction", "batch"):
        return f"Bundle.type is {kind!r}; only transaction and batch bundles load"
    return None


def _record(report: BundleReport, document: dict[str, Any], outcome: Outcome[Any]) -> None:
    """Counts (or the error) of one loaded bundle."""
    if outcome.error is not None:
        report.error = _describe(outcome.error)
        return
    for request, (status, _) in zip(document.get("entry", []), outcome.entries, strict=False):
        if status == 201:
            resource = request.get("resource") or {}
            report.created[str(resource.get("resourceType", "?"))] += 1
        elif status not in (200, 204):
            report.failed_entries += 1


def _loadable(
    paths: list[Path], report: ImportReport, advance: Callable[[int], None]
) -> Iterator[tuple[BundleReport, dict[str, Any]]]:
    """(its report, the Bundle) per loadable bundle, in order; the others reported."""
    for path in paths:
        try:
            items = list(_read_bundles(path))
        except OSError as exc:
            report.bundles.append(BundleReport(str(path), error=f"cannot read: {exc}"))
            advance(1)
            continue
        for source, document in items:
            bundle_report = BundleReport(source, error=_refusal(document))
            report.bundles.append(bundle_report)
            if bundle_report.error is None:
                yield bundle_report, document
        advance(1)


async def import_files(settings: Settings, paths: list[Path]) -> ImportReport:
    """Import every Bundle in ``paths``; one report per bundle, failures included."""
    engine = FhirEngine.build(settings)
    report = ImportReport()
    started = time.perf_counter()
    try:
        if not await is_current(engine.db):
            await migrate(engine.db)
        with progress(len(paths), "files") as advance:
            bundles = _loadable(paths, report, advance)
            async for outcome in load_transactions(engine, bundles, lambda item: item[1]):
                bundle_report, document = outcome.item
                _record(bundle_report, document, outcome)
        await engine.db.analyze()  # the planner's statistics for the new rows
    finally:
        await engine.db.dispose()
    report.seconds = time.perf_counter() - started
    return report
