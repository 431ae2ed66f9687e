"""The clients the notifier is compared with, each run alone in this process: the same polls, nothing else.

* ``sdk-sync``: the official ``huaweicloudsdkdcs`` ``DcsClient``, one thread, one poll after another;
* ``sdk-async``: the official ``DcsAsyncClient`` (a pool of 8 threads behind futures), ``--concurrency``
  polls in flight;
* ``aiohttp-bare``: a bare aiohttp loop, ``--concurrency`` workers, doing the notifier's GETs with nothing
  else: it only signs (:func:`notifier.dcs.signer.sign`), requests and parses the answer with orjson.

A poll is what the notifier asks in its steady state: ``GET /v2/{project}/instances/{id}/tasks`` with
``start_time`` = now - 300 s, ``end_time`` = now + 300 s, ``offset``/``limit`` (100), every page read,
instances taken in turn. A short unmeasured warm-up (connections, first calls) comes first; then the
polls of ``--seconds`` are measured: CPU of this process (``getrusage(RUSAGE_SELF)``, all threads) and
wall time. Prints one JSON line.

    .venv/bin/python -m bench.baseline_proc --client sdk-sync --sim http://127.0.0.1:PORT --instances 100
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from bench import sim_server
from bench.measure import (
    PAGE_SIZE,
    cpu_seconds,
    emit,
    no_proxies,
    peak_rss_mib,
    per_thousand,
    resolve_loop,
    run_async,
    window,
)

CLIENTS = ("sdk-sync", "sdk-async", "aiohttp-bare")
WARMUP_POLLS = 20

#: One poll: instance id → tasks seen on its pages.
Poll = Callable[[str], int]


def _instances(count: int) -> Iterator[str]:
    return itertools.cycle(sim_server.instance_ids(count))


def _query_times() -> tuple[str, str]:
    start, end = window(datetime.now(UTC))
    return start.strftime("%Y%m%d%H%M%S"), end.strftime("%Y%m%d%H%M%S")


def _report(client: str, polls: int, tasks: int, errors: int, cpu: float, wall: float) -> dict[str, Any]:
    return {
        "client": client,
        "polls": polls,
        "tasks_seen": tasks,
        "errors": errors,
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 4),
        "polls_per_second": round(polls / wall, 1) if wall else None,
        "cpu_s_per_1000_polls": per_thousand(cpu, polls),
        "peak_rss_mib": peak_rss_mib(),
    }


def _sdk_client(kind: str, base_url: str) -> Any:
    from huaweicloudsdkcore.auth.credentials import BasicCredentials  # type: ignore[import-untyped]
    from huaweicloudsdkcore.http.http_config import HttpConfig  # type: ignore[import-untyped]
    from huaweicloudsdkdcs.v2 import DcsAsyncClient, DcsClient  # type: ignore[import-untyped]

    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    cls = DcsClient if kind == "sdk-sync" else DcsAsyncClient
    return (
        cls.new_builder()
        .with_credentials(BasicCredentials(sim_server.AK, sim_server.SK, sim_server.PROJECT_ID))
        .with_http_config(config)
        .with_endpoints([base_url])
        .build()
    )


def _request(instance_id: str, offset: int) -> Any:
    from huaweicloudsdkdcs.v2 import ListBackgroundTaskRequest

    start, end = _query_times()
    return ListBackgroundTaskRequest(
        instance_id=instance_id, offset=offset, limit=PAGE_SIZE, start_time=start, end_time=end
    )


def run_sdk_sync(base_url: str, instances: int, seconds: float) -> dict[str, Any]:
    client = _sdk_client("sdk-sync", base_url)

    def poll(instance_id: str) -> int:
        offset = 0
        while True:
            response = client.list_background_task(_request(instance_id, offset))
            page = response.tasks or []
            offset += len(page)
            if not page or offset >= int(response.task_count or 0):
                return offset

    ids = _instances(instances)
    for _ in range(WARMUP_POLLS):
        poll(next(ids))
    polls = tasks = errors = 0
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    deadline = wall0 + seconds
    while time.perf_counter() < deadline:
        try:
            tasks += poll(next(ids))
        except Exception:
            errors += 1
        polls += 1
    return _report("sdk-sync", polls, tasks, errors, cpu_seconds() - cpu0, time.perf_counter() - wall0)


def run_sdk_async(base_url: str, instances: int, seconds: float, concurrency: int) -> dict[str, Any]:
    """``concurrency`` first pages in flight on the SDK's thread pool; later pages (rare) one by one."""
    client = _sdk_client("sdk-async", base_url)
    ids = _instances(instances)

    def finish(instance_id: str, first: Any) -> int:
        response = first.result()
        offset = len(response.tasks or [])
        total = int(response.task_count or 0)
        while response.tasks and offset < total:
            response = client.list_background_task_async(_request(instance_id, offset)).result()
            offset += len(response.tasks or [])
        return offset

    def submit() -> tuple[str, Any]:
        instance_id = next(ids)
        return instance_id, client.list_background_task_async(_request(instance_id, 0))

    warm = [submit() for _ in range(WARMUP_POLLS)]
    for instance_id, future in warm:
        finish(instance_id, future)
    polls = tasks = errors = 0
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    deadline = wall0 + seconds
    flight = collections.deque(submit() for _ in range(concurrency))
    while flight:
        instance_id, future = flight.popleft()
        try:
            tasks += finish(instance_id, future)
        except Exception:
            errors += 1
        polls += 1
        if time.perf_counter() < deadline:
            flight.append(submit())
    return _report("sdk-async", polls, tasks, errors, cpu_seconds() - cpu0, time.perf_counter() - wall0)


async def run_aiohttp_bare(base_url: str, instances: int, seconds: float, concurrency: int) -> dict[str, Any]:
    import aiohttp
    import orjson
    from yarl import URL

    from notifier.dcs.signer import canonical_query, sign

    base = f"{base_url}/v2/{sim_server.PROJECT_ID}/instances"
    plain = {"Content-Type": "application/json", "X-Project-Id": sim_server.PROJECT_ID}
    ids = _instances(instances)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def poll(instance_id: str) -> int:
            start, end = _query_times()
            offset = 0
            while True:
                query = canonical_query(
                    [
                        ("end_time", end),
                        ("limit", str(PAGE_SIZE)),
                        ("offset", str(offset)),
                        ("start_time", start),
                    ]
                )
                url = f"{base}/{instance_id}/tasks?{query}"
                headers = sign("GET", url, plain, ak=sim_server.AK, sk=sim_server.SK)
                async with session.get(URL(url, encoded=True), headers=headers) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}")
                data = orjson.loads(body)
                page = data["tasks"]
                offset += len(page)
                if not page or offset >= int(data["task_count"]):
                    return offset

        counts = [0, 0, 0]  # polls, tasks, errors
        deadline = 0.0

        async def worker() -> None:
            while time.perf_counter() < deadline:
                try:
                    counts[1] += await poll(next(ids))
                except Exception:
                    counts[2] += 1
                counts[0] += 1

        for _ in range(WARMUP_POLLS):
            await poll(next(ids))
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        deadline = wall0 + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    return _report("aiohttp-bare", counts[0], counts[1], counts[2], cpu, wall)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--sim", required=True, help="the simulator's base URL")
    parser.add_argument("--instances", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured polling time")
    parser.add_argument("--concurrency", type=int, default=32, help="sdk-async and aiohttp-bare: in flight")
    parser.add_argument(
        "--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="aiohttp-bare's event loop"
    )
    args = parser.parse_args(argv)
    no_proxies()
    if args.client == "sdk-sync":
        report = run_sdk_sync(args.sim, args.instances, args.seconds)
    elif args.client == "sdk-async":
        report = run_sdk_async(args.sim, args.instances, args.seconds, args.concurrency)
    else:
        report = run_async(
            lambda: run_aiohttp_bare(args.sim, args.instances, args.seconds, args.concurrency), args.loop
        )
    report["concurrency"] = 1 if args.client == "sdk-sync" else args.concurrency
    if args.client == "aiohttp-bare":
        report["loop"] = resolve_loop(args.loop)
    emit(report)


if __name__ == "__main__":
    main()
