"""Edge cases of the lean keep-alive transport: framing, resets, closes and aclose() (from a review).

Every server here is a real asyncio server on loopback whose handler scripts the raw bytes; tests wait
on conditions with a deadline (``until``), never on bare sleeps.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import struct
from collections.abc import Awaitable
from pathlib import Path

import pytest
import trustme

from notifier.dcs import transport as transport_module
from notifier.dcs.transport import KeepAliveTransport, TransportError, _Connection
from notifier.net.session import TlsPolicy
from tests.support.loopback_http import Handler, LoopbackServer, StartServer, scripted
from tests.support.wait import until

HEADERS = {"Host": "dcs.test", "User-Agent": "t/1", "X-Project-Id": "p1"}
SECRET = "X-Sdk-Signature=c2VjcmV0LXNpZ25hdHVyZQ"
TARGET = f"/v2/p1/instances/i-1/tasks?offset=0&{SECRET}"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: r-1\r\n\r\n{}"


def answering(*answers: bytes) -> Handler:
    """Answer request n (counted over all connections) with answers[n] (the last one from then on)."""
    return scripted(lambda n, _head: answers[min(n, len(answers) - 1)])


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def busy_connection(t: KeepAliveTransport) -> _Connection:
    (conn,) = t._busy
    return conn


async def outcome(pending: Awaitable[object]) -> object:
    """What a get() returned, or the exception it raised."""
    (result,) = await asyncio.gather(pending, return_exceptions=True)
    return result


# == found in review: each of these failed before its fix =============================================


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\nContent-Encoding: gzip\r\nX-Request-Id: r-2\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Encoding: gzip\r\nX-Request-Id: r-2\r\n\r\n",
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n"
        b"Retry-After: 7\r\nX-Request-Id: r-2\r\n\r\n",
    ],
)
async def test_empty_body_with_a_content_encoding_is_an_answer_not_an_error(
    serve: StartServer, transport: KeepAliveTransport, answer: bytes
) -> None:
    # A gateway keeps `Content-Encoding: gzip` on bodiless answers; aiohttp returns them with b"".
    # Inflating b"" finds no end of a gzip stream: the answer, and a 429's Retry-After, were lost.
    server = await serve(answering(answer))
    got = await transport.get(server.endpoint, TARGET, HEADERS, 5)
    assert (got.body, got.headers["x-request-id"]) == (b"", "r-2")


async def test_truncated_chunked_body_is_an_error_whatever_the_case_of_chunked(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    # `Transfer-Encoding: Chunked` is chunked (names and codings are case-insensitive): a close in the
    # middle of its body must not be taken for the end of a body delimited by the close.
    async def handler(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.head(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n20\r\n{"tasks": [')
        await writer.drain()

    server = await serve(handler)
    with pytest.raises(TransportError, match="in the middle of an answer"):
        await transport.get(server.endpoint, TARGET, HEADERS, 5)


async def test_read_until_close_body_cut_by_a_reset_is_an_error(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    # A body delimited by the end of the connection ends with a FIN; a reset (RST) cuts it short and
    # must not be returned as a complete 200.
    release = asyncio.Event()

    async def handler(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.head(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"tasks": [{"id":')
        await writer.drain()
        await release.wait()
        reset(writer)

    server = await serve(handler)
    pending = asyncio.ensure_future(transport.get(server.endpoint, TARGET, HEADERS, 5))
    await until(lambda: bool(transport._busy) and busy_connection(transport)._size > 0, 5, "a partial body")
    release.set()
    got = await outcome(pending)
    assert isinstance(got, TransportError), got


async def test_aclose_during_a_read_until_close_body_does_not_return_it_as_complete(
    serve: StartServer,
) -> None:
    async def handler(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.head(reader)
        writer.write(b'HTTP/1.1 200 OK\r\n\r\n{"tasks": [{"id":')
        await writer.drain()
        await server.until_client_ends(reader)

    server = await serve(handler)
    t = KeepAliveTransport()
    pending = asyncio.ensure_future(t.get(server.endpoint, TARGET, HEADERS, 5))
    await until(lambda: bool(t._busy) and busy_connection(t)._size > 0, 5, "a partial body")
    await t.aclose()
    got = await outcome(pending)
    assert isinstance(got, TransportError), got


async def test_a_request_in_flight_on_a_reused_connection_is_not_resent_after_aclose(
    serve: StartServer,
) -> None:
    # aclose() aborts the busy connection before any byte came back: that is not a stale kept-alive
    # connection to send the GET again on a new one (after aclose()).
    async def handler(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await server.head(reader) is not None:
            if len(server.heads) == 2:  # the second request: hang until the client gives up
                await server.until_client_ends(reader)
                return
            writer.write(OK)
            await writer.drain()

    server = await serve(handler)
    t = KeepAliveTransport()
    await t.get(server.endpoint, "/first", HEADERS, 5)
    pending = asyncio.ensure_future(t.get(server.endpoint, "/second", HEADERS, 5))
    await until(lambda: len(server.heads) == 2, 5, "the second request")
    await t.aclose()
    try:
        got = await outcome(pending)
        assert isinstance(got, TransportError), got
        assert (server.connections, len(server.heads)) == (1, 2)  # nothing connected nor sent after aclose()
    finally:
        await t.aclose()  # the connection the resend left in the pool, if any


async def test_a_request_still_connecting_at_aclose_leaves_no_connection_open(
    serve: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A connection still being made at aclose() is neither idle nor busy: it must not be used and then
    # put into the cleared pool, open for good.
    entered, gate = asyncio.Event(), asyncio.Event()
    real_connect = KeepAliveTransport._connect

    async def slow_connect(origin, loop, deadline):  # type: ignore[no-untyped-def]
        entered.set()
        await gate.wait()
        return await real_connect(origin, loop, deadline)

    monkeypatch.setattr(KeepAliveTransport, "_connect", staticmethod(slow_connect))

    async def handler(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await server.head(reader) is not None:
            writer.write(OK)
            await writer.drain()
        # head() counted the client's close

    server = await serve(handler)
    t = KeepAliveTransport()
    pending = asyncio.ensure_future(t.get(server.endpoint, TARGET, HEADERS, 5))
    await entered.wait()
    await t.aclose()
    gate.set()
    try:
        got = await outcome(pending)
        await until(
            lambda: server.ended_by_client == server.connections, 1, f"the connection closed ({got!r})"
        )
    finally:
        await t.aclose()


async def test_a_second_answer_in_the_same_segment_does_not_alter_the_first(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    # The parser goes on through the rest of the segment: a stray answer's headers must not be added
    # to the answer already returned.
    stray = b"HTTP/1.1 200 OK\r\nX-Request-Id: stray\r\nContent-Length: 0\r\n\r\n"
    server = await serve(answering(OK + stray))
    got = await transport.get(server.endpoint, TARGET, HEADERS, 5)
    assert dict(got.headers) == {"content-length": "2", "x-request-id": "r-1"}


async def test_the_header_block_is_capped(
    serve: StartServer,
    transport: KeepAliveTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Headers were unbounded until the deadline (and repeated ones re-copied at every repetition).
    monkeypatch.setattr(transport_module, "MAX_HEADER_BYTES", 10_000)
    block = b"".join(b"Via: 1.1 proxy-%05d.example\r\n" % n for n in range(2000))  # ~60 KB
    server = await serve(answering(b"HTTP/1.1 200 OK\r\n" + block + b"Content-Length: 2\r\n\r\n{}"))
    with pytest.raises(TransportError, match="sent more than 9 KiB of headers"):
        await transport.get(server.endpoint, TARGET, HEADERS, 5)


# == checked and working ==============================================================================


async def test_answers_fed_one_byte_at_a_time(
    serve: StartServer,
    transport: KeepAliveTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Headers, chunk sizes, CRLFs and gzip streams split at every byte.
    real = _Connection.data_received

    def byte_by_byte(self: _Connection, data: bytes) -> None:
        for i in range(len(data)):
            real(self, data[i : i + 1])

    monkeypatch.setattr(_Connection, "data_received", byte_by_byte)
    packed = gzip.compress(b'{"a":1}')
    answers = [
        OK,
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n',
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + OK,
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(
            b"%x\r\n%s\r\n" % (len(packed[i : i + 3]), packed[i : i + 3]) for i in range(0, len(packed), 3)
        )
        + b"0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nX-Request-Id: r-5\r\n\r\n",
    ]
    server = await serve(answering(*answers))
    got = [await transport.get(server.endpoint, TARGET, HEADERS, 5) for _ in answers]
    assert [(a.status, a.body) for a in got] == [
        (200, b"{}"),
        (200, b'{"a":1}'),
        (200, b"{}"),
        (200, b'{"a":1}'),
        (204, b""),
    ]
    assert "link" not in got[2].headers
    assert server.connections == 1


async def test_bodiless_statuses_keep_the_connection(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    answers = [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",  # the length of the 200 it stands for
        OK,
    ]
    server = await serve(answering(*answers))
    got = [await transport.get(server.endpoint, TARGET, HEADERS, 5) for _ in answers]
    assert [(a.status, a.body) for a in got] == [(204, b""), (304, b""), (200, b"{}")]
    assert server.connections == 1


async def test_connection_close_with_chunked_and_close_right_after_a_complete_answer(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    async def handler(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.head(reader)
        if server.connections == 1:
            writer.write(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
            )
        else:
            writer.write(OK)  # then a FIN at once, keep-alive never said otherwise
        await writer.drain()

    server = await serve(handler)
    for _ in range(3):
        assert (await transport.get(server.endpoint, TARGET, HEADERS, 5)).body == b"{}"
    assert server.connections == 3
    assert len(server.heads) == 3  # no resend: each closed connection was dropped, not reused


async def test_a_server_answering_before_reading_the_whole_request(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    async def handler(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await reader.readline():  # the request line only
            writer.write(OK)
            await writer.drain()
            server.heads.append(await reader.readuntil(b"\r\n\r\n"))

    server = await serve(handler)
    for _ in range(2):
        assert (await transport.get(server.endpoint, TARGET, HEADERS, 5)).body == b"{}"
    assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
)
async def test_ambiguous_framing_is_refused(
    serve: StartServer, transport: KeepAliveTransport, answer: bytes
) -> None:
    server = await serve(answering(answer))
    with pytest.raises(TransportError) as info:
        await transport.get(server.endpoint, TARGET, HEADERS, 5)
    assert SECRET not in str(info.value)


async def test_the_deadline_covers_a_tls_handshake_that_never_ends(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    async def handler(
        server: LoopbackServer, reader: asyncio.StreamReader, _writer: asyncio.StreamWriter
    ) -> None:
        await server.until_client_ends(reader)  # takes the ClientHello, never answers it

    server = await serve(handler)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await transport.get(server.endpoint.replace("http:", "https:"), TARGET, HEADERS, 0.3)
    assert loop.time() - started < 2
    await until(lambda: server.ended_by_client == 1, 5, "the half-open TLS connection closed")


async def test_the_deadline_covers_a_slow_body(serve: StartServer, transport: KeepAliveTransport) -> None:
    async def handler(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        await server.until_client_ends(reader)

    server = await serve(handler)
    with pytest.raises(TimeoutError):
        await transport.get(server.endpoint, TARGET, HEADERS, 0.3)
    await until(lambda: server.ended_by_client == 1, 5, "the timed-out connection closed")


async def test_many_concurrent_requests_then_aclose_all_end_promptly(
    serve: StartServer,
) -> None:
    async def handler(
        server: LoopbackServer, reader: asyncio.StreamReader, _writer: asyncio.StreamWriter
    ) -> None:
        await server.head(reader)
        await server.until_client_ends(reader)

    server = await serve(handler)
    t = KeepAliveTransport()
    pending = [asyncio.ensure_future(t.get(server.endpoint, TARGET, HEADERS, 30)) for _ in range(20)]
    await until(lambda: len(server.heads) == 20, 5, "all requests")
    await t.aclose()
    results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
    assert all(isinstance(r, TransportError) and SECRET not in str(r) for r in results), results
    await until(lambda: server.ended_by_client == 20, 5, "all connections closed")


def _ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_works(), reason="no IPv6 loopback")
async def test_ipv6_loopback_endpoint_plain_and_tls(serve: StartServer) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("::1").configure_cert(server_tls)
    plain = await serve(answering(OK), "::1")
    secure = await serve(answering(OK), "::1", server_tls)
    with ca.cert_pem.tempfile() as pem:
        t = KeepAliveTransport(TlsPolicy.build(Path(pem)))
    try:
        for server in (plain, secure):
            for _ in range(2):
                answer = await t.get(server.endpoint + "/dcs/", TARGET, {"User-Agent": "t/1"}, 5)
                assert answer.body == b"{}"
            assert server.connections == 1
            assert server.heads[0].startswith(b"GET /dcs/v2/p1/instances/i-1/tasks?")
            assert f"\r\nHost: [::1]:{server.port}\r\n".encode() in server.heads[0]
    finally:
        await t.aclose()


async def test_error_messages_never_carry_the_query(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    answers: list[bytes | None] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{",  # truncated
        b"garbage\r\n\r\n",  # malformed
        None,  # closed without answering
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nxyz",  # corrupt gzip
        b"HTTP/1.1 200 OK\r\nContent-Encoding: zstd\r\nContent-Length: 3\r\n\r\nxyz",  # unknown
    ]

    async def handler(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.head(reader)
        answer = answers[len(server.heads) - 1]
        if answer is not None:
            writer.write(answer)
            await writer.drain()

    server = await serve(handler)
    messages = []
    for _ in answers:
        with pytest.raises(TransportError) as info:
            await transport.get(server.endpoint, TARGET, HEADERS, 5)
        messages.append(str(info.value))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises(TransportError) as refused:
            await transport.get(f"http://127.0.0.1:{s.getsockname()[1]}", TARGET, HEADERS, 5)
    messages.append(str(refused.value))
    assert all(server.name in m or "127.0.0.1" in m for m in messages), messages
    assert not [m for m in messages if SECRET in m or "offset" in m or "/v2/" in m]


@pytest.mark.parametrize(
    "endpoint",
    ["http://[::1", "http://127.0.0.1:99999", "ftp://127.0.0.1", "http://" + "a" * 64 + ".test"],
)
async def test_bad_endpoints_raise_only_mapped_exceptions(
    transport: KeepAliveTransport, endpoint: str
) -> None:
    with pytest.raises((TransportError, TimeoutError, ValueError)) as info:
        await transport.get(endpoint, TARGET, HEADERS, 5)
    assert SECRET not in str(info.value)
