"""Issue 10's figures: what a hostile DCS API costs the notifier, against a server that lies on purpose.

1. **Failing pagers.** Four instances each list ``--tasks`` tasks (100,000) and fail on the last page:
   the tasks still alive once the polls are over (their outcomes in hand, as ``once`` keeps them), and
   the memory Python still holds then, and at its peak (``tracemalloc``; RSS would mostly show how the
   allocator keeps freed pages).
2. **A lying API.** Requests one poll makes when the API counts 10⁹ tasks and repeats its first page for
   every offset, and when it counts 5,000 but repeats its page.
3. **A big baseline.** One poll baselines an instance with ``--running`` tasks in progress (9,000): the
   longest transaction Redis ran for it (its SLOWLOG: Redis serves nobody else meanwhile), how many,
   and the longest stall of the event loop (a 5 ms ticker's largest gap).

The server runs in a process of its own (its memory is not the client's); Redis is a ``redis-server`` of
the bench's own. Prints a table and writes ``bench/results/hostile_api.json``. It only uses APIs the
notifier had before issue 10, so the same file measures the code before the change too (run it from a
checkout of the earlier commit)::

    .venv/bin/python -m bench.hostile_api [--tasks 100000] [--running 9000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.config.models import PollConfig
from notifier.dcs.models import Task, format_api_time
from tests.support.redis_server import RedisServer

PROJECT = "hostile"
PAGERS = [f"pager-{n}" for n in range(4)]


def _task(tid: str, created: datetime, status: str = "SUCCESS") -> dict[str, Any]:
    stamp = format_api_time(created)
    return {"id": tid, "name": "EXTEND", "status": status, "created_at": stamp,
            "updated_at": stamp if status == "SUCCESS" else ""}  # fmt: skip


class Liar:
    """The hostile server: pages made on the fly, per instance."""

    def __init__(self, tasks: int, running: int) -> None:
        self.tasks = tasks
        self.running = running
        self.requests: dict[str, int] = {}
        self.created = datetime.now(UTC) - timedelta(minutes=10)

    def page(self, instance: str, offset: int, limit: int) -> dict[str, Any]:
        if instance.startswith("pager-"):  # N tasks; the last page is malformed (a task without id)
            n = max(0, min(limit, self.tasks - offset))
            page = [_task(f"{instance}-{offset + k}", self.created) for k in range(n)]
            if offset + limit >= self.tasks:
                page.append({"id": "", "status": "SUCCESS"})
            return {"task_count": self.tasks + 1, "tasks": page}
        if instance in ("liar", "repeater"):  # the first page for every offset
            page = [_task(f"{instance}-{k}", self.created) for k in range(limit)]
            return {"task_count": 10**9 if instance == "liar" else 5_000, "tasks": page}
        n = max(0, min(limit, self.running - offset))  # "busy": tasks in progress, a baseline's worth
        page = [_task(f"busy-{offset + k}", self.created, "RUNNING") for k in range(n)]
        return {"task_count": self.running, "tasks": page}

    async def handle(self, request: web.Request) -> web.Response:
        instance = request.match_info["instance"]
        self.requests[instance] = self.requests.get(instance, 0) + 1
        q = request.query
        body = self.page(instance, int(q.get("offset", "0")), int(q.get("limit", "100")))
        return web.Response(body=json.dumps(body).encode(), content_type="application/json")

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)


async def serve(tasks: int, running: int) -> None:
    liar = Liar(tasks, running)
    app = web.Application()
    app.router.add_get("/v2/{project}/instances/{instance}/tasks", liar.handle)
    app.router.add_get("/_stats", liar.stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"http://127.0.0.1:{port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    await runner.cleanup()


def live_tasks() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Task))


def config(endpoint: str, redis_url: str, instances: list[str]) -> Any:
    listed = ", ".join(f"{{id: {i}}}" for i in instances)
    # The pagers' 100,001 tasks are over poll.max_tasks (which refuses them after one request): raised,
    # so that what is measured is what a failing pager keeps. (Code before issue 10 has no such key.)
    poll = "poll: {max_tasks: 1000000}" if "max_tasks" in PollConfig.model_fields else ""
    text = f"""
cloud: {{endpoint: "{endpoint}", project_id: {PROJECT}, ak: AK, sk: SK}}
instances: [{listed}]
api: {{rate_limit: 100000, max_concurrency: 16}}
redis: {{url: "{redis_url}", key_prefix: hb}}
channels: {{audit: {{type: webhook, url: "http://127.0.0.1:9/"}}}}
{poll}
"""
    return parse_config(text, "hostile.yaml", {})


async def measure(endpoint: str, redis_url: str) -> dict[str, Any]:
    import aiohttp

    out: dict[str, Any] = {}
    # 1. failing pagers
    async with Daemon(config(endpoint, redis_url, PAGERS)) as daemon:
        gc.collect()
        tracemalloc.start()
        polls = await daemon.poller.poll_all()
        assert all(p.error is not None for p in polls), "the pagers should fail"
        out["failing_pagers_tasks_kept"] = live_tasks()  # while the outcomes and the poller live on
        kept, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["failing_pagers_kept_mib"] = round(kept / 2**20, 1)
        out["failing_pagers_peak_mib"] = round(peak / 2**20, 1)
        del polls
    # 2. a lying API
    async with Daemon(config(endpoint, redis_url, ["liar", "repeater"])) as daemon:
        await daemon.poller.poll_all()
    async with aiohttp.ClientSession() as session, session.get(f"{endpoint}/_stats") as resp:
        requests = await resp.json()
    out["requests_per_poll_count_1e9_repeated_pages"] = requests.get("liar", 0)
    out["requests_per_poll_repeated_pages"] = requests.get("repeater", 0)
    # 3. a big baseline
    async with Daemon(config(endpoint, redis_url, ["busy"])) as daemon:
        redis = daemon.store.redis
        await redis.config_set("slowlog-log-slower-than", 0)
        await redis.config_set("slowlog-max-len", 100_000)
        await redis.slowlog_reset()
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        [poll] = await daemon.poller.poll_all()
        done.set()
        await tick
        out["baseline_events"] = len(poll.events)
        out["baseline_longest_loop_stall_ms"] = round(max(gaps) * 1000, 1)
        # How long Redis itself was busy with one transaction: every other client (deliveries, other
        # replicas) waits that long.
        # (The SLOWLOG lists the commands a transaction ran, each after its MULTI.)
        transactions: list[int] = []
        for entry in sorted(await redis.slowlog_get(100_000), key=lambda e: e["id"]):
            command = entry["command"]
            name = (command.decode() if isinstance(command, bytes) else str(command)).split(" ", 1)[0]
            if name.upper() == "MULTI":
                transactions.append(0)
            elif transactions:
                transactions[-1] += entry["duration"]
        out["baseline_transactions"] = len(transactions)
        out["baseline_longest_transaction_ms"] = round(max(transactions) / 1000, 1)
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.hostile_api", "--serve", "--tasks", str(args.tasks),
        "--running", str(args.running), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    endpoint = (await proc.stdout.readline()).decode().strip()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), persistence=False)
        server.start()
        try:
            result = await measure(endpoint, server.url)
        finally:
            server.stop()
            proc.stdin.close()
            await proc.wait()
    return {"tasks_per_pager": args.tasks, "running": args.running, **result}


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--running", type=int, default=9_000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/results/hostile_api.json")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.tasks, args.running))
        return
    report = asyncio.run(main(args))
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    cli()
