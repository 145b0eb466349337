"""Bulk import of staff: preview with row-level errors, nothing stored until the file is
right, then every row in one transaction; CSV and Excel."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import unescape
from typing import Any

import httpx
from fastapi import FastAPI
from openpyxl import Workbook

from smartmed.identity.principal import Role
from tests.portal.conftest import browser, csrf_of, fhir, login, make_user

EN = {"Accept-Language": "en"}

HEADER = (
    "family_name,given_name,gender,birth_date,phone,staff_number,qualification,"
    "organization,role,specialty\n"
)


@asynccontextmanager
async def _admin(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    user = await make_user(app, (Role.PLATFORM_ADMIN, None), prefix="importer")
    async with browser(app, **EN) as client:
        await login(client, user)
        yield client


def row_errors(html: str) -> dict[int, str]:
    found = {}
    for number, cells in re.findall(
        r'<tr class="row-error" data-row="(\d+)">(.*?)</tr>', html, re.S
    ):
        found[int(number)] = (
            unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", cells))).strip().replace(" :", ":")
        )
    return found


async def _count(app: FastAPI, system_value: str) -> int:
    body: dict[str, Any] = await fhir(
        app, "Practitioner", identifier=system_value, _summary="count"
    )
    return int(body["total"])


async def test_csv_preview_lists_row_errors_and_imports_nothing(demo_app: FastAPI) -> None:
    hospital = await fhir(demo_app, "Organization", type="urn:smartmed:org-type|county-hospital")
    code = hospital["entry"][0]["resource"]["identifier"][0]["value"]
    text = HEADER + "\n".join(
        [
            f"张,伟,男,1979-01-02,13900000001,IMP-1,physician,{code},doctor,394814009",
            "李,,female,2999-01-01,not-a-phone,IMP-2,wizard,NO-SUCH-ORG,doctor,",
            f"王,芳,female,1990-07-08,,IMP-1,nurse,{code},nurse,",
        ]
    )
    async with _admin(demo_app) as c:
        page = await c.get("/admin/import")
        r = await c.post(
            "/admin/import/preview",
            data={"csrf": csrf_of(page.text)},
            files={"file": ("staff.csv", text.encode("utf-8-sig"), "text/csv")},
        )
        assert r.status_code == 422
        assert "2 of 3 rows have errors. Nothing has been imported" in r.text
        errors = row_errors(r.text)
        assert sorted(errors) == [3, 4]
        assert "given_name: This field is required." in errors[3]
        assert "birth_date: The date cannot be in the future." in errors[3]
        assert "phone: Enter a phone number" in errors[3]
        assert "qualification: This choice is not valid." in errors[3]
        assert "organization: This choice is not valid." in errors[3]
        assert "staff_number: The same staff number is on row 2." in errors[4]
        assert "/admin/import/commit" not in r.text  # no way to import a file with errors
    assert await _count(demo_app, "urn:smartmed:practitioner|IMP-1") == 0


async def test_a_valid_excel_file_is_imported_in_one_go(demo_app: FastAPI) -> None:
    hospital = await fhir(demo_app, "Organization", type="urn:smartmed:org-type|county-hospital")
    org_id = hospital["entry"][0]["resource"]["id"]
    book = Workbook()
    sheet = book.active
    sheet.append(
        ["姓", "名", "性别", "出生日期", "电话", "工号", "执业资格", "机构", "岗位", "专业"]
    )
    sheet.append(
        [
            "赵",
            "一",
            "男",
            "1981-02-03",
            "13900000011",
            "XL-1",
            "physician",
            org_id,
            "doctor",
            "419192003",
        ]
    )
    sheet.append(["钱", "二", "女", "1992-04-05", "", "XL-2", "nurse", org_id, "nurse", ""])
    buffer = io.BytesIO()
    book.save(buffer)
    xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    async with _admin(demo_app) as c:
        page = await c.get("/admin/import")
        r = await c.post(
            "/admin/import/preview",
            data={"csrf": csrf_of(page.text)},
            files={"file": ("staff.xlsx", buffer.getvalue(), xlsx)},
        )
        assert r.status_code == 200, r.text
        assert "All 2 rows are valid." in r.text
        payload = unescape(re.search(r'name="payload" value="([^"]*)"', r.text).group(1))  # type: ignore[union-attr]
        signature = re.search(r'name="signature" value="([0-9a-f]+)"', r.text).group(1)  # type: ignore[union-attr]
        # A changed preview is refused.
        tampered = await c.post(
            "/admin/import/commit",
            data={
                "csrf": csrf_of(page.text),
                "payload": payload.replace("XL-2", "XL-9"),
                "signature": signature,
            },
        )
        assert tampered.status_code == 400
        assert await _count(demo_app, "urn:smartmed:practitioner|XL-9") == 0
        done = await c.post(
            "/admin/import/commit",
            data={"csrf": csrf_of(page.text), "payload": payload, "signature": signature},
        )
        assert done.status_code == 303
    assert await _count(demo_app, "urn:smartmed:practitioner|XL-1") == 1
    assert await _count(demo_app, "urn:smartmed:practitioner|XL-2") == 1
    roles = await fhir(
        demo_app, "PractitionerRole", organization=f"Organization/{org_id}", role="nurse"
    )
    assert any(e["resource"]["practitioner"].get("display") == "钱二" for e in roles["entry"])


async def test_unreadable_files_are_explained(demo_app: FastAPI) -> None:
    async with _admin(demo_app) as c:
        page = await c.get("/admin/import")
        r = await c.post(
            "/admin/import/preview",
            data={"csrf": csrf_of(page.text)},
            files={"file": ("staff.csv", b"name\nx\n", "text/csv")},
        )
        assert r.status_code == 422
        assert "The first row must name the columns" in r.text
        r = await c.post(
            "/admin/import/preview",
            data={"csrf": csrf_of(page.text)},
            files={"file": ("staff.xlsx", b"not a workbook", "application/octet-stream")},
        )
        assert "The file is not a readable Excel workbook." in r.text
