"""Email over SMTP (aiosmtplib): a text/plain message in the recipient's language.

Settings: ``SMARTMED_SMTP_HOST`` (unset: no email channel), ``_PORT``, ``_USER``,
``_PASSWORD``, ``_STARTTLS`` (upgrade after connecting), ``_TLS`` (implicit TLS, port
465), ``_FROM``. The ``Message-ID`` is derived from the notification, so a resend after
a crash is recognisable as the same message.

Failures: refused recipients and 5xx replies are permanent (next channel); 4xx replies,
timeouts and connection errors are temporary (retry with back-off).
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from smartmed.config import Settings
from smartmed.notify.channels.base import Message
from smartmed.notify.errors import PermanentFailure, TemporaryFailure


class SmtpEmail:
    """Sends through one SMTP relay."""

    name = "email"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def unavailable(self, template: str) -> str | None:
        return None if self.settings.smtp_host else "SMARTMED_SMTP_HOST is not set"

    def build(self, message: Message) -> EmailMessage:
        """The email for ``message``."""
        mail = EmailMessage()
        mail["From"] = self.settings.smtp_from
        mail["To"] = message.address
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = f"<{message.notification_id}@smartmed>"
        if message.urgency == "urgent":
            mail["Importance"] = "high"
        mail.set_content(message.body, charset="utf-8")
        mail["Content-Language"] = message.locale  # after set_content, which resets Content-*
        return mail

    async def send(self, message: Message) -> str | None:
        s = self.settings
        password = s.smtp_password.get_secret_value() if s.smtp_password else None
        try:
            await aiosmtplib.send(
                self.build(message),
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_user,
                password=password,
                start_tls=s.smtp_starttls and not s.smtp_tls,
                use_tls=s.smtp_tls,
                timeout=s.smtp_timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise PermanentFailure(f"SMTP refused the recipient: {exc}") from None
        except aiosmtplib.SMTPResponseException as exc:
            detail = f"SMTP answered {exc.code}: {exc.message}"
            if exc.code >= 500:
                raise PermanentFailure(detail) from None
            raise TemporaryFailure(detail) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TemporaryFailure(f"SMTP unreachable: {type(exc).__name__}: {exc}") from None
        return f"<{message.notification_id}@smartmed>"
