"""Raw HTTP peers on loopback for the HTTP tests: servers whose every byte is the test's choice, and a
small forward proxy.

``LoopbackServer`` runs ``handler(server, reader, writer)`` once per accepted connection and records what
it saw (connections, request heads, connections the client ended). ``scripted(script)`` is the common
handler: request n (counted over all connections) is answered with ``script(n, head)`` — bytes; bytes
then "close"; or ``HANG`` (no answer until the client gives up).

``LoopbackProxy`` is an HTTP forward proxy (absolute-form requests and CONNECT tunnels, optional Basic
authentication) that forwards to 127.0.0.1 only and records what it was asked.

Fixtures registered for every test by ``tests/conftest.py``: ``serve``, ``proxy``, ``no_proxy_env`` (the
host's proxy variables removed), ``ca`` (a trustme CA) and ``ca_pem`` (its certificate in a PEM file).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trustme
from aiohttp import web


class Hang:
    """Never answer: wait until the client closes."""


HANG = Hang()
#: What a scripted server does with a request: bytes to send; bytes then "close" (or "keep"); or HANG.
Answer = bytes | tuple[bytes, str] | Hang
Handler = Callable[["LoopbackServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class LoopbackServer:
    """``handler(server, reader, writer)`` runs once per accepted connection."""

    handler: Handler
    host: str = "127.0.0.1"
    tls: ssl.SSLContext | None = None
    port: int = 0
    connections: int = 0
    #: Connections the client ended (EOF or reset seen by the server).
    ended_by_client: int = 0
    #: Requests already answered on the connection whose request is being scripted (``scripted``).
    served_here: int = 0
    heads: list[bytes] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _handlers: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> LoopbackServer:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def name(self) -> str:
        """``host:port`` as the transport names the endpoint in its errors."""
        return self.endpoint.split("://")[1]

    async def head(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request head, or None once the client ended the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.ended_by_client += 1
            return None
        self.heads.append(head)
        return head

    async def until_client_ends(self, reader: asyncio.StreamReader) -> None:
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.ended_by_client += 1

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*self._handlers, return_exceptions=True), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        try:
            await self.handler(self, reader, writer)
        finally:
            writer.close()


def scripted(script: Callable[[int, bytes], Answer]) -> Handler:
    """Answer request n (over all connections) with ``script(n, head)``."""

    async def handler(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        served = 0
        while (head := await server.head(reader)) is not None:
            server.served_here = served
            served += 1
            answer = script(len(server.heads) - 1, head)
            if isinstance(answer, Hang):
                await server.until_client_ends(reader)
                return
            close = False
            if isinstance(answer, tuple):
                answer, close = answer[0], answer[1] == "close"
            writer.write(answer)
            await writer.drain()
            if close:
                return

    return handler


def always(answer: Answer) -> Callable[[int, bytes], Answer]:
    return lambda _n, _head: answer


StartServer = Callable[..., Awaitable[LoopbackServer]]


@pytest.fixture
async def serve() -> AsyncIterator[StartServer]:
    """``await serve(handler, host=..., tls=...)``: a started LoopbackServer, stopped after the test."""
    servers: list[LoopbackServer] = []

    async def start(
        handler: Handler, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
    ) -> LoopbackServer:
        server = LoopbackServer(handler, host, tls)
        servers.append(server)
        return await server.start()

    yield start
    for server in servers:
        await server.stop()


class LoopbackProxy:
    """A minimal HTTP forward proxy on 127.0.0.1: absolute-form requests and CONNECT tunnels, one request
    per client connection. Records every request line it gets (``seen``) and the Proxy-Authorization
    sent with it; forwards only to 127.0.0.1. With ``auth``, anything else is answered 407. ``aliases``
    are host names only the proxy knows (it forwards them to 127.0.0.1): a receiver named so is reachable
    through the proxy only, and nobody resolves its name."""

    def __init__(self, auth: tuple[str, str] | None = None, aliases: Iterable[str] = ()) -> None:
        self.aliases = frozenset(aliases)
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

    async def start(self) -> LoopbackProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

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
            host = "127.0.0.1" if host in self.aliases else host
            assert host == "127.0.0.1", target
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            upstream.append(up_writer)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            return
        url = urlsplit(target)  # absolute-form: http://host:port/path?query
        host = "127.0.0.1" if url.hostname in self.aliases else url.hostname
        assert url.scheme == "http" and host == "127.0.0.1", target
        up_reader, up_writer = await asyncio.open_connection(host, url.port or 80)
        upstream.append(up_writer)
        hop_by_hop = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}
        kept = [f"{k}: {v}" for k, v in headers if k.lower() not in hop_by_hop]
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        body = await reader.readexactly(length) if length else b""
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        out = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
        up_writer.write(out.encode("latin-1") + body)
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
    """A started LoopbackProxy (no authentication), stopped after the test."""
    p = await LoopbackProxy().start()
    yield p
    await p.stop()


_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "WS_PROXY", "WSS_PROXY")


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's proxy settings must not leak into a test (NO_PROXY in particular)."""
    for name in _PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A private CA for TLS servers on 127.0.0.1 (``ca.issue_cert("127.0.0.1")``)."""
    return trustme.CA()


@pytest.fixture
def ca_pem(ca: trustme.CA, tmp_path: Path) -> Path:
    """The private CA's certificate as a PEM file (a ``ca_bundle``)."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@asynccontextmanager
async def tls_receiver(ca: trustme.CA, *names: str) -> AsyncIterator[tuple[int, list[bytes]]]:
    """An HTTPS receiver of POSTs to ``/hook`` on 127.0.0.1, its certificate (for ``names`` and 127.0.0.1)
    signed by the private CA ``ca``: (port, bodies received), answering 204."""
    bodies: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names, "127.0.0.1").configure_cert(context)
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    try:
        yield runner.addresses[0][1], bodies
    finally:
        await runner.cleanup()
