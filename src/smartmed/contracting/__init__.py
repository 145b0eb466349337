"""Family-doctor contracting (issue 8): applications, team review, contracts and their
lifecycle, over FHIR ``Contract`` resources (docs/contracting.md).

Files: ``service.py`` (the rules, keyword-only functions on the caller's connection),
``flows.py`` (signing by card QR code, invitation and share link), ``links.py`` (signed
link tokens), ``populations.py`` (key populations), ``tasks.py`` (renewal reminders, a
daily durable job), ``api.py`` (``/api/contracting``), ``pages.py`` (portal pages).

Public API for other modules::

    from smartmed.contracting import service as contracting

    await contracting.current_contract(engine, conn, patient="Patient/9", at=now)

    from smartmed.contracting import packages, services

    refs = await packages.ensure_catalogue(engine, conn)  # the default service packages
    usage = await services.usage(engine, conn, contract_id="…")  # used / remaining per item

Service packages (``packages.py``: PlanDefinition priced by a ChargeItemDefinition) are
bought through the payments module; this module's own ``@on_payment("paid")`` handler
names a paid package on the contract (``lifecycle.do_set_package``) only once the payment
is confirmed. Delivered services (``services.py``) are Encounters and Procedures with the
``urn:smartmed:extension:contract-service`` extension; counts derive from them.

Other modules see contracts as FHIR resources (and their events): an executed Contract
names the team in ``urn:smartmed:extension:contract-care-team`` and the chosen service
package in ``urn:smartmed:extension:contract-service-package``.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI


def install(app: FastAPI) -> None:
    """Mount the API and the portal pages; registers the renewal-reminder job."""
    from smartmed.contracting import (  # noqa: F401 - tasks and reports register jobs
        api,
        pages,
        reports,
        tasks,
        work_api,
        work_pages,
    )
    from smartmed.portal import csrf_protect

    app.include_router(api.build_router())
    app.include_router(work_api.build_router())
    app.include_router(pages.build_router(), dependencies=[Depends(csrf_protect)])
    app.include_router(work_pages.build_router(), dependencies=[Depends(csrf_protect)])
