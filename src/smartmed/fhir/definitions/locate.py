"""Find the official FHIR R4 4.0.1 definitions package on disk.

The definitions come from HL7's npm package ``hl7.fhir.r4.examples`` 4.0.1 (every
resource of the R4 specification, definitions and examples, one JSON file each),
installed by ``npm ci`` from the project's ``package.json``; see ``package.py``.
"""

from __future__ import annotations

from pathlib import Path

from smartmed.fhir.definitions.package import PackageError, package_manifest

_SUBDIR = Path("node_modules/hl7.fhir.r4.examples")
# A file every R4 package with the base definitions has.
_MARKER = "StructureDefinition-Resource.json"


class DefinitionsNotFound(RuntimeError):
    """The definitions package is not installed."""


def _problem(folder: Path) -> str | None:
    """Why ``folder`` is not an R4 4.0.1 definitions package, or None if it is one."""
    if not (folder / _MARKER).is_file():
        return f"no FHIR R4 package ({_MARKER}) in {folder}"
    try:
        package_manifest(folder)
    except PackageError as exc:
        return str(exc)
    return None


def locate_definitions(configured: Path | None = None) -> Path:
    """The definitions package folder: the configured one, else ``node_modules`` above cwd
    or above the source."""
    if configured is not None:
        problem = _problem(configured)
        if problem is not None:
            raise DefinitionsNotFound(problem)
        return configured
    starts = [Path.cwd(), Path(__file__).resolve()]
    for start in starts:
        for folder in [start, *start.parents]:
            candidate = folder / _SUBDIR
            if candidate.is_dir() and _problem(candidate) is None:
                return candidate
    raise DefinitionsNotFound(
        "FHIR definitions not found: run `npm ci` in the project folder "
        "or set SMARTMED_DEFINITIONS_DIR"
    )
