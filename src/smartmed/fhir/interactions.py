"""FHIR interactions as plain async functions over a Repository.

The HTTP routes and the batch/transaction processor both call these, so a bundle entry
behaves exactly like the same request sent on its own. Each returns an ``Outcome``
that the caller renders (HTTP response or ``Bundle.entry.response``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from smartmed.fhir import jsonio
from smartmed.fhir.errors import Invalid, OutcomeIssue, PreconditionFailed, Unprocessable
from smartmed.fhir.model import StoredResource
from smartmed.fhir.repository import Repository, advisory_lock
from smartmed.fhir.search.service import match_ids


@dataclass(slots=True)
class Outcome:
    """The result of one interaction, before rendering."""

    status: int
    stored: StoredResource | None = None
    body: str | None = None  # raw JSON for non-resource results (bundles)
    issues: list[OutcomeIssue] = field(default_factory=list)

    @property
    def location(self) -> str | None:
        """``Type/id/_history/vid`` of the written version, for Location headers."""
        s = self.stored
        return f"{s.type}/{s.id}/_history/{s.version_id}" if s else None


async def create(
    repo: Repository, type_: str, body: dict[str, Any], *, if_none_exist: str | None = None
) -> Outcome:
    """Create; with ``If-None-Exist`` return the one match instead, 412 on several."""
    _check_type(type_, body)
    if if_none_exist is not None:
        # Two concurrent conditional creates with the same criteria must not both create.
        await advisory_lock(
            repo.conn, f"{type_}?{if_none_exist}", is_postgres=repo.services.is_postgres
        )
        ids = await match_ids(repo.conn, repo.services, type_, if_none_exist)
        if len(ids) > 1:
            raise PreconditionFailed(
                f"If-None-Exist matched {len(ids)} {type_} resources", expression="If-None-Exist"
            )
        if ids:
            return Outcome(200, await repo.read(type_, ids[0]))
    return Outcome(201, await repo.create(body))


async def update(
    repo: Repository, type_: str, id_: str, body: dict[str, Any], *, if_match: int | None = None
) -> Outcome:
    """Update (or create with the client's id)."""
    result = await repo.update(type_, id_, body, if_match=if_match)
    return Outcome(201 if result.created else 200, result.stored)


async def conditional_update(
    repo: Repository, type_: str, query: str, body: dict[str, Any], *, if_match: int | None = None
) -> Outcome:
    """Update the one resource matching ``query``; create when none; 412 when several."""
    _check_type(type_, body)
    await advisory_lock(repo.conn, f"{type_}?{query}", is_postgres=repo.services.is_postgres)
    ids = await match_ids(repo.conn, repo.services, type_, query)
    if len(ids) > 1:
        raise PreconditionFailed(f"the criteria matched {len(ids)} {type_} resources")
    if ids:
        if "id" in body and body["id"] != ids[0]:
            raise Invalid(
                f"id '{body['id']}' in the body is not the id '{ids[0]}' the criteria matched",
                expression=f"{type_}.id",
            )
        return await update(repo, type_, ids[0], {**body, "id": ids[0]}, if_match=if_match)
    if "id" in body:
        return await update(repo, type_, body["id"], body, if_match=if_match)
    return Outcome(201, await repo.create(body))


async def patch(
    repo: Repository, type_: str, id_: str, operations: Any, *, if_match: int | None = None
) -> Outcome:
    """Apply a JSON Patch (RFC 6902) to the current version and store the result."""
    current = await repo.read(type_, id_)
    if if_match is not None and if_match != current.version_id:
        raise PreconditionFailed(
            f"version {if_match} is stale: {type_}/{id_} is at version {current.version_id}"
        )
    if not isinstance(operations, list):
        raise Invalid("a JSON Patch body must be an array of operations")
    assert current.content is not None
    document = jsonio.loads(current.content)
    try:
        patched = jsonpatch.JsonPatch(operations).apply(document)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
        raise Unprocessable(f"the patch cannot be applied: {exc}") from exc
    if not isinstance(patched, dict):
        raise Unprocessable("the patch must leave a resource object")
    if patched.get("resourceType") != type_ or patched.get("id") != id_:
        raise Unprocessable("a patch may not change resourceType or id")
    # The version being patched is the precondition: a concurrent write makes this 412.
    result = await repo.update(type_, id_, patched, if_match=current.version_id)
    return Outcome(200, result.stored)


async def delete(repo: Repository, type_: str, id_: str) -> Outcome:
    """Delete; deleting what is already gone or never existed is not an error."""
    version = await repo.delete(type_, id_)
    if version is None:
        return Outcome(204, issues=[_info(f"{type_}/{id_} was not live; nothing deleted")])
    return Outcome(204, issues=[_info(f"{type_}/{id_} deleted as version {version}")])


async def conditional_delete(repo: Repository, type_: str, query: str) -> Outcome:
    """Delete the one resource matching ``query``; 412 when several match."""
    ids = await match_ids(repo.conn, repo.services, type_, query)
    if len(ids) > 1:
        raise PreconditionFailed(
            f"the criteria matched {len(ids)} {type_} resources; this server deletes one at a time"
        )
    if not ids:
        return Outcome(204, issues=[_info("no resource matched; nothing deleted")])
    return await delete(repo, type_, ids[0])


def _check_type(type_: str, body: dict[str, Any]) -> None:
    if body.get("resourceType") != type_:
        raise Invalid(
            f"resourceType '{body.get('resourceType')}' does not match the URL type '{type_}'",
            expression="resourceType",
        )


def _info(text: str) -> OutcomeIssue:
    return OutcomeIssue("information", "informational", text)
