"""Receivers that misbehave on purpose, over real HTTP on 127.0.0.1: redirects, endless answers, answers
nobody can read. Every channel kind gets the same treatment (they share one HTTP session factory)."""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from notifier.delivery.channels import Channel, build_channel
from notifier.devtools.standins import CannedResponse, Flood, StandInServer
from notifier.devtools.standins.slack import SlackStandIn
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.errors import DeliveryError, Reason
from tests.support.wait import until
from tests.test_channels import (
    SECRET,
    TOKEN,
    WEBHOOK_PATH,
    assert_no_secrets,
    notification,
    send_failing,
    slack_bot_config,
    slack_webhook_config,
    webhook_config,
)

MIB = 2**20
#: What a hostile receiver offers: far more than anyone should read.
FLOOD = 300 * MIB
#: What the client may have let through before hanging up: the 1 MiB cap plus socket buffers.
STOPPED_EARLY = 32 * MIB
KINDS = ["slack-webhook", "slack-bot", "webhook"]
JSON = {"Content-Type": "application/json"}


@dataclass
class Setup:
    """A channel of one kind pointed at a stand-in, and a second stand-in of the same kind."""

    channel: Channel
    stand_in: StandInServer
    #: Where a redirect would lead: the same path on the second stand-in.
    elsewhere: str
    second: StandInServer


@pytest.fixture
async def setup() -> AsyncIterator[Callable[..., Any]]:
    async with AsyncExitStack() as stack:
        opened: list[Channel] = []

        async def make(kind: str, **extra: Any) -> Setup:
            if kind == "webhook":
                first: StandInServer = await stack.enter_async_context(WebhookReceiver(secret=SECRET))
                second: StandInServer = await stack.enter_async_context(WebhookReceiver(secret=SECRET))
                assert isinstance(first, WebhookReceiver) and isinstance(second, WebhookReceiver)
                channel = build_channel("hook", webhook_config(first.url, **extra))
                elsewhere = second.url
            else:
                first = await stack.enter_async_context(
                    SlackStandIn(token=TOKEN, channels={"C0DCS"}, webhook_path=WEBHOOK_PATH)
                )
                second = await stack.enter_async_context(
                    SlackStandIn(token=TOKEN, channels={"C0DCS"}, webhook_path=WEBHOOK_PATH)
                )
                assert isinstance(first, SlackStandIn) and isinstance(second, SlackStandIn)
                if kind == "slack-webhook":
                    channel = build_channel("ops", slack_webhook_config(first.webhook_url, **extra))
                    elsewhere = second.webhook_url
                else:
                    channel = build_channel("ops", slack_bot_config(first.api_base_url, **extra))
                    elsewhere = second.api_base_url + "chat.postMessage"
            opened.append(channel)
            return Setup(channel, first, elsewhere, second)

        yield make
        for channel in opened:
            await channel.aclose()


def unreadable_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("notifier.delivery.channels")
    ]


def assert_names_no_address(text: str, *stand_ins: StandInServer) -> None:
    for stand_in in stand_ins:
        assert f":{stand_in.port}" not in text, text
    assert_no_secrets(text)


# --- redirects ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_redirect_is_refused_not_followed(
    setup: Callable[..., Any], caplog: pytest.LogCaptureFixture, kind: str, status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    s: Setup = await setup(kind)
    s.stand_in.enqueue(CannedResponse(status, "moved", {"Location": s.elsewhere}))
    err = await send_failing(s.channel)
    assert s.second.requests == []  # the message went nowhere else...
    assert len(s.stand_in.requests) == 1
    assert (err.retryable, err.reason) == (False, Reason.CLIENT_ERROR)  # ...and is not counted as delivered
    assert f"unexpected redirect (HTTP {status}), not followed" in str(err)
    assert_names_no_address(str(err), s.second)
    assert_names_no_address(caplog.text, s.second)


# --- endless answers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
@pytest.mark.parametrize("status", [200, 500])
@pytest.mark.parametrize("kind", KINDS)
async def test_an_endless_answer_is_cut_short(
    setup: Callable[..., Any], caplog: pytest.LogCaptureFixture, kind: str, status: int, declared: bool
) -> None:
    s: Setup = await setup(kind)
    head = b'{"ok": true, "pad": "' if kind == "slack-bot" else b"ok"
    s.stand_in.enqueue(CannedResponse(status, Flood(FLOOD, declare_length=declared, head=head)))
    if status == 200:
        await s.channel.send(notification())  # accepted: the answer is not needed to know that
        if kind == "webhook":
            assert unreadable_warnings(caplog) == []  # the generic webhook reads no answer at all
        else:
            [warning] = unreadable_warnings(caplog)
            assert f"'{s.channel.name}'" in warning
            assert "1048576 bytes" in warning
            assert_names_no_address(warning, s.stand_in)
    else:
        err = await send_failing(s.channel)
        assert (err.retryable, err.reason) == (True, Reason.SERVER_ERROR), str(err)
        assert_names_no_address(str(err), s.stand_in)
    await until(lambda: bool(s.stand_in.floods), 10, "the stand-in to see the client hang up")
    [report] = s.stand_in.floods
    assert not report.complete
    assert report.written < STOPPED_EARLY, f"{report.written / MIB:.0f} MiB written before the client hung up"


def gzip_bomb(size: int) -> bytes:
    """A valid Web API answer of ``size`` bytes, gzipped to a few dozen KB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    parts = [packer.compress(b'{"ok": true, "pad": "')]
    parts += [packer.compress(b"x" * MIB) for _ in range(size // MIB)]
    parts += [packer.compress(b'"}'), packer.flush()]
    return b"".join(parts)


async def test_a_compressed_answer_is_capped_by_what_it_unpacks_to(
    setup: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    s: Setup = await setup("slack-bot")
    bomb = gzip_bomb(32 * MIB)
    assert len(bomb) < MIB
    s.stand_in.enqueue(CannedResponse(200, bomb, {**JSON, "Content-Encoding": "gzip"}))
    await s.channel.send(notification())
    [warning] = unreadable_warnings(caplog)
    assert "longer than 1048576 bytes" in warning


async def test_a_stalled_answer_after_2xx_counts_as_delivered(
    setup: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The status line said 200, then the body stopped coming: sending again would duplicate it."""
    s: Setup = await setup("slack-webhook", timeout=0.3)
    s.stand_in.enqueue(CannedResponse(200, Flood(100, head=b"o", stall=True)))
    await s.channel.send(notification())
    [warning] = unreadable_warnings(caplog)
    assert "TimeoutError" in warning
    s.stand_in.enqueue(CannedResponse(503, Flood(100, head=b"o", stall=True)))
    err = await send_failing(s.channel)
    assert (err.retryable, err.reason) == (True, Reason.SERVER_ERROR), str(err)


# --- answers nobody can read -------------------------------------------------------------------------------

NOT_UTF8 = b'{"ok": true, "text": "\xff\xfe\xc3"}'

BOT_ACCEPTED_UNREADABLE = [
    pytest.param(CannedResponse(200, "ok"), "not JSON", id="text-plain"),  # slack-sdk hands over a str
    pytest.param(
        CannedResponse(200, "<html>hi</html>", {"Content-Type": "text/html"}), "not JSON", id="html"
    ),
    pytest.param(CannedResponse(200, "<html>not json</html>", JSON), "not JSON", id="json-typed-html"),
    pytest.param(CannedResponse(200, NOT_UTF8, JSON), "not JSON", id="not-utf8"),
    pytest.param(CannedResponse(200, {"channel": "C0DCS", "ts": "1.2"}), "without 'ok'", id="no-ok"),
    pytest.param(CannedResponse(200, b"[1, 2]", JSON), "without 'ok'", id="json-list"),
    pytest.param(CannedResponse(202, "accepted"), "not JSON", id="202-text"),
]


@pytest.mark.parametrize(("canned", "problem"), BOT_ACCEPTED_UNREADABLE)
async def test_slack_bot_2xx_with_an_unreadable_answer_is_delivered_with_a_warning(
    setup: Callable[..., Any], caplog: pytest.LogCaptureFixture, canned: CannedResponse, problem: str
) -> None:
    s: Setup = await setup("slack-bot")
    s.stand_in.enqueue(canned)
    await s.channel.send(notification())
    [warning] = unreadable_warnings(caplog)
    assert "'ops'" in warning
    assert f"HTTP {canned.status}" in warning
    assert problem in warning
    assert "counted as delivered" in warning
    assert_names_no_address(warning, s.stand_in)


async def test_slack_bot_ok_true_with_another_2xx_is_delivered(
    setup: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    s: Setup = await setup("slack-bot")
    s.stand_in.enqueue(CannedResponse(201, {"ok": True, "channel": "C0123ABCDEF", "ts": "1.2"}))
    await s.channel.send(notification())
    assert unreadable_warnings(caplog) == []


async def test_slack_bot_refusal_in_a_readable_answer_stays_a_refusal(
    setup: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    s: Setup = await setup("slack-bot")
    s.stand_in.enqueue(SlackStandIn.api_error("channel_not_found"), CannedResponse(200, {"ok": False}))
    err = await send_failing(s.channel)
    assert (err.retryable, err.reason) == (False, Reason.NOT_FOUND)
    assert "channel_not_found" in str(err)
    err = await send_failing(s.channel)
    assert (err.retryable, err.reason) == (False, Reason.CLIENT_ERROR)
    assert unreadable_warnings(caplog) == []


async def test_slack_webhook_2xx_with_an_unreadable_answer_is_delivered_with_a_warning(
    setup: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    s: Setup = await setup("slack-webhook")
    s.stand_in.enqueue(
        CannedResponse(200, b"\xff\xfeok"),
        CannedResponse(200, b"caf\xe9", {"Content-Type": "text/plain; charset=utf-8"}),
    )
    await s.channel.send(notification())
    await s.channel.send(notification())
    first, second = unreadable_warnings(caplog)
    assert "'ops'" in first and "HTTP 200" in first and "not text" in first
    assert "not text" in second
    assert_names_no_address(first + second, s.stand_in)


UNREADABLE_ERRORS: list[tuple[str, CannedResponse, bool, Reason, float | None]] = [
    ("slack-bot", CannedResponse(500, "<html>oops</html>", JSON), True, Reason.SERVER_ERROR, None),
    ("slack-bot", CannedResponse(503, NOT_UTF8, JSON), True, Reason.SERVER_ERROR, None),
    (
        "slack-bot",
        CannedResponse(429, "slow down", {**JSON, "Retry-After": "4"}),
        True,
        Reason.RATE_LIMITED,
        4.0,
    ),
    ("slack-bot", CannedResponse(404, NOT_UTF8, JSON), False, Reason.NOT_FOUND, None),
    ("slack-bot", CannedResponse(400, "nope", JSON), False, Reason.CLIENT_ERROR, None),
    ("slack-webhook", CannedResponse(503, b"\xff\xfe"), True, Reason.SERVER_ERROR, None),
    ("slack-webhook", CannedResponse(429, b"\xff", {"Retry-After": "5"}), True, Reason.RATE_LIMITED, 5.0),
    ("slack-webhook", CannedResponse(404, b"\xff\xfe"), False, Reason.NOT_FOUND, None),
]


@pytest.mark.parametrize(
    ("kind", "canned", "retryable", "reason", "retry_after"),
    UNREADABLE_ERRORS,
    ids=[f"{kind}-{canned.status}" for kind, canned, *_ in UNREADABLE_ERRORS],
)
async def test_an_unreadable_error_answer_is_classified_by_its_status(
    setup: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    kind: str,
    canned: CannedResponse,
    retryable: bool,
    reason: Reason,
    retry_after: float | None,
) -> None:
    s: Setup = await setup(kind)
    s.stand_in.enqueue(canned)
    err = await send_failing(s.channel)
    assert isinstance(err, DeliveryError)
    assert (err.retryable, err.reason, err.retry_after) == (retryable, reason, retry_after), str(err)
    assert f"HTTP {canned.status}" in str(err)
    assert_names_no_address(str(err), s.stand_in)
    assert unreadable_warnings(caplog) == []


# --- DEBUG logging of what a receiver says -----------------------------------------------------------------


async def test_debug_logging_of_a_large_adversarial_answer_is_scrubbed_and_capped(
    setup: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """slack-sdk logs every answer at DEBUG, through the channel's secret mask: 900 KB of letters (just under
    the answer cap) are scrubbed in linear time and cut to the log cap."""
    caplog.set_level(logging.DEBUG)
    s: Setup = await setup("slack-bot")
    body = b'{"ok": true, "pad": "' + b"a" * 900_000 + b'"}'
    s.stand_in.enqueue(CannedResponse(200, body, JSON))
    await s.channel.send(notification())
    [logged] = [r.getMessage() for r in caplog.records if "Received the following response" in r.getMessage()]
    assert len(logged) < 20_000
    assert "characters cut]" in logged
    assert_no_secrets(caplog.text)
