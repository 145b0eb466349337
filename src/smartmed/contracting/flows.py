"""Signing by link: a doctor's business card (QR code), an invitation, a share link.

Each link opens ``/contracting/apply?t=<token>``, the application form filled in with the
team (and doctor). :func:`open_link` checks the token; :func:`do_apply_by_link` files the
application with the link's signing method. Invitations are for one resident (their
``patient`` claim) and can be used once: the application keeps the token's nonce.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.contracting import links, service
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Forbidden

APPLY_PATH = "/contracting/apply"
METHOD_OF = {"card": "qr-card", "invite": "invitation", "share": "share-link"}
INVITATION_TEMPLATE = "contract-invitation"


@dataclass(frozen=True, slots=True)
class Link:
    """A checked link: what it offers and to whom."""

    kind: str
    team: str
    doctor: str | None
    patient: str | None  # invitations only: the invited resident
    nonce: str
    expires: datetime

    @property
    def method(self) -> str:
        return METHOD_OF[self.kind]


def url_for(token: str) -> str:
    return f"{APPLY_PATH}?t={token}"


async def make_card_link(
    engine: FhirEngine, conn: AsyncConnection, *, doctor: str, team: str, now: datetime
) -> tuple[str, datetime]:
    """The token of ``doctor``'s business card for ``team`` (a member of it)."""
    await service.access_team(engine, conn, team=team, member=doctor)
    return links.make_token(engine, kind="card", claims={"team": team, "doctor": doctor}, now=now)


async def do_invite(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    doctor: str,
    team: str,
    patient: str,
    base_url: str,
    now: datetime,
) -> tuple[str, datetime, str | None]:
    """An invitation of ``patient`` to ``team`` by ``doctor``: (token, expiry, notification
    id). The link goes to the resident through notify() (in-app, then SMS) when the
    deployment has the ``contract-invitation`` template; the doctor also sees the link."""
    await service.access_team(engine, conn, team=team, member=doctor)
    resident = await service.read(engine, conn, patient, ("Patient",))
    token, expires = links.make_token(
        engine, kind="invite", claims={"team": team, "doctor": doctor, "patient": patient}, now=now
    )
    from smartmed.notify import notify
    from smartmed.notify.templates import template_names

    sent = None
    if INVITATION_TEMPLATE in template_names():
        team_body = await service.get_team(engine, conn, team)
        sent = await notify(
            engine,
            conn,
            recipient=patient,
            template=INVITATION_TEMPLATE,
            data={
                "name": service.person_name(resident),
                "team": str(team_body.get("name", team)),
                "link": base_url.rstrip("/") + url_for(token),
                "expires": expires.isoformat(),
            },
            channels=("inapp", "sms"),
        )
    return token, expires, sent


async def make_share_link(
    engine: FhirEngine, conn: AsyncConnection, *, patient: str, now: datetime
) -> tuple[str, datetime]:
    """A resident shares their own team with others (WeChat-style): needs a contract in
    force."""
    current = await service.current_contract(engine, conn, patient=patient, at=now)
    if current is None:
        raise service.refuse(
            service.Refused, "no-contract", "only a resident with a contract can share it"
        )
    team = service.team_of(current)
    assert team is not None
    return links.make_token(engine, kind="share", claims={"team": team, "from": patient}, now=now)


def open_link(engine: FhirEngine, token: str, *, now: datetime) -> Link:
    """The link behind ``token``; LinkError when forged, malformed or expired."""
    claims = links.open_token(engine, token, now=now)
    team = claims.get("team")
    if not isinstance(team, str) or not team.startswith("CareTeam/"):
        raise links.LinkError("link-invalid", "this link is not valid")
    doctor = claims.get("doctor")
    patient = claims.get("patient")
    return Link(
        kind=str(claims["k"]),
        team=team,
        doctor=doctor if isinstance(doctor, str) else None,
        patient=patient if isinstance(patient, str) else None,
        nonce=str(claims.get("n", "")),
        expires=datetime.fromtimestamp(int(claims["e"]), tz=UTC),
    )


async def do_apply_by_link(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    link: Link,
    patient: str,
    applicant: str,
    signature: service.Signature,
    package: str | None = None,
    now: datetime,
) -> dict[str, Any]:
    """File the application a link offers (the invitation's resident only, once)."""
    if link.kind == "invite" and link.patient != patient:
        raise service.refuse(
            Forbidden, "link-other-person", "this invitation is for another resident"
        )
    return await service.do_apply(
        engine,
        conn,
        patient=patient,
        team=link.team,
        applicant=applicant,
        signature=signature,
        method="agent" if applicant != patient else link.method,
        package=package,
        link_nonce=link.nonce if link.kind == "invite" else None,
        now=now,
    )
