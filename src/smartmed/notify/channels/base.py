"""The provider interface every channel implements, and the message it sends.

A channel has a ``name`` (inapp, email, sms, wechat), says whether this deployment can
use it at all (:meth:`Channel.unavailable`) and sends one :class:`Message` to one
address, returning the provider's message id if it gives one. A send that fails raises
:class:`TemporaryFailure` (retry later) or :class:`PermanentFailure` (try the next
channel); anything else is a bug and is retried by the job runner.

Sends are at least once: a crash after the provider accepted a message but before the
outcome was recorded sends it again. Each message carries ``idempotency_key`` (stable
across retries of one notification on one channel) for providers that can deduplicate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from smartmed.notify.errors import PermanentFailure, TemporaryFailure

__all__ = ["Channel", "Message", "PermanentFailure", "TemporaryFailure"]


@dataclass(frozen=True, slots=True)
class Message:
    """One notification rendered for one person, on its way through one channel."""

    notification_id: str
    idempotency_key: str
    recipient: str  # FHIR reference as addressed
    owner: str  # the person: whose inbox
    address: str  # email address, phone number, openid, or the owner for in-app
    template: str
    urgency: str
    locale: str
    subject: str
    body: str
    sms: str
    wechat: dict[str, str] = field(default_factory=dict)


class Channel(Protocol):
    """A way of reaching a person."""

    name: str

    def unavailable(self, template: str) -> str | None:
        """Why this deployment cannot send ``template`` this way (None: it can)."""
        ...

    async def send(self, message: Message) -> str | None:
        """Send ``message``; the provider's message id, if any."""
        ...
