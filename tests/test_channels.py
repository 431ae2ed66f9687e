"""Channels against local stand-ins over real HTTP on 127.0.0.1: delivery, error classification, secrets."""

from __future__ import annotations

import base64
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notifier.dcs.models import Task
from notifier.delivery.channels import (
    REGISTRY,
    Channel,
    ChannelConfig,
    SlackChannel,
    SlackChannelConfig,
    WebhookChannel,
    WebhookChannelConfig,
    build_channel,
    masked_config,
)
from notifier.delivery.channels.webhook import decode_secret, sign_webhook
from notifier.delivery.formatters import format_slack, webhook_body
from notifier.devtools.standins import CannedResponse, RecordedRequest, every_nth
from notifier.devtools.standins.slack import SlackStandIn
from notifier.devtools.standins.webhook import WebhookReceiver, verify_signature
from notifier.errors import DeliveryError, Reason
from notifier.net import USER_AGENT
from notifier.net.headers import parse_retry_after
from notifier.pipeline.events import Event, EventType, InstanceRef, Notification, event_id

TOKEN = "xoxb-1111-2222-s3cr3tT0k3nValue"
WEBHOOK_PATH = "T0SECRET/B0SECRET/s3cr3tW3bh00kPathValue"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef-secret-key-bytes").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-key-entirely-000000000000").decode()
AUTH_HEADER = "Bearer h00kAuthHeaderS3cret"
SECRETS = [TOKEN, WEBHOOK_PATH, "s3cr3tW3bh00kPathValue", SECRET, SECRET.removeprefix("whsec_"), AUTH_HEADER]


def notification(status: str = "SUCCESS", type_: EventType = EventType.SUCCEEDED) -> Notification:
    task = Task.model_validate(
        {
            "id": "8abf6e1e72c12e7c0172c15b508500aa",
            "name": "EXTEND",
            "user_name": "dcs_000_02",
            "status": status,
            "details": {"old_capacity": "0.125", "new_capacity": "0.25"},
            "created_at": "2020-06-17T08:18:06.597Z",
            "updated_at": "2020-06-17T08:18:10.106Z",
        }
    )
    instance = InstanceRef(id="inst-1", name="orders-cache", labels={"env": "prod"})
    event = Event(
        id=event_id(instance.id, task.id, type_, task.status),
        type=type_,
        project_id="p1",
        region="ap-southeast-1",
        instance=instance,
        task=task,
        detected_at=datetime(2020, 6, 17, 8, 18, 11, tzinfo=UTC),
    )
    return Notification(event=event, channel="ops", rule="prod-all")


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    async with SlackStandIn(token=TOKEN, channels={"C0DCS"}, webhook_path=WEBHOOK_PATH) as stand_in:
        yield stand_in


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(secret=SECRET) as stand_in:
        yield stand_in


@pytest.fixture
async def channels() -> AsyncIterator[Callable[[Channel], Channel]]:
    """Register a channel to be closed after the test."""
    opened: list[Channel] = []

    def add(channel: Channel) -> Channel:
        opened.append(channel)
        return channel

    yield add
    for channel in opened:
        await channel.aclose()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def slack_webhook_config(url: str, **extra: Any) -> SlackChannelConfig:
    return SlackChannelConfig.model_validate({"type": "slack", "webhook_url": url, **extra})


def slack_bot_config(base_url: str, **extra: Any) -> SlackChannelConfig:
    return SlackChannelConfig.model_validate(
        {"type": "slack", "token": TOKEN, "channel": "C0DCS", "base_url": base_url, **extra}
    )


def webhook_config(url: str, **extra: Any) -> WebhookChannelConfig:
    return WebhookChannelConfig.model_validate(
        {"type": "webhook", "url": url, "secret": SECRET, "headers": {"Authorization": AUTH_HEADER}, **extra}
    )


async def send_failing(channel: Channel, n: Notification | None = None) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        await channel.send(n or notification())
    return info.value


# --- delivery ----------------------------------------------------------------------------------------------


async def test_slack_webhook_delivers(slack: SlackStandIn, channels: Callable[[Channel], Channel]) -> None:
    channel = channels(build_channel("ops", slack_webhook_config(slack.webhook_url)))
    assert isinstance(channel, SlackChannel)
    n = notification()
    await channel.send(n)
    [req] = await slack.wait_for(1)
    expected = format_slack(n)
    assert req.path == "/services/" + WEBHOOK_PATH
    assert req.status == 200
    assert req.json["blocks"] == expected.blocks
    assert req.json["text"] == expected.text
    assert slack.messages == [req.json]


async def test_slack_bot_delivers(slack: SlackStandIn, channels: Callable[[Channel], Channel]) -> None:
    config = slack_bot_config(slack.api_base_url, username="DCS", icon_emoji=":redis:")
    channel = channels(build_channel("ops", config))
    n = notification()
    await channel.send(n)
    await channel.send(n)  # the session is reused
    first, second = await slack.wait_for(2)
    expected = format_slack(n)
    assert first.path == "/api/chat.postMessage"
    assert first.header("Authorization") == f"Bearer {TOKEN}"
    assert first.status == 200
    assert first.json["channel"] == "C0DCS"
    assert first.json["blocks"] == expected.blocks
    assert first.json["text"] == expected.text
    assert first.json["username"] == "DCS"
    assert first.json["icon_emoji"] == ":redis:"
    assert second.json == first.json


async def test_webhook_delivers_signed_exact_bytes(
    receiver: WebhookReceiver, channels: Callable[[Channel], Channel]
) -> None:
    channel = channels(build_channel("hook", webhook_config(receiver.url, headers={"X-Team": "dba"})))
    assert isinstance(channel, WebhookChannel)
    n = notification()
    before = int(datetime.now(UTC).timestamp())
    await channel.send(n)
    [req] = await receiver.wait_for(1)
    assert req.body == webhook_body(n)
    assert req.status == 204
    assert req.verified is True
    assert req.header("Content-Type") == "application/json"
    assert req.header("User-Agent") == USER_AGENT
    assert req.header("X-Team") == "dba"
    assert req.header("webhook-id") == n.event.id
    assert before <= int(req.header("webhook-timestamp") or 0) <= before + 5
    # The reference verifier agrees, and returns the payload.
    assert Webhook(SECRET).verify(req.body, req.headers) == json.loads(webhook_body(n))
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(req.body, req.headers)
    tampered = req.body.replace(b"SUCCESS", b"FAILED!")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, req.headers)


async def test_webhook_without_secret_is_unsigned(channels: Callable[[Channel], Channel]) -> None:
    async with WebhookReceiver() as receiver:
        config = WebhookChannelConfig(type="webhook", url=receiver.url)
        channel = channels(build_channel("hook", config))
        await channel.send(notification())
        [req] = await receiver.wait_for(1)
    assert req.header("webhook-signature") is None
    assert req.header("webhook-id") == notification().event.id
    assert req.verified is None


async def test_wrong_secret_is_rejected_by_receiver(channels: Callable[[Channel], Channel]) -> None:
    async with WebhookReceiver(secret=OTHER_SECRET) as receiver:
        channel = channels(build_channel("hook", webhook_config(receiver.url)))
        err = await send_failing(channel)
        [req] = await receiver.wait_for(1)
    assert req.verified is False
    assert (err.retryable, err.reason) == (False, Reason.AUTH)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_webhook_2xx_is_delivered(
    receiver: WebhookReceiver, channels: Callable[[Channel], Channel], status: int
) -> None:
    receiver.enqueue(CannedResponse(status, "fine"))
    channel = channels(build_channel("hook", webhook_config(receiver.url)))
    await channel.send(notification())


# --- conformance: every channel kind classifies failures the same way ---------------------------------------

SLACK_WEBHOOK_CASES: list[tuple[CannedResponse, bool, Reason, float | None]] = [
    (SlackStandIn.webhook_error(400, "invalid_payload"), False, Reason.CLIENT_ERROR, None),
    (SlackStandIn.webhook_error(400, "invalid_blocks"), False, Reason.CLIENT_ERROR, None),
    (SlackStandIn.webhook_error(400, "something_new"), False, Reason.CLIENT_ERROR, None),
    (SlackStandIn.webhook_error(403, "action_prohibited"), False, Reason.AUTH, None),
    (SlackStandIn.webhook_error(403, "invalid_token"), False, Reason.AUTH, None),
    (SlackStandIn.webhook_error(403, "posting_to_general_channel_denied"), False, Reason.AUTH, None),
    (SlackStandIn.webhook_error(404, "channel_not_found"), False, Reason.NOT_FOUND, None),
    (SlackStandIn.webhook_error(404, "no_service"), False, Reason.NOT_FOUND, None),
    (SlackStandIn.webhook_error(410, "channel_is_archived"), False, Reason.NOT_FOUND, None),
    (SlackStandIn.webhook_error(429, "rate_limited", retry_after=2), True, Reason.RATE_LIMITED, 2.0),
    (SlackStandIn.webhook_error(500, "internal_error"), True, Reason.SERVER_ERROR, None),
    (CannedResponse(502, "<html>Bad Gateway</html>"), True, Reason.SERVER_ERROR, None),
    (CannedResponse(503), True, Reason.SERVER_ERROR, None),
]

SLACK_BOT_CASES: list[tuple[CannedResponse, bool, Reason, float | None]] = [
    (SlackStandIn.api_error("invalid_auth"), False, Reason.AUTH, None),
    (SlackStandIn.api_error("not_authed"), False, Reason.AUTH, None),
    (SlackStandIn.api_error("invalid_token"), False, Reason.AUTH, None),
    (SlackStandIn.api_error("not_in_channel"), False, Reason.AUTH, None),
    (SlackStandIn.api_error("channel_not_found"), False, Reason.NOT_FOUND, None),
    (SlackStandIn.api_error("channel_is_archived"), False, Reason.NOT_FOUND, None),
    (SlackStandIn.api_error("invalid_blocks"), False, Reason.CLIENT_ERROR, None),
    (SlackStandIn.api_error("msg_too_long"), False, Reason.CLIENT_ERROR, None),
    (SlackStandIn.api_error("ratelimited", status=429, retry_after=3), True, Reason.RATE_LIMITED, 3.0),
    (SlackStandIn.api_error("ratelimited"), True, Reason.RATE_LIMITED, None),
    (SlackStandIn.api_error("internal_error"), True, Reason.SERVER_ERROR, None),
    (SlackStandIn.api_error("fatal_error", status=500), True, Reason.SERVER_ERROR, None),
    (
        CannedResponse(502, "<html>Bad Gateway</html>", {"Content-Type": "text/html"}),
        True,
        Reason.SERVER_ERROR,
        None,
    ),
    (CannedResponse(503, "Service Unavailable"), True, Reason.SERVER_ERROR, None),
    (CannedResponse(404, "Not Found"), False, Reason.NOT_FOUND, None),
    (CannedResponse(403, {"ok": False, "error": "ekm_access_denied"}), False, Reason.AUTH, None),
]

WEBHOOK_CASES: list[tuple[CannedResponse, bool, Reason, float | None]] = [
    (WebhookReceiver.error(400), False, Reason.CLIENT_ERROR, None),
    (WebhookReceiver.error(401), False, Reason.AUTH, None),
    (WebhookReceiver.error(403), False, Reason.AUTH, None),
    (WebhookReceiver.error(404), False, Reason.NOT_FOUND, None),
    (WebhookReceiver.error(409), False, Reason.CLIENT_ERROR, None),
    (WebhookReceiver.error(410), False, Reason.NOT_FOUND, None),
    (WebhookReceiver.error(413), False, Reason.CLIENT_ERROR, None),
    (WebhookReceiver.error(422), False, Reason.CLIENT_ERROR, None),
    (WebhookReceiver.error(408), True, Reason.TIMEOUT, None),
    (WebhookReceiver.error(429, retry_after=7), True, Reason.RATE_LIMITED, 7.0),
    (WebhookReceiver.error(429), True, Reason.RATE_LIMITED, None),
    (WebhookReceiver.error(500), True, Reason.SERVER_ERROR, None),
    (WebhookReceiver.error(502), True, Reason.SERVER_ERROR, None),
    (WebhookReceiver.error(503, retry_after=30), True, Reason.SERVER_ERROR, 30.0),
    (WebhookReceiver.error(504), True, Reason.SERVER_ERROR, None),
    (CannedResponse(301, headers={"Location": "http://example.invalid/"}), False, Reason.CLIENT_ERROR, None),
]


def case_id(case: tuple[CannedResponse, bool, Reason, float | None]) -> str:
    canned = case[0]
    body = canned.body.get("error") if isinstance(canned.body, dict) else canned.body
    return f"{canned.status}-{body}" if isinstance(body, str) else str(canned.status)


async def check_case(
    stand_in: SlackStandIn | WebhookReceiver,
    channel: Channel,
    case: tuple[CannedResponse, bool, Reason, float | None],
) -> None:
    canned, retryable, reason, retry_after = case
    stand_in.enqueue(canned)
    err = await send_failing(channel)
    assert (err.retryable, err.reason) == (retryable, reason), str(err)
    if retry_after is None and reason is not Reason.SERVER_ERROR:
        assert err.retry_after is None
    elif retry_after is not None:
        assert err.retry_after == pytest.approx(retry_after)
    assert err.channel == channel.name
    [req] = await stand_in.wait_for(1)
    assert req.status == canned.status
    for secret in SECRETS:
        assert secret not in str(err)


@pytest.mark.parametrize("case", SLACK_WEBHOOK_CASES, ids=case_id)
async def test_slack_webhook_conformance(
    slack: SlackStandIn,
    channels: Callable[[Channel], Channel],
    case: tuple[CannedResponse, bool, Reason, float | None],
) -> None:
    channel = channels(build_channel("ops", slack_webhook_config(slack.webhook_url)))
    await check_case(slack, channel, case)


@pytest.mark.parametrize("case", SLACK_BOT_CASES, ids=case_id)
async def test_slack_bot_conformance(
    slack: SlackStandIn,
    channels: Callable[[Channel], Channel],
    case: tuple[CannedResponse, bool, Reason, float | None],
) -> None:
    channel = channels(build_channel("ops", slack_bot_config(slack.api_base_url)))
    await check_case(slack, channel, case)


@pytest.mark.parametrize("case", WEBHOOK_CASES, ids=case_id)
async def test_webhook_conformance(
    receiver: WebhookReceiver,
    channels: Callable[[Channel], Channel],
    case: tuple[CannedResponse, bool, Reason, float | None],
) -> None:
    channel = channels(build_channel("hook", webhook_config(receiver.url)))
    await check_case(receiver, channel, case)


async def test_webhook_retry_after_http_date(
    receiver: WebhookReceiver, channels: Callable[[Channel], Channel]
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    receiver.enqueue(WebhookReceiver.error(429, retry_after=when))
    channel = channels(build_channel("hook", webhook_config(receiver.url)))
    err = await send_failing(channel)
    assert (err.retryable, err.reason) == (True, Reason.RATE_LIMITED)
    assert err.retry_after is not None
    assert 100 < err.retry_after <= 120


async def test_slack_real_answers_without_canned_faults(
    slack: SlackStandIn, channels: Callable[[Channel], Channel]
) -> None:
    """The stand-in's own semantics: unknown webhook path, wrong token, unknown channel."""
    wrong_path = slack.webhook_url.replace(WEBHOOK_PATH, "T0/B0/revoked")
    hook = channels(build_channel("hook", slack_webhook_config(wrong_path)))
    err = await send_failing(hook)
    assert (err.retryable, err.reason) == (False, Reason.NOT_FOUND)
    assert "no_service" in str(err)

    bad_token = SlackChannelConfig.model_validate(
        {"type": "slack", "token": "xoxb-wrong", "channel": "C0DCS", "base_url": slack.api_base_url}
    )
    err = await send_failing(channels(build_channel("bot", bad_token)))
    assert (err.retryable, err.reason) == (False, Reason.AUTH)
    assert "invalid_auth" in str(err)

    err = await send_failing(
        channels(build_channel("bot2", slack_bot_config(slack.api_base_url, channel="C0NOPE")))
    )
    assert (err.retryable, err.reason) == (False, Reason.NOT_FOUND)
    assert "channel_not_found" in str(err)
    assert [r.status for r in await slack.wait_for(3)] == [404, 200, 200]


# --- transport failures -------------------------------------------------------------------------------------


def transport_channels(slack_base: str, hook_base: str) -> list[Channel]:
    return [
        build_channel("hook", slack_webhook_config(f"{slack_base}/services/{WEBHOOK_PATH}", timeout=0.3)),
        build_channel("bot", slack_bot_config(f"{slack_base}/api/", timeout=0.3)),
        build_channel("generic", webhook_config(f"{hook_base}/hooks/{WEBHOOK_PATH}", timeout=0.3)),
    ]


async def test_connection_refused_is_retryable(
    channels: Callable[[Channel], Channel], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base = f"http://127.0.0.1:{closed_port()}"
    for channel in transport_channels(base, base):
        channels(channel)
        err = await send_failing(channel)
        assert (err.retryable, err.reason) == (True, Reason.CONNECTION), str(err)
        assert_no_secrets(str(err), repr(err), repr(channel), caplog.text)


async def test_timeout_is_retryable(
    channels: Callable[[Channel], Channel], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    # The stand-ins hold every answer back far longer than the channels wait (released when they stop).
    def slow(number: int, path: str) -> CannedResponse:
        return CannedResponse(200, "ok", delay=30)

    async with SlackStandIn(policy=slow) as slack, WebhookReceiver(policy=slow) as receiver:
        for channel in transport_channels(slack.base_url, receiver.base_url):
            channels(channel)
            err = await send_failing(channel)
            assert (err.retryable, err.reason) == (True, Reason.TIMEOUT), str(err)
            assert_no_secrets(str(err), repr(err), repr(channel), caplog.text)
        assert len(await slack.wait_for(2)) == 2
        assert len(await receiver.wait_for(1)) == 1


# --- secrets -----------------------------------------------------------------------------------------------


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret leaked into: {text[:200]}"


async def test_secrets_never_leak(
    slack: SlackStandIn,
    receiver: WebhookReceiver,
    channels: Callable[[Channel], Channel],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    hook = channels(build_channel("hook", slack_webhook_config(slack.webhook_url)))
    bot = channels(build_channel("bot", slack_bot_config(slack.api_base_url)))
    generic = channels(build_channel("generic", webhook_config(receiver.url)))
    errors: list[DeliveryError] = []
    for channel in (hook, bot, generic):
        await channel.send(notification())  # success paths log too (slack-sdk logs the URL at DEBUG)
    for channel in (hook, bot, generic):
        slack.enqueue(
            SlackStandIn.webhook_error(404, "no_service")
            if channel is hook
            else SlackStandIn.api_error("invalid_auth")
        )
        receiver.enqueue(WebhookReceiver.error(403))
        errors.append(await send_failing(channel))
    assert len(await slack.wait_for(4)) == 4
    assert "Sending a request" in caplog.text  # slack-sdk's debug logging was captured...
    assert_no_secrets(caplog.text, *(str(e) for e in errors), *(repr(e) for e in errors))  # ...masked
    for channel in (hook, bot, generic):
        assert_no_secrets(repr(channel), repr(channel.__dict__.get("_config")))
    hook_config = slack_webhook_config(slack.webhook_url)
    assert_no_secrets(repr(hook_config), str(hook_config), json.dumps(masked_config(hook_config)))
    assert_no_secrets(json.dumps(masked_config(webhook_config(receiver.url))))


def test_invalid_config_errors_do_not_echo_secrets() -> None:
    with pytest.raises(ValidationError) as info:
        SlackChannelConfig.model_validate(
            {"type": "slack", "webhook_url": f"ftp://hooks.slack.com/{WEBHOOK_PATH}"}
        )
    assert "http:// or https://" in str(info.value)
    assert_no_secrets(str(info.value))
    with pytest.raises(ValidationError) as info:
        WebhookChannelConfig.model_validate({"type": "webhook", "url": f"gopher://x/{WEBHOOK_PATH}"})
    assert_no_secrets(str(info.value))


# --- configuration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({}, "exactly one of webhook_url"),
        (
            {"webhook_url": "https://hooks.slack.com/services/T/B/X", "token": TOKEN},
            "exactly one of webhook_url",
        ),
        ({"token": TOKEN}, "token requires channel"),
        ({"token": "  ", "channel": "C1"}, "token is empty"),
        ({"webhook_url": "hooks.slack.com/services/T/B/X"}, "http:// or https://"),
        ({"webhook_url": "https:///services/T/B/X"}, "no host"),
        ({"webhook_url": "https://hooks.slack.com/x", "base_url": "http://127.0.0.1/api/"}, "bot-token mode"),
        ({"token": TOKEN, "channel": "C1", "base_url": "file:///api"}, "base_url must start"),
        ({"token": TOKEN, "channel": "C1", "timeout": 0}, "greater than 0"),
        ({"token": TOKEN, "channel": "C1", "colour": "red"}, "Extra inputs"),
    ],
)
def test_slack_config_validation(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        SlackChannelConfig.model_validate({"type": "slack", **data})


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"url": "ftp://example.com/hook"}, "http:// or https://"),
        ({"url": "https://example.com/hook", "secret": "whsec_!!!not-base64!!!"}, "not valid base64"),
        ({"url": "https://example.com/hook", "secret": "whsec_"}, "empty"),
        ({"url": "https://example.com/hook", "headers": {"Webhook-Signature": "x"}}, "Webhook-Signature"),
        ({"url": "https://example.com/hook", "headers": {"content-type": "text/plain"}}, "content-type"),
    ],
)
def test_webhook_config_validation(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        WebhookChannelConfig.model_validate({"type": "webhook", **data})


def test_channel_config_union_and_registry() -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(ChannelConfig)
    slack_cfg = adapter.validate_python(
        {"type": "slack", "webhook_url": "https://hooks.slack.com/services/T/B/X"}
    )
    hook_cfg = adapter.validate_python({"type": "webhook", "url": "https://example.com/h", "secret": SECRET})
    assert isinstance(slack_cfg, SlackChannelConfig)
    assert isinstance(hook_cfg, WebhookChannelConfig)
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "pagerduty"})
    assert dict(REGISTRY) == {"slack": SlackChannel, "webhook": WebhookChannel}
    channel = build_channel("ops", slack_cfg)
    assert repr(channel) == "<SlackChannel 'ops'>"
    assert channel.kind == "slack"


def test_masked_config() -> None:
    slack_cfg = slack_webhook_config("https://hooks.slack.com/services/T/B/XYZ")
    assert masked_config(slack_cfg)["webhook_url"] == "https://hooks.slack.com/…"
    bot = slack_bot_config("http://127.0.0.1:9/api/")
    assert masked_config(bot)["token"] == "****"
    assert masked_config(bot)["channel"] == "C0DCS"
    hook = masked_config(webhook_config("https://example.com:8443/h?token=abc"))
    assert hook == {
        "type": "webhook",
        "url": "https://example.com:8443/…",
        "secret": "****",
        "headers": {"Authorization": "****"},
        "timeout": 10.0,
        "rate": None,
        "proxy": None,
        "ca_bundle": None,
    }
    assert masked_config(slack_cfg)["rate"] == 1.0


def test_secret_decoding_matches_standardwebhooks() -> None:
    for secret in (SECRET, SECRET.removeprefix("whsec_"), SECRET.rstrip("=")):
        assert decode_secret(secret) == Webhook(secret)._whsecret
    key = decode_secret(SECRET)
    ts = 1_700_000_000
    reference = Webhook(SECRET).sign("evt_1", datetime.fromtimestamp(ts, UTC), '{"a":1}')
    assert sign_webhook(key, "evt_1", ts, b'{"a":1}') == reference
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": f"v1,bad {reference}",
    }
    assert verify_signature(SECRET, headers, b'{"a":1}', now=ts)
    assert not verify_signature(SECRET, headers, b'{"a":2}', now=ts)
    assert not verify_signature(SECRET, headers, b'{"a":1}', now=ts + 301)
    assert not verify_signature(OTHER_SECRET, headers, b'{"a":1}', now=ts)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("3", 3.0), ("1.5", 1.5), ("-4", 0.0), ("soon", None), ("nan", None)],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Mon, 01 Jan 2024 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now=now) == 0.0


# --- stand-ins ---------------------------------------------------------------------------------------------


async def test_policy_every_third_request_is_rate_limited(
    slack: SlackStandIn, channels: Callable[[Channel], Channel]
) -> None:
    slack.policy = every_nth(3, SlackStandIn.webhook_error(429, "rate_limited", retry_after=2))
    channel = channels(build_channel("ops", slack_webhook_config(slack.webhook_url)))
    outcomes: list[tuple[Reason, float | None] | str] = []
    for _ in range(6):
        try:
            await channel.send(notification())
            outcomes.append("ok")
        except DeliveryError as err:
            outcomes.append((err.reason, err.retry_after))
    limited = (Reason.RATE_LIMITED, 2.0)
    assert outcomes == ["ok", "ok", limited, "ok", "ok", limited]
    assert [r.status for r in await slack.wait_for(6)] == [200, 200, 429, 200, 200, 429]
    assert len(slack.messages) == 4


async def test_canned_queue_is_consumed_in_order(
    receiver: WebhookReceiver, channels: Callable[[Channel], Channel]
) -> None:
    receiver.enqueue(WebhookReceiver.error(503), WebhookReceiver.error(500))
    channel = channels(build_channel("hook", webhook_config(receiver.url)))
    assert (await send_failing(channel)).retryable
    assert (await send_failing(channel)).retryable
    await channel.send(notification())
    assert [r.status for r in await receiver.wait_for(3)] == [503, 500, 204]
    assert len(receiver.payloads) == 1


async def test_on_message_callbacks_and_wait_for_timeout(channels: Callable[[Channel], Channel]) -> None:
    seen: list[RecordedRequest] = []
    seen_async: list[RecordedRequest] = []

    async def record_async(req: RecordedRequest) -> None:
        seen_async.append(req)

    async with (
        SlackStandIn(on_message=seen.append) as slack,
        WebhookReceiver(on_message=record_async) as hook,
    ):
        with pytest.raises(TimeoutError, match="expected 1 request"):
            await slack.wait_for(1, timeout=0.05)
        await channels(build_channel("s", slack_webhook_config(slack.webhook_url))).send(notification())
        config = WebhookChannelConfig(type="webhook", url=hook.url)
        await channels(build_channel("w", config)).send(notification())
        assert await slack.wait_for(1) == seen
        assert await hook.wait_for(1) == seen_async


async def test_channel_close_is_idempotent(slack: SlackStandIn) -> None:
    channel = build_channel("ops", slack_webhook_config(slack.webhook_url))
    await channel.aclose()  # never opened
    await channel.send(notification())
    await channel.aclose()
    await channel.aclose()
    await channel.send(notification())  # reopens lazily
    await channel.aclose()
    assert len(await slack.wait_for(2)) == 2
