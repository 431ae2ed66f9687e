"""Generic webhook channel: one signed POST per notification (Standard Webhooks).

Headers sent: ``Content-Type: application/json``, ``User-Agent: dcs-notifier/<version>``, ``webhook-id``
(the event id, an idempotency key), ``webhook-timestamp`` (unix seconds at send time) and, with a secret,
``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, plus configured headers.

No redirect is followed and no answer body is read (see :mod:`notifier.delivery.channels.http`): a 2xx is
enough.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Final, Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator

from notifier.delivery.cards import Card, Group
from notifier.delivery.channels.base import Channel
from notifier.delivery.channels.http import (
    HttpChannelConfig,
    channel_http,
    check_http_url,
    http_error,
    receiver_host,
    transport_error,
)
from notifier.delivery.formatters.webhook import batch_id, webhook_batch_body, webhook_body
from notifier.net import USER_AGENT
from notifier.net.session import Http
from notifier.pipeline.events import Notification
from notifier.redaction import MASK, redact_url, secret_header

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a prefix, not a secret
#: Headers the channel sets itself; configuring them would break the protocol.
RESERVED_HEADERS: Final = frozenset(
    {"content-type", "content-length", "host", "webhook-id", "webhook-timestamp", "webhook-signature"}
)


# --- signing ---------------------------------------------------------------------------------------------


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: optional ``whsec_`` + base64, as ``standardwebhooks`` does.

    Unlike the reference library (which silently drops characters that are not base64), an invalid secret is
    an error here, so a typo cannot produce signatures nobody can verify.
    """
    text = secret.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX) :]
    text = text.rstrip("=")
    if not text:
        raise ValueError("webhook secret is empty")
    problem = "webhook secret is not valid base64 (expected 'whsec_' followed by base64)"
    if len(text) % 4 == 1:
        raise ValueError(problem)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ValueError(problem) from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def sign_webhook(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 signature>`` of one message (the Standard Webhooks scheme)."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, to_sign, hashlib.sha256).digest()).decode("ascii")


# --- the channel -----------------------------------------------------------------------------------------


class WebhookChannelConfig(HttpChannelConfig):
    """``type: webhook`` channel settings (and ``timeout``, ``proxy``, ``ca_bundle``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    type: Literal["webhook"]
    url: SecretStr
    secret: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    #: Messages per second; None (the default) sends as fast as the receiver answers.
    rate: float | None = Field(default=None, ge=0.001, le=10_000, allow_inf_nan=False)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: SecretStr) -> SecretStr:
        check_http_url(v.get_secret_value(), "url")
        return v

    @field_validator("secret")
    @classmethod
    def _valid_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            decode_secret(v.get_secret_value())
        return v

    @field_validator("headers")
    @classmethod
    def _no_reserved_headers(cls, v: dict[str, str]) -> dict[str, str]:
        clash = sorted(name for name in v if name.strip().lower() in RESERVED_HEADERS)
        if clash:
            raise ValueError(f"headers may not set {', '.join(clash)}: the channel sets them itself")
        return v

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Header values may be credentials (``Authorization``): keep them out of repr()/str().
        for name, val in super().__repr_args__():
            yield name, ({h: "****" for h in val} if name == "headers" else val)

    @property
    def signing_key(self) -> bytes | None:
        return None if self.secret is None else decode_secret(self.secret.get_secret_value())


class WebhookChannel(Channel):
    """POSTs the Standard Webhooks body to a URL, signed when a secret is configured. Never retries."""

    kind: ClassVar[str] = "webhook"

    def __init__(self, name: str, config: WebhookChannelConfig) -> None:
        super().__init__(name, rate=config.rate)
        self._config = config
        self._url = config.url.get_secret_value()
        self._key = config.signing_key
        self._host = receiver_host(self._url)
        self._http: Http | None = None

    @property
    def config(self) -> WebhookChannelConfig:
        return self._config

    def _secrets(self) -> list[str]:
        # Header values may be credentials (Authorization: Bearer …); very short ones are not worth masking.
        found = [self._url, *(v for v in self._config.headers.values() if len(v) >= 8)]
        if self._config.secret is not None:
            found.append(self._config.secret.get_secret_value())
        return found

    def _get_http(self) -> Http:
        if self._http is None or self._http.closed:
            self._http = channel_http(self.name, self._config)
        return self._http

    def build_headers(self, notification: Notification | str, body: bytes, timestamp: int) -> dict[str, str]:
        """The request headers of one attempt (configured headers first, protocol headers win); the
        message id is the notification's event id (or the id given, for a group or a digest)."""
        headers: dict[str, str] = {"User-Agent": USER_AGENT, **self._config.headers}
        msg_id = notification if isinstance(notification, str) else notification.event.id
        headers["Content-Type"] = "application/json"
        headers["webhook-id"] = msg_id
        headers["webhook-timestamp"] = str(timestamp)
        if self._key is not None:
            headers["webhook-signature"] = sign_webhook(self._key, msg_id, timestamp, body)
        return headers

    async def send(self, notification: Notification, card: Card | None = None) -> None:
        body = webhook_body(notification)
        await self._post(body, self.build_headers(notification, body, int(time.time())))

    async def send_many(
        self, kind: str, notifications: Sequence[Notification], group: Group | None = None
    ) -> Group | None:
        """One POST for a group (a rule asked for it) or a digest (``digest.webhooks``)."""
        body = webhook_batch_body(kind, notifications)
        msg_id = batch_id(kind, notifications)
        await self._post(body, self.build_headers(msg_id, body, int(time.time())))
        return None

    async def _post(self, body: bytes, headers: dict[str, str]) -> None:
        session = self._get_http().session
        try:
            # The answer's body is never read; redirects are refused by the session (and not asked for).
            async with session.post(self._url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                if 200 <= status < 300:
                    return
        except Exception as exc:
            raise transport_error(self.name, exc, self._secrets(), host=self._host) from None
        raise http_error(self.name, status, retry_after)

    async def aclose(self) -> None:
        if self._http is not None and not self._http.closed:
            await self._http.aclose()
        self._http = None


def masked_webhook_config(config: WebhookChannelConfig) -> dict[str, Any]:
    """Settings safe to print: the URL reduced to its host, the secret and credential headers masked."""
    return {
        "type": config.type,
        "url": redact_url(config.url.get_secret_value()),
        "secret": None if config.secret is None else "****",
        "headers": {name: MASK if secret_header(name) else v for name, v in config.headers.items()},
        "timeout": config.timeout,
        "rate": config.rate,
        "proxy": None if config.proxy is None else redact_url(config.proxy.get_secret_value(), path=False),
        "ca_bundle": None if config.ca_bundle is None else str(config.ca_bundle),
    }
