"""The DCS simulator in a process of its own, with a long, old task history on every instance.

Used by :mod:`bench.history_cost`, so that the simulator's CPU (it scans every task of an instance on
each request) is not counted as the poller's. Each of ``--instances`` instances gets ``--history``
finished tasks, created evenly over [now - 7 days, now - 1 hour] and finished two minutes later.

    .venv/bin/python -m bench.sim_server --instances 20 --history 10000

Prints the base URL on stdout as one line once it serves, then answers each ``stats`` line read on
stdin with one JSON line (requests and response bytes served so far, its own CPU seconds), and stops
when stdin closes or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import resource
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from notifier.dcs.models import format_api_time
from notifier.dcs.simulator import Simulator
from notifier.dcs.simulator.app import Handler

PROJECT_ID = "bench"
AK = "BENCHAK"
SK = "BENCHSK"
OLDEST = timedelta(days=7)
NEWEST = timedelta(hours=1)
DURATION = timedelta(minutes=2)


def instance_ids(count: int) -> list[str]:
    return [f"bench-{i:04d}" for i in range(count)]


class CountingSimulator(Simulator):
    """The simulator, counting every request it answers and the bytes of the response bodies."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answered = 0
        self.body_bytes = 0

    def make_app(self) -> web.Application:
        app = super().make_app()
        app.middlewares.insert(0, self._count)  # outermost: sees every answer, errors included
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        self.answered += 1
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            self.body_bytes += len(response.body)
        return response

    def stats(self) -> dict[str, float | int]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "requests": self.answered,
            "task_requests": len(self.task_requests()),
            "body_bytes": self.body_bytes,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
        }


def add_history(sim: Simulator, instance_id: str, history: int, now: datetime) -> None:
    """``history`` finished tasks, created evenly over [now - OLDEST, now - NEWEST - DURATION], oldest first.

    Added with ``add_raw_task`` (fields laid out as ``start_task`` does): ``start_task`` + ``finish_task``
    look the task up by a linear scan, which makes building 10,000 tasks quadratic (minutes).
    """
    first = now - OLDEST
    span = (now - NEWEST - DURATION) - first
    step = span / (history - 1) if history > 1 else timedelta(0)
    for n in range(history):
        created = first + step * n
        task_id = hashlib.sha256(f"{instance_id}:{n}".encode()).hexdigest()[:32]
        sim.add_raw_task(
            instance_id,
            {
                "id": task_id,
                "name": "EXTEND",
                "user_name": "dcs_ops",
                "user_id": "d53977d1adfb49c5b025ba7d33a13fd7",
                "details": {"old_capacity": "0.125", "new_capacity": "0.25"},
                "enable_show": False,
                "status": "SUCCESS",
                "created_at": format_api_time(created),
                "updated_at": format_api_time(created + DURATION),
            },
        )


def build(instances: int, history: int) -> CountingSimulator:
    sim = CountingSimulator(project_id=PROJECT_ID, credentials={AK: SK})
    now = datetime.now(UTC)
    for iid in instance_ids(instances):
        sim.add_instance(iid, iid)
        add_history(sim, iid, history, now)
    return sim


async def answer_stdin(sim: CountingSimulator) -> None:
    """Answer ``stats`` lines until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"stats":
            print(json.dumps(sim.stats()), flush=True)


async def serve(args: argparse.Namespace) -> None:
    sim = build(args.instances, args.history)
    print(await sim.start(args.host, args.port), flush=True)
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
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
