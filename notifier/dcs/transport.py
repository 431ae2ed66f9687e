"""How the DCS client's GETs reach the API: a lean HTTP/1.1 keep-alive transport, or aiohttp's.

The poller makes one small GET per instance per interval, and almost all of them answer "nothing
changed". Profiled (``bench/compare.py``), aiohttp's client request path — its request and response
objects, tracing hooks, cookie jar, URL building, timeouts — was about half of the CPU of such a poll:
a bare aiohttp loop cost 0.16–0.23 ms per poll on our 2-core box where the same polls over an
``asyncio.Protocol`` with httptools (llhttp, Node.js's parser) cost 0.075 ms. So the hot GET has a
transport of its own, :class:`KeepAliveTransport`, which does only what these GETs need:

* HTTP and HTTPS with the :class:`~notifier.net.session.TlsPolicy` of the session (system trust store,
  plus ``api.ca_bundle``; no verification only for ``api.insecure_endpoints``);
* a keep-alive pool per endpoint; idle connections are dropped after :data:`IDLE_SECONDS`; a GET sent
  on a kept-alive connection that the server had closed meanwhile (no byte of an answer came back) is
  sent again once on a new connection — a GET is idempotent;
* bodies framed by ``Content-Length``, chunked, or by the end of the connection; gzip and deflate;
* one deadline per request, connecting included; caps on the size of an answer and of its headers;
* requests that could be split (CR/LF, a header name that is not a token, non-Latin-1) refused.

It has no proxy support, no redirects, no cookies, no request bodies. When a proxy is in effect
(``api.proxy``, or ``HTTPS_PROXY``/``HTTP_PROXY`` in the environment) the client uses
:class:`AiohttpTransport`, aiohttp's full client, instead: :func:`transport_for` picks.

Both raise :class:`TransportError` (no complete HTTP answer: the message names the host, never the
URL, whose query carries a signature), :class:`TimeoutError`, or :class:`ValueError` (a request that
cannot be sent as it is); every complete answer, whatever its status, is returned as an
:class:`HttpAnswer` for the client to judge.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, cast
from urllib.parse import urlsplit

import aiohttp
import httptools
from yarl import URL

from notifier.net.session import (
    TlsPolicy,
    describe_client_error,
    describe_connect_error,
    ssl_for,
    tls_policy,
    uses_proxy,
)

#: A kept-alive connection idle this long is closed rather than reused (aiohttp's default, too).
IDLE_SECONDS = 15.0
#: Idle connections kept per endpoint; more are closed when they come back.
MAX_IDLE_PER_ENDPOINT = 100
#: An answer bigger than this (decoded) fails: a page of 100 tasks is about 50 KB.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
#: A header block bigger than this fails (aiohttp's and nginx's limits are of this order).
MAX_HEADER_BYTES = 64 * 1024
_ACCEPT = "Accept-Encoding: gzip, deflate\r\n\r\n"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """A complete HTTP answer, whatever its status."""

    status: int
    #: Header names lower-case; a repeated header's values joined with ", ".
    headers: Mapping[str, str]
    body: bytes


class TransportError(Exception):
    """No complete HTTP answer (connection, TLS, malformed or truncated answer): worth asking again
    later (the client reports it as ``Reason.CONNECTION``, retryable).

    The message names the endpoint's host and port and the cause, never a URL.
    """


class HttpTransport(Protocol):
    """Sends one GET and returns the complete answer; raises TransportError, TimeoutError or ValueError."""

    async def get(
        self,
        endpoint: str,
        target: str,
        headers: Mapping[str, str],
        timeout: float,  # noqa: ASYNC109 - a timer per request costs less than an asyncio.timeout() scope
    ) -> HttpAnswer:
        """``GET endpoint + target`` (``target``: path and query, encoded) within ``timeout`` seconds."""
        ...

    async def aclose(self) -> None: ...


def transport_for(session: aiohttp.ClientSession) -> HttpTransport:
    """The lean transport, unless a proxy is in effect: then aiohttp's, through ``session``.

    ``session`` is the one :func:`~notifier.net.session.make_session` made: it decided whether a proxy is
    in effect (``api.proxy``, or proxies from the environment whatever ``NO_PROXY`` says: aiohttp applies
    the exclusions), and its TLS policy is reused.
    """
    if uses_proxy(session):
        return AiohttpTransport(session)
    return KeepAliveTransport(tls_policy(session) or TlsPolicy.build())


# == aiohttp (proxies) ===================================================================================


class AiohttpTransport:
    """GETs through an aiohttp session (proxies, ``trust_env``). The session stays its maker's to close."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._endpoints: dict[str, tuple[ssl.SSLContext | bool, str]] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def get(
        self,
        endpoint: str,
        target: str,
        headers: Mapping[str, str],
        timeout: float,  # noqa: ASYNC109 - see HttpTransport.get
    ) -> HttpAnswer:
        known = self._endpoints.get(endpoint)
        if known is None:
            netloc = urlsplit(endpoint).netloc.rpartition("@")[2]
            known = self._endpoints[endpoint] = (ssl_for(self._session, endpoint), netloc)
        ssl_arg, host = known
        client_timeout = self._timeouts.get(timeout)
        if client_timeout is None:
            client_timeout = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self._session.get(
                URL(endpoint + target, encoded=True),
                headers=headers,
                timeout=client_timeout,
                ssl=ssl_arg,
                allow_redirects=False,  # a redirect would carry the signature (and ssl=) elsewhere
            ) as resp:
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_any():  # decoded (gzip, deflate) by aiohttp
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        raise TransportError(
                            f"{host} sent an answer larger than {MAX_ANSWER_BYTES >> 20} MiB"
                        )
                    chunks.append(chunk)
                # The same headers as the lean transport's: lower-case names, repeated values joined.
                names = {name.lower() for name in resp.headers}
                headers = {name: ", ".join(resp.headers.getall(name)) for name in names}
                return HttpAnswer(resp.status, headers, b"".join(chunks))
        except aiohttp.ClientError as exc:
            raise TransportError(describe_client_error(exc, host)) from None

    async def aclose(self) -> None:
        return None


# == the lean keep-alive transport =======================================================================


class _Stale(Exception):
    """A reused connection was closed by the server before any byte of the answer: send it again."""


@dataclass(slots=True)
class _Origin:
    """One endpoint: where to connect, how, and its idle connections."""

    host: str
    port: int
    #: ``host:port`` as the client names the endpoint in messages.
    name: str
    ssl: ssl.SSLContext | None
    #: The endpoint's own path (``https://host/dcs`` → ``/dcs``), put before every target.
    prefix: str
    idle: list[_Connection] = field(default_factory=list)

    @classmethod
    def parse(cls, endpoint: str, tls: TlsPolicy) -> _Origin:
        split = urlsplit(endpoint)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError("endpoint must be an http(s) URL with a host")
        secure = split.scheme == "https"
        port = split.port or (443 if secure else 80)
        context = tls.context_for(split.hostname, split.port) if secure else None
        name = split.netloc.rpartition("@")[2]
        return cls(split.hostname, port, name, context, split.path.rstrip("/"))


class KeepAliveTransport:
    """HTTP/1.1 GETs over kept-alive connections (see the module docstring). Use one per process."""

    def __init__(self, tls: TlsPolicy | None = None) -> None:
        self._tls = tls or TlsPolicy.build()
        self._origins: dict[str, _Origin] = {}
        self._busy: set[_Connection] = set()
        self._closed = False

    async def get(
        self,
        endpoint: str,
        target: str,
        headers: Mapping[str, str],
        timeout: float,  # noqa: ASYNC109 - see HttpTransport.get
    ) -> HttpAnswer:
        if self._closed:
            raise TransportError("the transport is closed")
        origin = self._origins.get(endpoint)
        if origin is None:
            origin = self._origins[endpoint] = _Origin.parse(endpoint, self._tls)
        request = _request_bytes(origin.prefix + target, headers, origin.name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._idle_connection(origin, loop.time())
        if conn is not None:
            try:
                return await self._exchange(origin, conn, request, deadline)
            except _Stale:
                pass  # the server had closed it while idle: once more, on a new connection
        conn = await self._connect(origin, loop, deadline)
        if self._closed:  # closed while this request was connecting
            conn.close()
            raise TransportError(f"request to {origin.name} abandoned: the transport was closed")
        try:
            return await self._exchange(origin, conn, request, deadline)
        except _Stale:
            raise TransportError(f"{origin.name} closed the connection before answering") from None

    async def _exchange(
        self, origin: _Origin, conn: _Connection, request: bytes, deadline: float
    ) -> HttpAnswer:
        self._busy.add(conn)
        try:
            answer = await conn.exchange(request, deadline)
        except BaseException:
            conn.close()  # stale, timed out, cancelled or broken: its state is unknown
            raise
        finally:
            self._busy.discard(conn)
        if conn.usable and not self._closed and len(origin.idle) < MAX_IDLE_PER_ENDPOINT:
            conn.idle_since = conn.loop.time()
            origin.idle.append(conn)
        else:
            conn.close()
        return answer

    async def aclose(self) -> None:
        self._closed = True
        for origin in self._origins.values():
            for conn in origin.idle:
                conn.close()
            origin.idle.clear()
        for conn in list(self._busy):
            conn.close()

    @staticmethod
    def _idle_connection(origin: _Origin, now: float) -> _Connection | None:
        """The most recently used idle connection (the least likely to have been closed), if any.

        Connections idle longer than IDLE_SECONDS (or closed by the server) are closed and dropped on
        the way, from the bottom of the stack too, so the pool shrinks when polling slows down.
        """
        idle = origin.idle
        while idle and (not idle[0].usable or now - idle[0].idle_since >= IDLE_SECONDS):
            idle.pop(0).close()
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
            conn.close()
        return None

    @staticmethod
    async def _connect(origin: _Origin, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        name = origin.name
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: _Connection(name, loop),
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                    server_hostname=origin.host if origin.ssl is not None else None,
                )
        except TimeoutError:
            raise
        except OSError as exc:  # ssl.SSLError included
            raise TransportError(describe_connect_error(exc, name)) from None
        return conn


#: An HTTP header name (RFC 9110 token).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_checked_names: set[str] = set()


def _request_bytes(target: str, headers: Mapping[str, str], host: str) -> bytes:
    """The request head; ValueError for anything that could split it or cannot be sent as Latin-1."""
    if not target.startswith("/") or " " in target or "\r" in target or "\n" in target:
        raise ValueError("the request target must be an encoded path and query")
    lines = [f"GET {target} HTTP/1.1\r\n"]
    has_host = False
    for name, value in headers.items():
        if name not in _checked_names:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"header name {name!r} is not an HTTP token")
            _checked_names.add(name)
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name}: a line break in its value")
        has_host = has_host or name.lower() == "host"
        lines.append(f"{name}: {value}\r\n")
    if not has_host:
        lines.append(f"Host: {host}\r\n")
    lines.append(_ACCEPT)
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("a header holds characters HTTP/1.1 cannot carry (not Latin-1)") from None


def _decode_body(encoding: str, body: bytes, name: str) -> bytes:
    """The body without its ``Content-Encoding``, at most MAX_ANSWER_BYTES of it (no zip bombs)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    attempts: tuple[int, ...]
    if encoding in ("gzip", "x-gzip"):
        attempts = (31,)
    elif encoding == "deflate":
        attempts = (15, -15)  # zlib-wrapped as the RFC says, or raw deflate as some servers send
    else:
        raise TransportError(f"{name} sent a body in an encoding not asked for ({encoding[:40]})")
    for wbits in attempts:
        try:
            return _inflate(body, wbits, name, encoding)
        except zlib.error:
            continue
    raise TransportError(f"{name} sent a corrupt {encoding} body")


def _inflate(body: bytes, wbits: int, name: str, encoding: str) -> bytes:
    """Every member of a gzip body (one stream otherwise), decoded to at most MAX_ANSWER_BYTES."""
    parts: list[bytes] = []
    room = MAX_ANSWER_BYTES
    data = body
    while True:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(data, room + 1)
        room -= len(out)
        if room < 0 or inflater.unconsumed_tail:
            raise TransportError(f"{name} sent an answer larger than {MAX_ANSWER_BYTES >> 20} MiB")
        if not inflater.eof:
            raise TransportError(f"{name} sent a truncated {encoding} body")
        parts.append(out)
        data = inflater.unused_data
        if not data or wbits != 31:  # only gzip bodies are made of members
            return parts[0] if len(parts) == 1 else b"".join(parts)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, parsed by httptools' callbacks."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self._name = name
        self.loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[HttpAnswer] | None = None
        #: False once the connection must not carry another request.
        self.usable = True
        self.idle_since = 0.0
        self._headers: dict[str, str] = {}
        #: Values of a header repeated in this answer, joined into _headers once all have come.
        self._repeated: dict[str, list[str]] = {}
        self._header_bytes = 0
        self._chunks: list[bytes] = []
        self._size = 0
        self._status = 0
        self._got_bytes = False
        self._headers_done = False
        self._framed = False

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: this connection cannot be trusted any more
            self.close()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(TransportError(f"{self._name} switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(TransportError(f"{self._name} sent a malformed HTTP answer ({exc})"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost() settles the request

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._framed and exc is None:
            self._complete()  # a body delimited by the end of the connection (a clean close, not a reset)
        elif not self._got_bytes:
            self._fail(_Stale())
        else:
            self._fail(TransportError(f"{self._name} closed the connection in the middle of an answer"))

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:  # a second answer to one request
            self.usable = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._waiter is None:  # an answer nobody asked for (or one that already failed)
            return
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._fail(TransportError(f"{self._name} sent more than {MAX_HEADER_BYTES >> 10} KiB of headers"))
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self._headers
        if key not in headers:
            headers[key] = text
        elif key in self._repeated:
            self._repeated[key].append(text)
        else:
            self._repeated[key] = [headers[key], text]

    def on_headers_complete(self) -> None:
        headers = self._headers
        for key, values in self._repeated.items():
            headers[key] = ", ".join(values)
        self._repeated = {}
        self._status = self._parser.get_status_code()
        self._headers_done = True
        self._framed = (
            "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()
        )

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_ANSWER_BYTES:
            self._fail(
                TransportError(f"{self._name} sent an answer larger than {MAX_ANSWER_BYTES >> 20} MiB")
            )
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # an interim answer ("100 Continue"): the real one follows
            self._reset()
            return
        if not self._parser.should_keep_alive():
            self.usable = False
        self._complete()

    # -- requests -----------------------------------------------------------------------------------

    async def exchange(self, request: bytes, deadline: float) -> HttpAnswer:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise _Stale()
        self._reset()
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_at(deadline, self._timed_out)
        try:
            transport.write(request)
            answer: HttpAnswer = await waiter
            return answer
        finally:
            timer.cancel()

    def close(self) -> None:
        """Abort the connection; a request still waiting on it fails (it is not the server's doing)."""
        self.usable = False
        waiter, self._waiter = self._waiter, None
        if self._transport is not None:
            self._transport.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(
                TransportError(f"request to {self._name} abandoned: the transport was closed")
            )

    def _reset(self) -> None:
        self._headers = {}
        self._repeated = {}
        self._header_bytes = 0
        self._chunks = []
        self._size = 0
        self._status = 0
        self._got_bytes = False
        self._headers_done = False
        self._framed = False

    def _timed_out(self) -> None:
        self._fail(TimeoutError())

    def _complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        # Handed over: an idle connection holds no body, and a stray second answer cannot alter this one.
        chunks, self._chunks = self._chunks, []
        headers, self._headers = self._headers, {}
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = headers.get("content-encoding")
        if encoding is not None and body:  # a 204, a 304, an empty error: nothing to decode
            try:
                body = _decode_body(encoding, body, self._name)
            except TransportError as exc:
                self.close()
                waiter.set_exception(exc)
                return
        waiter.set_result(HttpAnswer(self._status, headers, body))

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
