"""Slack channel: an incoming webhook, or a bot token keeping one living card per task.

With a bot token (``token`` + ``channel``) a task's first notification posts a card (``chat.postMessage``);
every later one rewrites it (``chat.update``, on the channel **id** Slack answered the post with) and adds a
thread reply saying what changed, broadcast to the channel for a failure or an instance that cannot be
polled. A card a person deleted (or that can no longer be edited) is posted anew. An incoming webhook can
neither edit nor thread: it posts one message per event.

Exactly one layer retries: slack-sdk's own retry handlers are switched off (``retry_handlers=[]``) and every
failure becomes a ``DeliveryError`` the delivery loop decides about. A Slack webhook URL is a secret (whoever
has it can post), as is a token: neither appears in errors, ``repr`` or logs — slack-sdk's debug logging goes
through a per-channel logger whose filter masks them (and caps what it logs of an answer).

slack-sdk makes the requests, on a session from :func:`~notifier.delivery.channels.http.channel_http` (no
redirects, answers capped, the channel's proxy and CA bundle); the answer is judged here, not by slack-sdk's
exceptions. A 2xx whose body cannot be read (too large, not text, not JSON, JSON without ``ok``) means Slack
took the message: it counts as delivered, with a warning, since sending it again would post it twice. Any
other status is judged by the status (and Slack's error code when the body has one).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, ClassVar, Final, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, SecretStr, model_validator
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from notifier.delivery.cards import BROADCAST, Card, Group, after, edits_card, needs_new_card
from notifier.delivery.channels.base import Channel
from notifier.delivery.channels.http import (
    AnswerError,
    AnswerSeen,
    HttpChannelConfig,
    RedirectRefused,
    channel_http,
    check_http_url,
    classify_http_status,
    describe_exception,
    receiver_host,
    transport_error,
    watch_answers,
)
from notifier.delivery.formatters.groups import (
    format_digest,
    format_group,
    format_group_card,
    format_group_reply,
    what_of,
)
from notifier.delivery.formatters.slack import SlackMessage, format_card, format_reply, format_slack
from notifier.errors import DeliveryError, Reason
from notifier.net.headers import parse_retry_after
from notifier.net.session import Http
from notifier.pipeline.events import Notification
from notifier.redaction import redact_url, scrub

DEFAULT_API_BASE_URL: Final = "https://slack.com/api/"

log = logging.getLogger(__name__)

#: Slack error codes meaning the credentials or permissions are wrong: retrying cannot help.
AUTH_ERRORS: Final = frozenset(
    {
        "invalid_token",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "not_allowed_token_type",
        "action_prohibited",
        "posting_to_general_channel_denied",
        "restricted_action",
        "not_in_channel",
        "team_disabled",
        "ekm_access_denied",
    }
)
#: Slack error codes meaning the destination does not exist (any more).
NOT_FOUND_ERRORS: Final = frozenset(
    {"channel_not_found", "channel_is_archived", "no_service", "no_team", "no_active_hooks", "user_not_found"}
)
#: Answers to ``chat.update`` or a thread reply meaning the card is gone or frozen: post a new card.
#: (``thread_not_found`` for a reply to a deleted parent is unconfirmed: Slack documents it for
#: ``conversations.replies``; ``invalid_thread_ts`` is taken the same way.)
CARD_GONE_ERRORS: Final = frozenset(
    {
        "message_not_found",
        "cant_update_message",
        "edit_window_closed",
        "thread_not_found",
        "invalid_thread_ts",
    }
)
#: Slack error codes Slack itself documents as temporary.
RATE_LIMIT_ERRORS: Final = frozenset({"ratelimited", "rate_limited"})
TEMPORARY_ERRORS: Final = frozenset({"internal_error", "fatal_error", "service_unavailable"})

_ERROR_CODE_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def classify_slack(status: int, error: str | None) -> tuple[bool, Reason]:
    """(retryable, reason) of a Slack answer that is not a success: HTTP status first, then Slack's code."""
    if status == 429 or error in RATE_LIMIT_ERRORS:
        return True, Reason.RATE_LIMITED
    if status >= 500 or error in TEMPORARY_ERRORS:
        return True, Reason.SERVER_ERROR
    if error == "request_timeout":
        return True, Reason.TIMEOUT
    if error in AUTH_ERRORS:
        return False, Reason.AUTH
    if error in NOT_FOUND_ERRORS:
        return False, Reason.NOT_FOUND
    if status >= 400:
        return classify_http_status(status)
    return False, Reason.CLIENT_ERROR


def slack_error_code(body: object) -> str | None:
    """Slack's error code from a webhook text body or a Web API JSON body; ``None`` if it is not one."""
    if isinstance(body, Mapping):
        body = body.get("error")
    if not isinstance(body, str):
        return None
    text = body.strip()
    return text if _ERROR_CODE_RE.match(text) else None


class SlackChannelConfig(HttpChannelConfig):
    """``type: slack`` channel settings: either ``webhook_url``, or ``token`` + ``channel`` (and
    ``timeout``, ``proxy``, ``ca_bundle``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    type: Literal["slack"]
    webhook_url: SecretStr | None = None
    token: SecretStr | None = None
    channel: str | None = None
    base_url: str | None = None
    username: str | None = None
    icon_emoji: str | None = None
    #: Messages per second. Slack allows about one per second per incoming webhook / channel.
    rate: float | None = Field(default=1.0, ge=0.001, le=10_000, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_mode(self) -> SlackChannelConfig:
        if (self.webhook_url is None) == (self.token is None):
            raise ValueError("set exactly one of webhook_url (incoming webhook) or token (bot token)")
        if self.webhook_url is not None:
            check_http_url(self.webhook_url.get_secret_value(), "webhook_url")
            if self.base_url is not None:
                raise ValueError("base_url applies only to bot-token mode (token + channel)")
        if self.token is not None:
            if not self.token.get_secret_value().strip():
                raise ValueError("token is empty")
            if not self.channel or not self.channel.strip():
                raise ValueError("token requires channel (a channel id like C0123456789 or #name)")
            if self.base_url is not None:
                check_http_url(self.base_url, "base_url")
        return self

    @property
    def mode(self) -> Literal["webhook", "bot"]:
        return "webhook" if self.webhook_url is not None else "bot"


class _MaskSecrets(logging.Filter):
    """Masks a channel's secrets in records of slack-sdk's logger (it logs the webhook URL at DEBUG), and cuts
    long ones (it logs answers whole)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message, self._secrets)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


def _sdk_logger(channel_name: str, secrets: list[str]) -> logging.Logger:
    logger = logging.getLogger(f"notifier.delivery.channels.slack.sdk.{channel_name}")
    for old in [f for f in logger.filters if isinstance(f, _MaskSecrets)]:
        logger.removeFilter(old)
    logger.addFilter(_MaskSecrets(secrets))
    return logger


class SlackChannel(Channel):
    """Posts :func:`~notifier.delivery.formatters.slack.format_slack` output to Slack. Never retries."""

    kind: ClassVar[str] = "slack"

    def __init__(self, name: str, config: SlackChannelConfig) -> None:
        super().__init__(name, rate=config.rate)
        self._config = config
        self.living_cards = config.mode == "bot"
        self.chat = True
        self.notes_in_next = config.mode == "webhook"
        self._secrets: list[str] = []
        if config.webhook_url is not None:
            url = config.webhook_url.get_secret_value()
            self._secrets.append(url)
            path = urlsplit(url).path
            if len(path) > 1:
                self._secrets.append(path)
        if config.token is not None:
            self._secrets.append(config.token.get_secret_value().strip())
        self._logger = _sdk_logger(name, self._secrets)
        where = config.webhook_url.get_secret_value() if config.webhook_url else config.base_url
        self._host = receiver_host(where or DEFAULT_API_BASE_URL)
        self._http: Http | None = None
        self._webhook: AsyncWebhookClient | None = None
        self._web: AsyncWebClient | None = None

    @property
    def config(self) -> SlackChannelConfig:
        return self._config

    def _get_http(self) -> Http:
        if self._http is None or self._http.closed:
            self._http = channel_http(self.name, self._config)
            self._webhook = None
            self._web = None
        return self._http

    def _webhook_client(self) -> AsyncWebhookClient:
        session = self._get_http().session
        if self._webhook is None:
            assert self._config.webhook_url is not None
            self._webhook = AsyncWebhookClient(
                self._config.webhook_url.get_secret_value(),
                timeout=int(max(1, self._config.timeout)),  # the session's own timeout is what applies
                session=session,
                logger=self._logger,
                retry_handlers=[],
            )
            # slack-sdk copies HTTPS_PROXY into every request, past NO_PROXY and the channel's proxy: the
            # session decides (see channel_http).
            self._webhook.proxy = None
        return self._webhook

    def _web_client(self) -> AsyncWebClient:
        session = self._get_http().session
        if self._web is None:
            assert self._config.token is not None
            self._web = AsyncWebClient(
                token=self._config.token.get_secret_value().strip(),
                base_url=self._config.base_url or DEFAULT_API_BASE_URL,
                timeout=int(max(1, self._config.timeout)),
                session=session,
                logger=self._logger,
                retry_handlers=[],
            )
            self._web.proxy = None  # as in _webhook_client: the session decides
        return self._web

    def _error(
        self, status: int, error: str | None, retry_after: str | None, *, what: str, detail: str = ""
    ) -> DeliveryError:
        retryable, reason = classify_slack(status, error)
        message = f"Slack {what} answered HTTP {status}" + (f" {error}" if error else "") + detail
        wait = parse_retry_after(retry_after) if reason is Reason.RATE_LIMITED else None
        return DeliveryError(self.name, retryable, reason, message, retry_after=wait)

    def _accepted_unreadable(self, status: int, what: str, problem: str) -> None:
        log.warning(
            "channel %r: Slack %s accepted the message (HTTP %d) but its answer is unreadable: %s; "
            "counted as delivered, not sent again",
            self.name,
            what,
            status,
            problem,
        )

    async def send(self, notification: Notification, card: Card | None = None) -> Card | None:
        event = notification.event
        if self._config.mode == "webhook":
            await self._send_webhook(format_slack(notification, notes=card.notes if card else ()))
            return after(event, card or Card()) if self.keeps_record(event) else None
        if needs_new_card(event, card):
            return await self._post_card(notification)
        assert card is not None
        client = self._web_client()
        try:
            # A replayed older event never rewinds the card; a part of the task is only told in its thread.
            if edits_card(event) and not card.shows_later_than(event):
                message = format_card(notification)
                await self._call(
                    "chat.update",
                    client.chat_update(
                        channel=card.channel_id, ts=card.ts, text=message.text, blocks=message.blocks
                    ),
                    on_card=True,
                )
                await self.pace()  # the reply is a second call to Slack
            reply = format_reply(notification)
            await self._call(
                "chat.postMessage (thread reply)",
                client.chat_postMessage(
                    channel=card.channel_id,
                    thread_ts=card.ts,
                    reply_broadcast=event.type in BROADCAST,
                    text=reply.text,
                    blocks=reply.blocks,
                    **self._extras(),
                ),
                on_card=True,
            )
        except _CardGone as gone:
            if card.shows_later_than(event):  # a new card would show a state the task has left
                log.info(
                    "channel %r: the card of %s is gone (%s); not posted again", self.name, event.id, gone
                )
                return card
            log.info("channel %r: the card of %s is gone (%s); posting a new one", self.name, event.id, gone)
            await self.pace()
            return await self._post_card(notification)
        return after(event, card) if edits_card(event) else card

    async def send_many(
        self, kind: str, notifications: Sequence[Notification], group: Group | None = None
    ) -> Group | None:
        if kind == "digest":
            await self._post(format_digest(notifications), "chat.postMessage (digest)")
            return None
        if self._config.mode == "webhook":
            await self._send_webhook(format_group(notifications))
            return None
        events = [n.event for n in notifications]
        if group is None:
            return await self._post_group(notifications)
        moved = group.moved(events)
        client = self._web_client()
        try:
            message = format_group_card(moved, notifications)
            await self._call(
                "chat.update (group)",
                client.chat_update(
                    channel=group.channel_id, ts=group.ts, text=message.text, blocks=message.blocks
                ),
                on_card=True,
            )
            await self.pace()  # the reply is a second call to Slack
            reply = format_group_reply(notifications, max(e.detected_at for e in events))
            await self._call(
                "chat.postMessage (group thread reply)",
                client.chat_postMessage(
                    channel=group.channel_id,
                    thread_ts=group.ts,
                    reply_broadcast=any(e.type in BROADCAST for e in events),
                    text=reply.text,
                    blocks=reply.blocks,
                    **self._extras(),
                ),
                on_card=True,
            )
        except _CardGone as gone:
            # Posted again with every member (and the same id: their records still point to it).
            log.info("channel %r: a group card is gone (%s); posting it again", self.name, gone)
            await self.pace()
            return await self._post_group(notifications, moved)
        return moved

    async def refresh(self, notifications: Sequence[Notification], card: Card | Group) -> Card | Group | None:
        if self._config.mode != "bot" or not card.ts or not notifications:
            return None
        event = notifications[-1].event
        if isinstance(card, Group):
            told: Card | Group = card.moved([n.event for n in notifications])
            assert isinstance(told, Group)
            message = format_group_card(told, notifications)
        elif card.shows_later_than(event):
            return None
        else:
            told = after(event, card)
            message = format_card(notifications[-1])
        try:
            await self._call(
                "chat.update (after a digest)",
                self._web_client().chat_update(
                    channel=card.channel_id, ts=card.ts, text=message.text, blocks=message.blocks
                ),
                on_card=True,
            )
        except _CardGone:
            return None  # deleted meanwhile: the digest told it
        return told

    async def _post(self, message: SlackMessage, what: str) -> Mapping[str, Any] | None:
        """One message to the channel: through the webhook, or ``chat.postMessage`` (its answer)."""
        if self._config.mode == "webhook":
            await self._send_webhook(message)
            return None
        assert self._config.channel is not None
        return await self._call(
            what,
            self._web_client().chat_postMessage(
                channel=self._config.channel, text=message.text, blocks=message.blocks, **self._extras()
            ),
        )

    async def _post_group(
        self, notifications: Sequence[Notification], again: Group | None = None
    ) -> Group | None:
        """Post a new group card (or ``again``, whose card is gone, with all its members); the group it
        is (None if Slack's answer cannot be read)."""
        first = notifications[0].event
        draft = again or Group(first.id, "", "", what_of(first), {}).moved([n.event for n in notifications])
        answer = await self._post(format_group_card(draft, notifications, mention=True), "chat.postMessage")
        channel_id, ts = (answer or {}).get("channel"), (answer or {}).get("ts")
        if not isinstance(channel_id, str) or not isinstance(ts, str) or not channel_id or not ts:
            return None
        return dataclasses.replace(draft, channel_id=channel_id, ts=ts)

    async def _post_card(self, notification: Notification) -> Card | None:
        """Post a new card; the card Slack made (None if its answer could not be read: the next event
        of the task then posts another)."""
        message = format_slack(notification)
        assert self._config.channel is not None
        answer = await self._call(
            "chat.postMessage",
            self._web_client().chat_postMessage(
                channel=self._config.channel, text=message.text, blocks=message.blocks, **self._extras()
            ),
        )
        channel_id, ts = (answer or {}).get("channel"), (answer or {}).get("ts")
        if not isinstance(channel_id, str) or not isinstance(ts, str) or not channel_id or not ts:
            if answer is not None:
                log.warning(
                    "channel %r: Slack took the card of %s but named no channel id and ts for it; "
                    "the task's next event posts a new card",
                    self.name,
                    notification.event.id,
                )
            return None
        # A task whose earlier news a silence held back keeps saying so on its card (see cards.py).
        return after(notification.event, Card(channel_id, ts, silenced=notification.silenced))

    async def _call(
        self, what: str, call: Awaitable[Any], *, on_card: bool = False
    ) -> Mapping[str, Any] | None:
        """One Web API call: Slack's answer when it took the call (None if that answer is unreadable),
        else DeliveryError — or, for a call ``on_card`` (an edit of a card, a reply in its thread),
        _CardGone when Slack says the card is gone."""
        with watch_answers() as seen:
            try:
                resp = await call
            except SlackApiError as exc:
                return self._judge_api_answer(exc.response, what, on_card=on_card)
            except Exception as exc:
                self._judge_failure(what, exc, seen)
                return None
        data = getattr(resp, "data", None)
        return data if isinstance(data, Mapping) else None

    def _extras(self) -> dict[str, Any]:
        return {"username": self._config.username, "icon_emoji": self._config.icon_emoji}

    def _judge_failure(self, what: str, exc: Exception, seen: AnswerSeen) -> None:
        """A slack-sdk call failed. Returns (delivered) if the answer was a 2xx, else raises DeliveryError."""
        if isinstance(exc, RedirectRefused) or (seen.status is None and not isinstance(exc, AnswerError)):
            raise transport_error(self.name, exc, self._secrets, host=self._host) from None
        status = exc.status if isinstance(exc, AnswerError) else seen.status
        headers = (exc.headers if isinstance(exc, AnswerError) else None) or seen.headers
        problem = exc.problem if isinstance(exc, AnswerError) else self._unread(exc, headers)
        assert status is not None
        if 200 <= status < 300:
            self._accepted_unreadable(status, what, problem)
            return
        raise self._error(
            status, None, headers.get("Retry-After"), what=what, detail=f" ({problem})"
        ) from None

    def _unread(self, exc: BaseException, headers: Mapping[str, str]) -> str:
        if isinstance(exc, AttributeError | TypeError | KeyError):
            return _not_an_answer(headers)  # slack-sdk choked on a body that is no API answer
        return f"answer could not be read ({describe_exception(exc, self._secrets)})"

    async def _send_webhook(self, message: SlackMessage) -> None:
        client = self._webhook_client()
        body: dict[str, Any] = {"text": message.text, "blocks": message.blocks, **self._extras()}
        if self._config.channel:
            body["channel"] = self._config.channel  # honoured by legacy webhooks, ignored by app webhooks
        with watch_answers() as seen:
            try:
                resp = await client.send_dict(body)
            except Exception as exc:
                self._judge_failure("webhook", exc, seen)
                return
        if 200 <= resp.status_code < 300:
            return
        headers: Mapping[str, str] = resp.headers
        raise self._error(
            resp.status_code, slack_error_code(resp.body), headers.get("Retry-After"), what="webhook"
        )

    def _judge_api_answer(
        self, resp: object, what: str, *, on_card: bool = False
    ) -> Mapping[str, Any] | None:
        """An answer slack-sdk did not take for a success (``SlackApiError.response``: slack-sdk's response
        object, or aiohttp's). Returns Slack's answer if Slack did take the call (None when it cannot be
        read), else raises DeliveryError, or _CardGone for an answer that says the card is gone."""
        status = getattr(resp, "status_code", None) or getattr(resp, "status", None)
        if not isinstance(status, int):
            raise DeliveryError(
                self.name, False, Reason.INVALID_RESPONSE, f"Slack {what}: no HTTP status"
            ) from None
        data = getattr(resp, "data", None)
        headers: Mapping[str, str] = getattr(resp, "headers", None) or {}
        if not 200 <= status < 300:
            raise self._error(status, slack_error_code(data), headers.get("Retry-After"), what=what) from None
        if isinstance(data, Mapping) and "ok" in data:
            if data["ok"] is True:
                return data  # a 2xx other than 200 with ok: slack-sdk wants exactly 200
            error = slack_error_code(data)
            if on_card and error in CARD_GONE_ERRORS:
                raise _CardGone(error)
            raise self._error(status, error, None, what=what, detail="" if error else " ok=false") from None
        self._accepted_unreadable(status, what, _not_an_answer(headers))
        return None

    async def aclose(self) -> None:
        if self._http is not None and not self._http.closed:
            await self._http.aclose()
        self._http = None
        self._webhook = None
        self._web = None


class _CardGone(Exception):
    """Slack says the card to update (or to reply under) is gone: deleted, or no longer editable."""


def _not_an_answer(headers: Mapping[str, str]) -> str:
    """What is wrong with a 2xx body that holds no Web API answer (slack-sdk read it as ``{}`` or text)."""
    if "json" in headers.get("Content-Type", "").lower():
        return "JSON answer without 'ok'"
    return "answer is not JSON"


def masked_slack_config(config: SlackChannelConfig) -> dict[str, Any]:
    """Settings safe to print: the webhook URL reduced to its host, the token masked."""
    return {
        "type": config.type,
        "mode": config.mode,
        "webhook_url": (
            None if config.webhook_url is None else redact_url(config.webhook_url.get_secret_value())
        ),
        "token": None if config.token is None else "****",
        "channel": config.channel,
        "base_url": config.base_url,
        "timeout": config.timeout,
        "username": config.username,
        "icon_emoji": config.icon_emoji,
        "rate": config.rate,
        "proxy": None if config.proxy is None else redact_url(config.proxy.get_secret_value(), path=False),
        "ca_bundle": None if config.ca_bundle is None else str(config.ca_bundle),
    }
