"""SMART scope enforcement on every FHIR request (an ASGI middleware on ``/fhir/R4``).

A request with ``Authorization: Bearer`` is always validated: the token becomes a
:class:`Principal` on ``request.state.principal`` and its scopes are checked for the
route's type and interaction (each entry of a batch/transaction). Without a header the
request passes only while ``SMARTMED_AUTH_REQUIRED`` is false; ``metadata`` and
``.well-known/*`` are always open.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smartmed.fhir.errors import FhirError, Unauthorized, operation_outcome
from smartmed.fhir.hooks import current_principal
from smartmed.fhir.request import FHIR_JSON
from smartmed.identity.principal import Principal, check_scope
from smartmed.identity.service import get_identity

PREFIX = "/fhir/R4"
_OPEN = ("metadata", ".well-known")
_TYPE_LEVEL = {
    "GET": "search-type",
    "POST": "create",
    "PUT": "update",  # conditional update
    "PATCH": "patch",  # conditional patch
    "DELETE": "delete",  # conditional delete
}


def interactions(method: str, path: str) -> list[tuple[str, str]]:
    """(resource type or ``*``, interaction) pairs a FHIR request needs, from its path."""
    seg = [s for s in path.split("/") if s]
    method = method.upper()
    if not seg:
        return [("*", "search-system")] if method == "GET" else []  # POST /: see the bundle
    head = seg[0]
    if head == "_history":
        return [("*", "history-system")]
    if head.startswith("$"):
        return [("*", head)]
    type_ = head
    if len(seg) == 1:
        return [
            (
                type_,
                _TYPE_LEVEL.get(method, "read"),
            )
        ]
    second = seg[1]
    if second == "_search":
        return [(type_, "search-type")]
    if second == "_history":
        return [(type_, "history-type")]
    if second.startswith("$"):
        return [(type_, second)]
    if len(seg) == 2:
        return [
            (type_, {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "read"))
        ]
    third = seg[2]
    if third == "_history":
        return [(type_, "vread" if len(seg) > 3 else "history-instance")]
    if third.startswith("$"):
        return [(type_, third)]
    return [(third, "search-type")]  # compartment search: /Patient/1/Observation


def bundle_interactions(body: Any) -> list[tuple[str, str]]:
    """What each entry of a batch/transaction Bundle needs."""
    needs: list[tuple[str, str]] = []
    if not isinstance(body, dict):
        return needs
    for entry in body.get("entry") or []:
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            continue
        url = str(request.get("url", ""))
        path = urlsplit(url).path
        if PREFIX in path:
            path = path.split(PREFIX, 1)[1]
        needs += interactions(str(request.get("method", "GET")), path)
    return needs


def _respond(exc: FhirError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [(b"content-type", FHIR_JSON.encode())]
    for name, value in getattr(exc, "headers", {}).items():
        headers.append((name.lower().encode(), value.encode()))
    return exc.status, headers, orjson.dumps(operation_outcome(exc.issues))


class FhirAuthMiddleware:
    """Authenticates bearer tokens and enforces SMART scopes on the FHIR API."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        rest = path[len(PREFIX) :].strip("/")
        if rest.split("/", 1)[0] in _OPEN:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        header = request.headers.get("authorization")
        reset = None
        try:
            if header is None:
                if request.app.state.fhir.settings.auth_required:
                    raise Unauthorized("this server needs a bearer access token", error=None)
                await self.app(scope, receive, send)
                return
            kind, _, token = header.partition(" ")
            if kind.lower() != "bearer" or not token.strip():
                raise Unauthorized(
                    "the Authorization header must be 'Bearer <token>'", error="invalid_request"
                )
            principal = await get_identity(request.app).principal(request, token.strip())
            scope.setdefault("state", {})["principal"] = principal
            reset = current_principal.set(principal)
            if rest == "" and scope["method"] == "POST":
                raw = await request.body()
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    body = None  # the API reports the bad body
                _check(principal, bundle_interactions(body))
                receive = _replay(raw)
            else:
                _check(principal, interactions(scope["method"], rest))
        except FhirError as exc:
            status, headers, body_bytes = _respond(exc)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body_bytes})
            if reset is not None:
                current_principal.reset(reset)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            if reset is not None:
                current_principal.reset(reset)


def _check(principal: Principal, needs: list[tuple[str, str]]) -> None:
    for type_, interaction in needs:
        check_scope(principal, type_, interaction)


def _replay(raw: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return {"type": "http.disconnect"}

    return receive
