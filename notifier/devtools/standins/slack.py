"""A local stand-in of Slack: incoming webhooks (``POST /services/…``) and ``POST /api/chat.postMessage``.

It answers like Slack does: webhooks answer ``200 ok`` or an error code as a text body (``400
invalid_payload``, ``404 no_service``...); the Web API answers HTTP 200 with ``{"ok": false, "error": ...}``
for application errors, and 429 with ``Retry-After`` when rate limited. Faults are programmed with
:meth:`~notifier.devtools.standins.StandInServer.enqueue` (canned answers, see
:meth:`SlackStandIn.webhook_error` and :meth:`SlackStandIn.api_error`) or a policy such as ``every_nth(3,
SlackStandIn.webhook_error(429, "rate_limited", retry_after=2))``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from notifier.devtools.standins import CannedResponse, OnMessage, Policy, StandInServer

DEFAULT_WEBHOOK_PATH = "T000/B000/XXXXXXXX"


def _api_json(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json")


class SlackStandIn(StandInServer):
    """Fake Slack. ``token``: the bot token chat.postMessage accepts (``None``: any bearer token);
    ``channels``: the channels that exist (``None``: all); ``webhook_path``: the secret part of the
    incoming-webhook URL."""

    def __init__(
        self,
        *,
        token: str | None = None,
        channels: Iterable[str] | None = None,
        webhook_path: str = DEFAULT_WEBHOOK_PATH,
        policy: Policy | None = None,
        on_message: OnMessage | None = None,
    ) -> None:
        super().__init__(policy=policy, on_message=on_message)
        self.token = token
        self.channels = None if channels is None else set(channels)
        self.webhook_path = webhook_path.strip("/")
        self._posted = 0

    # --- canned answers ------------------------------------------------------------------------------------

    @staticmethod
    def webhook_error(
        status: int, error: str, *, retry_after: float | None = None, delay: float = 0.0
    ) -> CannedResponse:
        """An incoming-webhook error as Slack sends it: status + error code as the text body."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return CannedResponse(status, error, headers, delay)

    @staticmethod
    def api_error(
        error: str, *, status: int = 200, retry_after: float | None = None, delay: float = 0.0
    ) -> CannedResponse:
        """A Web API error: ``{"ok": false, "error": ...}`` (HTTP 200 unless told, 429 for rate limits)."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return CannedResponse(status, {"ok": False, "error": error}, headers, delay)

    # --- addresses -----------------------------------------------------------------------------------------

    @property
    def webhook_url(self) -> str:
        """The fake incoming-webhook URL, e.g. ``http://127.0.0.1:PORT/services/T000/B000/XXXXXXXX``."""
        return f"{self.base_url}/services/{self.webhook_path}"

    @property
    def api_base_url(self) -> str:
        """The Web API base URL for ``AsyncWebClient(base_url=...)``: ``http://127.0.0.1:PORT/api/``."""
        return f"{self.base_url}/api/"

    @property
    def messages(self) -> list[Any]:
        """The JSON of every message Slack accepted (2xx with no error), in order."""
        return [r.json for r in self.requests if 200 <= r.status < 300 and r.verified is not False]

    # --- routes --------------------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/services/{rest:.*}", self._webhook),
            web.post("/api/chat.postMessage", self._post_message),
            web.post("/api/{method}", self._unknown_method),
        ]

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        return await self.answer(request, self._webhook_normal)

    def _webhook_normal(self, request: web.Request, body: bytes, payload: Any) -> tuple[web.Response, None]:
        if request.match_info["rest"].strip("/") != self.webhook_path:
            return web.Response(status=404, text="no_service"), None
        if not isinstance(payload, dict):
            return web.Response(status=400, text="invalid_payload"), None
        if not payload.get("text") and not payload.get("blocks"):
            return web.Response(status=400, text="missing_text_or_fallback_or_attachments"), None
        if "blocks" in payload and not isinstance(payload["blocks"], list):
            return web.Response(status=400, text="invalid_blocks"), None
        return web.Response(status=200, text="ok"), None

    async def _post_message(self, request: web.Request) -> web.StreamResponse:
        return await self.answer(request, self._post_message_normal)

    def _post_message_normal(
        self, request: web.Request, body: bytes, payload: Any
    ) -> tuple[web.Response, None]:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[len("Bearer ") :].strip():
            return _api_json({"ok": False, "error": "not_authed"}), None
        if self.token is not None and auth[len("Bearer ") :].strip() != self.token:
            return _api_json({"ok": False, "error": "invalid_auth"}), None
        if not isinstance(payload, dict):
            form = parse_qs(body.decode("utf-8", errors="replace"))
            payload = {k: v[-1] for k, v in form.items()}
            if isinstance(payload.get("blocks"), str):
                try:
                    payload["blocks"] = json.loads(payload["blocks"])
                except ValueError:
                    return _api_json({"ok": False, "error": "invalid_blocks"}), None
        channel = payload.get("channel")
        if not channel or (self.channels is not None and channel not in self.channels):
            return _api_json({"ok": False, "error": "channel_not_found"}), None
        if not payload.get("text") and not payload.get("blocks"):
            return _api_json({"ok": False, "error": "no_text"}), None
        self._posted += 1
        ts = f"{1700000000 + self._posted}.{self._posted:06d}"
        message = {"type": "message", "text": payload.get("text", ""), "ts": ts}
        if "blocks" in payload:
            message["blocks"] = payload["blocks"]
        return _api_json({"ok": True, "channel": channel, "ts": ts, "message": message}), None

    async def _unknown_method(self, request: web.Request) -> web.Response:
        return _api_json({"ok": False, "error": "unknown_method"})
