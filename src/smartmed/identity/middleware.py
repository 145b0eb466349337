"""SMART scope enforcement on every FHIR request (an ASGI middleware on ``/fhir/R4``).

A request with ``Authorization: Bearer`` is always validated: the token becomes a
:class:`Principal` on ``request.state.principal`` and its scopes are checked for the
route's type and interaction (each entry of a batch/transaction). Without a header the
request passes only while ``SMARTMED_AUTH_REQUIRED`` is false; ``metadata`` and
``.well-known/*`` are always open.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smartmed.crypto.masking import mask_text
from smartmed.fhir.errors import FhirError, Unauthorized, operation_outcome
from smartmed.fhir.hooks import AuditRecord, current_access, current_principal, touched
from smartmed.fhir.model import utcnow
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
    """Authenticates bearer tokens, enforces SMART scopes, installs the access guard and
    writes the audit record of every FHIR request.

    The audit record (``FhirEngine.audit``) is written before the last byte of the
    response is sent, so nothing is disclosed without its record.
    """

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
        engine = request.app.state.fhir
        call = _Call(request, rest)
        touched_reset = touched.set(call.touched)
        resets: list[tuple[Any, Any]] = []

        async def send_audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                call.status = int(message["status"])
            elif not message.get("more_body", False) and engine.audit is not None:
                await _audit(engine, call)
            await send(message)

        try:
            try:
                header = request.headers.get("authorization")
                if header is None:
                    if engine.settings.auth_required:
                        raise Unauthorized("this server needs a bearer access token", error=None)
                else:
                    kind, _, token = header.partition(" ")
                    if kind.lower() != "bearer" or not token.strip():
                        raise Unauthorized(
                            "the Authorization header must be 'Bearer <token>'",
                            error="invalid_request",
                        )
                    principal = await get_identity(request.app).principal(request, token.strip())
                    call.principal = principal
                    scope.setdefault("state", {})["principal"] = principal
                    resets.append((current_principal, current_principal.set(principal)))
                    control = engine.access
                    guard = control.guard_for(principal) if control is not None else None
                    resets.append((current_access, current_access.set(guard)))
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
                call.detail = exc.issues[0].diagnostics if exc.issues else None
                status, headers, body_bytes = _respond(exc)
                await send_audited(
                    {"type": "http.response.start", "status": status, "headers": headers}
                )
                await send_audited({"type": "http.response.body", "body": body_bytes})
                return
            await self.app(scope, receive, send_audited)
        finally:
            for var, token_ in reversed(resets):
                var.reset(token_)
            touched.reset(touched_reset)


class _Call:
    """What the audit record of one FHIR request needs."""

    __slots__ = ("request", "rest", "status", "principal", "detail", "touched")

    def __init__(self, request: Request, rest: str) -> None:
        self.request = request
        self.rest = rest
        self.status = 0
        self.principal: Principal | None = None
        self.detail: str | None = None
        self.touched: list[tuple[str, str | None]] = []


_ACTIONS = {
    "read": "R",
    "vread": "R",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "search-type": "E",
    "search-system": "E",
    "create": "C",
    "update": "U",
    "patch": "U",
    "delete": "D",
}


async def _audit(engine: Any, call: _Call) -> None:
    request = call.request
    method = request.method
    if call.rest == "" and method == "POST":
        type_, subtype = "*", "batch/transaction"
    else:
        found = interactions(method, call.rest)
        type_, subtype = found[0] if found else ("*", "read")
    if subtype.startswith("$"):
        action, query = "E", subtype
        subtype = "operation"
    else:
        action, query = _ACTIONS.get(subtype, "E"), None
    if subtype in ("search-type", "search-system"):
        # Search values may be ID numbers or phones: the audit keeps them masked.
        query = mask_text(unquote(request.url.query or ""))
    if call.status < 400:
        outcome = "0"
    elif call.status < 500:
        outcome = "4"
    else:
        outcome = "8"
    entities = tuple(dict.fromkeys(ref for ref, _ in call.touched))[:_MAX_ENTITIES]
    patients = _patients(call.touched)
    principal = call.principal
    record = AuditRecord(
        action=action,
        subtype=subtype,
        outcome=outcome,
        recorded=utcnow(),
        agent=principal.fhir_user if principal else None,
        account=principal.subject if principal else None,
        client_id=principal.client_id if principal else None,
        roles=tuple(sorted({str(r.role) for r in principal.roles})) if principal else (),
        source_ip=request.client.host if request.client else None,
        purpose_of_use=request.headers.get("x-purpose-of-use"),
        entities=entities or ((f"{type_}",) if type_ != "*" else ()),
        patients=patients,
        query=query,
        detail=call.detail,
    )
    await engine.audit.record(record)


_MAX_ENTITIES = 200
_PATIENT_REF = re.compile(r'"reference":\s*"(Patient/[A-Za-z0-9\-.]{1,64})"')


def _patients(touched: list[tuple[str, str | None]]) -> tuple[str, ...]:
    """The patients whose records the touched resources are: the Patients themselves and
    every Patient a touched resource references (read from its JSON; no query)."""
    found: set[str] = set()
    for ref, content in touched[:_MAX_ENTITIES]:
        if ref.startswith("Patient/"):
            found.add(ref)
        if content is not None and "Patient/" in content:
            found.update(_PATIENT_REF.findall(content))
    return tuple(sorted(found))


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
