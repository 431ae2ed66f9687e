"""The DCS simulator in a process of its own: a lazily generated task history, and changes on demand.

Used by :mod:`bench.history_cost` and :mod:`bench.compare`, so that the simulator's CPU is not counted as
a client's. It serves ``--instances`` instances (``bench-0000``…) of project ``bench`` (AK/SK
``BENCHAK``/``BENCHSK``, signatures verified as the real API does), each with ``--history`` finished
tasks created evenly over [start - 7 days, start - 1 hour - 2 minutes], finished two minutes later.

The history is not materialised: all instances share one arithmetic layout (first creation time, step),
so a window query finds its index range by arithmetic and only the tasks of the page asked for are
built (ids ``sha256("{instance}:{n}")[:32]`` as the eager version had; times on whole milliseconds). That
keeps 10,000 instances × 10,000 tasks (10⁸ tasks) in a few megabytes, at a cost per request that does not
depend on the history. Tasks started later (changes, below) are ordinary simulator tasks, newer than any
history task, listed first.

Changes: a change toggles one instance — it starts an ``EXTEND`` task (``RUNNING``) when the instance has
none running, else finishes the running one (``SUCCESS``). Each change is recorded with the wall-clock
time (``time.time()``) it became visible, and the time of the first successful task-list answer for its
instance after that (``served_at``: the poll that could see it). ``--change-rate F`` (or the ``rate``
command) makes a fraction F of the instances change per second, spread over 10 ms ticks.

    .venv/bin/python -m bench.sim_server --instances 20 --history 10000 [--change-rate 0.01]

Prints the base URL on stdout as one line once it serves, then answers each line read on stdin with one
JSON line, and stops when stdin closes or on SIGTERM/SIGINT. Commands (stdin, or HTTP on the same port
for clients in other processes; these routes are not DCS routes: no signature, never counted):

* ``stats`` / ``GET /_bench/stats``: requests, task-list requests, response bytes, its CPU seconds, RSS;
* ``change K`` / ``POST /_bench/change?count=K``: K distinct random instances change now;
* ``rate F`` / ``POST /_bench/rate?per_second=F``: the change rate (fraction of instances per second);
* ``reset`` / ``POST /_bench/reset``: forget the recorded changes;
* ``changes``: every recorded change, ``{"changes": [[task_id, kind, instance_id, visible_at,
  served_at or null], ...]}`` with kind ``started`` or ``finished``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import resource
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from notifier.dcs.models import format_api_time
from notifier.devtools.simulator import Simulator
from notifier.devtools.simulator.app import ApiError, Handler

try:
    import orjson

    def _dumps(data: Any) -> bytes:
        return orjson.dumps(data)

except ImportError:  # pragma: no cover - orjson is a dev dependency

    def _dumps(data: Any) -> bytes:
        return json.dumps(data).encode()


PROJECT_ID = "bench"
AK = "BENCHAK"
SK = "BENCHSK"
OLDEST = timedelta(days=7)
NEWEST = timedelta(hours=1)
DURATION = timedelta(minutes=2)
CONTROL = "/_bench"
DEFAULT_LIMIT = 10
TICK_SECONDS = 0.01
#: The request log of the base simulator is cut back to nothing past this many entries (memory).
MAX_REQUEST_LOG = 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_QUERY_TIME = "%Y%m%d%H%M%S"


def cloud_config(base_url: str) -> dict[str, str]:
    """The ``cloud`` section of a config that polls this simulator at ``base_url``."""
    return {"endpoint": base_url, "project_id": PROJECT_ID, "ak": AK, "sk": SK}


def instance_ids(count: int) -> list[str]:
    return [f"bench-{i:04d}" for i in range(count)]


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class History:
    """``count`` finished tasks per instance, task n created at ``first_ms + n * step_ms`` (epoch ms)."""

    count: int
    first_ms: int
    step_ms: int

    @classmethod
    def before(cls, now: datetime, count: int) -> History:
        first = _ms(now - OLDEST)
        span = _ms(now - NEWEST - DURATION) - first
        return cls(count, first, span // (count - 1) if count > 1 else 0)

    def created_ms(self, n: int) -> int:
        return self.first_ms + n * self.step_ms

    def _first_at_or_after(self, ms: int) -> int:
        """The smallest n whose creation time is >= ms (0..count)."""
        if ms <= self.first_ms:
            return 0
        if self.step_ms == 0:
            return self.count
        return min(self.count, -(-(ms - self.first_ms) // self.step_ms))

    def window(self, start: datetime | None, end: datetime | None) -> tuple[int, int]:
        """Indices [lo, hi) of the tasks created in [start, end + 1 s) — the simulator's own filter."""
        lo = 0 if start is None else self._first_at_or_after(_ms(start))
        hi = self.count if end is None else self._first_at_or_after(_ms(end + timedelta(seconds=1)))
        return lo, max(lo, hi)

    def task(self, instance_id: str, n: int) -> dict[str, Any]:
        created = _EPOCH + timedelta(milliseconds=self.created_ms(n))
        return {
            "id": hashlib.sha256(f"{instance_id}:{n}".encode()).hexdigest()[:32],
            "name": "EXTEND",
            "user_name": "dcs_ops",
            "user_id": "d53977d1adfb49c5b025ba7d33a13fd7",
            "details": {"old_capacity": "0.125", "new_capacity": "0.25"},
            "enable_show": False,
            "status": "SUCCESS",
            "created_at": format_api_time(created),
            "updated_at": format_api_time(created + DURATION),
        }


@dataclass(slots=True)
class Change:
    task_id: str
    kind: str  # "started" or "finished"
    instance_id: str
    visible_at: float  # time.time() once the change is served
    served_at: float | None = None  # time.time() of the first task-list answer for the instance after it

    def row(self) -> list[Any]:
        return [self.task_id, self.kind, self.instance_id, self.visible_at, self.served_at]


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "DCS.4800", f"Invalid {name}: {raw!r} is not an integer.") from None
    if not low <= value <= high:
        raise ApiError(400, "DCS.4800", f"Invalid {name}: must be between {low} and {high}.")
    return value


def _time_param(query: Mapping[str, str], *names: str) -> datetime | None:
    for name in names:
        raw = query.get(name)
        if raw:
            try:
                if len(raw) != 14 or not raw.isdigit():
                    raise ValueError
                return datetime.strptime(raw, _QUERY_TIME).replace(tzinfo=UTC)
            except ValueError:
                raise ApiError(400, "DCS.4800", f"Invalid {name}: expected yyyyMMddHHmmss.") from None
    return None


class BenchSimulator(Simulator):
    """The simulator with a lazy shared history, counters, and recorded changes."""

    def __init__(self, instances: int, history: int, *, now: datetime | None = None, seed: int = 1) -> None:
        super().__init__(project_id=PROJECT_ID, credentials={AK: SK})
        self.history = History.before(now or datetime.now(UTC), history)
        self.ids = instance_ids(instances)
        for iid in self.ids:
            self.add_instance(iid, iid)
        self.answered = 0
        self.answered_tasks = 0
        self.body_bytes = 0
        self.changes: list[Change] = []
        self.rate = 0.0
        self._running: dict[str, str] = {}  # instance → its running task
        self._pending: dict[str, list[Change]] = {}  # instance → changes not yet served
        self._random = random.Random(seed)
        self._ticker: asyncio.Task[None] | None = None

    # -- HTTP ----------------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = super().make_app()
        app.middlewares.insert(0, self._count)  # outermost: sees every answer, errors included
        app.router.add_get(f"{CONTROL}/stats", self._http_stats)
        app.router.add_post(f"{CONTROL}/change", self._http_change)
        app.router.add_post(f"{CONTROL}/rate", self._http_rate)
        app.router.add_post(f"{CONTROL}/reset", self._http_reset)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.path.startswith(CONTROL):
            return response
        self.answered += 1
        if request.path.endswith("/tasks"):
            self.answered_tasks += 1
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            self.body_bytes += len(response.body)
        if len(self.requests) > MAX_REQUEST_LOG:
            self.requests.clear()
        return response

    async def _list_tasks(self, request: web.Request) -> web.Response:
        """List Background Tasks: live tasks (newest first), then the history, by index arithmetic."""
        instance_id = request.match_info["instance_id"]
        instance = self.instances.get(instance_id)
        if instance is None or instance.project_id != request.match_info["project_id"]:
            raise ApiError(404, "DCS.3022", "instance does not exist")
        query = request.query
        offset = _int_param(query, "offset", 0, 0, 2**31 - 1)
        limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, self.max_limit)
        start = _time_param(query, "start_time", "begin_time")
        end = _time_param(query, "end_time")
        live = self.list_tasks(instance_id, start, end)
        lo, hi = self.history.window(start, end)
        page = live[offset : offset + limit]
        first = max(0, offset - len(live))  # position in the history, newest first
        last = min(hi - lo, offset + limit - len(live))
        page.extend(self.history.task(instance_id, hi - 1 - p) for p in range(first, last))
        pending = self._pending.pop(instance_id, None)
        if pending:
            now = time.time()
            for change in pending:
                change.served_at = now
        body = _dumps({"task_count": len(live) + hi - lo, "tasks": page})
        return web.Response(body=body, content_type="application/json")

    async def _http_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _http_change(self, request: web.Request) -> web.Response:
        count = _int_param(request.query, "count", 1, 0, len(self.ids))
        return web.json_response({"changed": self.change(count)})

    async def _http_rate(self, request: web.Request) -> web.Response:
        self.set_rate(float(request.query.get("per_second", "0")))
        return web.json_response({"rate": self.rate})

    async def _http_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"changes": 0})

    # -- changes -------------------------------------------------------------------------------------

    def change(self, count: int) -> int:
        """``count`` distinct random instances start or finish a task now; returns how many changed."""
        for instance_id in self._random.sample(self.ids, min(count, len(self.ids))):
            running = self._running.pop(instance_id, None)
            if running is None:
                task_id = self.start_task(
                    instance_id, "EXTEND", details={"old_capacity": "0.125", "new_capacity": "0.25"}
                )
                self._running[instance_id] = task_id
                kind = "started"
            else:
                self.finish_task(instance_id, running)
                task_id, kind = running, "finished"
            record = Change(task_id, kind, instance_id, time.time())
            self.changes.append(record)
            self._pending.setdefault(instance_id, []).append(record)
        return min(count, len(self.ids))

    def set_rate(self, per_second: float) -> None:
        """A fraction ``per_second`` of the instances changes each second (0: none)."""
        self.rate = max(0.0, per_second)
        if self.rate > 0 and self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        elif self.rate == 0 and self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _tick(self) -> None:
        due = 0.0
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            due += self.rate * len(self.ids) * (now - last)
            last = now
            if due >= 1:
                due -= self.change(int(due))

    def reset(self) -> None:
        self.changes = []
        self._pending.clear()

    def stats(self) -> dict[str, float | int]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "requests": self.answered,
            "task_requests": self.answered_tasks,
            "body_bytes": self.body_bytes,
            "changes": len(self.changes),
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "rss_mib": round(usage.ru_maxrss / 1024, 1),
        }

    async def stop(self) -> None:
        self.set_rate(0)
        await super().stop()


def build(instances: int, history: int) -> BenchSimulator:
    return BenchSimulator(instances, history)


def answer(sim: BenchSimulator, line: str) -> dict[str, Any]:
    """One stdin command's answer."""
    command, _, argument = line.strip().partition(" ")
    if command == "stats":
        return dict(sim.stats())
    if command == "changes":
        return {"changes": [c.row() for c in sim.changes]}
    if command == "change":
        return {"changed": sim.change(int(argument or "1"))}
    if command == "rate":
        sim.set_rate(float(argument or "0"))
        return {"rate": sim.rate}
    if command == "reset":
        sim.reset()
        return {"changes": 0}
    return {"error": f"unknown command {command!r}"}


async def answer_stdin(sim: BenchSimulator) -> None:
    """Answer command lines until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip():
            sys.stdout.buffer.write(_dumps(answer(sim, line.decode())) + b"\n")
            sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    sim = build(args.instances, args.history)
    print(await sim.start(args.host, args.port), flush=True)
    if args.change_rate:
        sim.set_rate(args.change_rate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stdin = asyncio.create_task(answer_stdin(sim))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stdin, stopped], return_when=asyncio.FIRST_COMPLETED)
        if stdin.done():
            stdin.result()  # stdin closed; raises what went wrong reading it, if anything
    finally:
        for task in (stdin, stopped):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--history", type=int, default=10_000, help="finished tasks per instance")
    parser.add_argument(
        "--change-rate", type=float, default=0.0, help="fraction of instances changing per second"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
