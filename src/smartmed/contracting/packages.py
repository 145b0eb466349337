"""Service packages: publishing, browsing, buying (docs/contracting.md, "Service packages").

A package is a FHIR ``PlanDefinition`` (``type`` ``urn:smartmed:plan-type|service-package``)
whose ``action[]`` are its items: ``code[0].coding[0]`` in ``urn:smartmed:service-item``
and the extension ``urn:smartmed:extension:service-quantity`` (how many per contract
year). Its price is a ``ChargeItemDefinition`` (extension
``urn:smartmed:extension:service-package`` → the PlanDefinition, since R4 does not allow a
PlanDefinition in ``instance``; base priceComponent in CNY); both carry the identifier
``urn:smartmed:service-package|<code>``.
The basic package costs 0 and is chosen without payment.

Buying: :func:`do_choose` names a free package on the contract at once, and for a paid one
creates a payments order (target ``Contract/<id>``, priced by the ChargeItemDefinition).
The package is named on the contract only by :func:`activate_paid` — the
``@on_payment("paid")`` handler below — which then marks the order fulfilled; a refunded
order takes the package off again (:func:`deactivate_refunded`). Nothing else names a
paid package, so none is active unless its payment was confirmed.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.contracting.contracts import (
    ACTIVE,
    PENDING,
    Refused,
    is_in_force,
    now_utc,
    package_of,
    patient_of,
    refuse,
)
from smartmed.contracting.service import (
    access_contract,
    as_platform,
    check_signer,
    lock_patient,
    search,
)
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Conflict, FhirError, Forbidden, Invalid, NotFound
from smartmed.fhir.repository import advisory_lock
from smartmed.jobs import JobContext
from smartmed.payments import Order, PaymentEvent, on_payment
from smartmed.payments import service as payments

PLAN_TYPE_SYSTEM = "urn:smartmed:plan-type"
PLAN_TYPE = "service-package"
ITEM_SYSTEM = "urn:smartmed:service-item"
QUANTITY_EXT = "urn:smartmed:extension:service-quantity"
PACKAGE_SYSTEM = "urn:smartmed:service-package"  # identifier of both resources: the code
TITLE_EN_EXT = "urn:smartmed:extension:title-en"
# R4 limits ChargeItemDefinition.instance to Device, Medication and Substance, so the
# price names its package in this extension (valueReference → PlanDefinition/<id>).
PRICED_EXT = "urn:smartmed:extension:service-package"
JURISDICTION_SYSTEM = "urn:iso:std:iso:3166"
# The item codes of the issue-8 conventions, with their English names (the portal shows
# them in the reader's language through the Babel catalogue).
ITEMS: dict[str, str] = {
    "bp-followup": "Blood pressure follow-up",
    "glucose-followup": "Blood glucose follow-up",
    "hba1c": "HbA1c test",
    "home-visit": "Home visit",
    "health-check": "Annual health check",
    "tcm-care": "TCM health management",
    "consultation": "Online consultation",
    "medication-review": "Medication review",
}
MAX_QUANTITY = 366  # more than one a day in a contract year is no package
MAX_PRICE = Decimal("100000")
CODE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
PAYER = "Contract"  # who marks orders fulfilled / refunded: the contract


@dataclass(frozen=True, slots=True)
class Item:
    code: str
    quantity: int

    @property
    def display(self) -> str:
        return ITEMS.get(self.code, self.code)


@dataclass(frozen=True, slots=True)
class Spec:
    """What an administrator publishes (checked by :func:`check_spec`)."""

    code: str
    title: str
    title_en: str
    description: str
    price: Decimal
    items: tuple[Item, ...]


@dataclass(slots=True)
class Package:
    id: str
    code: str
    title: str
    title_en: str
    description: str
    status: str  # active | retired
    price: Decimal
    items: list[Item]
    price_id: str | None
    plan: dict[str, Any] = field(repr=False)

    @property
    def ref(self) -> str:
        return f"PlanDefinition/{self.id}"

    @property
    def price_ref(self) -> str | None:
        return f"ChargeItemDefinition/{self.price_id}" if self.price_id else None

    @property
    def free(self) -> bool:
        return self.price == 0

    def quantity(self, item: str) -> int:
        return sum(i.quantity for i in self.items if i.code == item)

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reference": self.ref,
            "code": self.code,
            "title": self.title,
            "titleEn": self.title_en,
            "description": self.description,
            "status": self.status,
            "price": str(self.price),
            "currency": "CNY",
            "free": self.free,
            "priceDefinition": self.price_ref,
            "items": [
                {"code": i.code, "display": i.display, "quantity": i.quantity} for i in self.items
            ],
        }


# -- checking what is published --------------------------------------------------------


def check_price(value: object) -> Decimal:
    try:
        price = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise refuse(Invalid, "bad-price", f"price {value!r} is not a number") from None
    if (
        not price.is_finite()
        or price < 0
        or price > MAX_PRICE
        or price != price.quantize(Decimal("0.01"))
    ):
        raise refuse(
            Invalid, "bad-price", f"price must be 0 to {MAX_PRICE} CNY with at most 2 decimals"
        )
    return price.quantize(Decimal("0.01"))


def check_spec(
    *,
    code: str,
    title: str,
    title_en: str = "",
    description: str = "",
    price: object,
    items: list[tuple[str, object]],
) -> Spec:
    """A package spec, or Invalid with a ``reason`` (bad-package-code, bad-title, bad-price,
    no-items, bad-item, duplicate-item, bad-quantity)."""
    if not isinstance(code, str) or not CODE_RE.match(code):
        raise refuse(Invalid, "bad-package-code", "code: 1-40 of a-z, 0-9 and '-'")
    title, title_en, description = title.strip(), title_en.strip(), description.strip()
    if not 0 < len(title) <= 100 or len(title_en) > 100:
        raise refuse(Invalid, "bad-title", "title: 1-100 characters (English: up to 100)")
    if len(description) > 500:
        raise refuse(Invalid, "bad-title", "description: up to 500 characters")
    amount = check_price(price)
    if not items:
        raise refuse(Invalid, "no-items", "a package has at least one item")
    checked: list[Item] = []
    for item, quantity in items:
        if item not in ITEMS:
            raise refuse(Invalid, "bad-item", f"unknown service item {item!r}")
        if any(i.code == item for i in checked):
            raise refuse(Invalid, "duplicate-item", f"item {item!r} is listed twice")
        if isinstance(quantity, bool):
            raise refuse(Invalid, "bad-quantity", "quantity must be a whole number")
        try:
            count = int(str(quantity).strip())
        except ValueError:
            raise refuse(Invalid, "bad-quantity", "quantity must be a whole number") from None
        if not 1 <= count <= MAX_QUANTITY:
            raise refuse(Invalid, "bad-quantity", f"quantity must be 1 to {MAX_QUANTITY}")
        checked.append(Item(item, count))
    return Spec(code, title, title_en, description, amount, tuple(checked))


# -- FHIR ------------------------------------------------------------------------------


def _identifier(code: str) -> list[dict[str, str]]:
    return [{"system": PACKAGE_SYSTEM, "value": code}]


def _jurisdiction(region: str, name: str | None) -> list[dict[str, Any]]:
    concept: dict[str, Any] = {"coding": [{"system": JURISDICTION_SYSTEM, "code": region}]}
    if name:
        concept["text"] = name
    return [concept]


def plan_body(spec: Spec, *, status: str, region: str, region_name: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "PlanDefinition",
        "url": f"{PACKAGE_SYSTEM}:{spec.code}",
        "identifier": _identifier(spec.code),
        "name": re.sub(r"[^A-Za-z0-9]", "", spec.code.title()) or "Package",
        "title": spec.title,
        "type": {
            "coding": [
                {"system": PLAN_TYPE_SYSTEM, "code": PLAN_TYPE, "display": "Service package"}
            ]
        },
        "status": status,
        "jurisdiction": _jurisdiction(region, region_name),
        "action": [
            {
                "extension": [{"url": QUANTITY_EXT, "valueInteger": item.quantity}],
                "title": item.display,
                "code": [
                    {
                        "coding": [
                            {"system": ITEM_SYSTEM, "code": item.code, "display": item.display}
                        ]
                    }
                ],
            }
            for item in spec.items
        ],
    }
    if spec.title_en:
        body["extension"] = [{"url": TITLE_EN_EXT, "valueString": spec.title_en}]
    if spec.description:
        body["description"] = spec.description
    return body


def price_body(
    spec: Spec, *, plan_id: str, status: str, region: str, region_name: str | None
) -> dict[str, Any]:
    return {
        "resourceType": "ChargeItemDefinition",
        "extension": [
            {"url": PRICED_EXT, "valueReference": {"reference": f"PlanDefinition/{plan_id}"}}
        ],
        "url": f"{PACKAGE_SYSTEM}:{spec.code}:price",
        "identifier": _identifier(spec.code),
        "title": spec.title,
        "status": status,
        "jurisdiction": _jurisdiction(region, region_name),
        "code": {
            "coding": [{"system": PLAN_TYPE_SYSTEM, "code": PLAN_TYPE}],
            "text": spec.title,
        },
        "propertyGroup": [
            {
                "priceComponent": [
                    {"type": "base", "amount": {"value": float(spec.price), "currency": "CNY"}}
                ]
            }
        ],
    }


def priced_plan(definition: dict[str, Any]) -> str | None:
    """The PlanDefinition a ChargeItemDefinition prices (its service-package extension)."""
    for ext in definition.get("extension") or []:
        if ext.get("url") == PRICED_EXT:
            ref = (ext.get("valueReference") or {}).get("reference")
            return str(ref) if ref else None
    return None


def is_package(plan: dict[str, Any]) -> bool:
    return plan.get("resourceType") == "PlanDefinition" and any(
        c.get("system") == PLAN_TYPE_SYSTEM and c.get("code") == PLAN_TYPE
        for c in (plan.get("type") or {}).get("coding") or []
    )


def catalogue_code(resource: dict[str, Any]) -> str:
    """The package code of a PlanDefinition or its ChargeItemDefinition."""
    return _code_of(resource)


def _code_of(resource: dict[str, Any]) -> str:
    return next(
        (
            str(i.get("value"))
            for i in resource.get("identifier") or []
            if i.get("system") == PACKAGE_SYSTEM
        ),
        "",
    )


def items_of(plan: dict[str, Any]) -> list[Item]:
    out = []
    for action in plan.get("action") or []:
        codings = ((action.get("code") or [{}])[0] or {}).get("coding") or [{}]
        coding = codings[0]
        if coding.get("system") != ITEM_SYSTEM or not coding.get("code"):
            continue
        quantity = next(
            (
                int(e.get("valueInteger", 0))
                for e in action.get("extension") or []
                if e.get("url") == QUANTITY_EXT
            ),
            0,
        )
        out.append(Item(str(coding["code"]), quantity))
    return out


def _price_of(definition: dict[str, Any] | None) -> Decimal:
    for group in (definition or {}).get("propertyGroup") or []:
        for component in group.get("priceComponent") or []:
            amount = component.get("amount") or {}
            if component.get("type") == "base" and amount.get("value") is not None:
                return Decimal(str(amount["value"])).quantize(Decimal("0.01"))
    return Decimal("0.00")


def _package(plan: dict[str, Any], price: dict[str, Any] | None) -> Package:
    title_en = next(
        (
            str(e.get("valueString"))
            for e in plan.get("extension") or []
            if e.get("url") == TITLE_EN_EXT
        ),
        "",
    )
    return Package(
        id=str(plan["id"]),
        code=_code_of(plan),
        title=str(plan.get("title") or plan.get("name") or plan["id"]),
        title_en=title_en,
        description=str(plan.get("description") or ""),
        status="active" if plan.get("status") == "active" else "retired",
        price=_price_of(price),
        items=items_of(plan),
        price_id=str(price["id"]) if price else None,
        plan=plan,
    )


async def _write(engine: FhirEngine, conn: AsyncConnection, body: dict[str, Any]) -> dict[str, Any]:
    async with as_platform():
        repo = engine.repository(conn)
        if body.get("id"):
            result = await repo.update(body["resourceType"], body["id"], body)
            content = result.stored.content
        else:
            content = (await repo.create(body)).content
    written: dict[str, Any] = orjson.loads(content or "{}")
    return written


async def _read(engine: FhirEngine, conn: AsyncConnection, type_: str, id_: str) -> dict[str, Any]:
    try:
        async with as_platform():
            stored = await engine.repository(conn).read(type_, id_)
    except FhirError:
        raise refuse(NotFound, "unknown-package", f"{type_}/{id_} does not exist") from None
    body: dict[str, Any] = orjson.loads(stored.content or "{}")
    return body


async def _price_for(
    engine: FhirEngine, conn: AsyncConnection, plan: dict[str, Any]
) -> dict[str, Any] | None:
    code = _code_of(plan)
    if not code:
        return None
    found = await search(
        engine, conn, "ChargeItemDefinition", [("identifier", f"{PACKAGE_SYSTEM}|{code}")]
    )
    mine = f"PlanDefinition/{plan['id']}"
    return next((d for d in found if priced_plan(d) == mine), None)


# -- reading ---------------------------------------------------------------------------


async def get_package(engine: FhirEngine, conn: AsyncConnection, package: str) -> Package:
    """The package ``PlanDefinition/<id>`` (or a bare id); NotFound ``unknown-package``."""
    id_ = package.removeprefix("PlanDefinition/")
    if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", id_):
        raise refuse(NotFound, "unknown-package", f"{package!r} is not a package")
    plan = await _read(engine, conn, "PlanDefinition", id_)
    if not is_package(plan):
        raise refuse(NotFound, "unknown-package", f"PlanDefinition/{id_} is not a package")
    return _package(plan, await _price_for(engine, conn, plan))


async def list_packages(
    engine: FhirEngine, conn: AsyncConnection, *, retired: bool = False
) -> list[Package]:
    """Published packages (free first, then by price and title); ``retired`` adds those."""
    params = [("type", f"{PLAN_TYPE_SYSTEM}|{PLAN_TYPE}")]
    if not retired:
        params.append(("status", "active"))
    plans = await search(engine, conn, "PlanDefinition", params)
    prices = await search(
        engine, conn, "ChargeItemDefinition", [("identifier", f"{PACKAGE_SYSTEM}|")]
    )
    by_plan: dict[str, dict[str, Any]] = {}
    for definition in prices:
        plan_ref = priced_plan(definition)
        if plan_ref:
            by_plan.setdefault(plan_ref, definition)
    found = [_package(p, by_plan.get(f"PlanDefinition/{p['id']}")) for p in plans if is_package(p)]
    return sorted(found, key=lambda p: (p.status != "active", p.price, p.title, p.id))


async def by_code(engine: FhirEngine, conn: AsyncConnection, code: str) -> Package | None:
    plans = await search(
        engine, conn, "PlanDefinition", [("identifier", f"{PACKAGE_SYSTEM}|{code}")]
    )
    plan = next((p for p in plans if is_package(p)), None)
    return None if plan is None else _package(plan, await _price_for(engine, conn, plan))


# -- publishing ------------------------------------------------------------------------


async def do_publish(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    spec: Spec,
    region: str = "CN",
    region_name: str | None = None,
) -> Package:
    """Publish a new package (PlanDefinition + ChargeItemDefinition, both active)."""
    if await by_code(engine, conn, spec.code) is not None:
        raise refuse(Refused, "package-exists", f"a package with code {spec.code!r} exists")
    plan = await _write(
        engine, conn, plan_body(spec, status="active", region=region, region_name=region_name)
    )
    price = await _write(
        engine,
        conn,
        price_body(
            spec, plan_id=plan["id"], status="active", region=region, region_name=region_name
        ),
    )
    return _package(plan, price)


async def do_edit(
    engine: FhirEngine, conn: AsyncConnection, *, package: str, spec: Spec
) -> Package:
    """Change an active package's title, items and price (its code stays). Contracts name
    the PlanDefinition, so their counts follow the new quantities; orders already created
    keep the price they were made with."""
    current = await get_package(engine, conn, package)
    if current.status != "active":
        raise refuse(Refused, "package-retired", f"{current.ref} is retired")
    spec = Spec(current.code, spec.title, spec.title_en, spec.description, spec.price, spec.items)
    jurisdiction = (current.plan.get("jurisdiction") or [{}])[0]
    region = str(((jurisdiction.get("coding") or [{}])[0]).get("code") or "CN")
    region_name = jurisdiction.get("text")
    plan = plan_body(spec, status="active", region=region, region_name=region_name)
    plan["id"] = current.id
    plan = await _write(engine, conn, plan)
    price = price_body(
        spec, plan_id=current.id, status="active", region=region, region_name=region_name
    )
    if current.price_id:
        price["id"] = current.price_id
    return _package(plan, await _write(engine, conn, price))


async def do_retire(engine: FhirEngine, conn: AsyncConnection, *, package: str) -> Package:
    """Take a package off sale (both resources ``retired``); contracts keep it."""
    current = await get_package(engine, conn, package)
    if current.status != "active":
        raise refuse(Refused, "package-retired", f"{current.ref} is already retired")
    plan = await _write(engine, conn, {**current.plan, "status": "retired"})
    price = None
    if current.price_id:
        definition = await _read(engine, conn, "ChargeItemDefinition", current.price_id)
        price = await _write(engine, conn, {**definition, "status": "retired"})
    return _package(plan, price)


def catalogue() -> dict[str, Any]:
    """The default catalogue shipped with the module (``data/catalogue.toml``)."""
    text = (
        resources.files("smartmed.contracting")
        .joinpath("data/catalogue.toml")
        .read_text(encoding="utf-8")
    )
    return tomllib.loads(text)


async def ensure_catalogue(engine: FhirEngine, conn: AsyncConnection) -> list[str]:
    """Publish every package of the default catalogue that the database does not have yet
    (by code; edited or retired ones are left alone). Returns the references of all
    catalogue packages (``PlanDefinition/<id>``), in catalogue order. Idempotent; runs in
    the caller's transaction."""
    data = catalogue()
    # Two processes seeding a new database at once publish each package once.
    await advisory_lock(conn, "contracting:catalogue", is_postgres=engine.db.is_postgres)
    refs = []
    for entry in data["package"]:
        existing = await by_code(engine, conn, entry["code"])
        if existing is None:
            spec = check_spec(
                code=entry["code"],
                title=entry["title"],
                title_en=entry.get("title_en", ""),
                description=entry.get("description", ""),
                price=entry["price"],
                items=[(i["code"], i["quantity"]) for i in entry["items"]],
            )
            existing = await do_publish(
                engine, conn, spec=spec, region=data["region"], region_name=data["region_name"]
            )
        refs.append(existing.ref)
    return refs


async def seed_if_empty(engine: FhirEngine) -> None:
    """Publish the default catalogue when the database has no package at all (a new
    database: the first look at the packages seeds it). Retired packages count as
    packages, so a catalogue administrators emptied stays empty."""
    async with engine.db.read() as conn:
        found = await search(
            engine,
            conn,
            "PlanDefinition",
            [("type", f"{PLAN_TYPE_SYSTEM}|{PLAN_TYPE}"), ("_elements", "id")],
        )
    if not found:
        async with engine.db.write() as conn:
            await ensure_catalogue(engine, conn)


# -- choosing and buying ---------------------------------------------------------------


async def check_signing_package(
    engine: FhirEngine, conn: AsyncConnection, package: str | None
) -> None:
    """A package named when applying or signing must be a free package on sale: a paid one
    is bought for the application or contract afterwards (:func:`do_choose`)."""
    if package is None:
        return
    if not package.startswith("PlanDefinition/"):
        raise refuse(Invalid, "unknown-package", f"{package} is not a service package")
    found = await get_package(engine, conn, package)
    if found.status != "active":
        raise refuse(Refused, "package-retired", f"{found.ref} is no longer offered")
    if not found.free:
        raise refuse(
            Refused, "package-needs-payment", f"{found.ref} is paid: buy it for the contract"
        )


async def renewable_package(
    engine: FhirEngine, conn: AsyncConnection, package: str | None
) -> str | None:
    """What a renewal carries over: a free package; a paid one is bought again for the new
    contract year (it was paid for one year)."""
    if not package or not package.startswith("PlanDefinition/"):
        return package
    try:
        found = await get_package(engine, conn, package)
    except FhirError:
        return None
    return package if found.free else None


@dataclass(frozen=True, slots=True)
class Choice:
    contract: dict[str, Any]
    package: Package
    order: Order | None  # a paid package: pay this order; None: active now (free)


async def _open_contract(
    engine: FhirEngine, conn: AsyncConnection, contract_id: str, at: datetime
) -> dict[str, Any]:
    contract = await access_contract(engine, conn, contract_id)
    if contract.get("status") == PENDING or is_in_force(contract, at):
        return contract
    raise refuse(Refused, "not-active", f"Contract/{contract_id} is not pending or in force")


async def do_choose(
    engine: FhirEngine,
    conn: AsyncConnection,
    *,
    contract_id: str,
    package: str,
    actor: str,
    now: datetime | None = None,
) -> Choice:
    """The resident (or their representative) chooses ``package`` for their pending
    application or contract in force. Free: named on the contract now. Paid: an order to
    pay (a created, unexpired one for the same package is reused); the package is named
    when the payment is confirmed."""
    from smartmed.contracting.lifecycle import do_set_package

    at = now or now_utc()
    chosen = await get_package(engine, conn, package)
    if chosen.status != "active":
        raise refuse(Refused, "package-retired", f"{chosen.ref} is no longer offered")
    contract = await _open_contract(engine, conn, contract_id, at)
    patient = patient_of(contract)
    assert patient is not None
    await check_signer(engine, conn, actor=actor, patient=patient, at=at)
    await lock_patient(engine, conn, patient)
    contract = await _open_contract(engine, conn, contract_id, at)
    current = package_of(contract)
    if current == chosen.ref:
        raise refuse(Refused, "package-chosen", f"{chosen.ref} is already on this contract")
    if current is not None:
        try:
            active = await get_package(engine, conn, current)
        except FhirError:
            active = None
        if active is not None and not active.free:
            raise refuse(Refused, "package-active", f"this contract already has the paid {current}")
    if chosen.free:
        updated = await do_set_package(engine, conn, contract_id=contract_id, package=chosen.ref)
        return Choice(updated, chosen, None)
    if chosen.price_ref is None:
        raise refuse(Invalid, "unknown-package", f"{chosen.ref} has no price")
    target = f"Contract/{contract_id}"
    for order in await payments.list_orders(conn, subject=actor, target=target):
        if (
            order.state == "created"
            and order.expires_at > at.replace(tzinfo=None)
            and await _definition_of(engine, conn, order.charge_item) == chosen.price_ref
            and order.amount == chosen.price
        ):
            return Choice(contract, chosen, order)
    order = await payments.create_order(
        engine,
        conn,
        subject=actor,
        target=target,
        description=chosen.title,
        amount=chosen.price,
        purpose="package",
        code={
            "coding": [{"system": PLAN_TYPE_SYSTEM, "code": PLAN_TYPE}],
            "text": chosen.title,
        },
        definition=chosen.price_ref,
        beneficiary=patient,
    )
    return Choice(contract, chosen, order)


async def _definition_of(engine: FhirEngine, conn: AsyncConnection, charge_item: str) -> str | None:
    """The ChargeItemDefinition an order's ChargeItem was priced by."""
    kind, _, id_ = charge_item.partition("/")
    try:
        async with as_platform():
            stored = await engine.repository(conn).read(kind, id_)
    except FhirError:
        return None
    body = orjson.loads(stored.content or "{}")
    return next(
        (
            str(s["reference"])
            for s in body.get("supportingInformation") or []
            if str(s.get("reference", "")).startswith("ChargeItemDefinition/")
        ),
        None,
    )


async def _package_of_order(
    engine: FhirEngine, conn: AsyncConnection, charge_item: str
) -> Package | None:
    definition = await _definition_of(engine, conn, charge_item)
    if definition is None:
        return None
    try:
        price = await _read(engine, conn, "ChargeItemDefinition", definition.split("/", 1)[1])
    except FhirError:
        return None
    plan_ref = priced_plan(price)
    if plan_ref is None:
        return None
    try:
        return await get_package(engine, conn, plan_ref)
    except FhirError:
        return None


async def _other_orders(
    engine: FhirEngine, conn: AsyncConnection, *, target: str, package: Package, but: str
) -> list[Order]:
    """Paid or fulfilled orders for ``package`` on ``target`` other than ``but``."""
    out = []
    for order in await payments.list_orders(conn, target=target):
        if order.id == but or order.state not in ("paid", "fulfilled"):
            continue
        if await _definition_of(engine, conn, order.charge_item) == package.price_ref:
            out.append(order)
    return out


async def activate_paid(engine: FhirEngine, conn: AsyncConnection, *, event: PaymentEvent) -> str:
    """Name the bought package on the contract and mark the order fulfilled; what happened
    (``activated``, ``already``, ``refunded:<why>``, ``ignored``). An order that cannot be
    honoured (contract closed, payer not the resident or their representative, bought twice)
    is refunded in full."""
    from smartmed.contracting.lifecycle import do_set_package

    if event.purpose != "package" or not event.target.startswith("Contract/"):
        return "ignored"
    package = await _package_of_order(engine, conn, event.charge_item)
    if package is None:
        return "ignored"
    contract_id = event.target.split("/", 1)[1]
    at = now_utc()

    async def give_back(why: str) -> str:
        await payments.refund(
            engine,
            conn,
            order_id=event.order_id,
            reason=f"package not activated: {why}",
            by=event.target,
        )
        return f"refunded:{why}"

    try:
        contract = await access_contract(engine, conn, contract_id)
    except FhirError:
        return await give_back("no-contract")
    patient = patient_of(contract)
    assert patient is not None
    await lock_patient(engine, conn, patient)
    order = await payments.get_order(conn, event.order_id)
    if order is None or order.state not in ("paid", "fulfilled"):
        return "ignored"  # refunded meanwhile, or redelivered after the fact
    try:
        contract = await _open_contract(engine, conn, contract_id, at)
        await check_signer(engine, conn, actor=event.subject, patient=patient, at=at)
    except (Refused, Forbidden, NotFound) as exc:
        return await give_back(str(getattr(exc, "reason", "error")))
    if package_of(contract) == package.ref:
        if order.state == "paid" and await _other_orders(
            engine, conn, target=event.target, package=package, but=order.id
        ):
            return await give_back("bought-twice")
        if order.state == "paid":
            await payments.mark_fulfilled(engine, conn, order_id=order.id, by=event.target)
        return "already"
    await do_set_package(engine, conn, contract_id=contract_id, package=package.ref)
    await payments.mark_fulfilled(engine, conn, order_id=order.id, by=event.target)
    return "activated"


async def refund_unused(
    engine: FhirEngine, conn: AsyncConnection, *, contract_id: str, reason: str, by: str
) -> list[str]:
    """Give back what was paid for the packages of a contract that will never run (an
    application rejected or withdrawn): a refund of every paid order for it is queued
    (the payments module carries it out and tells the payer). The orders refunded."""
    refunded = []
    for order in await payments.list_orders(conn, target=f"Contract/{contract_id}"):
        if order.purpose != "package" or order.state not in ("paid", "fulfilled"):
            continue
        try:
            await payments.refund(engine, conn, order_id=order.id, reason=reason, by=by)
        except Conflict:  # nothing left to give back on it
            continue
        refunded.append(order.id)
    return refunded


async def deactivate_refunded(
    engine: FhirEngine, conn: AsyncConnection, *, event: PaymentEvent
) -> str:
    """A refunded package order takes its package off the contract (unless another paid
    order for the same package keeps it)."""
    from smartmed.contracting.lifecycle import do_set_package

    if event.purpose != "package" or not event.target.startswith("Contract/"):
        return "ignored"
    package = await _package_of_order(engine, conn, event.charge_item)
    if package is None:
        return "ignored"
    contract_id = event.target.split("/", 1)[1]
    try:
        contract = await access_contract(engine, conn, contract_id)
    except FhirError:
        return "ignored"
    patient = patient_of(contract)
    assert patient is not None
    await lock_patient(engine, conn, patient)
    contract = await access_contract(engine, conn, contract_id)
    if package_of(contract) != package.ref or contract.get("status") not in (PENDING, ACTIVE):
        return "ignored"
    if await _other_orders(engine, conn, target=event.target, package=package, but=event.order_id):
        return "kept"
    await do_set_package(engine, conn, contract_id=contract_id, package=None)
    return "deactivated"


@on_payment("paid", name="contracting.package-paid")
async def on_package_paid(ctx: JobContext, event: PaymentEvent) -> None:
    async with ctx.engine.db.write() as conn:
        await activate_paid(ctx.engine, conn, event=event)


@on_payment("refunded", name="contracting.package-refunded")
async def on_package_refunded(ctx: JobContext, event: PaymentEvent) -> None:
    async with ctx.engine.db.write() as conn:
        await deactivate_refunded(ctx.engine, conn, event=event)
