"""The DCS simulator's HTTP side: an aiohttp app serving the List Background Tasks and List Instances APIs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from aiohttp import web

from notifier.dcs.signer import SignatureError, SignatureProblem, verify
from notifier.dcs.simulator.scenario import Scenario, Sleep, run_scenario
from notifier.dcs.simulator.state import (
    Clock,
    RecordedRequest,
    SimulatorState,
    error_body,
    wall_clock,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TASKS_PATH = "/v2/{project_id}/instances/{instance_id}/tasks"
INSTANCES_PATH = "/v2/{project_id}/instances"
DEFAULT_LIMIT = 10
QUERY_TIME_FORMAT = "%Y%m%d%H%M%S"

_AUTH_ERRORS: dict[SignatureProblem, tuple[str, str]] = {
    SignatureProblem.MISSING: ("DCS.1003", "Authentication information is missing."),
    SignatureProblem.MALFORMED: ("DCS.1001", "Invalid authentication information: malformed signature."),
    SignatureProblem.UNKNOWN_AK: ("DCS.1001", "Invalid authentication information: unknown access key."),
    SignatureProblem.MISMATCH: ("DCS.1001", "Invalid authentication information: signature mismatch."),
    SignatureProblem.EXPIRED: ("DCS.1002", "The request has expired: X-Sdk-Date is out of range."),
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return web.json_response(error_body(self.code, self.message), status=self.status)


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "DCS.4800", message)  # simulator's choice: the real 400 code is undocumented


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"Invalid {name}: {raw!r} is not an integer.") from None
    if not low <= value <= high:
        raise _bad_request(f"Invalid {name}: must be between {low} and {high}.")
    return value


def _time_param(request: web.Request, *names: str) -> datetime | None:
    for name in names:
        raw = request.query.get(name)
        if raw:
            try:
                if len(raw) != 14 or not raw.isdigit():
                    raise ValueError
                return datetime.strptime(raw, QUERY_TIME_FORMAT).replace(tzinfo=UTC)
            except ValueError:
                raise _bad_request(f"Invalid {name}: expected yyyyMMddHHmmss.") from None
    return None


class Simulator(SimulatorState):
    """A faithful local stand-in for the DCS API, driven from Python.

    >>> async with Simulator(project_id="pid", credentials={"AK": "SK"}) as sim:
    ...     sim.add_instance("iid", "orders-cache")
    ...     task_id = sim.start_task("iid", "EXTEND", details={"old_capacity": "0.125"})
    ...     # sim.base_url → http://127.0.0.1:PORT
    """

    def __init__(
        self,
        *,
        project_id: str,
        credentials: Mapping[str, str],
        clock: Clock = wall_clock,
        task_count_as_string: bool = False,
        omit_unfinished_updated_at: bool = False,
        max_limit: int = 1000,
        max_clock_skew: timedelta | None = timedelta(minutes=15),
        verify_signatures: bool = True,
    ) -> None:
        super().__init__(
            project_id=project_id,
            credentials=credentials,
            clock=clock,
            task_count_as_string=task_count_as_string,
            omit_unfinished_updated_at=omit_unfinished_updated_at,
        )
        self.max_limit = max_limit
        self.max_clock_skew = max_clock_skew
        self.verify_signatures = verify_signatures
        self.base_url: str | None = None
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()

    # --- lifecycle ----------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get(TASKS_PATH, self._list_tasks)
        app.router.add_get(INSTANCES_PATH, self._list_instances)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port); returns the base URL."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._closing = asyncio.Event()
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_port = runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        self._closing.set()  # releases delayed responses
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background until it ends or :meth:`stop` cancels it."""

        async def run() -> Any:
            return await coro

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def play(
        self, scenario: Scenario, *, speed: float = 1.0, sleep: Sleep = asyncio.sleep, repeat: bool = False
    ) -> asyncio.Task[Any]:
        """Play ``scenario`` in the background (see :func:`run_scenario`); :meth:`stop` cancels it."""
        return self.spawn(run_scenario(self, scenario, speed=speed, sleep=sleep, repeat=repeat))

    # --- HTTP ---------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query_pairs=list(request.query.items()),
            headers=dict(request.headers),
            instance_id=request.match_info.get("instance_id"),
        )
        self.requests.append(record)
        try:
            response = await self._dispatch(request, handler, record.instance_id)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPException as exc:  # unknown route or method
            response = web.json_response(
                error_body("DCS.4001", f"The requested URL was not found: {exc.reason}."), status=exc.status
            )
        response.headers.setdefault("X-Request-Id", uuid.uuid4().hex)
        record.status = response.status
        self.notify()
        return response

    async def _dispatch(
        self, request: web.Request, handler: Handler, instance_id: str | None
    ) -> web.StreamResponse:
        if request.match_info.http_exception is not None:  # no such route: 404/405, no fault, no auth
            return await handler(request)
        fault = self.take_fault(instance_id)
        if fault is not None and fault.delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.delay)
        if fault is not None and fault.body is not None:
            return web.Response(status=fault.status, body=fault.body, headers=dict(fault.headers))
        await self._authenticate(request)
        return await handler(request)

    async def _authenticate(self, request: web.Request) -> None:
        if not self.verify_signatures:
            return
        body = await request.read()
        try:
            verify(
                request.method,
                request.rel_url.raw_path,
                list(request.query.items()),
                request.headers,
                body,
                self.lookup_sk,
                max_skew=self.max_clock_skew,
            )
        except SignatureError as exc:
            code, message = _AUTH_ERRORS[exc.problem]
            raise ApiError(401, code, message) from None
        project_id = request.match_info["project_id"]
        header_project = request.headers.get("X-Project-Id")
        if project_id != self.project_id or (header_project is not None and header_project != project_id):
            raise ApiError(401, "DCS.1004", "The project ID does not match the token.")

    async def _list_tasks(self, request: web.Request) -> web.Response:
        instance_id = request.match_info["instance_id"]
        if instance_id not in self.instances:
            raise ApiError(404, "DCS.3022", "instance does not exist")
        offset = _int_param(request, "offset", 0, 0, 2**31 - 1)
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, self.max_limit)
        start = _time_param(request, "start_time", "begin_time")
        end = _time_param(request, "end_time")
        tasks = self.list_tasks(instance_id, start, end)
        count: int | str = str(len(tasks)) if self.task_count_as_string else len(tasks)
        return _json({"task_count": count, "tasks": tasks[offset : offset + limit]})

    async def _list_instances(self, request: web.Request) -> web.Response:
        offset = _int_param(request, "offset", 0, 0, 2**31 - 1)
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, 1000)
        name = request.query.get("name")
        status = request.query.get("status")
        picked = [
            instance.to_api()
            for instance in self.instances.values()
            if (not name or name in instance.name) and (not status or instance.status == status)
        ]
        return _json({"instance_num": len(picked), "instances": picked[offset : offset + limit]})


def _json(data: Any) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), content_type="application/json")
