"""Errors of the payments module, on the platform's error tree (OperationOutcome).

::

    FhirError
    ├── Invalid (400)          bad amount, reference, key reuse with other content
    ├── NotFound (404)         no such order
    ├── Conflict (409)         the order's state does not allow it (pay a paid order, ...)
    └── ProviderError (502)    the payment provider failed or answered nonsense
        └── ProviderRejected   the provider refused the request (its 4xx): not retried
    BadCallback                a callback we cannot trust or read (never an HTTP error
                               of ours: the callback endpoint answers it itself)
"""

from __future__ import annotations

from smartmed.fhir.errors import FhirError


class ProviderError(FhirError):
    """The payment provider could not be reached or answered badly (temporary)."""

    status = 502
    code = "transient"


class ProviderRejected(ProviderError):
    """The provider refused the request (a permanent answer: retrying will not help)."""

    code = "business-rule"


class BadCallback(Exception):
    """A callback that fails verification or cannot be parsed; ``outcome`` says which."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome  # bad-signature | malformed
        self.detail = detail
