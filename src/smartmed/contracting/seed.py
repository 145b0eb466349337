"""``python -m smartmed.contracting.seed``: publish the default service-package catalogue
(``data/catalogue.toml``) into the database named by the settings (``SMARTMED_*``),
migrating it first if needed; prints the packages' references. Idempotent.

The portal and API also seed an empty database the first time someone looks at the
packages (``packages.seed_if_empty``); the demo calls ``packages.ensure_catalogue``.
"""

from __future__ import annotations

import asyncio

from smartmed.config import get_settings
from smartmed.contracting.packages import ensure_catalogue
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.storage.migrate import is_current, migrate


async def seed() -> list[str]:
    engine = FhirEngine.build(get_settings())
    try:
        if not await is_current(engine.db):
            await migrate(engine.db)
        async with engine.db.write() as conn:
            return await ensure_catalogue(engine, conn)
    finally:
        await engine.db.dispose()


def main() -> None:
    for ref in asyncio.run(seed()):
        print(ref)


if __name__ == "__main__":
    main()
