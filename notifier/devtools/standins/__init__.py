"""Local stand-ins of the outside world a channel talks to: aiohttp servers on 127.0.0.1.

Used by the tests and by ``dcs-notifier demo``. Each stand-in records every request it receives, can be
programmed to misbehave (a queue of canned answers, or a policy callable consulted per request) and lets a
test wait for requests without sleeping::

    async with SlackStandIn() as slack:
        slack.enqueue(CannedResponse(429, "rate_limited", {"Retry-After": "2"}))
        ...
        first, second = await slack.wait_for(2)

A hostile receiver's answer: ``CannedResponse(200, Flood(300 * 2**20))`` streams 300 MB made on the fly
(never held in memory); :attr:`StandInServer.floods` says how much was written before the client hung up.

Specific stand-ins live in :mod:`notifier.devtools.standins.slack` and
:mod:`notifier.devtools.standins.webhook`; this module holds what they share.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Flood:
    """A body of ``size`` bytes written chunk by chunk as the client reads (``head``, then ``fill`` repeated),
    with a ``Content-Length`` when ``declare_length``, else chunked: a receiver answering without end.
    ``stall``: send the status line, the headers and ``head``, then nothing more until the stand-in stops."""

    size: int
    declare_length: bool = False
    head: bytes = b""
    fill: bytes = b"x"
    chunk: int = 64 * 1024
    content_type: str = "application/json"
    stall: bool = False


@dataclass(frozen=True, slots=True)
class FloodReport:
    """How one :class:`Flood` answer ended: bytes handed to the socket, and whether all of them were."""

    written: int
    complete: bool


@dataclass(frozen=True, slots=True)
class CannedResponse:
    """An answer to give instead of the normal one. ``delay`` holds the answer back (a slow server)."""

    status: int = 200
    body: str | bytes | Mapping[str, Any] | Flood | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def to_response(self) -> web.StreamResponse:
        headers = dict(self.headers)
        if isinstance(self.body, Flood):
            headers.setdefault("Content-Type", self.body.content_type)
            return web.StreamResponse(status=self.status, headers=headers)
        if isinstance(self.body, Mapping):
            return web.Response(
                status=self.status,
                body=json.dumps(dict(self.body)).encode(),
                headers=headers,
                content_type="application/json",
            )
        if isinstance(self.body, bytes):
            return web.Response(status=self.status, body=self.body, headers=headers)
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body, headers=headers)
        return web.Response(status=self.status, headers=headers)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as received, and the status it was answered with."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    status: int
    #: Signature check result (webhook receiver with a secret), else ``None``.
    verified: bool | None = None
    #: ``time.monotonic()`` when the request arrived.
    received_at: float = field(default_factory=time.monotonic)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def header(self, name: str) -> str | None:
        """A header by case-insensitive name."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


#: Consulted for each request when no canned answer is queued: ``(request number from 1, path)`` → answer
#: or ``None`` for the normal behaviour.
Policy = Callable[[int, str], CannedResponse | None]
#: How a stand-in answers a request when no fault applies: (response, signature verified or None).
NormalAnswer = Callable[[web.Request, bytes, Any], tuple[web.Response, bool | None]]
#: Called with each recorded request (the demo prints them). May be a coroutine function.
OnMessage = Callable[[RecordedRequest], Awaitable[None] | None]


def every_nth(n: int, response: CannedResponse) -> Policy:
    """A policy answering every ``n``-th request (n, 2n, 3n...) with ``response``."""
    if n < 1:
        raise ValueError("n must be at least 1")

    def policy(number: int, path: str) -> CannedResponse | None:
        return response if number % n == 0 else None

    return policy


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


class StandInServer(abc.ABC):
    """Shared machinery: start/stop, recording, fault programming, ``wait_for``."""

    def __init__(self, *, policy: Policy | None = None, on_message: OnMessage | None = None) -> None:
        self.requests: list[RecordedRequest] = []
        #: One report per :class:`Flood` answer, once it ended (written out, or the client hung up).
        self.floods: list[FloodReport] = []
        self.policy = policy
        self.on_message = on_message
        self._faults: deque[CannedResponse] = deque()
        self._received = 0
        self._changed = asyncio.Condition()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    # --- programming -------------------------------------------------------------------------------------

    def enqueue(self, *responses: CannedResponse) -> None:
        """Answer the next requests with these, in order (before any policy)."""
        self._faults.extend(responses)

    def clear_faults(self) -> None:
        self._faults.clear()
        self.policy = None

    def _next_fault(self, number: int, path: str) -> CannedResponse | None:
        if self._faults:
            return self._faults.popleft()
        if self.policy is not None:
            return self.policy(number, path)
        return None

    # --- lifecycle ---------------------------------------------------------------------------------------

    @abc.abstractmethod
    def routes(self) -> list[web.RouteDef]:
        """The routes of this stand-in."""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen (port 0: any free port) and return the base URL, e.g. ``http://127.0.0.1:54321``."""
        if self._runner is not None:
            raise RuntimeError("already started")
        app = web.Application()
        app.add_routes(self.routes())
        runner = web.AppRunner(app, access_log=None)  # paths may be secrets (Slack webhook URLs)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._release.clear()
        bound = runner.addresses[0]
        self._base_url = f"http://{host}:{bound[1]}"
        return self._base_url

    async def stop(self) -> None:
        """Stop listening; requests held back by a ``delay`` are answered at once. Safe to call twice."""
        self._release.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("stand-in not started")
        return self._base_url

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    # --- recording ---------------------------------------------------------------------------------------

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:  # noqa: ASYNC109
        """Wait until at least ``count`` requests were received; return (a copy of) all of them."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: len(self.requests) >= count), timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"{type(self).__name__}: expected {count} request(s) within {timeout} s, "
                    f"got {len(self.requests)}"
                ) from None
            return list(self.requests)

    def next_number(self) -> int:
        """The 1-based number of the request being handled (for the policy)."""
        self._received += 1
        return self._received

    async def record(self, recorded: RecordedRequest) -> None:
        async with self._changed:
            self.requests.append(recorded)
            self._changed.notify_all()
        if self.on_message is not None:
            try:
                result = self.on_message(recorded)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_message callback failed")

    async def hold(self, delay: float) -> None:
        """Hold an answer back for ``delay`` seconds, or until the stand-in stops."""
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), delay)

    async def flood(self, request: web.Request, response: web.StreamResponse, flood: Flood) -> None:
        """Stream ``flood`` as the body of ``response`` until it is all written or the client hangs up."""
        if flood.declare_length:
            response.content_length = flood.size
        else:
            response.enable_chunked_encoding()
        block = (flood.fill * (flood.chunk // max(1, len(flood.fill)) + 1))[: flood.chunk]
        written = 0
        try:
            await response.prepare(request)
            piece = flood.head[: flood.size]
            while written < flood.size:
                await response.write(piece)
                written += len(piece)
                if flood.stall:
                    await self._release.wait()  # until the stand-in stops; the body stays unfinished
                    return
                piece = block[: flood.size - written]
            await response.write_eof()
        except ConnectionError:
            pass  # the client hung up: that is the point
        finally:
            self.floods.append(FloodReport(written, written >= flood.size))

    async def answer(self, request: web.Request, normal: NormalAnswer) -> web.StreamResponse:
        """Read the request, pick a canned or the normal answer, record, hold back if asked, answer."""
        body = await request.read()
        parsed = parse_json(body)
        number = self.next_number()
        fault = self._next_fault(number, request.path)
        verified: bool | None = None
        if fault is not None:
            response = fault.to_response()
        else:
            response, verified = normal(request, body, parsed)
        await self.record(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers=dict(request.headers),
                body=body,
                json=parsed,
                status=response.status,
                verified=verified,
            )
        )
        if fault is not None:
            await self.hold(fault.delay)
            if isinstance(fault.body, Flood):
                await self.flood(request, response, fault.body)
        return response
