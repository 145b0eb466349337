"""The channels of a deployment, built from its settings (one provider interface)."""

from __future__ import annotations

from smartmed.fhir.context import FhirEngine
from smartmed.notify.channels.base import Channel, Message
from smartmed.notify.channels.email import SmtpEmail
from smartmed.notify.channels.inapp import InApp
from smartmed.notify.channels.sms import build_sms
from smartmed.notify.channels.wechat import WeChatTemplates

CHANNELS = ("inapp", "email", "sms", "wechat")

__all__ = ["CHANNELS", "Channel", "Message", "build_channels"]


def build_channels(engine: FhirEngine) -> dict[str, Channel]:
    """Every channel, configured from the engine's settings."""
    settings = engine.settings
    return {
        "inapp": InApp(engine.db),
        "email": SmtpEmail(settings),
        "sms": build_sms(settings),
        "wechat": WeChatTemplates(settings),
    }
