"""Errors of the notification package.

Bad input to :func:`smartmed.notify.notify` or the HTTP API is a :class:`FhirError`
(rendered as an OperationOutcome by the application), with ``expression`` naming the
argument at fault::

    Invalid (400)
    ├── UnknownTemplate    template is not a template file
    ├── UnknownChannel     a channel name the platform does not have
    ├── UnknownRecipient   not a Patient/RelatedPerson/Practitioner/PractitionerRole that exists
    └── UnusableData       the template needs data it was not given, or cannot format it

A provider that fails to send raises one of the two :class:`SendFailure` kinds; the
delivery flow decides between retry and the next channel from the kind alone::

    SendFailure
    ├── TemporaryFailure   5xx, 429, timeouts, connection errors: retry with back-off
    └── PermanentFailure   4xx, refused address, not subscribed: next channel at once
"""

from __future__ import annotations

from smartmed.fhir.errors import Invalid


class UnknownTemplate(Invalid):
    pass


class UnknownChannel(Invalid):
    pass


class UnknownRecipient(Invalid):
    pass


class UnusableData(Invalid):
    pass


class SendFailure(Exception):
    """A provider could not send a message; ``str(exc)`` says why, for the attempt log."""


class TemporaryFailure(SendFailure):
    pass


class PermanentFailure(SendFailure):
    pass
