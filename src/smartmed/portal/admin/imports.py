"""Bulk import of staff from CSV or Excel: upload, preview with row-level errors, commit.

Nothing is written until every row is valid: the preview lists each row with its errors
(in the user's language); only an error-free file offers the import, which stores all
Practitioners and PractitionerRoles in one transaction. The previewed rows travel back
in the confirmation form, HMAC-signed, so what is stored is exactly what was shown.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
from datetime import date, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from smartmed.identity.crypto import derive
from smartmed.identity.service import get_identity
from smartmed.portal import fhirdata
from smartmed.portal.admin import codes
from smartmed.portal.admin.practitioners import build_resources, org_choices, validate
from smartmed.portal.admin.scope import may_write, writable_orgs
from smartmed.portal.forms import Validator, form_data, refused, upload
from smartmed.portal.nav import require
from smartmed.portal.render import flash, gettext_for, render

BASE = "/admin/import"
MAX_BYTES = 2 * 1024 * 1024
MAX_ROWS = 2000
# Column -> form field; English and Chinese headers are both accepted.
COLUMNS = {
    "family_name": "family",
    "given_name": "given",
    "gender": "gender",
    "birth_date": "birth_date",
    "phone": "phone",
    "staff_number": "code",
    "qualification": "qualification",
    "organization": "organization",
    "role": "role",
    "specialty": "specialty",
}
CHINESE = {
    "姓": "family_name",
    "名": "given_name",
    "性别": "gender",
    "出生日期": "birth_date",
    "电话": "phone",
    "工号": "staff_number",
    "执业资格": "qualification",
    "机构": "organization",
    "岗位": "role",
    "专业": "specialty",
}
COLUMN_OF = {field: column for column, field in COLUMNS.items()}
GENDER_WORDS = {"男": "male", "女": "female", "m": "male", "f": "female"}
TEMPLATE = (
    ",".join(COLUMNS)
    + "\n王,芳,female,1985-04-12,13800000000,P9001,physician,CH,doctor,394814009\n"
)


class ImportError_(ValueError):
    """The file cannot be read at all (format, size, headers)."""


def read_rows(filename: str, data: bytes) -> list[dict[str, str]]:
    """Rows of a CSV (UTF-8, with or without BOM) or Excel (.xlsx) file, by column name."""
    if len(data) > MAX_BYTES:
        raise ImportError_("too-big")
    if filename.lower().endswith(".xlsx"):
        from openpyxl import load_workbook  # type: ignore[import-untyped]

        try:
            book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        except Exception:  # noqa: BLE001 - any unreadable workbook is the same answer
            raise ImportError_("unreadable") from None
        sheet = book.worksheets[0]
        table = [[_cell(v) for v in row] for row in sheet.iter_rows(values_only=True)]
        book.close()
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ImportError_("encoding") from None
        table = [row for row in csv.reader(io.StringIO(text))]
    table = [row for row in table if any(cell.strip() for cell in row)]
    if not table:
        raise ImportError_("empty")
    headers = [CHINESE.get(h.strip(), h.strip().lower()) for h in table[0]]
    missing = [c for c in ("family_name", "given_name", "organization") if c not in headers]
    if missing:
        raise ImportError_("headers")
    if len(table) - 1 > MAX_ROWS:
        raise ImportError_("too-many")
    rows = []
    for raw in table[1:]:
        row = {h: (raw[i].strip() if i < len(raw) else "") for i, h in enumerate(headers)}
        rows.append({COLUMNS[k]: v for k, v in row.items() if k in COLUMNS})
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _sign(secret: bytes, payload: str) -> str:
    return hmac.new(derive(secret, "portal-import"), payload.encode(), hashlib.sha256).hexdigest()


async def check_rows(request: Request, rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Each row normalised, with its field errors (translated); nothing is written."""
    _ = gettext_for(request)
    items = await fhirdata.search_all(request, "Organization", [], 5000)
    by_code: dict[str, str] = {}
    for org in items:
        by_code[str(org.get("name", ""))] = org["id"]
        for ident in org.get("identifier") or []:
            if ident.get("system") == codes.ORG_ID_SYSTEM:
                by_code[str(ident.get("value"))] = org["id"]
        by_code[org["id"]] = org["id"]
    orgs = dict(await org_choices(request))
    allowed = await writable_orgs(request)
    seen_numbers: dict[str, int] = {}
    out = []
    for number, raw in enumerate(rows, start=2):  # row 1 is the header
        values = dict(raw)
        values["gender"] = GENDER_WORDS.get(
            values.get("gender", "").lower(), values.get("gender", "").lower()
        )
        values["organization"] = by_code.get(
            values.get("organization", ""), values.get("organization", "")
        )
        values.setdefault("qualification", "")
        values.setdefault("role", "")
        values["active"] = "true"
        check = Validator(values, _)
        validate(values, check, orgs, {})
        if values.get("organization") in orgs and not may_write(allowed, values["organization"]):
            check.error("organization", _("You may only manage staff of your own institution."))
        staff_number = values.get("code", "")
        if staff_number:
            if staff_number in seen_numbers:
                check.error(
                    "code",
                    _("The same staff number is on row %(row)d.")
                    % {"row": seen_numbers[staff_number]},
                )
            else:
                seen_numbers[staff_number] = number
                found = await fhirdata.search(
                    request,
                    "Practitioner",
                    [("identifier", f"{codes.PRACTITIONER_SYSTEM}|{staff_number}")],
                    count=0,
                )
                if found.total:
                    check.error("code", _("A staff member with this number exists already."))
        out.append(
            {
                "row": number,
                "values": values,
                "errors": check.errors,
                "org_name": orgs.get(values.get("organization", ""), raw.get("organization", "")),
            }
        )
    return out


def build_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(BASE)
    async def start(request: Request) -> Response:
        require(request, "import")
        return render(request, "admin/import.html", checked=None, columns=list(COLUMNS))

    @router.get(BASE + "/template.csv")
    async def template(request: Request) -> Response:
        require(request, "import")
        return PlainTextResponse(
            TEMPLATE,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="staff-import.csv"'},
        )

    @router.post(BASE + "/preview")
    async def preview(request: Request) -> Response:
        require(request, "import")
        _ = gettext_for(request)
        file = await upload(request, "file")
        problems = {
            "too-big": _("The file is larger than 2 MB."),
            "unreadable": _("The file is not a readable Excel workbook."),
            "encoding": _("The CSV file must be UTF-8."),
            "empty": _("The file has no rows."),
            "headers": _(
                "The first row must name the columns: family_name, given_name, "
                "organization and the others."
            ),
            "too-many": _("At most 2000 rows at a time."),
        }
        if file is None or not file.filename:
            return render(
                request,
                "admin/import.html",
                422,
                checked=None,
                columns=list(COLUMNS),
                problem=_("Choose a CSV or Excel file."),
            )
        try:
            rows = read_rows(file.filename, await file.read(MAX_BYTES + 1))
        except ImportError_ as exc:
            return render(
                request,
                "admin/import.html",
                422,
                checked=None,
                columns=list(COLUMNS),
                problem=problems[str(exc)],
            )
        checked = await check_rows(request, rows)
        bad = sum(1 for c in checked if c["errors"])
        payload = orjson.dumps([c["values"] for c in checked]).decode()
        signature = _sign(get_identity(request.app).secret, payload)
        return render(
            request,
            "admin/import.html",
            422 if bad else 200,
            checked=checked,
            bad=bad,
            payload=payload,
            signature=signature,
            columns=list(COLUMNS),
            codes=codes,
            filename=file.filename,
            column_of=COLUMN_OF,
        )

    @router.post(BASE + "/commit")
    async def commit(request: Request) -> Response:
        require(request, "import")
        _ = gettext_for(request)
        form = await form_data(request)
        payload, signature = form.get("payload", ""), form.get("signature", "")
        secret = get_identity(request.app).secret
        if not hmac.compare_digest(_sign(secret, payload), signature):
            return render(
                request,
                "admin/import.html",
                400,
                checked=None,
                columns=list(COLUMNS),
                problem=_("The preview was changed; upload the file again."),
            )
        rows = orjson.loads(payload)
        checked = await check_rows(request, rows)  # the store may have changed since
        if any(c["errors"] for c in checked):
            bad = sum(1 for c in checked if c["errors"])
            return render(
                request,
                "admin/import.html",
                422,
                checked=checked,
                bad=bad,
                columns=list(COLUMNS),
                codes=codes,
                column_of=COLUMN_OF,
            )
        batch: list[dict[str, Any]] = []
        for item in checked:
            practitioner, role = build_resources(item["values"], None, None)
            role["practitioner"]["reference"] = f"#{len(batch)}"
            batch += [practitioner, role]
        try:
            await fhirdata.save(request, batch)
        except fhirdata.FhirError as exc:
            return render(
                request,
                "admin/import.html",
                422,
                checked=None,
                columns=list(COLUMNS),
                problem=refused(_, exc),
            )
        flash(request, _("Imported %(n)d staff members.") % {"n": len(checked)})
        from smartmed.portal.pages import see_other

        return see_other("/admin/practitioners")

    return router
