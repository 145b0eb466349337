"""User accounts and role assignment.

Accounts are created and given roles through the identity service's public API
(``Accounts.create`` / ``Accounts.assign``: password policy and separation of duties
checked there). Listing reads the identity tables directly, read-only, because the
identity service has no listing function yet (see docs/portal.md, "Needs elsewhere").
A staff account gets a TOTP secret at creation, shown once with its QR code.
"""

from __future__ import annotations

from typing import Any

import segno
import sqlalchemy as sa
from fastapi import APIRouter, Request, Response

from smartmed.identity.accounts import AccountError
from smartmed.identity.principal import PUBLIC_ROLES, Role, RoleAssignment
from smartmed.identity.service import get_identity
from smartmed.identity.tables import account, role_assignment
from smartmed.portal import fhirdata
from smartmed.portal.admin.fields import N_, Field
from smartmed.portal.admin.listing import ListQuery
from smartmed.portal.admin.scope import may_write, writable_orgs
from smartmed.portal.forms import Validator, form_data
from smartmed.portal.nav import ROLE_LABELS, require
from smartmed.portal.render import flash, gettext_for, render
from smartmed.portal.session import get_session

BASE = "/admin/accounts"
SORTS = {"username": "username", "created": "created_at"}
# Roles an institution administrator may hand out (within their institution).
INSTITUTION_GRANTABLE = (
    Role.FAMILY_DOCTOR,
    Role.NURSE,
    Role.PUBLIC_HEALTH_WORKER,
    Role.SPECIALIST,
    Role.PHARMACIST,
    Role.INSTITUTION_ADMIN,
)
LINK_TYPES = ("Practitioner", "Patient", "RelatedPerson", "PractitionerRole")


def grantable(request: Request) -> list[Role]:
    role = get_session(request).active_role
    if role == Role.INSTITUTION_ADMIN:
        return list(INSTITUTION_GRANTABLE)
    return list(Role)


async def _orgs(request: Request) -> list[tuple[str, str]]:
    items = await fhirdata.search_all(request, "Organization", [("_sort", "name")], 5000)
    return [(f"Organization/{o['id']}", str(o.get("name", o["id"]))) for o in items]


def _fields(roles: list[Role], orgs: list[tuple[str, str]], new: bool) -> list[Field]:
    role_options = tuple((r.value, ROLE_LABELS[r]) for r in roles)
    out = []
    if new:
        out += [
            Field("username", "Account name", required=True, autocomplete="off"),
            Field("password", "Initial password", "password", True, autocomplete="new-password"),
            Field("fhir_user", "Linked record (e.g. Practitioner/123)"),
        ]
    out += [
        Field("role", "Role", "select", True, role_options),
        Field("organization", "In organisation", "select", False, tuple(orgs), False),
    ]
    return out


async def list_accounts(request: Request, query: ListQuery) -> tuple[list[dict[str, Any]], int]:
    db = fhirdata.engine_of(request).db
    conds: list[Any] = [account.c.active.is_(True)]
    if query.q:
        conds.append(account.c.username.contains(query.q, autoescape=True))
    if query.filters.get("role"):
        conds.append(
            account.c.id.in_(
                sa.select(role_assignment.c.account_id).where(
                    role_assignment.c.role == query.filters["role"]
                )
            )
        )
    column = account.c[SORTS[query.sort.lstrip("-")]]
    order = column.desc() if query.sort.startswith("-") else column.asc()
    async with db.read() as conn:
        total = await conn.scalar(sa.select(sa.func.count()).select_from(account).where(*conds))
        rows = (
            await conn.execute(
                sa.select(
                    account.c.id, account.c.username, account.c.fhir_user, account.c.created_at
                )
                .where(*conds)
                .order_by(order, account.c.id)
                .limit(query.size)
                .offset(query.offset)
            )
        ).all()
        ids = [r.id for r in rows]
        roles = (
            await conn.execute(
                sa.select(role_assignment).where(role_assignment.c.account_id.in_(ids))
            )
        ).all()
    by_account: dict[str, list[tuple[str, str]]] = {}
    for r in roles:
        by_account.setdefault(r.account_id, []).append((r.role, r.organization))
    items = [
        {
            "id": r.id,
            "username": r.username,
            "fhir_user": r.fhir_user,
            "created": r.created_at,
            "roles": sorted(by_account.get(r.id, [])),
        }
        for r in rows
    ]
    return items, int(total or 0)


def build_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(BASE)
    async def listing(request: Request) -> Response:
        require(request, "accounts")
        _ = gettext_for(request)
        query = ListQuery.parse(request, SORTS, ("role",))
        items, total = await list_accounts(request, query)
        org_names = dict(await _orgs(request))
        from smartmed.portal.fhirdata import Page

        page = Page(items, {}, total, query.offset, query.size)
        filters = [("role", _("Role"), [(r.value, _(ROLE_LABELS[r])) for r in Role])]
        partial = request.headers.get("hx-request") == "true"
        return render(
            request,
            "admin/accounts_results.html" if partial else "admin/accounts.html",
            query=query,
            page=page,
            filters=filters,
            org_names=org_names,
            base=BASE,
            editable=True,
        )

    @router.get(BASE + "/new")
    async def new(request: Request) -> Response:
        require(request, "accounts")
        return await _new_form(request, {}, {})

    @router.post(BASE + "/new")
    async def create(request: Request) -> Response:
        require(request, "accounts")
        _ = gettext_for(request)
        values = await form_data(request)
        check = Validator(values, _)
        username = check.required("username", 100)
        password = check.required("password", 200)
        roles = grantable(request)
        role = check.choice("role", [r.value for r in roles])
        orgs = dict(await _orgs(request))
        check.choice("organization", orgs, required=False)
        link = values.get("fhir_user", "")
        if link:
            kind, _sep, rid = link.partition("/")
            if kind not in LINK_TYPES or not rid or await fhirdata.read(request, kind, rid) is None:
                check.error("fhir_user", _("No such record: use Practitioner/id or Patient/id."))
        await _check_org(request, check, role, values.get("organization", ""))
        if check:
            staff = role and Role(role) not in PUBLIC_ROLES
            try:
                created, secret = await get_identity(request.app).accounts.create(
                    username,
                    password,
                    fhir_user=link or None,
                    roles=[RoleAssignment(Role(role), values.get("organization") or None)],
                    with_totp=bool(staff),
                )
            except AccountError as exc:
                message = str(exc)
                field = "username" if "taken" in message else "password"
                check.error(field, _translate_account_error(_, message))
            else:
                if secret:
                    return _totp_page(request, created.username, secret)
                flash(request, _("Account created: %(name)s") % {"name": created.username})
                from smartmed.portal.pages import see_other

                return see_other(BASE)
        return await _new_form(request, values, check.errors, 422)

    @router.get(BASE + "/{account_id}")
    async def detail(request: Request, account_id: str) -> Response:
        require(request, "accounts")
        return await _detail(request, account_id, {}, {})

    @router.post(BASE + "/{account_id}/roles")
    async def add_role(request: Request, account_id: str) -> Response:
        require(request, "accounts")
        _ = gettext_for(request)
        values = await form_data(request)
        check = Validator(values, _)
        role = check.choice("role", [r.value for r in grantable(request)])
        orgs = dict(await _orgs(request))
        check.choice("organization", orgs, required=False)
        await _check_org(request, check, role, values.get("organization", ""))
        accounts = get_identity(request.app).accounts
        target = await accounts.get(account_id)
        if target is None:
            return _missing(request)
        if check:
            assignment = RoleAssignment(Role(role), values.get("organization") or None)
            if assignment in target.roles:
                check.error("role", _("The account already has this role."))
            else:
                try:
                    await accounts.assign(account_id, assignment)
                except AccountError as exc:
                    check.error("role", _translate_account_error(_, str(exc)))
        if not check:
            return await _detail(request, account_id, values, check.errors, 422)
        flash(request, _("Role added."))
        from smartmed.portal.pages import see_other

        return see_other(f"{BASE}/{account_id}")

    return router


async def _check_org(request: Request, check: Validator, role: str, org: str) -> None:
    _ = gettext_for(request)
    allowed = await writable_orgs(request)
    if allowed is None:
        return
    org_id = org.split("/", 1)[1] if "/" in org else None
    if not may_write(allowed, org_id):
        check.error("organization", _("You may only give roles in your own institution."))


def _translate_account_error(_: Any, message: str) -> str:
    if "taken" in message:
        return str(_("This account name is taken."))
    if "separation of duties" in message:
        return str(
            _(
                "Separation of duties: one account may not be system, security "
                "and audit administrator at once."
            )
        )
    return str(
        _(
            "The password is too weak: at least 10 characters, two kinds of "
            "character, not containing the account name."
        )
    )


async def _new_form(
    request: Request, values: dict[str, Any], errors: dict[str, str], status: int = 200
) -> Response:
    values = {k: v for k, v in values.items() if k != "password"}
    return render(
        request,
        "admin/form.html",
        status,
        fields=_fields(grantable(request), await _orgs(request), new=True),
        values=values,
        errors=errors,
        action=f"{BASE}/new",
        heading_new=N_("New user account"),
        heading_edit=N_("New user account"),
        editing=False,
        back=BASE,
    )


async def _detail(
    request: Request,
    account_id: str,
    values: dict[str, Any],
    errors: dict[str, str],
    status: int = 200,
) -> Response:
    target = await get_identity(request.app).accounts.get(account_id)
    if target is None:
        return _missing(request)
    orgs = await _orgs(request)
    return render(
        request,
        "admin/account.html",
        status,
        target=target,
        org_names=dict(orgs),
        fields=_fields(grantable(request), orgs, new=False),
        values=values,
        errors=errors,
    )


def _totp_page(request: Request, username: str, secret: str) -> Response:
    uri = f"otpauth://totp/smartmed:{username}?secret={secret}&issuer=smartmed"
    qr = segno.make(uri, error="m").svg_inline(scale=4, title="TOTP")
    return render(request, "admin/totp.html", username=username, secret=secret, qr=qr)


def _missing(request: Request) -> Response:
    _ = gettext_for(request)
    return render(
        request, "error.html", 404, title=_("Not found"), message=_("This record does not exist.")
    )
