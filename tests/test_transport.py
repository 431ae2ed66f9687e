"""The DCS client's lean HTTP/1.1 transport against real loopback servers.

``ScriptedServer`` is an asyncio TCP server on 127.0.0.1 that answers each request with whatever the
test scripts — well-formed, chunked, compressed, truncated, garbage, nothing at all — and records the
connections and request heads it saw, so that keep-alive reuse, retries and closes are asserted on
what happened on the wire.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import trustme
import uvloop

from notifier.config.models import parse_config
from notifier.dcs import transport as transport_module
from notifier.dcs.cloud import Cloud
from notifier.dcs.transport import AiohttpTransport, HttpAnswer, KeepAliveTransport, TransportError
from notifier.net.session import TlsPolicy
from tests.support.loopback_http import HANG, Answer, LoopbackServer, StartServer, always, scripted
from tests.support.wait import until

HEADERS = {"Host": "dcs.test", "User-Agent": "t/1", "X-Project-Id": "p1"}
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: r-1\r\n\r\n{}"


def body_answer(body: bytes, *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in (f"Content-Length: {len(body)}", *extra))
    return f"HTTP/1.1 200 OK\r\n{head}\r\n".encode() + body


# == the request on the wire and keep-alive ============================================================


async def test_requests_are_sent_byte_for_byte_and_one_connection_is_kept_alive(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    server = await serve(scripted(lambda n, _h: body_answer(f'{{"n":{n}}}'.encode())))
    answers = [
        await transport.get(server.endpoint, f"/v2/p1/instances/i-{n}/tasks?offset=0", HEADERS, 5)
        for n in range(5)
    ]
    assert [a.body for a in answers] == [f'{{"n":{n}}}'.encode() for n in range(5)]
    assert all(a.status == 200 for a in answers)
    assert server.connections == 1
    assert server.heads[3] == (
        b"GET /v2/p1/instances/i-3/tasks?offset=0 HTTP/1.1\r\n"
        b"Host: dcs.test\r\nUser-Agent: t/1\r\nX-Project-Id: p1\r\n"
        b"Accept-Encoding: gzip, deflate\r\n\r\n"
    )


async def test_headers_are_lower_case_and_repeated_ones_joined(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    answer = b"HTTP/1.1 429 Too Many\r\nX-Request-Id: r-9\r\nVia: a\r\nVia: b\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n"
    server = await serve(scripted(always(answer)))
    got = await transport.get(server.endpoint, "/x", HEADERS, 5)
    assert got == HttpAnswer(
        429, {"x-request-id": "r-9", "via": "a, b", "retry-after": "3", "content-length": "0"}, b""
    )


async def test_a_kept_alive_connection_the_server_closed_is_replaced_once_transparently(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    # The server answers and then closes without saying so (an idle timeout on its side).
    server = await serve(scripted(lambda n, _h: (body_answer(f"{n}".encode()), "close")))
    first = await transport.get(server.endpoint, "/a", HEADERS, 5)
    await until(lambda: server.connections == 1, 5, "the first connection")
    second = await transport.get(server.endpoint, "/b", HEADERS, 5)
    assert (first.body, second.body) == (b"0", b"1")
    assert server.connections == 2
    assert [h.split(b" ")[1] for h in server.heads] == [b"/a", b"/b"]  # /b sent once, on the new one


async def test_after_a_silent_server_restart_the_resend_goes_to_a_new_connection(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    # Three kept-alive connections, then the server drops each old connection when it is used again
    # (as after a restart behind a load balancer): the resend must not pick another stale one.
    server: LoopbackServer = await serve(
        scripted(lambda _n, _h: (b"", "close") if server.served_here else body_answer(b"{}"))
    )
    await asyncio.gather(*(transport.get(server.endpoint, "/x", HEADERS, 5) for _ in range(3)))
    assert server.connections == 3
    assert (await transport.get(server.endpoint, "/y", HEADERS, 5)).body == b"{}"
    assert server.connections == 4
    assert [h.split(b" ")[1] for h in server.heads] == [b"/x", b"/x", b"/x", b"/y", b"/y"]


async def test_connection_close_is_honoured(serve: StartServer, transport: KeepAliveTransport) -> None:
    server = await serve(scripted(always((body_answer(b"{}", "Connection: close"), "keep"))))
    for _ in range(3):
        assert (await transport.get(server.endpoint, "/x", HEADERS, 5)).body == b"{}"
    assert server.connections == 3


async def test_idle_connections_expire(
    serve: StartServer,
    transport: KeepAliveTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport_module, "IDLE_SECONDS", 0.0)
    server = await serve(scripted(always(OK)))
    for _ in range(3):
        await transport.get(server.endpoint, "/x", HEADERS, 5)
    assert server.connections == 3
    await until(lambda: server.ended_by_client >= 2, 5, "the expired connections closed")


async def test_endpoint_path_prefixes_every_target(serve: StartServer, transport: KeepAliveTransport) -> None:
    server = await serve(scripted(always(OK)))
    await transport.get(f"{server.endpoint}/dcs/", "/v2/p1/instances", HEADERS, 5)
    assert server.heads[0].startswith(b"GET /dcs/v2/p1/instances HTTP/1.1\r\n")


async def test_concurrent_requests_use_separate_connections_then_share_the_pool(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    server = await serve(scripted(lambda n, _h: body_answer(str(n).encode())))
    first = await asyncio.gather(*(transport.get(server.endpoint, "/x", HEADERS, 5) for _ in range(4)))
    second = await asyncio.gather(*(transport.get(server.endpoint, "/x", HEADERS, 5) for _ in range(4)))
    assert sorted(int(a.body) for a in first + second) == list(range(8))
    assert server.connections == 4


# == bodies ============================================================================================


async def test_chunked_body(serve: StartServer, transport: KeepAliveTransport) -> None:
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n'
    server = await serve(scripted(always(chunked)))
    assert (await transport.get(server.endpoint, "/x", HEADERS, 5)).body == b'{"a":1}'
    assert (await transport.get(server.endpoint, "/x", HEADERS, 5)).body == b'{"a":1}'
    assert server.connections == 1


async def test_body_delimited_by_the_end_of_the_connection(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    server = await serve(scripted(always((b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 100_000, "close"))))
    assert (await transport.get(server.endpoint, "/x", HEADERS, 5)).body == b"x" * 100_000
    assert (await transport.get(server.endpoint, "/x", HEADERS, 5)).body == b"x" * 100_000
    assert server.connections == 2


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send it
        ("gzip", lambda b: gzip.compress(b[:100]) + gzip.compress(b[100:])),  # two gzip members
    ],
)
async def test_compressed_bodies(
    serve: StartServer,
    transport: KeepAliveTransport,
    encoding: str,
    encode: Callable[[bytes], bytes],
) -> None:
    plain = b'{"tasks": []}' * 100
    server = await serve(scripted(always(body_answer(encode(plain), f"Content-Encoding: {encoding}"))))
    assert (await transport.get(server.endpoint, "/x", HEADERS, 5)).body == plain


async def test_corrupt_and_unknown_encodings_are_errors(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    answers = [
        body_answer(b"not gzip at all", "Content-Encoding: gzip"),
        body_answer(gzip.compress(b"x" * 1000)[:-12], "Content-Encoding: gzip"),
        body_answer(b"...", "Content-Encoding: br"),
    ]
    server = await serve(scripted(lambda n, _h: answers[n]))
    messages = []
    for _ in answers:
        with pytest.raises(TransportError) as info:
            await transport.get(server.endpoint, "/x", HEADERS, 5)
        messages.append(str(info.value))
    name = f"127.0.0.1:{server.port}"
    assert messages == [
        f"{name} sent a corrupt gzip body",
        f"{name} sent a truncated gzip body",
        f"{name} sent a body in an encoding not asked for (br)",
    ]


async def test_oversized_answers_fail_even_when_compressed(
    serve: StartServer,
    transport: KeepAliveTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport_module, "MAX_ANSWER_BYTES", 1000)
    answers = [body_answer(b"x" * 1001), body_answer(gzip.compress(b"x" * 5000), "Content-Encoding: gzip")]
    server = await serve(scripted(lambda n, _h: answers[n]))
    for _ in answers:
        with pytest.raises(TransportError, match=r"sent an answer larger than 0 MiB"):
            await transport.get(server.endpoint, "/x", HEADERS, 5)


async def test_an_interim_answer_is_skipped(serve: StartServer, transport: KeepAliveTransport) -> None:
    server = await serve(scripted(always(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)))
    answer = await transport.get(server.endpoint, "/x", HEADERS, 5)
    assert (answer.status, answer.body, answer.headers["x-request-id"]) == (200, b"{}", "r-1")


# == failures ==========================================================================================


async def test_truncated_and_malformed_answers_are_transport_errors_and_not_reused(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    answers: list[Answer] = [
        (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"tas', "close"),
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        (b"", "close"),
        OK,
    ]
    server = await serve(scripted(lambda n, _h: answers[n]))
    name = f"127.0.0.1:{server.port}"
    with pytest.raises(TransportError) as truncated:
        await transport.get(server.endpoint, "/x", HEADERS, 5)
    with pytest.raises(TransportError) as garbage:
        await transport.get(server.endpoint, "/x", HEADERS, 5)
    with pytest.raises(TransportError) as nothing:
        await transport.get(server.endpoint, "/x", HEADERS, 5)  # a fresh connection: not sent twice
    assert str(truncated.value) == f"{name} closed the connection in the middle of an answer"
    assert str(garbage.value).startswith(f"{name} sent a malformed HTTP answer (")
    assert str(nothing.value) == f"{name} closed the connection before answering"
    assert (await transport.get(server.endpoint, "/x", HEADERS, 5)).body == b"{}"
    assert server.connections == 4
    assert len(server.heads) == 4


async def test_no_answer_times_out_and_the_connection_is_closed(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    server = await serve(scripted(lambda n, _h: HANG if n == 0 else OK))
    with pytest.raises(TimeoutError):
        await transport.get(server.endpoint, "/slow", HEADERS, 0.2)
    await until(lambda: server.ended_by_client == 1, 5, "the timed-out connection closed")
    assert (await transport.get(server.endpoint, "/x", HEADERS, 5)).body == b"{}"
    assert server.connections == 2


async def test_a_cancelled_request_does_not_leave_its_connection_in_the_pool(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    server = await serve(scripted(lambda n, _h: HANG if n == 0 else OK))
    pending = asyncio.ensure_future(transport.get(server.endpoint, "/slow", HEADERS, 30))
    await until(lambda: len(server.heads) == 1, 5, "the request to arrive")
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert (await transport.get(server.endpoint, "/x", HEADERS, 5)).body == b"{}"
    assert server.connections == 2  # the cancelled request's connection was not reused
    await until(lambda: server.ended_by_client == 1, 5, "the cancelled connection closed")


async def test_connection_refused_names_the_endpoint(transport: KeepAliveTransport) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(TransportError) as info:
            await transport.get(f"http://127.0.0.1:{port}", "/v2/x?X-Sdk-Signature=s", HEADERS, 5)
    assert str(info.value) == f"cannot connect to 127.0.0.1:{port} (connection refused)"


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/x HTTP/1.1\r\nEvil: 1", HEADERS),
        ("no-slash", HEADERS),
        ("/x", {**HEADERS, "X-Project-Id": "p1\r\nEvil: 1"}),
        ("/x", {**HEADERS, "Evil: 1\r\nX": "y"}),
        ("/x", {**HEADERS, "Bad Name": "y"}),
        ("/x", {**HEADERS, "User-Agent": "caf\u00e9 \u2603"}),
    ],
)
async def test_request_splitting_is_refused(target: str, headers: dict[str, str]) -> None:
    t = KeepAliveTransport()
    with pytest.raises(ValueError, match=r"request target|line break|not an HTTP token|not Latin-1"):
        await t.get("http://127.0.0.1:9", target, headers, 5)
    await t.aclose()


async def test_aclose_closes_idle_connections(serve: StartServer) -> None:
    server = await serve(scripted(always(OK)))
    t = KeepAliveTransport()
    await t.get(server.endpoint, "/x", HEADERS, 5)
    await t.aclose()
    await until(lambda: server.ended_by_client == 1, 5, "the idle connection closed")
    with pytest.raises(TransportError, match="closed"):
        await t.get(server.endpoint, "/x", HEADERS, 5)


# == TLS, under asyncio's loop and uvloop ==============================================================


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


async def _tls_cases(ca: trustme.CA, ca_pem: Path) -> list[str]:
    """GETs over TLS: trusted through the bundle, untrusted without it, unverified when listed."""
    server = await LoopbackServer(scripted(always(OK)), tls=_server_tls(ca)).start()
    outcomes = []
    try:
        for policy in (
            TlsPolicy.build(ca_pem),
            TlsPolicy.build(),
            TlsPolicy.build(insecure_hosts=[f"127.0.0.1:{server.port}"]),
        ):
            t = KeepAliveTransport(policy)
            try:
                for _ in range(2):
                    answer = await t.get(server.endpoint, "/x", HEADERS, 5)
                outcomes.append(f"{answer.status}")
            except TransportError as exc:
                outcomes.append(str(exc))
            finally:
                await t.aclose()
    finally:
        await server.stop()
    return [o.replace(str(server.port), "PORT") for o in outcomes] + [f"connections={server.connections}"]


EXPECTED_TLS = [
    "200",
    "TLS certificate of 127.0.0.1:PORT not trusted: unable to get local issuer certificate "
    "(set api.ca_bundle, or list the endpoint in api.insecure_endpoints)",
    "200",
    "connections=2",  # one kept-alive connection per trusting transport (a failed handshake never serves)
]


@pytest.fixture
def ca_pem(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


async def test_tls_verified_untrusted_and_insecure(ca: trustme.CA, ca_pem: Path) -> None:
    assert await _tls_cases(ca, ca_pem) == EXPECTED_TLS


def test_tls_and_keep_alive_under_uvloop(ca: trustme.CA, ca_pem: Path) -> None:
    # `run` and `once` use uvloop, whose transports and TLS are its own.
    assert uvloop.run(_tls_cases(ca, ca_pem)) == EXPECTED_TLS


def test_plain_server_spoken_to_with_tls_is_a_handshake_error() -> None:
    async def main() -> str:
        async def bad_request(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")  # to the ClientHello
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(bad_request, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        t = KeepAliveTransport()
        try:
            await t.get(f"https://127.0.0.1:{port}", "/x", HEADERS, 5)
        except TransportError as exc:
            return str(exc).replace(str(port), "PORT")
        finally:
            await t.aclose()
            server.close()
            await server.wait_closed()
        return "no error"

    for run in (asyncio.run, uvloop.run):
        assert run(main()).startswith("TLS handshake with 127.0.0.1:PORT failed (")


# == which transport a Cloud uses ======================================================================


CLOUD = """
cloud: {project_id: p1, ak: A, sk: B, endpoint: "http://127.0.0.1:9"}
instances: [{id: i-1}]
channels: {audit: {type: webhook, url: "http://127.0.0.1:9/"}}
"""


@pytest.mark.parametrize(
    ("api", "env", "expected"),
    [
        ("", {}, KeepAliveTransport),
        ('api: {proxy: "http://127.0.0.1:3128"}\n', {}, AiohttpTransport),
        ("", {"HTTPS_PROXY": "http://127.0.0.1:3128"}, AiohttpTransport),
        ("", {"NO_PROXY": "localhost,.internal"}, KeepAliveTransport),  # names no proxy
    ],
)
async def test_cloud_uses_aiohttp_only_when_a_proxy_is_in_effect(
    api: str, env: dict[str, str], expected: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cloud = Cloud(parse_config(CLOUD + api, "t.yaml", {}))
    try:
        assert type(cloud.transport) is expected
        assert all(client._transport is cloud.transport for client in cloud.clients.values())
    finally:
        await cloud.aclose()


async def test_aiohttp_transport_answers_like_the_lean_one(
    serve: StartServer, transport: KeepAliveTransport
) -> None:
    answers = [
        body_answer(
            gzip.compress(b'{"a":1}'), "X-Request-Id: r-7", "Via: a", "Via: b", "Content-Encoding: gzip"
        ),
        b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n",
    ]
    server = await serve(scripted(lambda n, _h: answers[n % 2]))
    async with aiohttp.ClientSession() as session:
        via_aiohttp = [
            await AiohttpTransport(session).get(server.endpoint, "/x", HEADERS, 5) for _ in answers
        ]
    lean = [await transport.get(server.endpoint, "/x", HEADERS, 5) for _ in answers]

    def seen(answer: HttpAnswer) -> tuple[int, bytes, dict[str, str]]:
        wanted = ("x-request-id", "via", "retry-after")
        return answer.status, answer.body, {k: v for k, v in answer.headers.items() if k in wanted}

    assert (
        [seen(a) for a in via_aiohttp]
        == [seen(a) for a in lean]
        == [
            (200, b'{"a":1}', {"x-request-id": "r-7", "via": "a, b"}),
            (429, b"", {"retry-after": "3"}),
        ]
    )


async def test_aiohttp_transport_caps_answers(serve: StartServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "MAX_ANSWER_BYTES", 1000)
    server = await serve(scripted(always(body_answer(gzip.compress(b"x" * 5000), "Content-Encoding: gzip"))))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TransportError, match=f"{server.name} sent an answer larger than 0 MiB"):
            await AiohttpTransport(session).get(server.endpoint, "/x", HEADERS, 5)
