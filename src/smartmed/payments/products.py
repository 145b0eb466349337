"""What a resident may buy through ``POST /api/payments/orders``, and at which price.

The price never comes from the client. A product is a FHIR resource; its resolver reads
it and says what it costs. Built in: ``ChargeItemDefinition`` (status active, price = the
``base`` priceComponent of its first propertyGroup, in CNY). Other modules register their
own with :func:`register_product` (e.g. a service package's own resource type).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir import jsonio
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import Invalid, Unprocessable


@dataclass(frozen=True, slots=True)
class Product:
    amount: Decimal  # CNY
    description: str
    target: str  # what the order pays for
    purpose: str
    code: dict[str, Any] | None = None
    definition: str | None = None


Resolver = Callable[[FhirEngine, AsyncConnection, str, str, str | None], Awaitable[Product]]
_RESOLVERS: dict[str, Resolver] = {}


def register_product(resource_type: str, resolver: Resolver) -> None:
    """``resolver(engine, conn, product_ref, subject, for_ref) -> Product`` for a type."""
    _RESOLVERS[resource_type] = resolver


async def resolve(
    engine: FhirEngine, conn: AsyncConnection, product: str, subject: str, for_: str | None
) -> Product:
    type_ = product.split("/", 1)[0]
    resolver = _RESOLVERS.get(type_)
    if resolver is None:
        known = ", ".join(sorted(_RESOLVERS))
        raise Invalid(f"{type_} cannot be bought here (products: {known})", expression="product")
    return await resolver(engine, conn, product, subject, for_)


async def charge_item_definition(
    engine: FhirEngine, conn: AsyncConnection, product: str, subject: str, for_: str | None
) -> Product:
    stored = await engine.repository(conn).read(*product.split("/", 1))
    resource = jsonio.loads(stored.content or "{}")
    if resource.get("status") != "active":
        raise Unprocessable(f"{product} is not on sale (status {resource.get('status')})")
    price = None
    for group in resource.get("propertyGroup") or []:
        for component in group.get("priceComponent") or []:
            if component.get("type") == "base" and isinstance(component.get("amount"), dict):
                price = component["amount"]
                break
        if price is not None:
            break
    if price is None or price.get("currency", "CNY") != "CNY" or price.get("value") is None:
        raise Unprocessable(f"{product} has no base price in CNY")
    code = resource.get("code")
    title = resource.get("title") or (code or {}).get("text") or product
    return Product(
        amount=Decimal(str(price["value"])),
        description=str(title)[:500],
        target=for_ or product,
        purpose="package",
        code=code,
        definition=product,
    )


register_product("ChargeItemDefinition", charge_item_definition)
