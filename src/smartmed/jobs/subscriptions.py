"""FHIR R4 criteria-based Subscriptions: checks at create, matching at write, delivery jobs.

- **Check** (a write-hook check, before the resource is stored): criteria must be
  ``Type?query`` with a known type and parameters the server searches; channel type
  rest-hook or websocket; a rest-hook endpoint must be http(s) and not an internal,
  loopback, link-local or private address unless its host is allow-listed in
  ``SMARTMED_SUBSCRIPTION_ALLOWED_HOSTS`` (no server-side request forgery). A
  ``requested`` subscription is stored ``active`` (the server is ready at once).
- **Bookkeeping** (after-write hook on Subscription, same transaction): the
  ``subscription`` table row with the owner — the principal that created it.
- **Matching** (after-write hook on every type, same transaction — STYLE 9: matched at
  write time, the worker only delivers): a created/updated resource is matched against
  the active subscriptions of its type by running ``criteria&_id=<id>`` on the index
  rows just written; each match enqueues a ``subscription.deliver`` job keyed by
  subscription and version, so a version is delivered to a subscription once.
- **Delivery** (a job per notification, with its own timeout, so a slow endpoint never
  holds up others): the owner must be allowed to read the version (``may_read``), the
  endpoint is checked again after DNS resolution; a failure is retried with back-off
  and counted; after ``SMARTMED_SUBSCRIPTION_MAX_FAILURES`` consecutive failures the
  Subscription's status becomes ``error`` (a new version, with ``error`` text).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson
import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir import jsonio
from smartmed.fhir.errors import FhirError, Invalid
from smartmed.fhir.hooks import current_principal
from smartmed.fhir.search.service import match_ids, parse
from smartmed.jobs.dispatch import load_version
from smartmed.jobs.queue import enqueue, insert_ignore
from smartmed.jobs.registry import JobContext, job
from smartmed.jobs.tables import subscription

if TYPE_CHECKING:
    from smartmed.fhir.context import FhirEngine
    from smartmed.identity.principal import Principal

log = structlog.get_logger("smartmed.jobs.subscriptions")

CHANNELS = frozenset({"rest-hook", "websocket"})
PAYLOADS = frozenset({"application/fhir+json", "application/json"})
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".lan", ".home.arpa")


class DeliveryFailed(Exception):
    """A rest-hook endpoint did not accept a notification."""


# -- checks --------------------------------------------------------------------------


def allowed_hosts(raw: str) -> frozenset[str]:
    """The allow-list setting as lower-case ``host`` or ``host:port`` entries."""
    return frozenset(h.strip().lower() for h in raw.split(",") if h.strip())


def is_internal_ip(address: str) -> bool:
    """Whether an IP literal is not a public unicast address (loopback, private, ...)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def is_internal_host(host: str) -> bool:
    """Whether a URL host names an internal address, judged without DNS."""
    try:
        return is_internal_ip(host)
    except ValueError:
        name = host.lower().rstrip(".")
        # A single-label name resolves through the search domains to a local machine.
        return name == "localhost" or name.endswith(_INTERNAL_SUFFIXES) or "." not in name


def _host_allowed(host: str, port: int | None, allowed: frozenset[str]) -> bool:
    host = host.lower()
    return host in allowed or (port is not None and f"{host}:{port}" in allowed)


def check_endpoint(endpoint: Any, allowed: frozenset[str]) -> None:
    """Refuse a rest-hook endpoint that is not http(s) or points inside the deployment."""
    where = "Subscription.channel.endpoint"
    if not isinstance(endpoint, str) or not endpoint:
        raise Invalid("a rest-hook channel needs an endpoint", expression=where)
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        raise Invalid(
            f"channel endpoint {endpoint!r} is not a valid URL", expression=where
        ) from None
    if parts.scheme not in ("http", "https"):
        raise Invalid(
            f"channel endpoint must be an http or https URL, not {parts.scheme or 'none'!r}",
            expression=where,
        )
    host = parts.hostname
    if not host:
        raise Invalid(f"channel endpoint {endpoint!r} has no host", expression=where)
    if parts.username or parts.password:
        raise Invalid("channel endpoint may not carry credentials", expression=where)
    if not _host_allowed(host, port, allowed) and is_internal_host(host):
        raise Invalid(
            f"channel endpoint host {host!r} is an internal address; not allowed "
            "(SMARTMED_SUBSCRIPTION_ALLOWED_HOSTS lists exceptions)",
            expression=where,
        )


async def check_resolved(endpoint: str, allowed: frozenset[str]) -> None:
    """At delivery: the endpoint's host must not resolve to an internal address."""
    check_endpoint(endpoint, allowed)
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if _host_allowed(host, parts.port, allowed):
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise DeliveryFailed(f"cannot resolve {host}: {exc}") from None
    for info in infos:
        if is_internal_ip(str(info[4][0])):
            raise DeliveryFailed(f"{host} resolves to internal address {info[4][0]}; refused")


def split_criteria(engine: FhirEngine, criteria: Any) -> tuple[str, str]:
    """``Type?query`` -> (type, query), refusing what the server cannot evaluate."""
    where = "Subscription.criteria"
    if not isinstance(criteria, str) or not criteria.strip():
        raise Invalid("Subscription.criteria is required", expression=where)
    type_, _, query = criteria.strip().partition("?")
    if type_ not in engine.resource_types:
        raise Invalid(f"criteria {criteria!r}: unknown resource type {type_!r}", expression=where)
    items = parse_qsl(query, keep_blank_values=True)
    if query and not items:
        raise Invalid(f"criteria {criteria!r}: the query cannot be parsed", expression=where)
    for key, _ in items:
        if key.startswith("_") and key not in ("_id", "_lastUpdated", "_tag", "_profile"):
            raise Invalid(f"criteria {criteria!r}: {key} is not allowed here", expression=where)
    try:
        parse(engine.services, type_, items, strict=True)
    except Invalid as exc:
        raise Invalid(
            f"criteria {criteria!r}: {exc.issues[0].diagnostics}", expression=where
        ) from None
    return type_, query


def make_check(engine: FhirEngine) -> Any:
    """The Subscription write check for ``engine`` (runs before the resource is stored)."""

    def check(body: dict[str, Any]) -> None:
        split_criteria(engine, body.get("criteria"))
        channel = body.get("channel") or {}
        kind = channel.get("type")
        if kind not in CHANNELS:
            raise Invalid(
                f"channel type {kind!r} is not supported (supported: rest-hook, websocket)",
                expression="Subscription.channel.type",
            )
        payload = channel.get("payload")
        if payload is not None and payload not in PAYLOADS:
            raise Invalid(
                f"channel payload {payload!r} is not supported (application/fhir+json or none)",
                expression="Subscription.channel.payload",
            )
        if kind == "rest-hook":
            check_endpoint(
                channel.get("endpoint"), allowed_hosts(engine.settings.subscription_allowed_hosts)
            )
        for header in channel.get("header") or []:
            if ":" not in header or "\n" in header or "\r" in header:
                raise Invalid(
                    f"channel header {header!r} must be 'Name: value'",
                    expression="Subscription.channel.header",
                )
        # R4 subscription.html#status: the server sets requested -> active when it accepts.
        if body.get("status") == "requested":
            body["status"] = "active"

    return check


# -- bookkeeping and matching --------------------------------------------------------


def owner_claims(principal: Principal | None) -> str | None:
    """The creating principal as JSON claims (rebuilt by ``principal_from_claims``)."""
    if principal is None:
        return None
    return orjson.dumps(
        {
            "sub": principal.subject,
            "client_id": principal.client_id,
            "scope": str(principal.scopes),
            "roles": [
                {"role": str(r.role), "organization": r.organization} for r in principal.roles
            ],
            "fhirUser": principal.fhir_user,
            "patient": principal.patient,
            "jti": principal.token_id,
        }
    ).decode()


def owner_principal(owner: str | None) -> Principal | None:
    """The stored owner back as a principal (None: created by the platform itself)."""
    if owner is None:
        return None
    from smartmed.identity.service import principal_from_claims

    return principal_from_claims(orjson.loads(owner))


def make_record(engine: FhirEngine) -> Any:
    """After-write hook on Subscription: keep the ``subscription`` row in step."""

    async def record(
        conn: AsyncConnection, _type: str, id_: str, action: str, content: str | None
    ) -> None:
        if action == "delete" or content is None:
            await conn.execute(subscription.delete().where(subscription.c.id == id_))
            return
        body = orjson.loads(content)
        type_, query = split_criteria(engine, body.get("criteria"))
        channel = body.get("channel") or {}
        values = {
            "resource_type": type_,
            "query": query,
            "status": body.get("status", "off"),
            "channel": channel.get("type", ""),
            "endpoint": channel.get("endpoint"),
            "payload": channel.get("payload"),
            "headers": orjson.dumps(channel.get("header") or []).decode(),
        }
        existing = (
            await conn.execute(select(subscription.c.status).where(subscription.c.id == id_))
        ).first()
        if existing is None:
            owner = owner_claims(current_principal.get())
            await conn.execute(
                insert_ignore(conn, subscription, ["id"]).values(
                    id=id_, owner=owner, failures=0, **values
                )
            )
        else:
            if values["status"] == "active" and existing.status != "active":
                values["failures"] = 0  # re-activated by its owner: count afresh
            # The owner stays the creator: an update never hands the feed to someone else.
            await conn.execute(
                update(subscription).where(subscription.c.id == id_).values(**values)
            )

    return record


def make_matcher(engine: FhirEngine) -> Any:
    """After-write hook on each batch of writes: enqueue deliveries for matching
    subscriptions. One NOTIFY and one subscription lookup per batch, not per resource."""

    async def match(conn: AsyncConnection, writes: list[tuple[str, str, str, str | None]]) -> None:
        if engine.db.is_postgres:
            # Wake the dispatchers at commit (NOTIFY is transactional, and PostgreSQL
            # folds repeats within one transaction into one).
            await conn.exec_driver_sql("NOTIFY smartmed_outbox")
        live = [(t, i, c) for t, i, action, c in writes if action != "delete" and c is not None]
        if not live:
            return  # a deleted resource matches no criteria
        types = sorted({t for t, _, _ in live})
        rows = (
            await conn.execute(
                select(subscription.c.id, subscription.c.query, subscription.c.resource_type).where(
                    subscription.c.resource_type.in_(types), subscription.c.status == "active"
                )
            )
        ).all()
        if not rows:
            return
        by_type: dict[str, list[Any]] = {}
        for row in rows:
            by_type.setdefault(row.resource_type, []).append(row)
        for type_, id_, content in live:
            subs = by_type.get(type_)
            if not subs:
                continue
            version = int(orjson.loads(content)["meta"]["versionId"])
            for sub in subs:
                query = f"{sub.query}&_id={id_}" if sub.query else f"_id={id_}"
                try:
                    matched = id_ in await match_ids(conn, engine.services, type_, query)
                except FhirError:
                    log.warning("subscription criteria no longer parse", subscription=sub.id)
                    continue
                if matched:
                    await enqueue(
                        conn,
                        "subscription.deliver",
                        {"subscription": sub.id, "type": type_, "id": id_, "version": version},
                        key=f"sub:{sub.id}:{type_}/{id_}/{version}",
                    )

    return match


def install(engine: FhirEngine) -> None:
    """Register the Subscription check and the write hooks on ``engine`` (once)."""
    hooks = engine.services.hooks
    if any(
        getattr(c, "__qualname__", "").startswith("make_check")
        for c in hooks.checks.get("Subscription", ())
    ):
        return
    hooks.add_check("Subscription", make_check(engine))
    hooks.add_after_write("Subscription", make_record(engine))
    hooks.add_after_batch(make_matcher(engine))


# -- delivery ------------------------------------------------------------------------


@job("subscription.deliver", max_attempts=5, backoff_seconds=10, timeout_seconds=60)
async def deliver(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Send one notification of one subscription (rest-hook POST or websocket ping)."""
    from smartmed.access import may_read

    engine = ctx.engine
    sub_id = payload["subscription"]
    async with engine.db.read() as conn:
        row = (await conn.execute(select(subscription).where(subscription.c.id == sub_id))).first()
        if row is None or row.status != "active":
            return  # deleted, switched off or in error since the match: nothing to send
        resource = await load_version(conn, payload["type"], payload["id"], payload["version"])
        if resource is None:
            return
        if not await may_read(engine, conn, owner_principal(row.owner), resource):
            log.info("notification withheld: owner may not read", subscription=sub_id)
            return
    if row.channel == "websocket":
        from smartmed.jobs.websocket import hub

        await hub.publish(engine, sub_id)
        return
    settings = engine.settings
    try:
        await check_resolved(row.endpoint, allowed_hosts(settings.subscription_allowed_hosts))
        headers = {}
        for header in orjson.loads(row.headers):
            name, _, value = header.partition(":")
            headers[name.strip()] = value.strip()
        body = b""
        if row.payload:
            body = jsonio.dumps(resource).encode()
            headers["Content-Type"] = "application/fhir+json"
        async with httpx.AsyncClient(
            timeout=settings.subscription_timeout_seconds, follow_redirects=False
        ) as http:
            response = await http.post(row.endpoint, content=body, headers=headers)
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"endpoint answered {response.status_code}")
    except (DeliveryFailed, httpx.HTTPError, Invalid) as exc:
        reason = str(exc) or type(exc).__name__
        if await _record_failure(engine, sub_id, reason):
            return  # now in error: no more retries
        raise DeliveryFailed(reason) from None
    if row.failures:
        async with engine.db.write() as conn:
            await conn.execute(
                update(subscription).where(subscription.c.id == sub_id).values(failures=0)
            )


async def _record_failure(engine: FhirEngine, sub_id: str, reason: str) -> bool:
    """Count a failed delivery; put the Subscription in error at the limit. True if so."""
    limit = engine.settings.subscription_max_failures
    async with engine.db.write() as conn:
        failures = (
            await conn.execute(
                update(subscription)
                .where(subscription.c.id == sub_id, subscription.c.status == "active")
                .values(failures=subscription.c.failures + 1)
                .returning(subscription.c.failures)
            )
        ).scalar_one_or_none()
        if failures is None or failures < limit:
            return False
        repo = engine.repository(conn)
        stored = await repo.read("Subscription", sub_id)
        body = orjson.loads(stored.content or "{}")
        body["status"] = "error"
        body["error"] = f"{failures} consecutive failed deliveries; last: {reason}"[:1000]
        token = current_principal.set(None)
        try:
            await repo.update("Subscription", sub_id, body)
        finally:
            current_principal.reset(token)
    log.warning("subscription in error", subscription=sub_id, failures=failures)
    return True
