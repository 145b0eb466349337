"""The engine's error tree, translated to OperationOutcome in one place (``fhir/api.py``).

::

    FhirError (status, issues)
    ├── Invalid              400  bad input; issues carry FHIRPath expressions
    ├── Unauthorized         401  no or bad bearer token (``WWW-Authenticate: Bearer``)
    ├── Forbidden            403  the token's scopes do not allow the interaction
    ├── NotFound             404  unknown type, id or version
    ├── MethodNotAllowed     405
    ├── NotAcceptable        406  a response format we don't serve
    ├── Conflict             409  e.g. id in the body differs from the URL
    ├── Gone                 410  the resource was deleted
    ├── PreconditionFailed   412  stale If-Match, ambiguous conditional match
    ├── PayloadTooLarge      413
    ├── UnsupportedMediaType 415
    └── Unprocessable        422  well-formed but not processable (business rule)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutcomeIssue:
    """One OperationOutcome.issue: severity, type code, text and FHIRPath location."""

    severity: str
    code: str
    diagnostics: str
    expression: str | None = None

    def as_json(self) -> dict[str, object]:
        """The issue as OperationOutcome.issue JSON."""
        out: dict[str, object] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            out["expression"] = [self.expression]
        return out


class FhirError(Exception):
    """An error the FHIR API reports as an OperationOutcome with an HTTP status."""

    status = 500
    code = "exception"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: str | None = None,
        issues: list[OutcomeIssue] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.issues = issues or [OutcomeIssue("error", self.code, diagnostics, expression)]
        # Which of several items failed, when one call wrote many (Repository.create_many).
        self.position: int | None = None


class Invalid(FhirError):
    status = 400
    code = "invalid"


class Unauthorized(FhirError):
    status = 401
    code = "login"

    def __init__(self, diagnostics: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(diagnostics)
        challenge = 'Bearer realm="smartmed"' + (f', error="{error}"' if error else "")
        self.headers = {"WWW-Authenticate": challenge}


class Forbidden(FhirError):
    status = 403
    code = "forbidden"


class NotFound(FhirError):
    status = 404
    code = "not-found"


class MethodNotAllowed(FhirError):
    status = 405
    code = "not-supported"


class NotAcceptable(FhirError):
    status = 406
    code = "not-supported"


class Conflict(FhirError):
    status = 409
    code = "conflict"


class Gone(FhirError):
    status = 410
    code = "deleted"


class PreconditionFailed(FhirError):
    status = 412
    code = "conflict"


class PayloadTooLarge(FhirError):
    status = 413
    code = "too-costly"


class UnsupportedMediaType(FhirError):
    status = 415
    code = "not-supported"


class Unprocessable(FhirError):
    status = 422
    code = "processing"


def operation_outcome(issues: list[OutcomeIssue]) -> dict[str, object]:
    """An OperationOutcome resource holding the issues."""
    return {"resourceType": "OperationOutcome", "issue": [i.as_json() for i in issues]}
