"""The DCS client on the wire (aiohttp) against raw loopback servers: keep-alive, stale connections,
timeouts, TLS, oversized answers, and errors that name the endpoint but never carry the signed query.

Every server is a real asyncio server on 127.0.0.1 whose handler scripts the raw bytes
(:mod:`tests.support.loopback_http`); tests wait on conditions with a deadline, never on bare sleeps.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvloop

from notifier.dcs import endpoint as endpoint_module
from notifier.dcs.client import DcsClient
from notifier.errors import DcsApiError, Reason
from notifier.net.session import Http, make_http
from tests.support.loopback_http import HANG, Answer, LoopbackServer, StartServer, always, scripted
from tests.support.wait import until

EMPTY = b'{"task_count": 0, "tasks": []}'
START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(hours=1)


def answer(body: bytes = EMPTY, *extra: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{line}\r\n" for line in (f"Content-Length: {len(body)}", *extra))
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


OK = answer()


@pytest.fixture
async def http() -> AsyncIterator[Http]:
    async with make_http() as made:
        yield made


def dcs(endpoint: str, http: Http | None = None, *, timeout: float = 5.0) -> DcsClient:
    return DcsClient(endpoint=endpoint, project_id="p1", ak="AK1", sk="SK1", http=http, timeout=timeout)


async def poll(client: DcsClient, instance: str = "i-1") -> list[Any]:
    return list(await client.list_tasks(instance, START, END))


async def failure(client: DcsClient) -> DcsApiError:
    with pytest.raises(DcsApiError) as info:
        await poll(client)
    return info.value


def path_of(head: bytes) -> bytes:
    return head.split(b" ")[1]


# == keep-alive and stale connections ==================================================================


async def test_polls_share_one_kept_alive_connection_and_send_what_was_signed(
    serve: StartServer, http: Http
) -> None:
    server = await serve(scripted(always(OK)))
    async with dcs(server.endpoint, http) as client:
        for n in range(5):
            assert await poll(client, f"i-{n}") == []
    assert server.connections == 1
    head = server.heads[3].decode("latin-1")
    assert head.startswith("GET /v2/p1/instances/i-3/tasks?end_time=20260101010000&limit=100&offset=0&")
    assert f"\r\nHost: 127.0.0.1:{server.port}\r\n" in head
    assert "\r\nAuthorization: SDK-HMAC-SHA256 Access=AK1, " in head
    assert "\r\nUser-Agent: dcs-notifier/" in head


async def test_a_kept_alive_connection_the_server_closed_is_replaced_once_transparently(
    serve: StartServer, http: Http
) -> None:
    # The server answers and then closes without saying so (an idle timeout on its side).
    server = await serve(scripted(lambda _n, _h: (OK, "close")))
    async with dcs(server.endpoint, http) as client:
        await poll(client, "a")
        await until(lambda: server.ended_by_client + server.connections >= 1, 5, "the first answer")
        await poll(client, "b")
    assert server.connections == 2
    assert [path_of(h).split(b"?")[0] for h in server.heads] == [
        b"/v2/p1/instances/a/tasks",
        b"/v2/p1/instances/b/tasks",  # sent once, on the new connection
    ]


async def test_after_a_server_restart_the_next_poll_goes_to_a_new_connection(
    serve: StartServer, http: Http
) -> None:
    # Three kept-alive connections, all closed by the server after their answer (as a restart does): the
    # client notices while they are idle, and the next poll is sent once, on a new connection.
    server = await serve(scripted(lambda n, _h: (OK, "close") if n < 3 else OK))
    async with dcs(server.endpoint, http) as client:
        await asyncio.gather(*(poll(client, f"i-{n}") for n in range(3)))
        await until(lambda: server.connections == 3, 5, "three connections")
        assert await poll(client, "after") == []
    assert server.connections == 4
    assert len(server.heads) == 4


async def test_connection_close_is_honoured(serve: StartServer, http: Http) -> None:
    server = await serve(scripted(always((answer(EMPTY, "Connection: close"), "keep"))))
    async with dcs(server.endpoint, http) as client:
        for _ in range(3):
            await poll(client)
    assert server.connections == 3


# == bodies =============================================================================================


async def test_chunked_and_compressed_answers(serve: StartServer, http: Http) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + (
        f"{len(EMPTY):x}\r\n".encode() + EMPTY + b"\r\n0\r\n\r\n"
    )
    answers = [chunked, answer(gzip.compress(EMPTY), "Content-Encoding: gzip")]
    server = await serve(scripted(lambda n, _h: answers[n]))
    async with dcs(server.endpoint, http) as client:
        assert await poll(client) == []
        assert await poll(client) == []
    assert server.connections == 1


async def test_oversized_answers_fail_even_when_compressed(
    serve: StartServer, http: Http, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoint_module, "MAX_ANSWER_BYTES", 1000)
    big = b'{"task_count": 0, "tasks": [], "pad": "' + b"x" * 5000 + b'"}'
    answers = [
        answer(big),
        answer(gzip.compress(big), "Content-Encoding: gzip"),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(big):x}\r\n".encode()
        + big
        + b"\r\n0\r\n\r\n",
    ]
    server = await serve(scripted(lambda n, _h: answers[n]))
    async with dcs(server.endpoint, http) as client:
        for _ in answers:
            err = await failure(client)
            assert err.reason is Reason.CONNECTION and err.retryable
            assert str(err).endswith(f"{server.name} sent an answer larger than 0 MiB")


# == failures ===========================================================================================


async def test_truncated_malformed_and_missing_answers_are_retryable_and_never_quote_the_query(
    serve: StartServer, http: Http
) -> None:
    answers: list[Answer] = [
        (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"tas', "close"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "close"),
        answer(b"not gzip at all", "Content-Encoding: gzip"),
        (b"", "close"),  # closed without answering: a GET, sent once more by aiohttp...
        (b"", "close"),  # ...and then reported
        OK,
    ]
    server = await serve(scripted(lambda n, _h: answers[n]))
    async with dcs(server.endpoint, http) as client:
        errors = [str(await failure(client)).split(": ", 1)[1] for _ in range(4)]
        assert await poll(client) == []
    name = server.name
    assert errors == [
        f"{name} sent a malformed or truncated body",
        f"{name} sent a malformed HTTP answer",
        f"{name} sent a malformed or truncated body",
        f"{name} closed the connection before answering",
    ]
    assert len(server.heads) == len(answers)


async def test_failures_are_retryable_and_never_quote_the_signed_query(
    serve: StartServer, http: Http
) -> None:
    answers: list[Answer] = [(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{", "close"), b"garbage\r\n\r\n"]
    server = await serve(scripted(lambda n, _h: answers[n]))
    async with dcs(server.endpoint, http) as client, dcs("http://127.0.0.1:9", http) as refused:
        errors = [await failure(client), await failure(client), await failure(refused)]
    for err in errors:
        assert err.reason is Reason.CONNECTION and err.retryable, err
        assert "Signature" not in str(err) and "offset" not in str(err) and "/v2/" not in str(err), err


async def test_no_answer_times_out_and_the_next_poll_uses_a_new_connection(
    serve: StartServer, http: Http
) -> None:
    server = await serve(scripted(lambda n, _h: HANG if n == 0 else OK))
    async with dcs(server.endpoint, http, timeout=0.2) as client:
        err = await failure(client)
        assert (err.reason, str(err).endswith("no answer within 0.2 s")) == (Reason.TIMEOUT, True)
        await until(lambda: server.ended_by_client == 1, 5, "the timed-out connection closed")
        assert await poll(client) == []
    assert server.connections == 2


async def test_the_deadline_covers_a_slow_body_and_a_tls_handshake_that_never_ends(
    serve: StartServer, http: Http
) -> None:
    async def slow_body(
        server: LoopbackServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        await server.until_client_ends(reader)

    async def mute(server: LoopbackServer, reader: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        await server.until_client_ends(reader)  # takes the ClientHello, never answers it

    body_server = await serve(slow_body)
    tls_server = await serve(mute)
    loop = asyncio.get_running_loop()
    for endpoint in (body_server.endpoint, tls_server.endpoint.replace("http:", "https:")):
        started = loop.time()
        async with dcs(endpoint, http, timeout=0.3) as client:
            assert (await failure(client)).reason is Reason.TIMEOUT
        assert loop.time() - started < 3
    await until(lambda: body_server.ended_by_client == tls_server.ended_by_client == 1, 5, "both closed")


async def test_a_cancelled_poll_does_not_leave_its_connection_in_the_pool(
    serve: StartServer, http: Http
) -> None:
    server = await serve(scripted(lambda n, _h: HANG if n == 0 else OK))
    async with dcs(server.endpoint, http, timeout=30) as client:
        pending = asyncio.ensure_future(poll(client))
        await until(lambda: len(server.heads) == 1, 5, "the request to arrive")
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert await poll(client) == []
    assert server.connections == 2
    await until(lambda: server.ended_by_client == 1, 5, "the cancelled connection closed")


async def test_throttling_answer_headers_are_read(serve: StartServer, http: Http) -> None:
    body = b'{"error_code": "DCS.4049", "error_msg": "slow down"}'
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    answers = [
        answer(body, "Retry-After: 3", "X-Request-Id: r-9", status="429 Too Many Requests"),
        answer(body, f"Retry-After: {in_a_minute}", status="429 Too Many Requests"),  # the HTTP-date form
    ]
    server = await serve(scripted(lambda n, _h: answers[n]))
    errors = []
    for _ in answers:  # a client each: a Retry-After holds its endpoint's requests for that long
        async with dcs(server.endpoint, http) as client:
            errors.append(await failure(client))
    first, second = errors
    assert (first.reason, first.retry_after, first.request_id, first.error_code) == (
        Reason.RATE_LIMITED,
        3.0,
        "r-9",
        "DCS.4049",
    )
    assert second.retry_after is not None and 50 < second.retry_after <= 60


# == TLS, under asyncio's loop and uvloop ==============================================================


def _server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


async def _tls_cases(ca: trustme.CA, ca_pem: Path) -> list[str]:
    """Two polls each over TLS: trusted through the bundle, untrusted without it, unverified when listed."""
    server = await LoopbackServer(scripted(always(OK)), tls=_server_tls(ca)).start()
    outcomes = []
    try:
        for settings in ({"ca_bundle": ca_pem}, {}, {"insecure_hosts": [f"127.0.0.1:{server.port}"]}):
            async with make_http(**settings) as http, dcs(server.endpoint, http) as client:  # type: ignore[arg-type]
                try:
                    for _ in range(2):
                        await poll(client)
                    outcomes.append("ok")
                except DcsApiError as exc:
                    outcomes.append(str(exc).split(": ", 1)[1])
    finally:
        await server.stop()
    return [o.replace(str(server.port), "PORT") for o in outcomes] + [f"connections={server.connections}"]


EXPECTED_TLS = [
    "ok",
    "TLS certificate of 127.0.0.1:PORT not trusted: unable to get local issuer certificate "
    "(set api.ca_bundle, or list the endpoint in api.insecure_endpoints)",
    "ok",
    "connections=2",  # one kept-alive connection per trusting client (a failed handshake never serves)
]


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
        try:
            async with dcs(f"https://127.0.0.1:{port}") as client:
                err = await failure(client)
            return str(err).split(": ", 1)[1].replace(str(port), "PORT")
        finally:
            server.close()
            await server.wait_closed()

    runners: list[Callable[[Coroutine[Any, Any, str]], str]] = [asyncio.run, uvloop.run]
    for run in runners:
        assert run(main()).startswith("TLS handshake with 127.0.0.1:PORT failed (")
