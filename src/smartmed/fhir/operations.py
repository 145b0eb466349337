"""The registry of FHIR ``$operations`` (system, type and instance level).

Workflow modules register operations with a declared contract: typed input parameters
(checked before the handler runs) and typed outputs. Input arrives as a ``Parameters``
body, as query parameters on GET (primitives only), or, when the only resource input is
sent on its own, as that resource. See https://hl7.org/fhir/R4/operations.html.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from smartmed.fhir.errors import Invalid, NotFound

PRIMITIVES = {
    "string": str,
    "code": str,
    "uri": str,
    "id": str,
    "date": str,
    "dateTime": str,
    "instant": str,
    "canonical": str,
    "markdown": str,
    "boolean": bool,
    "integer": int,
    "positiveInt": int,
    "unsignedInt": int,
    "decimal": float,
}


@dataclass(frozen=True, slots=True)
class OperationParam:
    """One declared parameter: name, FHIR type (primitive, 'Resource' or a resource type)."""

    name: str
    type: str
    min: int = 0
    max: str = "1"


@dataclass(frozen=True, slots=True)
class OperationCall:
    """What a handler receives: the level, the target and the checked inputs."""

    level: str  # system | type | instance
    resource_type: str | None
    resource_id: str | None
    inputs: dict[str, Any]
    context: Any  # the API's request context (repository factory, settings)
    base_url: str = ""  # the absolute FHIR base of the request, for links in results


@dataclass(frozen=True, slots=True)
class OperationResult:
    """A handler's answer: a resource (sent as-is) and the HTTP status; or, for outputs that
    are not FHIR JSON (CSV, NDJSON, Parquet), raw ``body`` bytes of ``media_type``."""

    resource: dict[str, Any]
    status: int = 200
    body: bytes | None = None
    media_type: str | None = None


Handler = Callable[[OperationCall], Awaitable[OperationResult]]


@dataclass(frozen=True, slots=True)
class Operation:
    """A registered operation and its contract."""

    name: str
    levels: frozenset[str]
    handler: Handler
    inputs: tuple[OperationParam, ...] = ()
    outputs: tuple[OperationParam, ...] = ()
    resource_types: frozenset[str] | None = None  # None: every type
    affects_state: bool = False
    definition: str | None = None  # canonical URL of its OperationDefinition
    description: str = ""


@dataclass(slots=True)
class OperationRegistry:
    """Operations by name; looked up by the API router."""

    operations: dict[str, Operation] = field(default_factory=dict)

    def register(self, operation: Operation) -> None:
        """Add an operation; a name may be registered once."""
        if operation.name in self.operations:
            raise ValueError(f"operation ${operation.name} is already registered")
        self.operations[operation.name] = operation

    def find(self, name: str, level: str, resource_type: str | None) -> Operation:
        """The operation for this level and type, or NotFound."""
        op = self.operations.get(name)
        if op is None or level not in op.levels:
            raise NotFound(f"operation ${name} is not supported at {level} level")
        if (
            resource_type
            and op.resource_types is not None
            and resource_type not in op.resource_types
        ):
            raise NotFound(f"operation ${name} is not supported on {resource_type}")
        return op


def parse_inputs(
    op: Operation, body: dict[str, Any] | None, query: list[tuple[str, str]]
) -> dict[str, Any]:
    """Check and convert the call's inputs against the declared parameters."""
    declared = {p.name: p for p in op.inputs}
    values: dict[str, list[Any]] = {}
    if body is not None and body.get("resourceType") != "Parameters":
        resource_inputs = [p for p in op.inputs if _is_resource_type(p.type)]
        if len(resource_inputs) != 1:
            raise Invalid(f"${op.name} takes a Parameters body", expression="resourceType")
        values[resource_inputs[0].name] = [body]
    elif body is not None:
        params = body.get("parameter", [])
        if not isinstance(params, list):
            raise Invalid(
                "Parameters.parameter must be an array", expression="Parameters.parameter"
            )
        for i, param in enumerate(params):
            where = f"Parameters.parameter[{i}]"
            if not isinstance(param, dict) or not isinstance(param.get("name"), str):
                raise Invalid("each parameter needs a name", expression=where)
            spec = declared.get(param["name"])
            if spec is None:
                raise Invalid(f"${op.name} has no parameter '{param['name']}'", expression=where)
            values.setdefault(spec.name, []).append(_value(spec, param, where))
    for name, raw in query:
        spec = declared.get(name)
        if spec is None:
            if name.startswith("_"):
                continue
            raise Invalid(f"${op.name} has no parameter '{name}'", expression=name)
        if spec.type not in PRIMITIVES:
            raise Invalid(f"parameter '{name}' cannot be given in the URL", expression=name)
        values.setdefault(name, []).append(_from_text(spec, raw))
    result: dict[str, Any] = {}
    for spec in op.inputs:
        got = values.get(spec.name, [])
        if len(got) < spec.min:
            raise Invalid(f"${op.name} requires parameter '{spec.name}'", expression=spec.name)
        if spec.max != "*" and len(got) > int(spec.max):
            raise Invalid(f"parameter '{spec.name}' is given too many times", expression=spec.name)
        result[spec.name] = got if spec.max == "*" else (got[0] if got else None)
    return result


def _is_resource_type(type_: str) -> bool:
    return type_ == "Resource" or type_[:1].isupper()


def _value(spec: OperationParam, param: dict[str, Any], where: str) -> Any:
    if _is_resource_type(spec.type):
        resource = param.get("resource")
        if not isinstance(resource, dict):
            raise Invalid(
                f"parameter '{spec.name}' needs a resource", expression=f"{where}.resource"
            )
        if spec.type != "Resource" and resource.get("resourceType") != spec.type:
            raise Invalid(
                f"parameter '{spec.name}' must be a {spec.type}", expression=f"{where}.resource"
            )
        return resource
    key = "value" + spec.type[0].upper() + spec.type[1:]
    if key not in param:
        raise Invalid(f"parameter '{spec.name}' needs {key}", expression=where)
    value = param[key]
    expected = PRIMITIVES[spec.type]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise Invalid(f"{key} must be a JSON {expected.__name__}", expression=f"{where}.{key}")
    return value


def _from_text(spec: OperationParam, raw: str) -> Any:
    kind = PRIMITIVES[spec.type]
    if kind is bool:
        if raw not in ("true", "false"):
            raise Invalid(f"parameter '{spec.name}' must be true or false", expression=spec.name)
        return raw == "true"
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise Invalid(
                f"parameter '{spec.name}' must be an integer", expression=spec.name
            ) from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise Invalid(
                f"parameter '{spec.name}' must be a number", expression=spec.name
            ) from None
    return raw
