"""The portal on each backend, accounts of several roles, and a browser-like login helper."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import unescape
from typing import Any

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.demo.load import load_demo
from smartmed.identity.principal import Role, RoleAssignment
from smartmed.identity.service import get_identity
from tests.conftest import ROOT, create_pg_database, drop_pg_database, need

BASE = "https://testserver"
PASSWORD = "Correct-Horse-42"
_names = itertools.count(1)


@dataclass(frozen=True, slots=True)
class User:
    username: str
    totp: str | None
    account_id: str


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
async def portal_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FastAPI]:
    need((ROOT / "node_modules" / "htmx.org").is_dir(), "run `npm ci` first")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('portal')}/smartmed.db"
    else:
        url = await create_pg_database()
    settings = Settings(
        database_url=url,
        secret_key=SecretStr("synthetic-portal-test-secret-0123456789"),
        auth_rate_per_minute=60000,
        portal_default_locale="zh_CN",
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application
    if request.param == "postgres":
        await drop_pg_database(url)


async def make_user(
    app: FastAPI,
    *roles: tuple[Role, str | None],
    fhir_user: str | None = None,
    prefix: str = "user",
) -> User:
    """A new account with ``roles``; staff get a TOTP secret."""
    identity = get_identity(app)
    staff = any(r not in (Role.RESIDENT, Role.FAMILY_REPRESENTATIVE) for r, _ in roles)
    account, secret = await identity.accounts.create(
        f"{prefix}{next(_names)}",
        PASSWORD,
        fhir_user=fhir_user,
        roles=[RoleAssignment(r, org) for r, org in roles],
        with_totp=staff,
    )
    return User(account.username, secret, account.id)


def browser(app: FastAPI, **headers: str) -> httpx.AsyncClient:
    """An HTTP client keeping cookies like a browser (HTTPS, so Secure cookies are sent)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=headers)


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no hidden field {name}"
    return unescape(found.group(1))


async def follow(client: httpx.AsyncClient, response: httpx.Response) -> httpx.Response:
    while response.status_code in (302, 303):
        response = await client.get(response.headers["location"])
    return response


async def login(client: httpx.AsyncClient, user: User, next_path: str = "/") -> httpx.Response:
    """Log in through the real OIDC endpoints: /login -> authorize -> password -> TOTP ->
    callback. Returns the page finally shown."""
    page = await follow(client, await client.get("/login", params={"next": next_path}))
    assert page.status_code == 200 and 'name="password"' in page.text, page.text
    r = await client.post(
        "/oauth/login",
        data={
            "csrf": hidden(page.text, "csrf"),
            "next": hidden(page.text, "next"),
            "username": user.username,
            "password": PASSWORD,
        },
    )
    r = await follow(client, r)
    if 'name="code"' in r.text:
        assert user.totp is not None
        r = await client.post(
            "/oauth/totp",
            data={
                "csrf": hidden(r.text, "csrf"),
                "next": hidden(r.text, "next"),
                "code": pyotp.TOTP(user.totp).now(),
            },
        )
        r = await follow(client, r)
    return r


def csrf_of(html: str) -> str:
    return hidden(html, "csrf")


@pytest.fixture(scope="session")
async def demo_app(portal_app: FastAPI) -> FastAPI:
    """The portal app with a small demo county loaded once per backend."""
    settings = portal_app.state.fhir.settings
    await load_demo(settings, residents=50, seed=11, if_empty=False)
    return portal_app


async def fhir(app: FastAPI, path: str, **params: str) -> dict[str, Any]:
    async with browser(app) as api:
        r = await api.get(f"/fhir/R4/{path}", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body
