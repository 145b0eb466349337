"""``smartmed demo``: a deterministic synthetic county medical community.

:mod:`smartmed.demo.generator` builds the FHIR R4 transaction Bundles (pure, no I/O);
:mod:`smartmed.demo.load` loads them through the engine. The population statistics and
their sources are in :mod:`smartmed.demo.population`.
"""

from smartmed.demo.generator import generate_county

__all__ = ["generate_county"]
