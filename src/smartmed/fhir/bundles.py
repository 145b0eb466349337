"""``batch`` and ``transaction`` Bundles (https://hl7.org/fhir/R4/http.html#transaction).

A transaction runs in one database transaction: entries are processed in the order the
specification sets (DELETE, POST, PUT/PATCH, GET/HEAD), ``urn:uuid:`` full URLs and
conditional references (``Patient?identifier=...``) are resolved first and rewritten in
every resource, and any failure rolls the whole bundle back. A batch runs each entry in
its own savepoint and reports each entry's outcome.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir import interactions, jsonio
from smartmed.fhir.errors import (
    FhirError,
    Invalid,
    OutcomeIssue,
    PreconditionFailed,
    operation_outcome,
)
from smartmed.fhir.interactions import Outcome
from smartmed.fhir.model import ID_RE, fhir_instant
from smartmed.fhir.repository import EngineServices, Repository, new_id
from smartmed.fhir.search.service import match_ids, search_bundle

_ORDER = {
    "DELETE": 0,
    "POST": 1,
    "POST-ID": 1,
    "POST-EXISTING": 1,
    "PUT": 2,
    "PATCH": 2,
    "GET": 3,
    "HEAD": 3,
}
_METHODS = frozenset({"DELETE", "POST", "PUT", "PATCH", "GET", "HEAD"})
_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    412: "Precondition Failed",
    422: "Unprocessable Entity",
}


@dataclass(slots=True)
class Entry:
    """One request entry of a bundle, parsed."""

    index: int
    method: str
    type_: str
    id_: str | None
    version: int | None
    query: str | None
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: str | None
    if_match: int | None


def parse_entries(bundle: dict[str, Any], resource_types: frozenset[str]) -> list[Entry]:
    """Check the bundle's request entries and parse their URLs; Invalid on the first bad one."""
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise Invalid("Bundle.entry must be an array", expression="Bundle.entry")
    parsed = []
    for i, raw in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        if not isinstance(raw, dict):
            raise Invalid("a bundle entry must be an object", expression=where)
        request = raw.get("request")
        if not isinstance(request, dict):
            raise Invalid(
                "entry.request is required in a batch or transaction", expression=f"{where}.request"
            )
        method = request.get("method")
        url = request.get("url")
        if method not in _METHODS:
            raise Invalid(f"unsupported method {method!r}", expression=f"{where}.request.method")
        if not isinstance(url, str) or not url:
            raise Invalid("entry.request.url is required", expression=f"{where}.request.url")
        resource = raw.get("resource")
        if method in ("POST", "PUT") and not isinstance(resource, dict):
            raise Invalid(f"a {method} entry needs a resource", expression=f"{where}.resource")
        if method == "PATCH" and not isinstance(resource, dict):
            raise Invalid(
                "a PATCH entry needs a Binary resource holding the JSON Patch",
                expression=f"{where}.resource",
            )
        type_, id_, version, query = _parse_url(url, resource_types, f"{where}.request.url")
        if method == "POST" and (id_ is not None or query is not None):
            raise Invalid(
                "a POST entry's url must be a resource type", expression=f"{where}.request.url"
            )
        if method in ("PUT", "PATCH", "DELETE") and id_ is None and query is None:
            raise Invalid(
                f"a {method} entry needs an id or search criteria",
                expression=f"{where}.request.url",
            )
        full_url = raw.get("fullUrl")
        parsed.append(
            Entry(
                i,
                method,
                type_,
                id_,
                version,
                query,
                resource,
                full_url if isinstance(full_url, str) else None,
                request.get("ifNoneExist"),
                _etag_version(request.get("ifMatch"), f"{where}.request.ifMatch"),
            )
        )
    return parsed


async def transaction(
    conn: AsyncConnection,
    services: EngineServices,
    bundle: dict[str, Any],
    types: frozenset[str],
    *,
    return_resources: bool,
    base_url: str = "",
) -> str:
    """Process a transaction on ``conn`` (the caller's transaction); the response Bundle JSON."""
    entries = parse_entries(bundle, types)
    repo = Repository(conn, services)
    await _resolve_identities(repo, entries)
    outcomes: dict[int, Outcome] = {}
    ordered = sorted(entries, key=lambda e: _ORDER[e.method])
    # The creates of a transaction are written together: one statement per table for the
    # whole bundle instead of several per resource (they run after the DELETEs, as the
    # spec orders them, and before any PUT/PATCH/GET).
    creates = [e for e in ordered if e.method == "POST-ID"]
    first_later = next((i for i, e in enumerate(ordered) if _ORDER[e.method] > 1), len(ordered))
    for entry in ordered[:first_later]:
        if entry.method == "DELETE":
            outcomes[entry.index] = await _run(repo, entry, base_url)
    if creates:
        await _create_all(repo, creates, outcomes)
    for entry in ordered:
        if entry.index not in outcomes:
            outcomes[entry.index] = await _run(repo, entry, base_url)
    return _response_bundle("transaction-response", entries, outcomes, {}, return_resources)


async def _run(repo: Repository, entry: Entry, base_url: str) -> Outcome:
    """Execute one entry, locating any error inside the bundle."""
    try:
        return await _execute(repo, entry, base_url)
    except FhirError as exc:
        exc.issues = [_in_entry(entry, issue) for issue in exc.issues]
        raise


async def _create_all(repo: Repository, creates: list[Entry], outcomes: dict[int, Outcome]) -> None:
    """Write the transaction's new resources in one batch."""
    items: list[tuple[dict[str, Any], str | None]] = []
    for entry in creates:
        assert entry.resource is not None
        try:
            interactions._check_type(entry.type_, entry.resource)
        except FhirError as exc:
            exc.issues = [_in_entry(entry, issue) for issue in exc.issues]
            raise
        items.append((entry.resource, entry.id_))
    try:
        stored = await repo.create_many(items)
    except FhirError as exc:
        if exc.position is not None:
            failed = creates[exc.position]
            exc.issues = [_in_entry(failed, issue) for issue in exc.issues]
        raise
    for entry, version in zip(creates, stored, strict=True):
        outcomes[entry.index] = Outcome(201, version)


def _in_entry(entry: Entry, issue: OutcomeIssue) -> OutcomeIssue:
    """Locate an entry's issue inside the bundle: ``Bundle.entry[1].resource.ofType(T)...``."""
    where = f"Bundle.entry[{entry.index}]"
    expression = issue.expression
    if expression is None or expression.startswith("Bundle.entry["):
        return issue if expression else replace(issue, expression=where)
    head, dot, rest = expression.partition(".")
    if head == entry.type_:
        located = f"{where}.resource.ofType({head}){dot}{rest}"
    else:
        located = f"{where}.resource.{expression}"
    return replace(issue, expression=located)


async def batch(
    conn: AsyncConnection,
    services: EngineServices,
    bundle: dict[str, Any],
    types: frozenset[str],
    *,
    return_resources: bool,
    base_url: str = "",
) -> str:
    """Process a batch: each entry in its own savepoint; the response Bundle JSON."""
    raw_entries = bundle.get("entry", [])
    if not isinstance(raw_entries, list):
        raise Invalid("Bundle.entry must be an array", expression="Bundle.entry")
    repo = Repository(conn, services)
    outcomes: dict[int, Outcome] = {}
    errors: dict[int, FhirError] = {}
    entries: list[Entry] = []
    for i, raw in enumerate(raw_entries):
        try:
            entry = parse_entries({"entry": [raw]}, types)[0]
            entry.index = i
        except FhirError as exc:
            exc.issues = [
                replace(
                    issue,
                    expression=(issue.expression or "").replace(
                        "Bundle.entry[0]", f"Bundle.entry[{i}]", 1
                    )
                    or None,
                )
                for issue in exc.issues
            ]
            errors[i] = exc
            entries.append(Entry(i, "GET", "", None, None, None, None, None, None, None))
            continue
        entries.append(entry)
    for entry in entries:
        if entry.index in errors:
            continue
        try:
            async with conn.begin_nested():
                outcomes[entry.index] = await _execute(repo, entry, base_url)
        except FhirError as exc:
            exc.issues = [_in_entry(entry, issue) for issue in exc.issues]
            errors[entry.index] = exc
    return _response_bundle("batch-response", entries, outcomes, errors, return_resources)


async def _resolve_identities(repo: Repository, entries: list[Entry]) -> None:
    """Assign ids to created resources and rewrite urn:uuid and conditional references."""
    mapping: dict[str, str] = {}
    for entry in entries:
        if entry.method == "POST":
            assert entry.resource is not None
            target_id: str | None = None
            if entry.if_none_exist:
                ids = await match_ids(repo.conn, repo.services, entry.type_, entry.if_none_exist)
                if len(ids) > 1:
                    raise PreconditionFailed(
                        f"ifNoneExist matched {len(ids)} resources",
                        expression=f"Bundle.entry[{entry.index}].request.ifNoneExist",
                    )
                target_id = ids[0] if ids else None
            entry.id_ = target_id or new_id()
            if target_id is None:
                entry.if_none_exist = None  # resolved now: the entry creates with this id
                entry.method = "POST-ID"
            else:
                entry.method = "POST-EXISTING"
            if entry.full_url:
                mapping[entry.full_url] = f"{entry.type_}/{entry.id_}"
        elif entry.method == "PUT" and entry.query is not None and entry.full_url:
            ids = await match_ids(repo.conn, repo.services, entry.type_, entry.query)
            if len(ids) == 1:
                mapping[entry.full_url] = f"{entry.type_}/{ids[0]}"
            elif not ids:
                new = entry.resource.get("id") if entry.resource else None
                entry.id_ = new if isinstance(new, str) else new_id()
                mapping[entry.full_url] = f"{entry.type_}/{entry.id_}"
        elif entry.method == "PUT" and entry.id_ and entry.full_url:
            mapping[entry.full_url] = f"{entry.type_}/{entry.id_}"
    cache: dict[str, str] = {}
    for entry in entries:
        if entry.resource is not None:
            await _rewrite(
                repo, entry.resource, mapping, cache, f"Bundle.entry[{entry.index}].resource"
            )


async def _rewrite(
    repo: Repository, node: Any, mapping: dict[str, str], cache: dict[str, str], path: str
) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                node[key] = await _resolve_reference(
                    repo, value, mapping, cache, f"{path}.reference"
                )
            elif isinstance(value, dict | list):
                await _rewrite(repo, value, mapping, cache, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            await _rewrite(repo, item, mapping, cache, f"{path}[{i}]")


async def _resolve_reference(
    repo: Repository, ref: str, mapping: dict[str, str], cache: dict[str, str], path: str
) -> str:
    if ref in mapping:
        return mapping[ref]
    if ref.startswith(("urn:uuid:", "urn:oid:")):
        raise Invalid(
            f"reference {ref} does not match any fullUrl in the transaction", expression=path
        )
    if "?" in ref and "/" not in ref.split("?", 1)[0]:
        if ref in cache:
            return cache[ref]
        type_, query = ref.split("?", 1)
        ids = await match_ids(repo.conn, repo.services, type_, query)
        if len(ids) != 1:
            raise PreconditionFailed(
                f"conditional reference {ref} matched {len(ids)} resources (exactly 1 needed)",
                expression=path,
            )
        cache[ref] = f"{type_}/{ids[0]}"
        return cache[ref]
    return ref


async def _execute(repo: Repository, entry: Entry, base_url: str) -> Outcome:
    match entry.method:
        case "POST-ID":
            assert entry.resource is not None and entry.id_ is not None
            interactions._check_type(entry.type_, entry.resource)
            return Outcome(201, await repo.create(entry.resource, id_=entry.id_))
        case "POST-EXISTING":
            assert entry.id_ is not None
            return Outcome(200, await repo.read(entry.type_, entry.id_))
        case "POST":
            assert entry.resource is not None
            return await interactions.create(
                repo, entry.type_, entry.resource, if_none_exist=entry.if_none_exist
            )
        case "PUT":
            assert entry.resource is not None
            if entry.query is not None:
                body = entry.resource
                if entry.id_ and "id" not in body:
                    body = {**body, "id": entry.id_}
                return await interactions.conditional_update(
                    repo, entry.type_, entry.query, body, if_match=entry.if_match
                )
            assert entry.id_ is not None
            return await interactions.update(
                repo, entry.type_, entry.id_, entry.resource, if_match=entry.if_match
            )
        case "PATCH":
            assert entry.resource is not None and entry.id_ is not None
            return await interactions.patch(
                repo, entry.type_, entry.id_, _binary_patch(entry), if_match=entry.if_match
            )
        case "DELETE":
            if entry.query is not None:
                return await interactions.conditional_delete(repo, entry.type_, entry.query)
            assert entry.id_ is not None
            return await interactions.delete(repo, entry.type_, entry.id_)
        case _:  # GET / HEAD
            if entry.id_ is not None and entry.version is not None:
                return Outcome(200, await repo.vread(entry.type_, entry.id_, entry.version))
            if entry.id_ is not None:
                return Outcome(200, await repo.read(entry.type_, entry.id_))
            items = parse_qsl(entry.query or "", keep_blank_values=True)
            found = await search_bundle(
                repo.conn, repo.services, entry.type_, items, base_url=base_url, strict=False
            )
            return Outcome(200, body=found)


def _binary_patch(entry: Entry) -> Any:
    resource = entry.resource or {}
    if resource.get("resourceType") != "Binary" or "data" not in resource:
        raise Invalid(
            "a PATCH entry must carry a Binary with the JSON Patch as data",
            expression=f"Bundle.entry[{entry.index}].resource",
        )
    try:
        return jsonio.loads(base64.b64decode(resource["data"]))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise Invalid(
            f"the Binary data is not a JSON Patch: {exc}",
            expression=f"Bundle.entry[{entry.index}].resource.data",
        ) from exc


def _response_bundle(
    kind: str,
    entries: list[Entry],
    outcomes: dict[int, Outcome],
    errors: dict[int, FhirError],
    return_resources: bool,
    base_url: str = "",
) -> str:
    parts: list[str] = []
    for entry in sorted(entries, key=lambda e: e.index):
        if entry.index in errors:
            exc = errors[entry.index]
            failed = {
                "status": f"{exc.status} {_REASONS.get(exc.status, '')}".strip(),
                "outcome": operation_outcome(exc.issues),
            }
            parts.append(orjson.dumps({"response": failed}).decode())
            continue
        outcome = outcomes[entry.index]
        response: dict[str, Any] = {
            "status": f"{outcome.status} {_REASONS.get(outcome.status, '')}".strip()
        }
        stored = outcome.stored
        head = ""
        resource_json: str | None = None
        if stored is not None:
            if outcome.status in (200, 201) and entry.method != "GET":
                response["location"] = outcome.location
            response["etag"] = stored.etag
            response["lastModified"] = fhir_instant(stored.last_updated)
            head = f'"fullUrl":{orjson.dumps(stored.reference).decode()},'
            if return_resources or entry.method in ("GET", "HEAD"):
                resource_json = stored.content
        elif outcome.body is not None:
            resource_json = outcome.body
        if outcome.issues:
            response["outcome"] = operation_outcome(outcome.issues)
        resource_part = f'"resource":{resource_json},' if resource_json else ""
        parts.append(
            "{" + head + resource_part + '"response":' + orjson.dumps(response).decode() + "}"
        )
    return '{"resourceType":"Bundle","type":"' + kind + '","entry":[' + ",".join(parts) + "]}"


def _parse_url(
    url: str, types: frozenset[str], where: str
) -> tuple[str, str | None, int | None, str | None]:
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        raise Invalid("entry.request.url must be relative to the server base", expression=where)
    segments = [s for s in parts.path.split("/") if s]
    query = parts.query if "?" in url else None
    if not segments or segments[0] not in types:
        raise Invalid(f"unknown resource type in url {url!r}", expression=where)
    type_ = segments[0]
    id_ = version = None
    if len(segments) >= 2:
        id_ = segments[1]
        if not ID_RE.match(id_):
            raise Invalid(f"'{id_}' is not a valid id", expression=where)
    if len(segments) == 4 and segments[2] == "_history" and segments[3].isdigit():
        version = int(segments[3])
    elif len(segments) not in (1, 2):
        raise Invalid(f"unsupported url {url!r}", expression=where)
    return type_, id_, version, query


def _etag_version(value: Any, where: str) -> int | None:
    if value is None:
        return None
    return parse_etag(value, where)


def parse_etag(value: Any, where: str = "If-Match") -> int:
    """The version number in an ETag such as ``W/"3"``; Invalid if it is not one."""
    text = str(value).strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise Invalid(f'{value!r} is not a version ETag like W/"3"', expression=where)
    return int(text)


__all__ = ["OutcomeIssue", "batch", "parse_entries", "parse_etag", "transaction"]
