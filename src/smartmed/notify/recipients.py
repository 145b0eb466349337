"""Who a notification goes to: the FHIR resource behind a reference and its addresses.

Recipients are Patient, RelatedPerson, Practitioner and PractitionerRole references.
Addresses come from the resource itself, never from a private copy:

- email: ``telecom`` with ``system`` = email;
- SMS: ``telecom`` with ``system`` = sms, or ``phone`` whose ``use`` is mobile or unset;
- WeChat: an ``identifier`` with ``system`` = :data:`WECHAT_OPENID_SYSTEM` (the openid
  of the person under the platform's official account);
- language: ``communication.language`` (Patient, RelatedPerson; the preferred one first)
  or ``communication`` (Practitioner); zh-CN when none is usable.

Telecoms with ``use`` = old or a ``period`` that has ended are ignored; among the rest
the lowest ``rank`` wins. A PractitionerRole is read through its practitioner for what
the role lacks (telecom, language, openid), and its in-app messages go to that
practitioner's inbox (the person who logs in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from smartmed.fhir.errors import Gone, NotFound
from smartmed.fhir.model import ID_RE, utcnow
from smartmed.fhir.repository import Repository
from smartmed.notify.errors import UnknownRecipient
from smartmed.notify.templates import DEFAULT_LOCALE

RECIPIENT_TYPES = ("Patient", "RelatedPerson", "Practitioner", "PractitionerRole")
WECHAT_OPENID_SYSTEM = "urn:smartmed:wechat:openid"


@dataclass(frozen=True, slots=True)
class Contact:
    """Where and in which language one recipient can be reached."""

    reference: str  # as addressed: "PractitionerRole/7"
    owner: str  # the person behind it: "Practitioner/3"
    locale: str
    email: str | None = None
    phone: str | None = None
    openid: str | None = None

    def address(self, channel: str) -> str | None:
        """The address ``channel`` would use (in-app: the owner's inbox)."""
        return {
            "inapp": self.owner,
            "email": self.email,
            "sms": self.phone,
            "wechat": self.openid,
        }.get(channel)


def parse_reference(reference: str) -> tuple[str, str]:
    """``("Patient", "1")`` from ``"Patient/1"``; UnknownRecipient for anything else."""
    type_, _, id_ = str(reference).partition("/")
    if type_ not in RECIPIENT_TYPES or not ID_RE.match(id_):
        raise UnknownRecipient(
            f"recipient {reference!r} is not a reference to one of "
            f"{', '.join(RECIPIENT_TYPES)} (such as 'Patient/123')",
            expression="recipient",
        )
    return type_, id_


async def _load(repo: Repository, type_: str, id_: str) -> dict[str, Any] | None:
    try:
        stored = await repo.read(type_, id_)
    except (NotFound, Gone):
        return None
    return dict(orjson.loads(stored.content or "{}"))


async def resolve(repo: Repository, reference: str) -> Contact:
    """The contact of ``reference``; UnknownRecipient when it does not exist."""
    type_, id_ = parse_reference(reference)
    body = await _load(repo, type_, id_)
    if body is None:
        raise UnknownRecipient(f"recipient {reference} does not exist", expression="recipient")
    owner = reference
    sources = [body]
    if type_ == "PractitionerRole":
        practitioner = (body.get("practitioner") or {}).get("reference")
        if isinstance(practitioner, str) and practitioner.startswith("Practitioner/"):
            person = await _load(repo, "Practitioner", practitioner.split("/", 1)[1])
            if person is not None:
                owner = practitioner
                sources.append(person)
    return Contact(
        reference=reference,
        owner=owner,
        locale=_first(language(s) for s in sources) or DEFAULT_LOCALE,
        email=_first(telecom(s, "email") for s in sources),
        phone=_first(telecom(s, "sms") for s in sources),
        openid=_first(openid(s) for s in sources),
    )


def _first(values: Any) -> str | None:
    for value in values:
        if value:
            return str(value)
    return None


def _current(point: dict[str, Any], now: str) -> bool:
    if point.get("use") == "old":
        return False
    end = (point.get("period") or {}).get("end")
    return not (isinstance(end, str) and end < now)


def telecom(body: dict[str, Any], kind: str) -> str | None:
    """The best current email (``kind`` email) or mobile number (``kind`` sms)."""
    now = utcnow().isoformat()
    found: list[tuple[int, int, str]] = []
    for point in body.get("telecom") or []:
        if not isinstance(point, dict) or not point.get("value") or not _current(point, now):
            continue
        system, use = point.get("system"), point.get("use")
        if kind == "email" and system == "email":
            order = 0
        elif kind == "sms" and system == "sms":
            order = 0
        elif kind == "sms" and system == "phone" and use in ("mobile", None):
            order = 1 if use == "mobile" else 2
        else:
            continue
        rank = point.get("rank")
        found.append((rank if isinstance(rank, int) else 1_000_000, order, str(point["value"])))
    return min(found)[2].strip() if found else None


def openid(body: dict[str, Any]) -> str | None:
    """The WeChat openid identifier of a resource, if any."""
    for ident in body.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == WECHAT_OPENID_SYSTEM:
            value = ident.get("value")
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def _locale(code: str) -> str | None:
    code = code.strip().lower().replace("_", "-")
    if code.startswith("zh"):
        return "zh-CN"
    if code == "en" or code.startswith("en-"):
        return "en"
    return None


def _concept_locale(concept: Any) -> str | None:
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            found = _locale(coding["code"])
            if found:
                return found
    return None


def language(body: dict[str, Any]) -> str | None:
    """zh-CN or en from the resource's communication languages (preferred first)."""
    items = [c for c in body.get("communication") or [] if isinstance(c, dict)]
    concepts: list[Any]
    if body.get("resourceType") == "Practitioner":
        concepts = items  # Practitioner.communication is a list of CodeableConcept
    else:
        items.sort(key=lambda c: c.get("preferred") is not True)
        concepts = [c.get("language") for c in items]
    for concept in concepts:
        found = _concept_locale(concept)
        if found:
            return found
    return None
