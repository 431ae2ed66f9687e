"""Channels behind a corporate proxy or in front of a receiver with a private CA: every channel gets its
session from the one factory, honours the environment's proxies (``NO_PROXY`` too, also for slack-sdk,
which would otherwise copy ``HTTPS_PROXY`` into every request), and may set its own ``proxy:`` and
``ca_bundle:``.

The receivers are the stand-ins and a small TLS receiver on 127.0.0.1; a receiver "only reachable through
the proxy" has a host name only the loopback proxy knows (nothing ever resolves it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from pydantic import ValidationError

from notifier.delivery.channels import SlackChannel, WebhookChannel, masked_config
from notifier.delivery.channels.slack import SlackChannelConfig
from notifier.delivery.channels.webhook import WebhookChannelConfig
from notifier.devtools.standins.slack import SlackStandIn
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.errors import DeliveryError, Reason
from tests.support.loopback_http import LoopbackProxy
from tests.support.loopback_http import tls_receiver as https_receiver
from tests.test_channels import SECRET, TOKEN, WEBHOOK_PATH, notification

HIDDEN = "receiver.invalid"  # known to the proxy only
PROXY_USER, PROXY_PASSWORD = "corp-user", "pr0xy-S3CRET-pw"


pytestmark = pytest.mark.usefixtures("no_proxy_env")


@pytest.fixture
async def corp_proxy() -> AsyncIterator[LoopbackProxy]:
    """A proxy that wants credentials and alone knows HIDDEN."""
    p = await LoopbackProxy(auth=(PROXY_USER, PROXY_PASSWORD), aliases=[HIDDEN]).start()
    yield p
    await p.stop()


@pytest.fixture
async def open_proxy() -> AsyncIterator[LoopbackProxy]:
    p = await LoopbackProxy(aliases=[HIDDEN]).start()
    yield p
    await p.stop()


def hidden(url: str) -> str:
    return url.replace("127.0.0.1", HIDDEN)


def webhook(name: str, url: str, **extra: Any) -> WebhookChannel:
    config = WebhookChannelConfig.model_validate({"type": "webhook", "url": url, "secret": SECRET, **extra})
    return WebhookChannel(name, config)


def authenticated(proxy: LoopbackProxy) -> str:
    return f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"


# --- proxies -----------------------------------------------------------------------------------------------


async def test_a_webhook_reachable_only_through_its_proxy(
    corp_proxy: LoopbackProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with WebhookReceiver(secret=SECRET) as receiver:
        channel = webhook("audit", hidden(receiver.url), proxy=authenticated(corp_proxy))
        try:
            await channel.send(notification())
        finally:
            await channel.aclose()
        [request] = receiver.requests
    assert request.verified
    assert corp_proxy.seen == [f"POST {hidden(receiver.url)}"]
    assert corp_proxy.auth_seen[0] is not None and corp_proxy.auth_seen[0].startswith("Basic ")
    assert f"channels.audit: HTTP proxy http://127.0.0.1:{corp_proxy.port} (with credentials)" in caplog.text
    assert PROXY_PASSWORD not in caplog.text
    shown = masked_config(channel.config)
    assert shown["proxy"] == f"http://127.0.0.1:{corp_proxy.port}"
    assert PROXY_PASSWORD not in repr(channel.config) and PROXY_PASSWORD not in str(shown)


async def test_a_slack_bot_through_its_proxy(open_proxy: LoopbackProxy) -> None:
    async with SlackStandIn(token=TOKEN, channels={"C0DCS"}, webhook_path=WEBHOOK_PATH) as slack:
        config = SlackChannelConfig.model_validate(
            {
                "type": "slack",
                "token": TOKEN,
                "channel": "C0DCS",
                "base_url": hidden(f"{slack.base_url}/api/"),
                "proxy": open_proxy.url,
            }
        )
        channel = SlackChannel("oncall", config)
        try:
            await channel.send(notification())
        finally:
            await channel.aclose()
        assert len(slack.messages) == 1
    assert open_proxy.seen == [f"POST {hidden(slack.base_url)}/api/chat.postMessage"]


async def test_channels_honour_the_environments_proxy_and_no_proxy(
    open_proxy: LoopbackProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", open_proxy.url)
    monkeypatch.setenv("HTTPS_PROXY", open_proxy.url)
    async with (
        WebhookReceiver(secret=SECRET) as receiver,
        SlackStandIn(token=TOKEN, channels={"C0DCS"}, webhook_path=WEBHOOK_PATH) as slack,
    ):
        slack_url = f"{slack.base_url}/services/{WEBHOOK_PATH}"
        through = [
            webhook("audit", hidden(receiver.url)),
            SlackChannel("oncall", SlackChannelConfig(type="slack", webhook_url=hidden(slack_url))),  # type: ignore[arg-type]
        ]
        for channel in through:
            await channel.send(notification())
            await channel.aclose()
        assert open_proxy.seen == [f"POST {hidden(receiver.url)}", f"POST {hidden(slack_url)}"]
        # NO_PROXY holds for Slack too: slack-sdk reads HTTPS_PROXY itself, and must not apply it here.
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = SlackChannel("direct", SlackChannelConfig(type="slack", webhook_url=slack_url))  # type: ignore[arg-type]
        await direct.send(notification())
        await direct.aclose()
        assert len(open_proxy.seen) == 2
        assert len(receiver.requests) == 1 and len(slack.messages) == 2


def test_channel_proxy_and_ca_bundle_are_validated_without_echoing_secrets(tmp_path: Path) -> None:
    bad_proxy = f"socks5://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:1080"
    with pytest.raises(ValidationError) as info:
        WebhookChannelConfig.model_validate(
            {"type": "webhook", "url": "http://127.0.0.1:9/", "proxy": bad_proxy}
        )
    assert "need an http:// or https:// URL with a host, got scheme 'socks5'" in str(info.value)
    assert PROXY_PASSWORD not in str(info.value)
    with pytest.raises(ValidationError) as info:
        SlackChannelConfig.model_validate(
            {"type": "slack", "webhook_url": "http://127.0.0.1:9/x", "ca_bundle": str(tmp_path / "nope.pem")}
        )
    assert "nope.pem: no such file (a PEM file of CA certificates)" in str(info.value)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValidationError, match=r"junk.pem: not a PEM file of CA certificates"):
        WebhookChannelConfig.model_validate(
            {"type": "webhook", "url": "http://127.0.0.1:9/", "ca_bundle": str(junk)}
        )


# --- a receiver with a private CA ----------------------------------------------------------------------------


@pytest.fixture
async def tls_receiver(ca: trustme.CA) -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTPS webhook receiver on 127.0.0.1 whose certificate the private CA signed: (URL, bodies)."""
    async with https_receiver(ca) as (port, bodies):
        yield f"https://127.0.0.1:{port}/hook", bodies


async def test_a_webhook_with_a_private_ca_needs_its_ca_bundle(
    tls_receiver: tuple[str, list[bytes]], ca_pem: Path
) -> None:
    url, bodies = tls_receiver
    refused = webhook("private", url)
    try:
        with pytest.raises(DeliveryError) as info:
            await refused.send(notification())
    finally:
        await refused.aclose()
    err = info.value
    port = url.split(":")[2].split("/")[0]
    assert (err.retryable, err.reason) == (True, Reason.CONNECTION)
    assert str(err).startswith(f"channel 'private': TLS certificate of 127.0.0.1:{port} not trusted")
    assert "(set channels.private.ca_bundle to a PEM file of the CA that signed it)" in str(err)
    assert bodies == []

    trusting = webhook("private", url, ca_bundle=str(ca_pem))
    try:
        await trusting.send(notification())
    finally:
        await trusting.aclose()
    assert len(bodies) == 1
