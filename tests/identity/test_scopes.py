"""SMART scope parsing and the scope check, without a server."""

from __future__ import annotations

import pytest

from smartmed.fhir.errors import Forbidden
from smartmed.identity.middleware import bundle_interactions, interactions
from smartmed.identity.principal import Principal, check_scope
from smartmed.identity.scopes import ScopeSet, covered_by, parse_resource_scope


def _principal(scope: str) -> Principal:
    return Principal(subject="s", client_id="c", scopes=ScopeSet.parse(scope))


def test_v2_and_v1_scopes() -> None:
    assert parse_resource_scope("patient/Observation.rs").perms == frozenset("rs")  # type: ignore[union-attr]
    assert parse_resource_scope("user/*.read").perms == frozenset("rs")  # type: ignore[union-attr]
    assert parse_resource_scope("user/*.write").perms == frozenset("cud")  # type: ignore[union-attr]
    assert parse_resource_scope("user/*.sr") is None  # out of order
    assert parse_resource_scope("openid") is None
    assert covered_by("system/Patient.rs", ["system/*.cruds"])
    assert not covered_by("user/Patient.rs", ["system/*.cruds"])
    assert not covered_by("system/Patient.cruds", ["system/Patient.rs"])


@pytest.mark.parametrize(
    ("interaction", "allowed"),
    [
        ("read", True),
        ("search-type", True),
        ("create", False),
        ("delete", False),
        ("$validate", True),
    ],
)
def test_check_scope(interaction: str, allowed: bool) -> None:
    principal = _principal("patient/Patient.rs")
    if allowed:
        check_scope(principal, "Patient", interaction)
    else:
        with pytest.raises(Forbidden):
            check_scope(principal, "Patient", interaction)


def test_granular_scopes_grant_nothing_yet() -> None:
    with pytest.raises(Forbidden):
        check_scope(_principal("patient/Observation.rs?category=laboratory"), "Observation", "read")


def test_route_interactions() -> None:
    assert interactions("GET", "Patient/1") == [("Patient", "read")]
    assert interactions("PATCH", "Patient/1") == [("Patient", "patch")]
    assert interactions("GET", "Patient/1/_history/2") == [("Patient", "vread")]
    assert interactions("GET", "Patient/1/Observation") == [("Observation", "search-type")]
    assert interactions("POST", "Patient/$validate") == [("Patient", "$validate")]
    assert interactions("GET", "_history") == [("*", "history-system")]
    bundle = {
        "entry": [
            {"request": {"method": "DELETE", "url": "Observation/9"}},
            {"request": {"method": "PUT", "url": "Patient?identifier=x"}},
        ]
    }
    assert bundle_interactions(bundle) == [("Observation", "delete"), ("Patient", "update")]
