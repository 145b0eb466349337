"""After ``smartmed demo``, the family representative acts for the household through the API.

The demo's households sign family-delegation Consents (docs/access.md) naming their
representative's RelatedPerson; ``family1`` is that RelatedPerson. Through the FHIR API,
with a token for the account as the identity provider issues it, family1 reads the
records of the members who delegated, and not those of another household.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
from pydantic import SecretStr
from sqlalchemy import text

from smartmed.app import create_app
from smartmed.config import Settings
from smartmed.demo.accounts import DEMO_PASSWORD
from smartmed.demo.load import load_demo
from smartmed.fhir.context import FhirEngine
from smartmed.identity.accounts import Accounts
from smartmed.identity.crypto import Box, load_secret
from smartmed.identity.service import get_identity
from tests.conftest import ROOT, need

BASE = "https://testserver"


async def test_family1_reads_the_records_of_members_who_delegated(tmp_path: Path) -> None:
    need((ROOT / "node_modules" / "hl7.fhir.r4.examples").is_dir(), "run `npm ci` first")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/demo.db",
        secret_key=SecretStr("test-secret-key-for-the-demo-tests"),
        auth_required=True,
        auth_rate_per_minute=6000,
    )
    await load_demo(settings, residents=40, seed=3, if_empty=False)

    engine = FhirEngine.build(settings)
    try:
        login = await Accounts(engine.db, Box(load_secret(settings))).login(
            "family1", DEMO_PASSWORD
        )
        family1 = login.account
        assert family1 is not None and (family1.fhir_user or "").startswith("RelatedPerson/")
        async with engine.db.read() as conn:
            consents = [
                orjson.loads(c)
                for c in (
                    await conn.execute(text("SELECT content FROM resource WHERE type = 'Consent'"))
                ).scalars()
            ]
            patients = (
                (await conn.execute(text("SELECT id FROM resource WHERE type = 'Patient'")))
                .scalars()
                .all()
            )
    finally:
        await engine.db.dispose()

    delegated = {
        c["patient"]["reference"]
        for c in consents
        if any(a["reference"]["reference"] == family1.fhir_user for a in c["provision"]["actor"])
    }
    assert delegated  # the household's other members
    others = [p for p in patients if f"Patient/{p}" not in delegated]
    assert others

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        token, _ = await get_identity(app).tokens.access_token(
            issuer=BASE,
            audience=f"{BASE}/fhir/R4",
            subject=family1.id,
            client_id="demo-test",
            scope="openid fhirUser user/*.rs",
            fhir_user=family1.fhir_user,
            roles=[{"role": r.role.value} for r in family1.roles],
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url=BASE,
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            for member in sorted(delegated):
                read = await client.get(f"/fhir/R4/{member}")
                assert read.status_code == 200, read.text
                found = await client.get(
                    "/fhir/R4/Encounter", params={"subject": member, "_count": "50"}
                )
                assert found.status_code == 200, found.text
                encounters = found.json().get("entry", [])
                assert encounters  # every resident has at least one visit
                assert all(e["resource"]["subject"]["reference"] == member for e in encounters)
            refused = await client.get(f"/fhir/R4/Patient/{others[0]}")
            assert refused.status_code in (403, 404), refused.text
            visible = await client.get("/fhir/R4/Patient", params={"_count": "200"})
            assert visible.status_code == 200, visible.text
            seen = {f"Patient/{e['resource']['id']}" for e in visible.json().get("entry", [])}
            assert seen == delegated  # the members who delegated, nobody else
