"""fhirclient (the SMART on FHIR Python client) against a live server: it reads data with
a SMART token, is refused what the access policy does not allow, and learns the OAuth
endpoints from our CapabilityStatement's SMART security extension."""

from __future__ import annotations

import asyncio
import http.cookiejar
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.fhir.storage.database import Database
from smartmed.identity.principal import Role, RoleAssignment
from smartmed.identity.service import Identity
from tests.conftest import EXAMPLES, need
from tests.identity.conftest import PASSWORD

with warnings.catch_warnings():
    # authlib 1.7+ announces a move to the httpx2 package; httpx is what we have.
    warnings.simplefilter("ignore")

pytestmark = pytest.mark.asyncio(loop_scope="session")

REDIRECT = "https://app.example.org/callback"
SECRET = SecretStr("synthetic-test-secret-key-0123456789")


class _LocalhostIsSecure(http.cookiejar.DefaultCookiePolicy):
    def return_ok_secure(self, cookie: Any, request: Any) -> bool:
        return True


class LiveServer:
    def __init__(self, settings: Settings) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(settings), lifespan="on", log_config=None, access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=self.base, timeout=2) as http:
            while time.monotonic() < deadline:
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        pytest.fail("the server did not start")

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, 30)
        self.sock.close()


def read_with_fhirclient(base: str, token: str | None, patient_id: str) -> Any:
    """What a SMART app does with its token: fhirclient reads the Patient."""
    from fhirclient import client
    from fhirclient.models.patient import Patient

    auth: dict[str, Any] = {"app_id": "viewer"}
    if token is not None:
        auth["access_token"] = token
    smart = client.FHIRClient(
        state={
            "app_id": "viewer",
            "api_base": f"{base}/fhir/R4/",
            "server": {"base_uri": f"{base}/fhir/R4/", "auth_type": "oauth2", "auth": auth},
        }
    )
    return Patient.read(patient_id, smart.server)


def capability_oauth_uris(base: str) -> tuple[str | None, str | None]:
    from fhirclient import client

    smart = client.FHIRClient(settings={"app_id": "viewer", "api_base": f"{base}/fhir/R4/"})
    smart.server.get_capability()
    auth = smart.server.auth
    return auth._authorize_uri, auth._token_uri  # type: ignore[union-attr]


async def test_authlib_code_flow_then_fhirclient_reads(tmp_path: Path) -> None:
    need(EXAMPLES.is_dir(), "run `npm ci` first")
    url = f"sqlite+aiosqlite:///{tmp_path}/smartmed.db"
    settings = Settings(
        database_url=url, auth_required=True, secret_key=SECRET, auth_rate_per_minute=6000
    )
    server = LiveServer(settings)
    await server.start()
    db = Database(url)
    try:
        identity = Identity(db, settings)
        base = server.base
        # Seed a resident's record with a system client, over HTTP.
        sys_id, sys_secret = await identity.clients.create("seed", "system/*.cruds")
        async with httpx.AsyncClient(base_url=base) as http:
            token = await http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials", "scope": "system/*.cruds"},
                auth=(sys_id, sys_secret or ""),
            )
            seed = {"Authorization": f"Bearer {token.json()['access_token']}"}
            for pid, family in (("p1", "王"), ("p2", "李")):
                r = await http.put(
                    f"/fhir/R4/Patient/{pid}",
                    json={"resourceType": "Patient", "id": pid, "name": [{"family": family}]},
                    headers={**seed, "Content-Type": "application/fhir+json"},
                )
                assert r.status_code in (200, 201), r.text
        await identity.accounts.create(
            "resident-p1",
            PASSWORD,
            fhir_user="Patient/p1",
            roles=[RoleAssignment(Role.RESIDENT, None)],
        )
        # The authorization-code + PKCE flow itself is driven by authlib's client in
        # test_oauth_flow.py; here the token comes from the same token service, signed
        # with the key the live server publishes.
        access, _ = await identity.tokens.access_token(
            issuer=base,
            audience=f"{base}/fhir/R4",
            subject="resident-p1",
            client_id="viewer",
            scope="openid fhirUser user/Patient.rs",
            fhir_user="Patient/p1",
            roles=[{"role": "resident"}],
        )
        # fhirclient reads the resident's own record with that token...
        patient = await asyncio.to_thread(read_with_fhirclient, base, access, "p1")
        assert patient.name[0].family == "王"
        # ...not someone else's (access policy), and nothing without a token.
        with pytest.raises(Exception, match="403"):
            await asyncio.to_thread(read_with_fhirclient, base, access, "p2")
        with pytest.raises(Exception, match="401"):
            await asyncio.to_thread(read_with_fhirclient, base, None, "p1")
        # fhirclient finds our OAuth endpoints in the CapabilityStatement (SMART security).
        authorize_uri, token_uri = await asyncio.to_thread(capability_oauth_uris, base)
        assert authorize_uri == f"{base}/oauth/authorize"
        assert token_uri == f"{base}/oauth/token"
    finally:
        await db.dispose()
        await server.stop()
