"""make_http / Http.ssl_for / describe_client_error against real loopback servers: HTTPS with a test CA
(trustme), plain HTTP, and a small forward proxy (absolute-form requests and CONNECT tunnels)."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from notifier.config.load import parse_config
from notifier.dcs.cloud import Cloud
from notifier.devtools.simulator import Simulator
from notifier.errors import ConfigError
from notifier.net.errors import describe_client_error
from notifier.net.session import ENVIRONMENT, Http, make_http
from notifier.net.tls import TlsPolicy
from notifier.redaction import redact_url
from tests.support.loopback_http import LoopbackProxy

UA = "dcs-notifier-test/1.0"
PROXY_USER = "proxy-user"
PROXY_PASSWORD = "pr0xy-S3CRET-pw"


pytestmark = pytest.mark.usefixtures("no_proxy_env")


async def _hello(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "path": request.path_qs,
            "user_agent": request.headers.get("User-Agent"),
            "proxy_authorization": request.headers.get("Proxy-Authorization"),
        }
    )


StartServer = Callable[..., Awaitable[int]]


@pytest.fixture
async def start_server(ca: trustme.CA) -> AsyncIterator[StartServer]:
    """Start an aiohttp server on 127.0.0.1 (HTTPS with a cert for 127.0.0.1 unless tls=False): its port."""
    runners: list[web.AppRunner] = []

    async def start(*, tls: bool = True) -> int:
        app = web.Application()
        app.router.add_get("/{tail:.*}", _hello)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        ctx = None
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1").configure_cert(ctx)
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
        port: int = runner.addresses[0][1]
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def auth_proxy() -> AsyncIterator[LoopbackProxy]:
    p = await LoopbackProxy(auth=(PROXY_USER, PROXY_PASSWORD)).start()
    yield p
    await p.stop()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


async def _get(http: Http, url: str) -> tuple[int, dict[str, str | None]]:
    async with http.session.get(url, ssl=http.ssl_for(url), allow_redirects=False) as resp:
        return resp.status, await resp.json()


# --- TLS verification ------------------------------------------------------------------------------


async def test_default_session_rejects_an_unknown_ca(start_server: StartServer) -> None:
    port = await start_server()
    async with make_http(user_agent=UA) as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
            await _get(http, f"https://127.0.0.1:{port}/v2/tasks?X-Sdk-Signature=s3cret-sig")
    text = describe_client_error(info.value, f"127.0.0.1:{port}")
    assert text.startswith(f"TLS certificate of 127.0.0.1:{port} not trusted")
    assert "(set api.ca_bundle, or list the endpoint in api.insecure_endpoints)" in text
    assert "s3cret-sig" not in text and "/v2/" not in text


async def test_ca_bundle_is_trusted_in_addition_to_the_system_store(
    start_server: StartServer, ca_pem: Path
) -> None:
    port = await start_server()
    async with make_http(ca_bundle=ca_pem, user_agent=UA) as http:
        status, body = await _get(http, f"https://127.0.0.1:{port}/v2/p/instances?limit=1")
        # the system store is still there: the CA bundle adds to it
        assert len(http.tls.context.get_ca_certs()) > 1
    assert status == 200
    assert body == {"path": "/v2/p/instances?limit=1", "user_agent": UA, "proxy_authorization": None}


async def test_ssl_cert_file_from_the_environment_is_honoured(
    start_server: StartServer, ca_pem: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = await start_server()
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_pem))
    async with make_http(user_agent=UA) as http:
        status, _ = await _get(http, f"https://127.0.0.1:{port}/")
    assert status == 200


async def test_a_request_without_ssl_for_is_still_verified_with_the_bundle(
    start_server: StartServer, ca_pem: Path
) -> None:
    port = await start_server()
    async with (
        make_http(ca_bundle=ca_pem, user_agent=UA) as http,
        http.session.get(f"https://127.0.0.1:{port}/") as resp,
    ):
        assert resp.status == 200
    async with make_http(insecure_hosts=["127.0.0.1"], user_agent=UA) as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # fails safe
            await http.session.get(f"https://127.0.0.1:{port}/")


async def test_bad_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"api.ca_bundle .*nope.pem: no such file"):
        make_http(ca_bundle=missing, user_agent=UA)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"channels.hook.ca_bundle .*junk.pem: not a PEM file"):
        make_http(setting="channels.hook", ca_bundle=junk, user_agent=UA)


async def test_insecure_host_is_not_verified_and_every_other_host_is(start_server: StartServer) -> None:
    listed = await start_server()
    other = await start_server()
    async with make_http(insecure_hosts=[f"127.0.0.1:{listed}"], user_agent=UA) as http:
        status, _ = await _get(http, f"https://127.0.0.1:{listed}/")
        assert status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _get(http, f"https://127.0.0.1:{other}/")
    async with make_http(insecure_hosts=["127.0.0.1"], user_agent=UA) as http:
        for port in (listed, other):
            status, _ = await _get(http, f"https://127.0.0.1:{port}/")
            assert status == 200


async def test_ssl_for_matches_hosts_and_ports(ca_pem: Path) -> None:
    entries = [
        "DCS.ap-southeast-1.Example.com",
        "iam.example.com:8443",
        "[::1]:9443",
        "https://dcs2.example.com",
    ]
    async with make_http(insecure_hosts=entries, ca_bundle=ca_pem, user_agent=UA) as http:
        policy = http.tls
        assert http.ssl_for("https://dcs.ap-southeast-1.example.com/v2/x") is False
        assert http.ssl_for("https://dcs.ap-southeast-1.example.com:8443/v2/x") is False
        assert http.ssl_for("https://iam.example.com:8443/v3/auth/tokens") is False
        assert http.ssl_for("https://iam.example.com/v3/auth/tokens") is policy.context
        assert http.ssl_for("https://[::1]:9443/") is False
        assert http.ssl_for("https://[::1]/") is policy.context
        assert http.ssl_for("https://dcs2.example.com/") is False
        assert http.ssl_for("https://dcs.eu-west-101.example.com/") is policy.context
    assert TlsPolicy.build().insecure_hosts == frozenset()
    with pytest.raises(ConfigError, match="bad port"):
        TlsPolicy.build(insecure_hosts=["host:https"])


# --- errors described without URLs ---------------------------------------------------------------


async def test_connection_refused_is_described(refused_port: int) -> None:
    async with make_http(user_agent=UA) as http:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await _get(http, f"http://127.0.0.1:{refused_port}/v2/x?sig=s3cret")
    text = describe_client_error(info.value, f"127.0.0.1:{refused_port}")
    assert text == f"cannot connect to 127.0.0.1:{refused_port} (connection refused)"


async def test_plain_http_server_spoken_to_with_tls_is_a_handshake_error(start_server: StartServer) -> None:
    port = await start_server(tls=False)
    async with make_http(user_agent=UA) as http:
        with pytest.raises(aiohttp.ClientSSLError) as info:
            await _get(http, f"https://127.0.0.1:{port}/")
    text = describe_client_error(info.value, f"127.0.0.1:{port}")
    assert text.startswith(f"TLS handshake with 127.0.0.1:{port} failed (")


def test_redact_url_keeps_only_scheme_host_and_port() -> None:
    secret_url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@Proxy.Corp:3128/x?y=1#z"
    assert redact_url(secret_url, path=False) == "http://proxy.corp:3128"
    assert redact_url(secret_url) == "http://proxy.corp:3128/…"
    assert redact_url("https://[::1]/p") == "https://[::1]/…"
    assert redact_url("https://[::1") == "<invalid url>"
    assert redact_url("no-scheme/path") == "<redacted>"


# --- proxies ---------------------------------------------------------------------------------------


async def test_explicit_proxy_forwards_plain_http(start_server: StartServer, proxy: LoopbackProxy) -> None:
    port = await start_server(tls=False)
    async with make_http(proxy=proxy.url, user_agent=UA) as http:
        status, body = await _get(http, f"http://127.0.0.1:{port}/hello?x=1")
    assert status == 200
    assert body["path"] == "/hello?x=1"
    assert body["user_agent"] == UA
    assert proxy.seen == [f"GET http://127.0.0.1:{port}/hello?x=1"]


async def test_proxy_from_the_environment(
    start_server: StartServer, proxy: LoopbackProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = await start_server(tls=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    async with make_http(user_agent=UA) as http:
        assert http.proxy is not None and http.proxy.setting == ENVIRONMENT
        status, _ = await _get(http, f"http://127.0.0.1:{port}/via-env")
    assert status == 200
    assert proxy.seen == [f"GET http://127.0.0.1:{port}/via-env"]

    async with make_http(user_agent=UA, trust_env=False) as http:
        assert http.proxy is None
        status, _ = await _get(http, f"http://127.0.0.1:{port}/direct")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with make_http(user_agent=UA) as http:
        status, _ = await _get(http, f"http://127.0.0.1:{port}/no-proxy")
    assert status == 200
    assert proxy.seen == [f"GET http://127.0.0.1:{port}/via-env"]  # neither went through the proxy


async def test_https_through_a_proxy_tunnel_is_still_verified(
    start_server: StartServer, proxy: LoopbackProxy, ca_pem: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = await start_server()
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    async with make_http(ca_bundle=ca_pem, user_agent=UA) as http:
        status, body = await _get(http, f"https://127.0.0.1:{port}/tunnel")
    assert (status, body["path"]) == (200, "/tunnel")
    async with make_http(user_agent=UA) as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _get(http, f"https://127.0.0.1:{port}/tunnel")
    async with make_http(insecure_hosts=["127.0.0.1"], user_agent=UA) as http:
        status, _ = await _get(http, f"https://127.0.0.1:{port}/tunnel")
    assert status == 200
    assert proxy.seen == [f"CONNECT 127.0.0.1:{port}"] * 3


async def test_proxy_credentials_are_sent_to_the_proxy_only_and_never_shown(
    start_server: StartServer, auth_proxy: LoopbackProxy, ca_pem: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain = await start_server(tls=False)
    secure = await start_server()
    proxy_url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{auth_proxy.port}"
    with caplog.at_level(logging.DEBUG):
        async with make_http(proxy=proxy_url, ca_bundle=ca_pem, user_agent=UA) as http:
            status, body = await _get(http, f"http://127.0.0.1:{plain}/plain")
            assert (status, body["proxy_authorization"]) == (200, None)  # the origin never sees it
            status, body = await _get(http, f"https://127.0.0.1:{secure}/secure")
            assert (status, body["proxy_authorization"]) == (200, None)
    assert auth_proxy.seen == [f"GET http://127.0.0.1:{plain}/plain", f"CONNECT 127.0.0.1:{secure}"]
    assert all(a is not None and a.startswith("Basic ") for a in auth_proxy.auth_seen)
    assert PROXY_PASSWORD not in caplog.text
    assert f"api: HTTP proxy http://127.0.0.1:{auth_proxy.port} (with credentials)" in caplog.text

    wrong = f"http://{PROXY_USER}:wrong-{PROXY_PASSWORD}@127.0.0.1:{auth_proxy.port}"
    async with make_http(proxy=wrong, ca_bundle=ca_pem, user_agent=UA) as http:
        with pytest.raises(aiohttp.ClientHttpProxyError) as info:
            await _get(http, f"https://127.0.0.1:{secure}/secure")
    text = describe_client_error(info.value, f"127.0.0.1:{secure}")
    assert text == f"the HTTP proxy refused the tunnel to 127.0.0.1:{secure} (proxy authentication required)"
    for shown in (text, str(info.value), repr(info.value), caplog.text):
        assert PROXY_PASSWORD not in shown


async def test_unreachable_proxy_is_described(refused_port: int) -> None:
    proxy_url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{refused_port}"
    async with make_http(proxy=proxy_url, user_agent=UA) as http:
        with pytest.raises(aiohttp.ClientProxyConnectionError) as info:
            await _get(http, "http://127.0.0.1:9/v2/x")
    text = describe_client_error(info.value, "127.0.0.1:9")
    assert (
        text
        == f"cannot connect to the HTTP proxy 127.0.0.1:{refused_port} (connection refused) to reach 127.0.0.1:9"
    )
    assert PROXY_PASSWORD not in str(info.value)


async def test_bad_proxy_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        make_http(proxy=f"socks5://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:1080", user_agent=UA)
    assert str(info.value).startswith("api.proxy: need an http:// or https:// URL with a host")
    assert "socks5" in str(info.value)
    assert PROXY_PASSWORD not in str(info.value)


@pytest.fixture
async def sim() -> AsyncIterator[tuple[Simulator, int]]:
    """The DCS simulator (project p1, AK1/SK1, instance i-1) on 127.0.0.1: it and its port."""
    simulator = Simulator(project_id="p1", credentials={"AK1": "SK1"})
    simulator.add_instance("i-1", "cache")
    runner = web.AppRunner(simulator.make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield simulator, runner.addresses[0][1]
    await runner.cleanup()


async def poll_once(config_text: str) -> list[object]:
    """One poll of i-1 by the Cloud of this config (closed after)."""
    cloud = Cloud(parse_config(config_text, "proxy.yaml", {}))
    try:
        return list(
            await cloud.clients["p1"].list_tasks("i-1", datetime(2026, 1, 1, tzinfo=UTC), datetime.now(UTC))
        )
    finally:
        await cloud.aclose()


async def test_cloud_polls_through_the_configured_proxy(
    proxy: LoopbackProxy, sim: tuple[Simulator, int]
) -> None:
    # The poll must reach the simulator through the proxy, signed as it is sent.
    simulator, port = sim
    text = f"""
cloud: {{project_id: p1, ak: AK1, sk: SK1, endpoint: "http://127.0.0.1:{port}"}}
instances: [{{id: i-1}}]
api: {{proxy: "{proxy.url}"}}
channels: {{audit: {{type: webhook, url: "http://127.0.0.1:9/"}}}}
"""
    assert await poll_once(text) == []
    [seen] = proxy.seen
    assert seen.startswith(f"GET http://127.0.0.1:{port}/v2/p1/instances/i-1/tasks?end_time=")
    assert [r.status for r in simulator.task_requests("i-1")] == [200]


async def test_iam_tokens_and_polls_share_the_clouds_proxy(sim: tuple[Simulator, int]) -> None:
    # The simulator has a name only the proxy knows: both the IAM token and the poll must go through it.
    simulator, port = sim
    simulator.add_iam_user("acme", "reader", "iam-pa55-EXAMPLE", ["p1"])
    hidden = f"http://cloud.invalid:{port}"
    proxy = await LoopbackProxy(auth=(PROXY_USER, PROXY_PASSWORD), aliases=["cloud.invalid"]).start()
    text = f"""
cloud:
  - name: iam
    credentials: {{type: iam, domain: acme, user: reader, password: iam-pa55-EXAMPLE, iam_endpoint: "{hidden}"}}
    projects: [{{project_id: p1, endpoint: "{hidden}", instances: [{{id: i-1}}]}}]
api: {{proxy: "http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"}}
channels: {{audit: {{type: webhook, url: "http://127.0.0.1:9/"}}}}
"""
    try:
        assert await poll_once(text) == []
    finally:
        await proxy.stop()
    assert [line.split("?")[0] for line in proxy.seen] == [
        f"POST {hidden}/v3/auth/tokens",
        f"GET {hidden}/v2/p1/instances/i-1/tasks",
    ]
    assert len(simulator.iam_requests) == 1
