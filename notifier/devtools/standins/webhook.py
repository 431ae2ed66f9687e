"""A local generic webhook receiver, optionally verifying Standard Webhooks signatures.

Verification is done here with the standard library (the ``standardwebhooks`` package is a test-only
dependency); the tests cross-check it against ``standardwebhooks.webhooks.Webhook(secret).verify``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from notifier.delivery.channels.webhook import decode_secret, sign_webhook
from notifier.devtools.standins import CannedResponse, OnMessage, Policy, StandInServer

DEFAULT_PATH = "/hooks/dcs"


def verify_signature(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """Standard Webhooks verification: headers present, timestamp within ``tolerance``, one ``v1`` matches."""
    key = decode_secret(secret) if isinstance(secret, str) else secret
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    timestamp = lower.get("webhook-timestamp")
    signatures = lower.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    expected = sign_webhook(key, msg_id, ts, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures.split(" "))


class WebhookReceiver(StandInServer):
    """Records every POST (any path). With ``secret``, checks each signature (``RecordedRequest.verified``)
    and, if ``reject_invalid``, answers 401 to a bad one; otherwise answers ``204``."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        reject_invalid: bool = True,
        tolerance: float = 300.0,
        path: str = DEFAULT_PATH,
        policy: Policy | None = None,
        on_message: OnMessage | None = None,
    ) -> None:
        super().__init__(policy=policy, on_message=on_message)
        self._key = None if secret is None else decode_secret(secret)
        self.reject_invalid = reject_invalid
        self.tolerance = tolerance
        self.path = "/" + path.lstrip("/")

    @staticmethod
    def error(status: int, *, retry_after: str | float | None = None, delay: float = 0.0) -> CannedResponse:
        """A canned error answer; ``retry_after`` may be seconds or an HTTP date."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
        return CannedResponse(status, f"HTTP {status}", headers, delay)

    @property
    def url(self) -> str:
        return f"{self.base_url}{self.path}"

    @property
    def payloads(self) -> list[Any]:
        """The JSON of every accepted (2xx, not failing verification) request, in order."""
        return [r.json for r in self.requests if 200 <= r.status < 300 and r.verified is not False]

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/{tail:.*}", self._receive)]

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        return await self.answer(request, self._normal)

    def _normal(self, request: web.Request, body: bytes, payload: Any) -> tuple[web.Response, bool | None]:
        verified: bool | None = None
        if self._key is not None:
            verified = verify_signature(self._key, request.headers, body, tolerance=self.tolerance)
            if not verified and self.reject_invalid:
                return web.Response(status=401, text="invalid signature"), verified
        return web.Response(status=204), verified
