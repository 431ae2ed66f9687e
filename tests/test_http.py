"""make_session / ssl_for / describe_client_error against real loopback servers: HTTPS with a test CA
(trustme), plain HTTP, and a small forward proxy (absolute-form requests and CONNECT tunnels)."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import trustme
from aiohttp import web

from notifier.config.models import parse_config
from notifier.dcs.cloud import Cloud
from notifier.devtools.simulator import Simulator
from notifier.errors import ConfigError
from notifier.net.session import (
    TlsPolicy,
    describe_client_error,
    make_session,
    redact_url,
    ssl_for,
    tls_policy,
)

UA = "dcs-notifier-test/1.0"
PROXY_USER = "proxy-user"
PROXY_PASSWORD = "pr0xy-S3CRET-pw"
_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "WS_PROXY", "WSS_PROXY")


@pytest.fixture(autouse=True)
def _clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's proxy settings must not leak into these tests (NO_PROXY in particular)."""
    for name in _PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_pem(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


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


class LoopbackProxy:
    """A minimal HTTP forward proxy on 127.0.0.1: absolute-form GETs and CONNECT tunnels, one request
    per client connection. Records every request line it gets; forwards only to 127.0.0.1."""

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        self.seen: list[str] = []
        self.auth_seen: list[str | None] = []
        self._expected = None
        if auth is not None:
            self._expected = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream: list[asyncio.StreamWriter] = []
        try:
            await self._serve(reader, writer, upstream)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, *upstream):
                w.close()
                with suppress(ConnectionError, asyncio.CancelledError):
                    await w.wait_closed()
            self._tasks.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: list[asyncio.StreamWriter]
    ) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        method, target, version = request_line.split(" ")
        headers = [(k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in lines if h)]
        self.seen.append(f"{method} {target}")
        auth = next((v for k, v in headers if k.lower() == "proxy-authorization"), None)
        self.auth_seen.append(auth)
        if self._expected is not None and auth != self._expected:
            writer.write(
                b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="t"\r\n'
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            assert host == "127.0.0.1", target
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            upstream.append(up_writer)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            return
        url = urlsplit(target)  # absolute-form: http://host:port/path?query
        assert url.scheme == "http" and url.hostname == "127.0.0.1", target
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        upstream.append(up_writer)
        hop_by_hop = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}
        kept = [f"{k}: {v}" for k, v in headers if k.lower() not in hop_by_hop]
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        out = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
        up_writer.write(out.encode("latin-1"))
        await _pipe(up_reader, writer)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except ConnectionError:
        pass
    finally:
        dst.close()


@pytest.fixture
async def proxy() -> AsyncIterator[LoopbackProxy]:
    p = LoopbackProxy()
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def auth_proxy() -> AsyncIterator[LoopbackProxy]:
    p = LoopbackProxy(auth=(PROXY_USER, PROXY_PASSWORD))
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str | None]]:
    async with session.get(url, ssl=ssl_for(session, url), allow_redirects=False) as resp:
        return resp.status, await resp.json()


# --- TLS verification ------------------------------------------------------------------------------


async def test_default_session_rejects_an_unknown_ca(start_server: StartServer) -> None:
    port = await start_server()
    async with make_session(user_agent=UA) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
            await _get(session, f"https://127.0.0.1:{port}/v2/tasks?X-Sdk-Signature=s3cret-sig")
    text = describe_client_error(info.value, f"127.0.0.1:{port}")
    assert text.startswith(f"TLS certificate of 127.0.0.1:{port} not trusted")
    assert "(set api.ca_bundle, or list the endpoint in api.insecure_endpoints)" in text
    assert "s3cret-sig" not in text and "/v2/" not in text


async def test_ca_bundle_is_trusted_in_addition_to_the_system_store(
    start_server: StartServer, ca_pem: Path
) -> None:
    port = await start_server()
    async with make_session(ca_bundle=ca_pem, user_agent=UA) as session:
        status, body = await _get(session, f"https://127.0.0.1:{port}/v2/p/instances?limit=1")
        # the system store is still there: the CA bundle adds to it
        assert tls_policy(session) is not None
        assert len(tls_policy(session).context.get_ca_certs()) > 1  # type: ignore[union-attr]
    assert status == 200
    assert body == {"path": "/v2/p/instances?limit=1", "user_agent": UA, "proxy_authorization": None}


async def test_ssl_cert_file_from_the_environment_is_honoured(
    start_server: StartServer, ca_pem: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = await start_server()
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_pem))
    async with make_session(user_agent=UA) as session:
        status, _ = await _get(session, f"https://127.0.0.1:{port}/")
    assert status == 200


async def test_a_request_without_ssl_for_is_still_verified_with_the_bundle(
    start_server: StartServer, ca_pem: Path
) -> None:
    port = await start_server()
    async with (
        make_session(ca_bundle=ca_pem, user_agent=UA) as session,
        session.get(f"https://127.0.0.1:{port}/") as resp,
    ):
        assert resp.status == 200
    async with make_session(insecure_hosts=["127.0.0.1"], user_agent=UA) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # fails safe
            await session.get(f"https://127.0.0.1:{port}/")


async def test_bad_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"api.ca_bundle .*nope.pem: no such file"):
        make_session(ca_bundle=missing, user_agent=UA)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a PEM file"):
        make_session(ca_bundle=junk, user_agent=UA)


async def test_insecure_host_is_not_verified_and_every_other_host_is(start_server: StartServer) -> None:
    listed = await start_server()
    other = await start_server()
    async with make_session(insecure_hosts=[f"127.0.0.1:{listed}"], user_agent=UA) as session:
        status, _ = await _get(session, f"https://127.0.0.1:{listed}/")
        assert status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _get(session, f"https://127.0.0.1:{other}/")
    async with make_session(insecure_hosts=["127.0.0.1"], user_agent=UA) as session:
        for port in (listed, other):
            status, _ = await _get(session, f"https://127.0.0.1:{port}/")
            assert status == 200


async def test_ssl_for_matches_hosts_and_ports(ca_pem: Path) -> None:
    entries = [
        "DCS.ap-southeast-1.Example.com",
        "iam.example.com:8443",
        "[::1]:9443",
        "https://dcs2.example.com",
    ]
    async with make_session(insecure_hosts=entries, ca_bundle=ca_pem, user_agent=UA) as session:
        policy = tls_policy(session)
        assert policy is not None
        assert ssl_for(session, "https://dcs.ap-southeast-1.example.com/v2/x") is False
        assert ssl_for(session, "https://dcs.ap-southeast-1.example.com:8443/v2/x") is False
        assert ssl_for(session, "https://iam.example.com:8443/v3/auth/tokens") is False
        assert ssl_for(session, "https://iam.example.com/v3/auth/tokens") is policy.context
        assert ssl_for(session, "https://[::1]:9443/") is False
        assert ssl_for(session, "https://[::1]/") is policy.context
        assert ssl_for(session, "https://dcs2.example.com/") is False
        assert ssl_for(session, "https://dcs.eu-west-101.example.com/") is policy.context
    async with aiohttp.ClientSession() as foreign:
        assert ssl_for(foreign, "https://dcs.ap-southeast-1.example.com/") is True
    assert TlsPolicy.build().insecure_hosts == frozenset()
    with pytest.raises(ConfigError, match="bad port"):
        TlsPolicy.build(insecure_hosts=["host:https"])


# --- errors described without URLs ---------------------------------------------------------------


async def test_connection_refused_is_described(refused_port: int) -> None:
    async with make_session(user_agent=UA) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await _get(session, f"http://127.0.0.1:{refused_port}/v2/x?sig=s3cret")
    text = describe_client_error(info.value, f"127.0.0.1:{refused_port}")
    assert text == f"cannot connect to 127.0.0.1:{refused_port} (connection refused)"


async def test_plain_http_server_spoken_to_with_tls_is_a_handshake_error(start_server: StartServer) -> None:
    port = await start_server(tls=False)
    async with make_session(user_agent=UA) as session:
        with pytest.raises(aiohttp.ClientSSLError) as info:
            await _get(session, f"https://127.0.0.1:{port}/")
    text = describe_client_error(info.value, f"127.0.0.1:{port}")
    assert text.startswith(f"TLS handshake with 127.0.0.1:{port} failed (")


def test_redact_url_keeps_only_scheme_host_and_port() -> None:
    assert (
        redact_url(f"http://{PROXY_USER}:{PROXY_PASSWORD}@proxy.corp:3128/x?y=1") == "http://proxy.corp:3128"
    )
    assert redact_url("https://[::1]/p") == "https://[::1]:443"


# --- proxies ---------------------------------------------------------------------------------------


async def test_explicit_proxy_forwards_plain_http(start_server: StartServer, proxy: LoopbackProxy) -> None:
    port = await start_server(tls=False)
    async with make_session(proxy=proxy.url, user_agent=UA) as session:
        status, body = await _get(session, f"http://127.0.0.1:{port}/hello?x=1")
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
    async with make_session(user_agent=UA) as session:
        status, _ = await _get(session, f"http://127.0.0.1:{port}/via-env")
    assert status == 200
    assert proxy.seen == [f"GET http://127.0.0.1:{port}/via-env"]

    async with make_session(user_agent=UA, trust_env=False) as session:
        status, _ = await _get(session, f"http://127.0.0.1:{port}/direct")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with make_session(user_agent=UA) as session:
        status, _ = await _get(session, f"http://127.0.0.1:{port}/no-proxy")
    assert status == 200
    assert proxy.seen == [f"GET http://127.0.0.1:{port}/via-env"]  # neither went through the proxy


async def test_https_through_a_proxy_tunnel_is_still_verified(
    start_server: StartServer, proxy: LoopbackProxy, ca_pem: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = await start_server()
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    async with make_session(ca_bundle=ca_pem, user_agent=UA) as session:
        status, body = await _get(session, f"https://127.0.0.1:{port}/tunnel")
    assert (status, body["path"]) == (200, "/tunnel")
    async with make_session(user_agent=UA) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _get(session, f"https://127.0.0.1:{port}/tunnel")
    async with make_session(insecure_hosts=["127.0.0.1"], user_agent=UA) as session:
        status, _ = await _get(session, f"https://127.0.0.1:{port}/tunnel")
    assert status == 200
    assert proxy.seen == [f"CONNECT 127.0.0.1:{port}"] * 3


async def test_proxy_credentials_are_sent_to_the_proxy_only_and_never_shown(
    start_server: StartServer, auth_proxy: LoopbackProxy, ca_pem: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain = await start_server(tls=False)
    secure = await start_server()
    proxy_url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{auth_proxy.port}"
    with caplog.at_level(logging.DEBUG):
        async with make_session(proxy=proxy_url, ca_bundle=ca_pem, user_agent=UA) as session:
            status, body = await _get(session, f"http://127.0.0.1:{plain}/plain")
            assert (status, body["proxy_authorization"]) == (200, None)  # the origin never sees it
            status, body = await _get(session, f"https://127.0.0.1:{secure}/secure")
            assert (status, body["proxy_authorization"]) == (200, None)
    assert auth_proxy.seen == [f"GET http://127.0.0.1:{plain}/plain", f"CONNECT 127.0.0.1:{secure}"]
    assert all(a is not None and a.startswith("Basic ") for a in auth_proxy.auth_seen)
    assert PROXY_PASSWORD not in caplog.text
    assert f"HTTP proxy http://127.0.0.1:{auth_proxy.port} (with credentials)" in caplog.text

    wrong = f"http://{PROXY_USER}:wrong-{PROXY_PASSWORD}@127.0.0.1:{auth_proxy.port}"
    async with make_session(proxy=wrong, ca_bundle=ca_pem, user_agent=UA) as session:
        with pytest.raises(aiohttp.ClientHttpProxyError) as info:
            await _get(session, f"https://127.0.0.1:{secure}/secure")
    text = describe_client_error(info.value, f"127.0.0.1:{secure}")
    assert text == f"the HTTP proxy refused the tunnel to 127.0.0.1:{secure} (proxy authentication required)"
    for shown in (text, str(info.value), repr(info.value), caplog.text):
        assert PROXY_PASSWORD not in shown


async def test_unreachable_proxy_is_described(refused_port: int) -> None:
    proxy_url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{refused_port}"
    async with make_session(proxy=proxy_url, user_agent=UA) as session:
        with pytest.raises(aiohttp.ClientProxyConnectionError) as info:
            await _get(session, "http://127.0.0.1:9/v2/x")
    text = describe_client_error(info.value, "127.0.0.1:9")
    assert (
        text
        == f"cannot connect to the HTTP proxy 127.0.0.1:{refused_port} (connection refused) to reach 127.0.0.1:9"
    )
    assert PROXY_PASSWORD not in str(info.value)


async def test_bad_proxy_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        make_session(proxy=f"socks5://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:1080", user_agent=UA)
    assert "socks5" in str(info.value)
    assert PROXY_PASSWORD not in str(info.value)


async def test_cloud_polls_through_the_configured_proxy(proxy: LoopbackProxy) -> None:
    # With a proxy in effect the DCS client's GETs go through aiohttp (the lean transport has no proxy
    # support): the poll must reach the simulator through the proxy, signed as it is sent.
    sim = Simulator(project_id="p1", credentials={"AK1": "SK1"})
    sim.add_instance("i-1", "cache")
    runner = web.AppRunner(sim.make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port: int = runner.addresses[0][1]
    text = f"""
cloud: {{project_id: p1, ak: AK1, sk: SK1, endpoint: "http://127.0.0.1:{port}"}}
instances: [{{id: i-1}}]
api: {{proxy: "{proxy.url}"}}
channels: {{audit: {{type: webhook, url: "http://127.0.0.1:9/"}}}}
"""
    cloud = Cloud(parse_config(text, "proxy.yaml", {}))
    try:
        tasks = await cloud.clients["p1"].list_tasks(
            "i-1", datetime(2026, 1, 1, tzinfo=UTC), datetime.now(UTC)
        )
    finally:
        await cloud.aclose()
        await runner.cleanup()
    assert tasks == []
    [seen] = proxy.seen
    assert seen.startswith(f"GET http://127.0.0.1:{port}/v2/p1/instances/i-1/tasks?end_time=")
    assert [r.status for r in sim.task_requests("i-1")] == [200]
