"""WeChat official-account template messages.

The official API (base ``SMARTMED_WECHAT_API_BASE``, default ``https://api.weixin.qq.com``):

- ``GET /cgi-bin/token?grant_type=client_credential&appid=..&secret=..`` ->
  ``{"access_token": "...", "expires_in": 7200}``, cached until five minutes before it
  expires;
- ``POST /cgi-bin/message/template/send?access_token=..`` with ``{"touser": openid,
  "template_id": ..., "client_msg_id": <idempotency key>, "data": {"<field>": {"value":
  "..."}}}`` -> ``{"errcode": 0, "errmsg": "ok", "msgid": 123}``.

Our template name maps to the account's ``template_id`` through
``SMARTMED_WECHAT_TEMPLATES`` (``bp-alert=abc123,followup-reminder=def456``); a template
without a mapping cannot go by WeChat. The fields are the template's ``wechat_*`` blocks.

errcode 40001/40014/42001 (stale token) drop the cached token and count as temporary,
as do -1 (system busy), 45009 (quota) and HTTP/network failures; every other errcode
(43004 not subscribed, 40003 bad openid, 40037 bad template id...) is permanent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from smartmed.config import Settings
from smartmed.notify.channels.base import Message
from smartmed.notify.errors import PermanentFailure, TemporaryFailure

_STALE_TOKEN = frozenset({40001, 40014, 42001})
_TEMPORARY = frozenset({-1, 45009}) | _STALE_TOKEN


@dataclass(slots=True)
class _Token:
    value: str
    expires: float  # time.monotonic()


# (api base, app id) -> access token, shared by every send of this process.
_tokens: dict[tuple[str, str], _Token] = {}


def parse_templates(raw: str) -> dict[str, str]:
    """``{"bp-alert": "abc123"}`` from ``"bp-alert=abc123, ..."``."""
    found: dict[str, str] = {}
    for item in raw.split(","):
        name, sep, template_id = item.partition("=")
        if sep and name.strip() and template_id.strip():
            found[name.strip()] = template_id.strip()
    return found


class WeChatTemplates:
    """Sends template messages through one official account."""

    name = "wechat"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = settings.wechat_api_base.rstrip("/")
        self.templates = parse_templates(settings.wechat_templates)

    def unavailable(self, template: str) -> str | None:
        if not self.settings.wechat_app_id or self.settings.wechat_app_secret is None:
            return "SMARTMED_WECHAT_APP_ID/_APP_SECRET are not set"
        if template not in self.templates:
            return f"no WeChat template_id for {template!r} in SMARTMED_WECHAT_TEMPLATES"
        return None

    async def send(self, message: Message) -> str | None:
        async with httpx.AsyncClient(
            timeout=self.settings.wechat_timeout_seconds, follow_redirects=False
        ) as http:
            token = await self._token(http)
            body = {
                "touser": message.address,
                "template_id": self.templates[message.template],
                "client_msg_id": message.idempotency_key[:64],
                "data": {k: {"value": v} for k, v in message.wechat.items()},
            }
            answer = await self._call(
                http.post(
                    f"{self.base}/cgi-bin/message/template/send",
                    params={"access_token": token},
                    json=body,
                )
            )
        code = _errcode(answer)
        if code == 0:
            msgid = answer.get("msgid")
            return str(msgid) if msgid is not None else None
        if code in _STALE_TOKEN:
            _tokens.pop(self._key, None)
        detail = f"WeChat errcode {code}: {answer.get('errmsg', '')}"
        if code in _TEMPORARY:
            raise TemporaryFailure(detail)
        raise PermanentFailure(detail)

    @property
    def _key(self) -> tuple[str, str]:
        return (self.base, self.settings.wechat_app_id or "")

    async def _token(self, http: httpx.AsyncClient) -> str:
        cached = _tokens.get(self._key)
        if cached is not None and cached.expires > time.monotonic():
            return cached.value
        secret = self.settings.wechat_app_secret
        answer = await self._call(
            http.get(
                f"{self.base}/cgi-bin/token",
                params={
                    "grant_type": "client_credential",
                    "appid": self.settings.wechat_app_id or "",
                    "secret": secret.get_secret_value() if secret else "",
                },
            )
        )
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            code = _errcode(answer)
            detail = f"WeChat token refused, errcode {code}: {answer.get('errmsg', '')}"
            # A wrong appid/secret will not heal by itself, but a busy system will.
            raise (TemporaryFailure if code in _TEMPORARY else PermanentFailure)(detail)
        lifetime = answer.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) else 7200.0
        _tokens[self._key] = _Token(token, time.monotonic() + max(0.0, seconds - 300))
        return token

    @staticmethod
    async def _call(request: Any) -> dict[str, Any]:
        try:
            response: httpx.Response = await request
        except httpx.HTTPError as exc:
            raise TemporaryFailure(f"WeChat API unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise TemporaryFailure(f"WeChat API answered HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            raise TemporaryFailure("WeChat API answered something that is not JSON") from None
        if not isinstance(answer, dict):
            raise TemporaryFailure("WeChat API answered something that is not a JSON object")
        return answer


def _errcode(answer: dict[str, Any]) -> int:
    code = answer.get("errcode", 0)
    return code if isinstance(code, int) else -1
