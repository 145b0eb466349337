"""Reverse chaining: ``_has:Type:reference:param=value`` (https://hl7.org/fhir/R4/search.html#has).

A resource matches when some live resource of ``Type`` refers to it through the reference
parameter and itself matches the rest, which may be another ``_has`` (nesting).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, false, select
from sqlalchemy.sql import FromClause

from smartmed.fhir.hooks import current_access
from smartmed.fhir.search.query import HasParam
from smartmed.fhir.search.sql import param_condition
from smartmed.fhir.storage.tables import idx_reference, resource


def has_condition(
    res: FromClause, type_: str, has: HasParam, *, is_postgres: bool
) -> ColumnElement[bool]:
    """The condition on resource alias ``res`` (of type ``type_``) for one ``_has``."""
    source = resource.alias()
    inner = has.inner
    if isinstance(inner, HasParam):
        inner_cond = has_condition(source, has.source, inner, is_postgres=is_postgres)
    else:
        inner_cond = param_condition(source, has.source, inner, is_postgres=is_postgres)
    conds = [source.c.type == has.source, source.c.deleted == false(), inner_cond]
    # Only referrers the caller may see count: otherwise ``_has`` would reveal records
    # beyond the caller's access (a referral to a specialist, another patient's result).
    guard = current_access.get()
    if guard is not None:
        allowed = guard.search_condition(source, has.source)
        if allowed is not None:
            conds.append(allowed)
    referrers = select(source.c.pk).where(*conds)
    ref = idx_reference.alias()
    targets = select(ref.c.target_id).where(
        ref.c.resource_type == has.source,
        ref.c.param == has.reference,
        ref.c.target_type == type_,
        ref.c.res_pk.in_(referrers),
    )
    # The caller also restricts ``res`` to ``type_``, so matching the id is enough.
    return res.c.id.in_(targets)
