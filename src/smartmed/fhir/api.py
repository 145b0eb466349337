"""The FHIR R4 REST API at ``/fhir/R4``: a short route table, one repository call each.

=======  =====================================  ==========================
method   path                                   interaction
=======  =====================================  ==========================
GET      /metadata                              capabilities
POST     /                                      batch / transaction
GET      /_history                              history-system
GET      /{type}                                search-type
POST     /{type}/_search                        search-type (form body)
POST     /{type}                                create (If-None-Exist)
PUT      /{type}?criteria                       conditional update
DELETE   /{type}?criteria                       conditional delete
GET      /{type}/_history                       history-type
GET      /{type}/{id}                           read
PUT      /{type}/{id}                           update (If-Match)
PATCH    /{type}/{id}                           patch (JSON Patch)
DELETE   /{type}/{id}                           delete
GET      /{type}/{id}/_history                  history-instance
GET      /{type}/{id}/_history/{vid}            vread
GET      /{type}/{id}/{compartment type}        search-compartment
*        /$op, /{type}/$op, /{type}/{id}/$op    operations
=======  =====================================  ==========================
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import APIRouter, Request, Response
from starlette.convertors import Convertor, register_url_convertor

from smartmed.fhir import bundles, interactions
from smartmed.fhir.capability import capability_statement
from smartmed.fhir.context import FhirEngine
from smartmed.fhir.errors import (
    Forbidden,
    Invalid,
    NotFound,
    OutcomeIssue,
    UnsupportedMediaType,
    operation_outcome,
)
from smartmed.fhir.history import history
from smartmed.fhir.hooks import current_access
from smartmed.fhir.idempotency import SavedResponse, claim, request_hash, save
from smartmed.fhir.interactions import Outcome
from smartmed.fhir.model import StoredResource, fhir_instant, http_date
from smartmed.fhir.operations import OperationCall, parse_inputs
from smartmed.fhir.request import (
    FHIR_JSON,
    Prefer,
    base_url,
    json_body,
    negotiate,
    parse_instant_param,
)
from smartmed.fhir.search.compartment import compartment_search
from smartmed.fhir.search.service import search_bundle

PREFIX = "/fhir/R4"


class _TypeConvertor(Convertor[str]):
    regex = "[A-Z][A-Za-z]{1,63}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _IdConvertor(_TypeConvertor):
    regex = r"[A-Za-z0-9\-\.]{1,64}"


class _OpConvertor(_TypeConvertor):
    regex = r"\$[A-Za-z][A-Za-z0-9_\-]*"


register_url_convertor("ftype", _TypeConvertor())
register_url_convertor("fid", _IdConvertor())
register_url_convertor("fop", _OpConvertor())

# Operations a person (a caller under an access policy) may call; the rest (view runs,
# exports) read the store wholesale and are for system clients.
PERSON_OPERATIONS = frozenset({"validate", "everything", "meta", "meta-add", "meta-delete"})


def _engine(request: Request) -> FhirEngine:
    engine: FhirEngine = request.app.state.fhir
    return engine


def _type(request: Request, engine: FhirEngine) -> str:
    type_: str = request.path_params["type"]
    if type_ not in engine.resource_types:
        raise NotFound(f"unknown resource type '{type_}'", expression="type")
    return type_


_RENDERING = frozenset({"_format", "_pretty"})


def _same_version(header: str, version: int) -> bool:
    """Whether an If-None-Match value names ``version`` (``W/"2"``, ``"2"`` or ``2``)."""
    try:
        return bundles.parse_etag(header) == version
    except Invalid:
        return False


def _if_match(request: Request) -> int | None:
    value = request.headers.get("if-match")
    return None if value is None else bundles.parse_etag(value)


def resource_response(
    request: Request,
    stored: StoredResource,
    status: int,
    *,
    prefer: Prefer,
    location: bool = False,
    issues: list[OutcomeIssue] | None = None,
) -> Response:
    """A single resource as the response, honouring ``Prefer: return=``."""
    headers = {"ETag": stored.etag, "Last-Modified": http_date(stored.last_updated)}
    if location:
        headers["Location"] = (
            f"{base_url(request)}/{stored.type}/{stored.id}/_history/{stored.version_id}"
        )
    if prefer.ret == "minimal":
        return Response(status_code=status, headers=headers)
    if prefer.ret == "OperationOutcome":
        text = f"{stored.type}/{stored.id} version {stored.version_id} stored"
        body = operation_outcome(issues or [OutcomeIssue("information", "informational", text)])
        return Response(orjson.dumps(body), status, headers, FHIR_JSON)
    return Response(stored.content, status, headers, FHIR_JSON)


def _outcome_response(
    request: Request, outcome: Outcome, prefer: Prefer, *, location: bool
) -> Response:
    if outcome.stored is not None:
        return resource_response(
            request,
            outcome.stored,
            outcome.status,
            prefer=prefer,
            location=location and outcome.status in (200, 201),
            issues=outcome.issues,
        )
    if outcome.status == 204 and prefer.ret != "OperationOutcome":
        return Response(status_code=204)
    body = orjson.dumps(operation_outcome(outcome.issues))
    return Response(body, 200 if outcome.status == 204 else outcome.status, media_type=FHIR_JSON)


async def _idempotent(request: Request, engine: FhirEngine, raw: bytes, work: Any) -> Response:
    """Run ``work(conn)`` in a write transaction, replaying the saved answer on a retry."""
    key = request.headers.get("idempotency-key")
    async with engine.db.write() as conn:
        if key is not None:
            fingerprint = request_hash(request.method, request.url.path, raw)
            saved = await claim(
                conn, scope="", key=key, fingerprint=fingerprint, is_postgres=engine.db.is_postgres
            )
            if saved is not None:
                return Response(
                    saved.body or None,
                    saved.status,
                    saved.headers | {"Idempotent-Replayed": "true"},
                    FHIR_JSON if saved.body else None,
                )
        response: Response = await work(conn)
        if key is not None:
            headers = {
                k: v
                for k, v in response.headers.items()
                if k.lower() in ("location", "etag", "last-modified")
            }
            body = bytes(response.body).decode() if response.body else ""
            await save(
                conn, scope="", key=key, response=SavedResponse(response.status_code, headers, body)
            )
        return response


def build_router() -> APIRouter:
    """The FHIR REST routes."""
    router = APIRouter(prefix=PREFIX)

    @router.get("/metadata", include_in_schema=False)
    async def metadata(request: Request) -> Response:
        negotiate(request)
        engine = _engine(request)
        body = capability_statement(engine, base_url(request))
        return Response(body, 200, media_type=FHIR_JSON)

    @router.post("", include_in_schema=False)
    @router.post("/", include_in_schema=False)
    async def bundle(request: Request) -> Response:
        negotiate(request)
        engine = _engine(request)
        raw, body = await json_body(request, engine.settings)
        if body.get("resourceType") != "Bundle":
            raise Invalid(
                "the server base accepts only a batch or transaction Bundle",
                expression="resourceType",
            )
        kind = body.get("type")
        if kind not in ("batch", "transaction"):
            raise Invalid("Bundle.type must be batch or transaction", expression="Bundle.type")
        prefer = Prefer.parse(request)

        async def work(conn: Any) -> Response:
            process = bundles.transaction if kind == "transaction" else bundles.batch
            text = await process(
                conn,
                engine.services,
                body,
                engine.resource_types,
                return_resources=prefer.ret != "minimal",
                base_url=base_url(request),
            )
            return Response(text, 200, media_type=FHIR_JSON)

        return await _idempotent(request, engine, raw, work)

    @router.get("/_history", include_in_schema=False)
    async def history_system(request: Request) -> Response:
        return await _history(request, None, None)

    @router.get("/{type:ftype}/_history", include_in_schema=False)
    async def history_type(request: Request) -> Response:
        return await _history(request, _type(request, _engine(request)), None)

    @router.get("/{type:ftype}/{id:fid}/_history", include_in_schema=False)
    async def history_instance(request: Request) -> Response:
        type_ = _type(request, _engine(request))
        return await _history(request, type_, request.path_params["id"])

    @router.get("/{type:ftype}/{id:fid}/_history/{vid}", include_in_schema=False)
    async def vread(request: Request) -> Response:
        negotiate(request)
        engine = _engine(request)
        type_ = _type(request, engine)
        vid = request.path_params["vid"]
        if not vid.isdigit():
            raise NotFound(f"version '{vid}' is not known", expression="vid")
        async with engine.db.read() as conn:
            stored = await engine.repository(conn).vread(type_, request.path_params["id"], int(vid))
        return resource_response(request, stored, 200, prefer=Prefer())

    @router.post("/{type:ftype}/_search", include_in_schema=False)
    async def search_post(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            raise UnsupportedMediaType("_search takes an application/x-www-form-urlencoded body")
        raw = await request.body()
        items = list(request.query_params.multi_items()) + parse_qsl(
            raw.decode(), keep_blank_values=True
        )
        return await _search(request, items)

    async def operation(request: Request) -> Response:
        negotiate(request)
        engine = _engine(request)
        params = request.path_params
        type_ = _type(request, engine) if "type" in params else None
        id_ = params.get("id")
        level = "instance" if id_ else ("type" if type_ else "system")
        op = engine.operations.find(params["op"][1:], level, type_)
        if current_access.get() is not None and op.name not in PERSON_OPERATIONS:
            raise Forbidden(
                f"${op.name} is for system clients; people reach data through the "
                "interactions their access policy allows"
            )
        body = None
        if request.method == "POST":
            _, body = await json_body(request, engine.settings)
        elif op.affects_state:
            raise Invalid(f"${op.name} changes data and must be called with POST")
        inputs = parse_inputs(op, body, list(request.query_params.multi_items()))
        if id_ is not None and type_ is not None:
            async with engine.db.read() as conn:
                await engine.repository(conn).read(type_, id_)  # 404/410 for a missing target
        call = OperationCall(level, type_, id_, inputs, engine, base_url(request))
        result = await op.handler(call)
        if result.body is not None:
            return Response(result.body, result.status, media_type=result.media_type)
        return Response(orjson.dumps(result.resource), result.status, media_type=FHIR_JSON)

    for path in ("/{op:fop}", "/{type:ftype}/{op:fop}", "/{type:ftype}/{id:fid}/{op:fop}"):
        router.add_api_route(path, operation, methods=["GET", "POST"], include_in_schema=False)
    # Compartment search; `_history` and `$op` never match a type, so no route shadows another.
    router.add_api_route(
        "/{type:ftype}/{id:fid}/{ctype:ftype}",
        compartment_search,
        methods=["GET"],
        include_in_schema=False,
    )

    @router.get("/{type:ftype}", include_in_schema=False)
    async def search(request: Request) -> Response:
        return await _search(request, list(request.query_params.multi_items()))

    @router.post("/{type:ftype}", include_in_schema=False)
    async def create(request: Request) -> Response:
        negotiate(request)
        engine = _engine(request)
        type_ = _type(request, engine)
        raw, body = await json_body(request, engine.settings)
        prefer = Prefer.parse(request)
        if_none_exist = request.headers.get("if-none-exist")
        criteria = [(k, v) for k, v in request.query_params.multi_items() if k not in _RENDERING]
        if if_none_exist is None and criteria:
            # Some clients (fhirpy's get_or_create) send the criteria of a conditional
            # create in the URL instead of If-None-Exist; honour them rather than ignore
            # them, which would silently create a duplicate.
            if_none_exist = urlencode(criteria)

        async def work(conn: Any) -> Response:
            outcome = await interactions.create(
                engine.repository(conn), type_, body, if_none_exist=if_none_exist
            )
            return _outcome_response(request, outcome, prefer, location=True)

        return await _idempotent(request, engine, raw, work)

    @router.put("/{type:ftype}", include_in_schema=False)
    async def conditional_update(request: Request) -> Response:
        negotiate(request)
        engine = _engine(request)
        type_ = _type(request, engine)
        query = request.url.query
        if not query:
            raise Invalid("a conditional update needs search criteria in the URL")
        _, body = await json_body(request, engine.settings)
        prefer = Prefer.parse(request)
        async with engine.db.write() as conn:
            outcome = await interactions.conditional_update(
                engine.repository(conn), type_, query, body, if_match=_if_match(request)
            )
        return _outcome_response(request, outcome, prefer, location=True)

    @router.delete("/{type:ftype}", include_in_schema=False)
    async def conditional_delete(request: Request) -> Response:
        engine = _engine(request)
        type_ = _type(request, engine)
        query = request.url.query
        if not query:
            raise Invalid("a conditional delete needs search criteria in the URL")
        async with engine.db.write() as conn:
            outcome = await interactions.conditional_delete(engine.repository(conn), type_, query)
        return _outcome_response(request, outcome, Prefer.parse(request), location=False)

    @router.get("/{type:ftype}/{id:fid}", include_in_schema=False)
    async def read(request: Request) -> Response:
        negotiate(request)
        engine = _engine(request)
        type_ = _type(request, engine)
        async with engine.db.read() as conn:
            stored = await engine.repository(conn).read(type_, request.path_params["id"])
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None and _same_version(if_none_match, stored.version_id):
            return Response(status_code=304, headers={"ETag": stored.etag})
        return resource_response(request, stored, 200, prefer=Prefer())

    @router.put("/{type:ftype}/{id:fid}", include_in_schema=False)
    async def update(request: Request) -> Response:
        negotiate(request)
        engine = _engine(request)
        type_ = _type(request, engine)
        _, body = await json_body(request, engine.settings)
        prefer = Prefer.parse(request)
        async with engine.db.write() as conn:
            outcome = await interactions.update(
                engine.repository(conn),
                type_,
                request.path_params["id"],
                body,
                if_match=_if_match(request),
            )
        return _outcome_response(request, outcome, prefer, location=True)

    @router.patch("/{type:ftype}/{id:fid}", include_in_schema=False)
    async def patch(request: Request) -> Response:
        negotiate(request)
        engine = _engine(request)
        type_ = _type(request, engine)
        _, operations = await json_body(request, engine.settings, patch=True)
        prefer = Prefer.parse(request)
        async with engine.db.write() as conn:
            outcome = await interactions.patch(
                engine.repository(conn),
                type_,
                request.path_params["id"],
                operations,
                if_match=_if_match(request),
            )
        return _outcome_response(request, outcome, prefer, location=False)

    @router.delete("/{type:ftype}/{id:fid}", include_in_schema=False)
    async def delete(request: Request) -> Response:
        engine = _engine(request)
        type_ = _type(request, engine)
        async with engine.db.write() as conn:
            outcome = await interactions.delete(
                engine.repository(conn), type_, request.path_params["id"]
            )
        return _outcome_response(request, outcome, Prefer.parse(request), location=False)

    # The hottest interactions first: a router tries its routes in order, and each try
    # costs a few microseconds in FastAPI. The GET patterns cannot shadow one another
    # (a type starts upper-case, an id has no '_' or '$', an operation starts with '$').
    hot = {f"{PREFIX}/{{type:ftype}}/{{id:fid}}", f"{PREFIX}/{{type:ftype}}"}
    router.routes.sort(
        key=lambda r: getattr(r, "path", "") not in hot or "GET" not in getattr(r, "methods", ())
    )
    return router


async def _search(request: Request, items: list[tuple[str, str]]) -> Response:
    negotiate(request)
    engine = _engine(request)
    type_ = _type(request, engine)
    prefer = Prefer.parse(request)
    async with engine.db.read() as conn:
        body = await search_bundle(
            conn,
            engine.services,
            type_,
            items,
            base_url=base_url(request),
            strict=prefer.handling == "strict",
        )
    return Response(body, 200, media_type=FHIR_JSON)


async def _history(request: Request, type_: str | None, id_: str | None) -> Response:
    negotiate(request)
    engine = _engine(request)
    params = dict(request.query_params)
    count = _int_param(
        params, "_count", engine.settings.default_page_size, 0, engine.settings.max_page_size
    )
    offset = _int_param(params, "_offset", 0, 0, 10**9)
    snapshot = _int_param(params, "_snapshot", 0, 0, 2**62) or None
    since = parse_instant_param(params["_since"], "_since") if "_since" in params else None
    at = parse_instant_param(params["_at"], "_at") if "_at" in params else None
    async with engine.db.read() as conn:
        if id_ is not None and type_ is not None:
            # History of an unknown resource is 404, of a deleted one still its history.
            if not (await history(conn, type_=type_, id_=id_, count=1)).total:
                raise NotFound(f"{type_}/{id_} is not known")
        page = await history(
            conn,
            type_=type_,
            id_=id_,
            since=since,
            at_or_before=at,
            count=count,
            offset=offset,
            snapshot=snapshot,
        )
    base = base_url(request)
    path = "/".join(p for p in (type_, id_, "_history") if p)
    keep = [
        (k, v) for k, v in request.query_params.multi_items() if k not in ("_offset", "_snapshot")
    ]

    def link(relation: str, at_offset: int) -> dict[str, str]:
        query = "&".join(
            f"{k}={v}"
            for k, v in keep + [("_snapshot", str(page.snapshot)), ("_offset", str(at_offset))]
        )
        return {"relation": relation, "url": f"{base}/{path}?{query}"}

    links = [link("self", offset)]
    if offset + count < page.total:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    entries = []
    for entry in page.entries:
        s = entry.stored
        method = {"create": "POST", "update": "PUT", "delete": "DELETE"}[entry.action]
        url = s.type if entry.action == "create" else f"{s.type}/{s.id}"
        status = {"create": "201 Created", "update": "200 OK", "delete": "204 No Content"}[
            entry.action
        ]
        meta = orjson.dumps(
            {
                "request": {"method": method, "url": url},
                "response": {
                    "status": status,
                    "etag": s.etag,
                    "lastModified": fhir_instant(s.last_updated),
                },
            }
        ).decode()[1:-1]
        full_url = orjson.dumps(f"{base}/{s.type}/{s.id}").decode()
        resource = f'"resource":{s.content},' if s.content else ""
        entries.append(f'{{"fullUrl":{full_url},{resource}{meta}}}')
    head = orjson.dumps(
        {"resourceType": "Bundle", "type": "history", "total": page.total, "link": links}
    ).decode()
    body = head[:-1] + ',"entry":[' + ",".join(entries) + "]}"
    return Response(body, 200, media_type=FHIR_JSON)


def _int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    if name not in params:
        return default
    raw = params[name]
    if not raw.isdigit():
        raise Invalid(f"{name} must be a whole number, not {raw!r}", expression=name)
    value = int(raw)
    if value < low:
        raise Invalid(f"{name} must be at least {low}", expression=name)
    return min(value, high)
