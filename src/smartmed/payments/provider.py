"""The payment-provider interface, and the client of the local sandbox provider.

A provider does five things for us (:class:`PaymentProvider`): create a payment for an
order (a page to send the payer to, and the same as a QR payload), say where a payment
stands, close an unpaid one, refund (all or part), and verify and parse its asynchronous
callbacks. Every call is idempotent on our identifiers (``out_trade_no`` = order id,
``out_refund_no`` = refund id), so retrying after a timeout never pays or refunds twice.

:class:`SandboxProvider` speaks HTTP (httpx) to ``SMARTMED_PAYMENTS_SANDBOX_URL``, signing
each request as :mod:`smartmed.payments.signing` describes, exactly as it would speak to a
real provider; the sandbox itself (``smartmed.payments.sandbox``) is served by the same
application but never called in-process. Tests may route an origin to an in-process
transport with :data:`MOUNTS` (no sockets), or run a live server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import orjson

from smartmed.config import Settings
from smartmed.identity.crypto import derive, load_secret
from smartmed.payments.errors import BadCallback, ProviderError, ProviderRejected
from smartmed.payments.signing import sign_headers, verify

# origin ("http://host:port") -> transport; empty in production (real HTTP).
MOUNTS: dict[str, httpx.AsyncBaseTransport] = {}
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    out_trade_no: str
    amount_fen: int
    description: str
    notify_url: str
    return_url: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ProviderPayment:
    """Where a payment stands at the provider."""

    payment_id: str
    state: str  # pending | paid | cancelled | closed
    amount_fen: int
    paid_fen: int
    refunded_fen: int
    transaction_id: str | None  # set once paid
    pay_url: str | None = None
    qr: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderRefund:
    refund_id: str
    out_refund_no: str
    amount_fen: int


@dataclass(frozen=True, slots=True)
class CallbackNotice:
    """A verified callback: a payment succeeded or a refund was made."""

    event: str  # payment | refund
    nonce: str
    out_trade_no: str
    transaction_id: str  # payment: the provider's transaction; refund: our out_refund_no
    amount_fen: int


class PaymentProvider(Protocol):
    """What the payments service needs from a payment provider."""

    name: str

    async def create_payment(self, request: PaymentRequest) -> ProviderPayment: ...

    async def query_payment(self, out_trade_no: str) -> ProviderPayment | None: ...

    async def close_payment(self, out_trade_no: str) -> ProviderPayment: ...

    async def refund(
        self, *, out_trade_no: str, out_refund_no: str, amount_fen: int
    ) -> ProviderRefund: ...

    def parse_callback(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> CallbackNotice: ...


def signing_secret(settings: Settings) -> bytes:
    """The HMAC secret shared with the provider (never logged)."""
    if settings.payments_signing_secret is not None:
        return settings.payments_signing_secret.get_secret_value().encode()
    return derive(load_secret(settings), "payments-sandbox")


def http_client(base_url: str, timeout: float = TIMEOUT_SECONDS) -> httpx.AsyncClient:
    """An httpx client; an origin listed in :data:`MOUNTS` goes to its transport."""
    parts = urlsplit(base_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    transport = MOUNTS.get(origin)
    return httpx.AsyncClient(
        base_url=base_url, timeout=timeout, transport=transport, follow_redirects=False
    )


class SandboxProvider:
    """The local sandbox provider, over HTTP."""

    name = "sandbox"

    def __init__(self, settings: Settings) -> None:
        self.base = settings.payments_sandbox_url.rstrip("/")
        self.merchant = settings.payments_merchant_id
        self._secret = signing_secret(settings)

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        body = orjson.dumps(payload) if payload is not None else b""
        full = f"/sandbox/pay/api{path}"
        headers = sign_headers(self._secret, self.merchant, body, method=method, path=full)
        headers["content-type"] = "application/json"
        try:
            async with http_client(self.base) as http:
                response = await http.request(method, full, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ProviderError(f"payment provider unreachable: {type(exc).__name__}") from None
        if response.status_code == 404 and method == "GET":
            return None
        if 400 <= response.status_code < 500:
            raise ProviderRejected(f"payment provider refused: {_reason(response)}")
        if response.status_code != 200:
            raise ProviderError(f"payment provider answered HTTP {response.status_code}")
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ProviderError("payment provider answered something other than JSON") from None

    async def create_payment(self, request: PaymentRequest) -> ProviderPayment:
        data = await self._call(
            "POST",
            "/payments",
            {
                "out_trade_no": request.out_trade_no,
                "amount_fen": request.amount_fen,
                "description": request.description,
                "notify_url": request.notify_url,
                "return_url": request.return_url,
                "expires_at": request.expires_at.isoformat(),
            },
        )
        return _payment(data)

    async def query_payment(self, out_trade_no: str) -> ProviderPayment | None:
        data = await self._call("GET", f"/payments/{out_trade_no}", None)
        return None if data is None else _payment(data)

    async def close_payment(self, out_trade_no: str) -> ProviderPayment:
        return _payment(await self._call("POST", f"/payments/{out_trade_no}/close", {}))

    async def refund(
        self, *, out_trade_no: str, out_refund_no: str, amount_fen: int
    ) -> ProviderRefund:
        data = await self._call(
            "POST",
            "/refunds",
            {
                "out_trade_no": out_trade_no,
                "out_refund_no": out_refund_no,
                "amount_fen": amount_fen,
            },
        )
        try:
            return ProviderRefund(
                str(data["refund_id"]), str(data["out_refund_no"]), int(data["amount_fen"])
            )
        except (KeyError, TypeError, ValueError):
            raise ProviderError("payment provider's refund answer is incomplete") from None

    def parse_callback(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> CallbackNotice:
        nonce = verify(self._secret, self.merchant, headers, body, now=now)
        try:
            data = orjson.loads(body)
            kind = data["event_type"]
            if kind == "TRANSACTION.SUCCESS":
                return CallbackNotice(
                    "payment",
                    nonce,
                    _text(data["out_trade_no"]),
                    _text(data["transaction_id"]),
                    _fen(data["amount_fen"]),
                )
            if kind == "REFUND.SUCCESS":
                return CallbackNotice(
                    "refund",
                    nonce,
                    _text(data["out_trade_no"]),
                    _text(data["out_refund_no"]),
                    _fen(data["amount_fen"]),
                )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise BadCallback("malformed", "signed callback without the expected fields") from None
        raise BadCallback("malformed", "unknown callback event type")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise ValueError("identifier")
    return value


def _fen(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError("amount")
    return value


def _payment(data: Any) -> ProviderPayment:
    try:
        return ProviderPayment(
            payment_id=str(data["payment_id"]),
            state=str(data["state"]),
            amount_fen=int(data["amount_fen"]),
            paid_fen=int(data["paid_fen"]),
            refunded_fen=int(data["refunded_fen"]),
            transaction_id=data.get("transaction_id"),
            pay_url=data.get("pay_url"),
            qr=data.get("qr"),
        )
    except (KeyError, TypeError, ValueError):
        raise ProviderError("payment provider's answer is incomplete") from None


def _reason(response: httpx.Response) -> str:
    try:
        return str(orjson.loads(response.content).get("message", response.status_code))
    except (orjson.JSONDecodeError, AttributeError):
        return f"HTTP {response.status_code}"


def get_provider(settings: Settings) -> PaymentProvider:
    """The provider the settings name."""
    if settings.payments_provider == "sandbox":
        return SandboxProvider(settings)
    raise ValueError(f"unknown payment provider {settings.payments_provider!r}")  # pragma: no cover
