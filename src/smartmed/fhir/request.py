"""Reading FHIR HTTP requests: content negotiation, JSON bodies, Prefer, base URL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Request

from smartmed.config import Settings
from smartmed.fhir import jsonio
from smartmed.fhir.errors import Invalid, NotAcceptable, PayloadTooLarge, UnsupportedMediaType

FHIR_JSON = "application/fhir+json; charset=utf-8"
_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir"}
_ACCEPTABLE = _JSON_TYPES | {"*/*", "application/*", "json"}
_FORMAT_JSON = {"json", "application/json", "application/fhir+json", "application/json+fhir"}


def negotiate(request: Request) -> None:
    """406 when the client asks only for formats we don't serve (we serve FHIR JSON)."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        if fmt.split(";")[0].strip() not in _FORMAT_JSON:
            raise NotAcceptable(
                f"_format={fmt} is not served; this server speaks application/fhir+json"
            )
        return
    accept = request.headers.get("accept")
    if not accept:
        return
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        if media in _ACCEPTABLE:
            return
    raise NotAcceptable(f"Accept: {accept} is not served; this server speaks application/fhir+json")


async def read_body(request: Request, settings: Settings) -> bytes:
    """The request body, refusing more than the configured maximum (413)."""
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body has {declared} bytes; the limit is {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(
    request: Request, settings: Settings, *, patch: bool = False
) -> tuple[bytes, Any]:
    """The raw body and its parsed JSON; 415 for other media types, 400 for bad JSON."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    allowed = {"application/json-patch+json"} if patch else _JSON_TYPES
    if content_type not in allowed:
        wanted = " or ".join(sorted(allowed))
        raise UnsupportedMediaType(
            f"Content-Type '{content_type or 'none'}' is not accepted; send {wanted}"
        )
    raw = await read_body(request, settings)
    if not raw.strip():
        raise Invalid("the request body is empty")
    try:
        body = jsonio.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"the body is not valid JSON: {exc}") from None
    check_depth(body, settings.max_json_depth)
    if not patch and not isinstance(body, dict):
        raise Invalid("the body must be a JSON object (a FHIR resource)")
    return raw, body


def check_depth(document: Any, limit: int) -> None:
    """Refuse JSON nested deeper than ``limit`` (no real resource needs it; it costs CPU)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise Invalid(f"the JSON is nested deeper than {limit} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))


@dataclass(frozen=True, slots=True)
class Prefer:
    """The ``Prefer`` header: ``return=`` and ``handling=``."""

    ret: str = "representation"
    handling: str = "lenient"

    @classmethod
    def parse(cls, request: Request) -> Prefer:
        """Read the header; unknown values fall back to the defaults."""
        ret, handling = "representation", "lenient"
        for part in request.headers.get("prefer", "").split(","):
            for token in part.split(";"):
                name, _, value = token.strip().partition("=")
                value = value.strip().strip('"')
                if name == "return" and value in ("minimal", "representation", "OperationOutcome"):
                    ret = value
                elif name == "handling" and value in ("strict", "lenient"):
                    handling = value
        return cls(ret, handling)


def base_url(request: Request) -> str:
    """The absolute FHIR base URL for links and Location headers."""
    configured: str | None = request.app.state.fhir.settings.base_url
    if configured:
        return configured.rstrip("/")
    return str(request.base_url).rstrip("/") + "/fhir/R4"


def parse_instant_param(raw: str, name: str) -> datetime:
    """A ``_since``/``_at`` value (an instant or date) as naive UTC."""
    text = raw.strip().replace(" ", "+")  # '+' in a query string arrives as a space
    try:
        if len(text) == 10:
            moment = datetime.fromisoformat(text)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(
            f"{name}={raw!r} is not an instant such as 2024-01-31T08:00:00Z", expression=name
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment
