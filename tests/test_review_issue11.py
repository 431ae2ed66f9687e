"""Review of issue 11 (house in order): what the change missed, each shown by a test against real peers
on loopback (the stand-ins, a forward proxy, a TLS receiver with a private CA, raw servers)."""

from __future__ import annotations

import ast
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from pydantic import ValidationError

import notifier
from notifier.config.display import masked
from notifier.config.load import parse_config
from notifier.config.models import ApiConfig
from notifier.delivery.channels import SlackChannel, WebhookChannel
from notifier.delivery.channels.slack import SlackChannelConfig
from notifier.delivery.channels.webhook import WebhookChannelConfig
from notifier.devtools.standins.slack import SlackStandIn
from notifier.errors import ConfigError, DeliveryError, Reason
from notifier.net.session import make_http
from tests.support.loopback_http import LoopbackProxy, StartServer, always, scripted
from tests.support.loopback_http import tls_receiver as https_receiver
from tests.test_channels import SECRET, WEBHOOK_PATH, notification
from tests.test_client_network import OK, dcs, failure, poll

pytestmark = pytest.mark.usefixtures("no_proxy_env")

HIDDEN = "receiver.invalid"  # a host name only the loopback proxy knows
PROXY_USER, PROXY_PASSWORD = "corp-user", "pr0xy-S3CRET-pw"

SHORT = """
cloud: {{endpoint: "http://127.0.0.1:9", project_id: p1, ak: AK1, sk: SK1}}
instances: [{{id: i-1, name: orders}}]
redis: {{url: "redis://127.0.0.1:9/0"}}
channels: {{audit: {{type: webhook, url: "http://127.0.0.1:9/hook"}}}}
{extra}
"""


def short(extra: str = "") -> str:
    return SHORT.format(extra=extra)


@pytest.fixture
async def corp_proxy() -> AsyncIterator[LoopbackProxy]:
    p = await LoopbackProxy(auth=(PROXY_USER, PROXY_PASSWORD), aliases=[HIDDEN]).start()
    yield p
    await p.stop()


def copy_file(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target


def remove_file(path: Path) -> None:
    path.unlink()


def through(proxy: LoopbackProxy, password: str = PROXY_PASSWORD) -> str:
    return f"http://{PROXY_USER}:{password}@127.0.0.1:{proxy.port}"


# --- §2: api.proxy is validated like a channel's proxy, and shown like one --------------------------------


def test_api_proxy_is_validated_like_a_channel_proxy() -> None:
    """A channel's ``proxy: ftp://…`` is a config error (exit 2 at check-config); ``api.proxy`` was
    accepted by check-config and failed only once a command built the session."""
    bad = f"ftp://{PROXY_USER}:{PROXY_PASSWORD}@proxy.corp:21"
    with pytest.raises(ConfigError) as info:
        parse_config(short(f"api: {{proxy: '{bad}'}}"), "config.yaml", {})
    message = str(info.value)
    assert "api.proxy: need an http:// or https:// URL with a host, got scheme 'ftp'" in message
    assert PROXY_PASSWORD not in message and "proxy.corp" not in message
    with pytest.raises(ConfigError, match=r"api\.proxy: not a URL|api\.proxy: need an http"):
        parse_config(short("api: {proxy: 'http://'}"), "config.yaml", {})
    # The model's own error keeps the password out too, as a channel config's does.
    with pytest.raises(ValidationError) as raw:
        ApiConfig.model_validate({"proxy": bad})
    assert "got scheme 'ftp'" in str(raw.value) and PROXY_PASSWORD not in str(raw.value)


def test_check_config_show_names_the_api_proxy_like_a_channel_proxy() -> None:
    """``--show`` masks secrets only: a channel's proxy is shown as its origin, without credentials; the
    API's was shown as ``****`` (nothing to check against what the operator meant)."""
    proxy = f"http://{PROXY_USER}:{PROXY_PASSWORD}@proxy.corp:3128"
    config = parse_config(
        short(f"api: {{proxy: '{proxy}'}}").replace(
            'url: "http://127.0.0.1:9/hook"', f'url: "http://127.0.0.1:9/hook", proxy: "{proxy}"'
        ),
        "config.yaml",
        {},
    )
    shown = masked(config)
    assert shown["channels"]["audit"]["proxy"] == "http://proxy.corp:3128"
    assert shown["api"]["proxy"] == "http://proxy.corp:3128"
    assert PROXY_PASSWORD not in str(shown) and PROXY_USER not in str(shown)


# --- §2: channels behind a proxy that wants credentials, and a private CA behind it -----------------------


async def test_a_slack_webhook_through_an_authenticated_proxy(corp_proxy: LoopbackProxy) -> None:
    """slack-sdk makes the request on the channel's session: the session's proxy credentials still go."""
    async with SlackStandIn(webhook_path=WEBHOOK_PATH) as slack:
        url = f"{slack.base_url}/services/{WEBHOOK_PATH}".replace("127.0.0.1", HIDDEN)
        config = SlackChannelConfig.model_validate(
            {"type": "slack", "webhook_url": url, "proxy": through(corp_proxy)}
        )
        channel = SlackChannel("oncall", config)
        try:
            await channel.send(notification())
        finally:
            await channel.aclose()
        assert len(slack.messages) == 1
    assert corp_proxy.seen == [f"POST {url}"]
    assert corp_proxy.auth_seen[0] is not None


@pytest.fixture
async def tls_receiver(ca: trustme.CA) -> AsyncIterator[tuple[int, list[bytes]]]:
    """An HTTPS receiver on 127.0.0.1, its certificate (for HIDDEN and 127.0.0.1) from the private CA:
    (port, bodies)."""
    async with https_receiver(ca, HIDDEN) as received:
        yield received


async def test_an_https_webhook_with_a_private_ca_through_an_authenticated_tunnel(
    tls_receiver: tuple[int, list[bytes]], ca_pem: Path, corp_proxy: LoopbackProxy
) -> None:
    """Both per-channel settings at once: a CONNECT tunnel that wants credentials, then TLS verified
    against the channel's CA bundle (the certificate names the host only the proxy knows)."""
    port, bodies = tls_receiver
    url = f"https://{HIDDEN}:{port}/hook"
    config = WebhookChannelConfig.model_validate(
        {
            "type": "webhook",
            "url": url,
            "secret": SECRET,
            "proxy": through(corp_proxy),
            "ca_bundle": str(ca_pem),
        }
    )
    channel = WebhookChannel("audit", config)
    try:
        await channel.send(notification())
    finally:
        await channel.aclose()
    assert len(bodies) == 1
    assert corp_proxy.seen == [f"CONNECT {HIDDEN}:{port}"]
    assert corp_proxy.auth_seen[0] is not None


async def test_a_proxy_refusing_the_credentials_is_named_without_them(
    tls_receiver: tuple[int, list[bytes]], ca_pem: Path, corp_proxy: LoopbackProxy
) -> None:
    port, bodies = tls_receiver
    wrong = "wr0ng-pr0xy-pw"
    url = f"https://{HIDDEN}:{port}/hook/{SECRET}"
    config = WebhookChannelConfig.model_validate(
        {"type": "webhook", "url": url, "proxy": through(corp_proxy, wrong), "ca_bundle": str(ca_pem)}
    )
    channel = WebhookChannel("audit", config)
    try:
        with pytest.raises(DeliveryError) as info:
            await channel.send(notification())
    finally:
        await channel.aclose()
    err = info.value
    assert (err.retryable, err.reason) == (True, Reason.CONNECTION)
    assert f"the HTTP proxy refused the tunnel to {HIDDEN}:{port} (proxy authentication required)" in str(err)
    for secret in (wrong, PROXY_USER, SECRET, "/hook"):
        assert secret not in str(err) and secret not in repr(err)
    assert bodies == []


# --- the DCS client on an IPv6 endpoint (the lean transport's test went with it) --------------------------


async def test_the_dcs_client_polls_an_ipv6_endpoint(serve: StartServer) -> None:
    server = await serve(scripted(always(OK)), "::1")
    async with make_http() as http:
        client = dcs(server.endpoint + "/dcs", http)
        assert await poll(client) == [] and await poll(client) == []
    assert server.connections == 1
    assert server.heads[0].startswith(b"GET /dcs/v2/p1/instances/i-1/tasks?")
    assert f"\r\nHost: [::1]:{server.port}\r\n".lower().encode() in server.heads[0].lower()


# --- §4: names that do not collide ---------------------------------------------------------------------------


def test_runtime_names_do_not_collide() -> None:
    """One name, one concept: no two classes or module functions of the daemon's modules (dev tools apart)
    share a name, as ``AkSkCredentials`` of the config and of the signers did. (Found: ``Verdict`` of the
    config check and of delivery; ``classify_status`` of task statuses and of HTTP answers; ``sign`` of DCS
    requests and of webhooks.)"""
    root = Path(notifier.__file__).parent
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        if "devtools" in path.parts:
            continue
        for node in ast.parse(path.read_text()).body:
            named = isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            if named and not node.name.startswith("_") and node.name != "main":
                where[node.name].append(str(path.relative_to(root)))
    assert {name: files for name, files in where.items() if len(files) > 1} == {}


# --- a channel's ca_bundle that went away after the config was loaded ----------------------------------------


async def test_a_ca_bundle_gone_after_loading_is_a_retryable_delivery_error(
    tls_receiver: tuple[int, list[bytes]], ca_pem: Path, tmp_path: Path
) -> None:
    """The file is checked when the config is loaded, the session made at the first send. A bundle
    rotated away in between raised ConfigError out of ``send``: the worker took it for a bug (a permanent
    ``unexpected ConfigError``, the message dead-lettered at once). It is a failure to deliver now, naming
    the key, that a retry can get past once the file is back."""
    port, bodies = tls_receiver
    bundle = copy_file(ca_pem, tmp_path / "corp-ca.pem")
    config = WebhookChannelConfig.model_validate(
        {"type": "webhook", "url": f"https://127.0.0.1:{port}/hook", "ca_bundle": str(bundle)}
    )
    channel = WebhookChannel("audit", config)
    remove_file(bundle)
    try:
        with pytest.raises(DeliveryError) as info:
            await channel.send(notification())
        assert info.value.retryable
        assert f"channels.audit.ca_bundle {bundle}: no such file" in str(info.value)
        copy_file(ca_pem, bundle)
        await channel.send(notification())  # the next attempt finds it again
    finally:
        await channel.aclose()
    assert len(bodies) == 1


def test_redaction_helpers_live_in_the_redaction_module() -> None:
    """§4: one home for redaction. ``mask_redis_url`` sat in ``config/display.py`` (used by the CLI too)."""
    root = Path(notifier.__file__).parent
    outside = [
        f"{path.relative_to(root)}:{node.name}"
        for path in sorted(root.rglob("*.py"))
        if path.name != "redaction.py" and "devtools" not in path.parts
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith(("redact", "mask_", "scrub"))
    ]
    assert outside == []


async def test_a_scheme_less_proxy_in_the_environment_is_said_at_start_without_quoting_it(
    serve: StartServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``HTTP_PROXY=user:pw@proxy.corp:3128`` (curl takes it) is no URL to aiohttp: every request through it
    failed as "invalid request URL for <the endpoint>", nothing saying the proxy was the problem."""
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("HTTP_PROXY", f"{PROXY_USER}:{PROXY_PASSWORD}@proxy.corp:3128")
    server = await serve(scripted(always(OK)))
    async with make_http() as http:
        [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warning.startswith("api: unusable proxy in the environment (requests through it fail): ")
        assert warning.endswith("HTTP_PROXY is not an http:// or https:// URL with a host")
        error = await failure(dcs(server.endpoint, http))
    assert "the proxy it goes through" in str(error)
    for shown in (warning, str(error), caplog.text):
        assert PROXY_PASSWORD not in shown and PROXY_USER not in shown and "proxy.corp" not in shown
    assert server.connections == 0
