"""The access tests reuse the identity tests' application (auth required) and helpers."""

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.access.county import make_county
from tests.identity.conftest import auth_app, identity

__all__ = ["auth_app", "identity"]


@pytest.fixture(scope="module")
async def county(auth_app: FastAPI) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """The seeded county and an HTTP client per person (and "system")."""
    async for clients in make_county(auth_app):
        yield clients
