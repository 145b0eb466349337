"""SMS: a provider interface with an HTTP adapter and a local file provider.

``SMARTMED_SMS_PROVIDER=file`` (the default, for development) appends each message as
one JSON line to ``SMARTMED_SMS_FILE`` and logs it; nothing leaves the machine.

``SMARTMED_SMS_PROVIDER=http`` posts to ``SMARTMED_SMS_URL`` (the contract in
docs/notifications.md)::

    POST <url>
    Authorization: Bearer <SMARTMED_SMS_API_KEY>
    Idempotency-Key: <stable per notification and channel>
    {"id": "<notification id>", "to": "+8613800000000", "text": "...",
     "sender": "<SMARTMED_SMS_SENDER or null>", "urgency": "routine"}

2xx: accepted (an optional JSON ``{"id": ...}`` is the provider's message id); 408, 429
and 5xx, timeouts and connection errors: temporary (retried with back-off); any other
status: permanent (the number or the request is refused; next channel).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import structlog

from smartmed.config import Settings
from smartmed.fhir.model import fhir_instant, utcnow
from smartmed.notify.channels.base import Message
from smartmed.notify.errors import PermanentFailure, TemporaryFailure

log = structlog.get_logger("smartmed.notify.sms")

_TEMPORARY = frozenset({408, 425, 429})


class FileSms:
    """Development provider: one JSON line per message in a local file."""

    name = "sms"

    def __init__(self, path: Path) -> None:
        self.path = path

    def unavailable(self, template: str) -> str | None:
        return None

    async def send(self, message: Message) -> str | None:
        line = orjson.dumps(
            {
                "at": fhir_instant(utcnow()),
                "id": message.notification_id,
                "to": message.address,
                "text": message.sms,
            }
        )
        await asyncio.to_thread(self._append, line + b"\n")
        log.info("sms (file provider)", to=message.address, text=message.sms)
        return None

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as out:
            out.write(line)


class HttpSms:
    """A real SMS gateway behind one JSON POST (see the module docstring)."""

    name = "sms"

    def __init__(
        self, url: str | None, api_key: str | None, sender: str | None, timeout: float
    ) -> None:
        self.url = url
        self.api_key = api_key
        self.sender = sender
        self.timeout = timeout

    def unavailable(self, template: str) -> str | None:
        return None if self.url else "SMARTMED_SMS_URL is not set"

    async def send(self, message: Message) -> str | None:
        assert self.url is not None
        headers = {"Idempotency-Key": message.idempotency_key}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = {
            "id": message.notification_id,
            "to": message.address,
            "text": message.sms,
            "sender": self.sender,
            "urgency": message.urgency,
        }
        try:
            async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as http:
                response = await http.post(self.url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise TemporaryFailure(f"SMS provider unreachable: {type(exc).__name__}") from None
        status = response.status_code
        if 200 <= status < 300:
            try:
                answer = response.json()
            except ValueError:
                return None
            found = answer.get("id") if isinstance(answer, dict) else None
            return str(found) if found is not None else None
        detail = f"SMS provider answered {status}: {response.text[:200]}"
        if status >= 500 or status in _TEMPORARY:
            raise TemporaryFailure(detail)
        raise PermanentFailure(detail)


def build_sms(settings: Settings) -> FileSms | HttpSms:
    """The SMS provider the settings name."""
    if settings.sms_provider == "file":
        return FileSms(settings.sms_file)
    if settings.sms_provider == "http":
        key = settings.sms_api_key.get_secret_value() if settings.sms_api_key else None
        return HttpSms(settings.sms_url, key, settings.sms_sender, settings.sms_timeout_seconds)
    raise ValueError(
        f"SMARTMED_SMS_PROVIDER must be 'file' or 'http', not {settings.sms_provider!r}"
    )
