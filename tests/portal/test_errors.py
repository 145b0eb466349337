"""Error pages: the portal answers with its localized HTML page and the right status; the
FHIR API and /api keep answering with JSON (OperationOutcome)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from smartmed.identity.principal import Role
from smartmed.portal.errors import is_portal_path
from tests.portal.conftest import browser, login, make_user

EN = {"Accept-Language": "en"}
ZH = {"Accept-Language": "zh-CN,zh;q=0.9"}


@pytest.fixture
async def failing(portal_app: FastAPI) -> AsyncIterator[FastAPI]:
    """Routes that fail, in the portal and in /api (added for this test only)."""
    router = APIRouter()

    @router.get("/admin/broken-for-test")
    async def broken_page() -> None:
        raise RuntimeError("synthetic failure")

    @router.get("/api/broken-for-test")
    async def broken_api() -> None:
        raise RuntimeError("synthetic failure")

    @router.get("/admin/typed-for-test/{number}")
    @router.get("/api/typed-for-test/{number}")
    async def typed(number: int) -> dict[str, int]:
        return {"number": number}

    before = list(portal_app.router.routes)
    portal_app.include_router(router)
    yield portal_app
    portal_app.router.routes[:] = before


def _is_page(r: httpx.Response) -> bool:
    return r.headers["content-type"].startswith("text/html") and "<!doctype html>" in r.text


async def test_unknown_portal_url_is_a_localized_404_page(portal_app: FastAPI) -> None:
    async with browser(portal_app, **EN) as c:
        r = await c.get("/no/such/page")
        assert r.status_code == 404 and _is_page(r)
        assert "Page not found" in r.text and 'href="/"' in r.text
        assert r.headers["cache-control"] == "no-store"
    async with browser(portal_app, **ZH) as c:
        r = await c.get("/admin/no-such-thing")
        assert r.status_code == 404 and _is_page(r)
        assert "页面不存在" in r.text and 'lang="zh-CN"' in r.text
    # Logged in: the same page inside the portal's layout, with the navigation.
    admin = await make_user(portal_app, (Role.PLATFORM_ADMIN, None), prefix="errs")
    async with browser(portal_app, **EN) as c:
        await login(c, admin)
        r = await c.get("/admin/nope")
        assert r.status_code == 404 and "Page not found" in r.text
        assert 'href="/admin/organizations"' in r.text
        # A portal path answered with a method it does not have.
        r = await c.delete("/me", headers={"X-CSRF-Token": "x"})
        assert r.status_code == 405 and _is_page(r)


async def test_api_paths_keep_json(portal_app: FastAPI) -> None:
    async with browser(portal_app, **EN) as c:
        r = await c.get("/fhir/R4/NoSuchType/1")
        assert r.status_code in (400, 404)
        assert r.json()["resourceType"] == "OperationOutcome"
        r = await c.get("/fhir/R4/Patient/does-not-exist")
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
        r = await c.get("/api/no-such-endpoint")
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
        assert "html" not in r.headers["content-type"]


async def test_forbidden_page(portal_app: FastAPI) -> None:
    nurse = await make_user(portal_app, (Role.NURSE, None), prefix="errn")
    async with browser(portal_app, **ZH) as c:
        await login(c, nurse)
        r = await c.get("/admin/organizations")
        assert r.status_code == 403 and _is_page(r) and 'lang="zh-CN"' in r.text


async def test_server_errors(failing: FastAPI) -> None:
    transport = httpx.ASGITransport(app=failing, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
        r = await c.get("/admin/broken-for-test", headers=EN)
        assert r.status_code == 500 and _is_page(r)
        assert "Something went wrong" in r.text and "synthetic failure" not in r.text
        r = await c.get("/admin/broken-for-test", headers=ZH)
        assert r.status_code == 500 and "出错了" in r.text
        r = await c.get("/api/broken-for-test", headers=EN)
        assert r.status_code == 500
        assert r.json()["resourceType"] == "OperationOutcome"
        assert "synthetic failure" not in r.text
        # A malformed path parameter: the portal's 400 page, the API's OperationOutcome.
        r = await c.get("/admin/typed-for-test/abc", headers=EN)
        assert r.status_code == 400 and _is_page(r) and "Bad request" in r.text
        r = await c.get("/api/typed-for-test/abc", headers=EN)
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("path", "portal"),
    [
        ("/", True),
        ("/admin/rights", True),
        ("/audit", True),
        ("/fhirish", True),
        ("/apiary", True),
        ("/fhir", False),
        ("/fhir/R4/Patient", False),
        ("/api", False),
        ("/api/access/break-glass", False),
        ("/oauth/authorize", False),
        ("/.well-known/smart-configuration", False),
        ("/static/portal/x.css", False),
        ("/metrics", False),
        ("/healthz", False),
    ],
)
def test_which_paths_are_pages(path: str, portal: bool) -> None:
    assert is_portal_path(path) is portal
