"""Role rights: what each role may do, edited by the administrators of the platform.

========  ======================  ==================================================
GET       /admin/rights           the matrix roles × categories (letters c r u d s),
                                  the version history (who, when, why, what changed)
POST      /admin/rights           save an edited matrix with a reason (a new version)
POST      /admin/rights/restore   restore the shipped default (a new version)
========  ======================  ==================================================

Who may use the page is the access policy's own answer: roles with ``u`` on the
``system`` category (:data:`smartmed.access.policy_store.ADMINISTER`). Versions are
stored by :mod:`smartmed.access.policy_store`, applied in this process at once and in
the others within seconds; each change is an audit record (``access-policy``) naming
the version, the changed cells and the reason.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from smartmed.access.policy import LETTERS, Policy
from smartmed.access.policy_store import (
    CATEGORIES,
    ORDER,
    PolicyConflict,
    PolicySync,
    Rights,
    StoredVersion,
    administrators,
    apply_rights,
    changes,
    letters,
    rights_of,
    sync_of,
)
from smartmed.fhir.hooks import AuditRecord
from smartmed.fhir.model import utcnow
from smartmed.identity.principal import Principal, Role
from smartmed.portal import fhirdata
from smartmed.portal.admin.fields import N_
from smartmed.portal.forms import Validator, form_data, form_lists
from smartmed.portal.nav import ROLE_LABELS, require
from smartmed.portal.render import flash, gettext_for, render

BASE = "/admin/rights"
MIN_REASON = 10
MAX_REASON = 500
SUBTYPE = "access-policy"

CATEGORY_LABELS = {
    "clinical": N_("Clinical records"),
    "directory": N_("Directory"),
    "audit": N_("Audit trail"),
    "system": N_("System"),
    "other": N_("Other resources"),
}
CATEGORY_HINTS = {
    "clinical": N_("Patients and their records, only of the patients the role reaches"),
    "directory": N_("Organisations, staff, teams, schedules, terminology"),
    "audit": N_("AuditEvent: who accessed what"),
    "system": N_("Subscriptions, binaries, bundles; editing these rights"),
    "other": N_("Every other resource type"),
}
LETTER_LABELS = {
    "c": N_("create"),
    "r": N_("read"),
    "u": N_("update"),
    "d": N_("delete"),
    "s": N_("search"),
}


def _sync(request: Request) -> PolicySync:
    sync = sync_of(fhirdata.engine_of(request).access)
    if sync is None:  # pragma: no cover - install_access always attaches one
        raise RuntimeError("the access policy has no store attached")
    return sync


def role_label(role: str) -> str:
    try:
        return ROLE_LABELS[Role(role)]
    except ValueError:
        return role


def parse_matrix(submitted: dict[str, list[str]], roles: list[str]) -> tuple[Rights, list[str]]:
    """The matrix of checkboxes ``p:<role>:<category>`` = letters, and what was malformed."""
    rights: Rights = {role: {} for role in roles}
    bad: list[str] = []
    for key, values in submitted.items():
        if not key.startswith("p:"):
            continue
        _p, role, category = (key.split(":", 2) + ["", ""])[:3]
        if role not in rights or category not in CATEGORIES:
            bad.append(key)
            continue
        chosen = "".join(values)
        if set(chosen) - LETTERS or any(len(v) != 1 for v in values):
            bad.append(key)
            continue
        rights[role][category] = letters(chosen)
    for role in rights:
        rights[role] = {c: p for c, p in rights[role].items() if p}
    return rights, bad


def _history(versions: list[StoredVersion], shipped: Rights) -> list[dict[str, Any]]:
    """Versions newest first, each with the cells it changed from the one before."""
    out = []
    for i, stored in enumerate(versions):
        before = versions[i + 1].rights if i + 1 < len(versions) else None
        if before is None and stored.version == 1:
            before = shipped
        out.append(
            {
                "version": stored.version,
                "when": stored.created_at,
                "who": stored.author_name or stored.author,
                "reason": stored.reason,
                "restored": stored.restored_default,
                "changes": changes(before, stored.rights) if before is not None else None,
            }
        )
    return out


async def _page(
    request: Request,
    *,
    matrix: Rights | None = None,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    sync = _sync(request)
    await sync.refresh(force=True)
    policy: Policy = sync.control.policy
    current = rights_of(policy)
    shipped = rights_of(sync.shipped)
    versions = await sync.store.history(50)
    latest = versions[0] if versions else None
    return render(
        request,
        "admin/rights.html",
        status,
        matrix=matrix if matrix is not None else current,
        current=current,
        shipped=shipped,
        is_default=current == shipped,
        roles=list(policy.roles),
        relations={r: rp.patients + list(rp.resources) for r, rp in policy.roles.items()},
        role_label=role_label,
        categories=CATEGORIES,
        category_labels=CATEGORY_LABELS,
        category_hints=CATEGORY_HINTS,
        order=ORDER,
        letter_labels=LETTER_LABELS,
        version=sync.version,
        latest=latest,
        history=_history(versions, shipped),
        values=values or {},
        errors=errors or {},
        min_reason=MIN_REASON,
    )


def _check_reason(check: Validator, gettext: Any) -> str:
    reason = check.required("reason", MAX_REASON)
    if reason and len(reason) < MIN_REASON:
        check.error(
            "reason", gettext("Give a reason of at least %(n)d characters.") % {"n": MIN_REASON}
        )
    return reason


def _base(values: dict[str, str]) -> int | None:
    raw = values.get("base", "")
    return int(raw) if raw.isdigit() else None


async def _audit(
    request: Request, stored: StoredVersion, changed: list[str], restored: bool
) -> None:
    engine = fhirdata.engine_of(request)
    if engine.audit is None:
        return
    principal: Principal | None = getattr(request.state, "principal", None)
    extra = {"version": str(stored.version), "changes": "; ".join(changed)}
    if restored:
        extra["restored_default"] = "true"
    await engine.audit.record(
        AuditRecord(
            action="U",
            subtype=SUBTYPE,
            outcome="0",
            recorded=utcnow(),
            agent=principal.fhir_user if principal else None,
            account=principal.subject if principal else stored.author,
            client_id=principal.client_id if principal else None,
            roles=tuple(sorted(str(r.role) for r in principal.roles)) if principal else (),
            source_ip=request.client.host if request.client else None,
            entities=(f"access-policy/{stored.version}",),
            detail=stored.reason,
            extra=extra,
        )
    )


async def _save(
    request: Request,
    rights: Rights,
    values: dict[str, str],
    check: Validator,
    *,
    restored: bool,
) -> Response | None:
    """Validate and store ``rights``; None with ``check`` holding the errors."""
    _ = gettext_for(request)
    sync = _sync(request)
    await sync.refresh(force=True)
    reason = _check_reason(check, _)
    base = _base(values)
    if base is None:
        check.error("form", _("The form is incomplete. Please reload the page and try again."))
    candidate = apply_rights(sync.shipped, rights)
    if not administrators(candidate):
        check.error(
            "matrix",
            _(
                "At least one role must keep the right to update the system category, "
                "or nobody could edit the rights again."
            ),
        )
    current = rights_of(sync.control.policy)
    changed = changes(current, rights_of(candidate))
    if not changed and "matrix" not in check.errors:
        check.error("matrix", _("Nothing changed: these are the rights in force."))
    if not check or base is None:
        return None
    session_account = request.state.principal.subject
    from smartmed.portal.session import get_session

    account = get_session(request).account
    try:
        stored = await sync.store.save(
            rights_of(candidate),
            base_version=base,
            author=session_account,
            author_name=account.username if account else None,
            reason=reason,
            restored_default=restored,
        )
    except PolicyConflict:
        check.error(
            "form",
            _(
                "Someone saved other rights meanwhile. Reload the page to see them, "
                "then make your change again."
            ),
        )
        return None
    sync.apply(stored)
    await _audit(request, stored, changed, restored)
    flash(request, _("Rights saved as version %(n)d.") % {"n": stored.version})
    from smartmed.portal.pages import see_other

    return see_other(BASE)


def build_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(BASE)
    async def show(request: Request) -> Response:
        require(request, "rights")
        return await _page(request)

    @router.post(BASE)
    async def save(request: Request) -> Response:
        require(request, "rights")
        _ = gettext_for(request)
        values = await form_data(request)
        check = Validator(values, _)
        roles = list(_sync(request).control.policy.roles)
        rights, bad = parse_matrix(await form_lists(request), roles)
        if bad:
            check.error("matrix", _("This choice is not valid."))
        done = await _save(request, rights, values, check, restored=False)
        if done is not None:
            return done
        return await _page(request, matrix=rights, values=values, errors=check.errors, status=422)

    @router.post(BASE + "/restore")
    async def restore(request: Request) -> Response:
        require(request, "rights")
        _ = gettext_for(request)
        values = await form_data(request)
        check = Validator(values, _)
        sync = _sync(request)
        done = await _save(request, rights_of(sync.shipped), values, check, restored=True)
        if done is not None:
            return done
        errors = {
            ("restore_" + k if k in ("reason", "matrix") else k): v for k, v in check.errors.items()
        }
        return await _page(
            request, values={"restore_reason": values.get("reason", "")}, errors=errors, status=422
        )

    return router
