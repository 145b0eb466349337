"""Operations the engine itself provides: ``$validate``."""

from __future__ import annotations

from typing import Any

from smartmed.fhir.errors import Invalid, OutcomeIssue, operation_outcome
from smartmed.fhir.everything import EVERYTHING
from smartmed.fhir.operations import (
    Operation,
    OperationCall,
    OperationParam,
    OperationRegistry,
    OperationResult,
)


async def _validate(call: OperationCall) -> OperationResult:
    """$validate: check a resource against the base R4 definitions without storing it."""
    resource: dict[str, Any] | None = call.inputs.get("resource")
    if resource is None:
        raise Invalid("$validate needs the resource to check", expression="resource")
    expected = call.resource_type
    engine = call.context
    issues = engine.services.validator.validate(resource, resource_type=expected)
    if call.resource_id is not None and resource.get("id") not in (None, call.resource_id):
        issues = [*issues]
        outcome_issues = [OutcomeIssue("error", "invalid", "id does not match the URL", "id")]
    else:
        outcome_issues = []
    outcome_issues += [
        OutcomeIssue(i.severity, i.code, i.diagnostics, i.expression) for i in issues
    ]
    if not outcome_issues:
        outcome_issues = [OutcomeIssue("information", "informational", "the resource is valid")]
    return OperationResult(operation_outcome(outcome_issues))


def register_builtin_operations(registry: OperationRegistry) -> None:
    """Register the engine's own operations."""
    registry.register(EVERYTHING)
    registry.register(
        Operation(
            name="validate",
            levels=frozenset({"type", "instance"}),
            handler=_validate,
            inputs=(
                OperationParam("resource", "Resource", 0, "1"),
                OperationParam("mode", "code", 0, "1"),
                OperationParam("profile", "uri", 0, "1"),
            ),
            outputs=(OperationParam("return", "OperationOutcome", 1, "1"),),
            definition="http://hl7.org/fhir/OperationDefinition/Resource-validate",
            description="Validate a resource against the base FHIR R4 definitions",
        )
    )
