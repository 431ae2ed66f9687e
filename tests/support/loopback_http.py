"""Raw HTTP servers on loopback for the transport's tests: every byte they send is the test's choice.

``LoopbackServer`` runs ``handler(server, reader, writer)`` once per accepted connection and records what
it saw (connections, request heads, connections the client ended). ``scripted(script)`` is the common
handler: request n (counted over all connections) is answered with ``script(n, head)`` — bytes; bytes
then "close"; or ``HANG`` (no answer until the client gives up). The ``serve`` and ``transport``
fixtures are registered for every test by ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from notifier.dcs.transport import KeepAliveTransport


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


@pytest.fixture
async def transport() -> AsyncIterator[KeepAliveTransport]:
    t = KeepAliveTransport()
    yield t
    await t.aclose()
