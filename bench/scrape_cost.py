"""What one Prometheus scrape of ``/metrics`` costs a daemon watching 10,000 instances.

A daemon is built on a config discovering 10,000 instances (the simulator's instance list, applied as
discovery would), with what makes a scrape work: every instance polled, some announced unhealthy, a
backlog in three channels' outboxes and dead letters in a real redis-server. Its listener
(:class:`~notifier.ops.http.OpsListener`) serves on 127.0.0.1; a client in this process asks, in turns:

* ``/metrics`` with the Redis figures read anew every time (the cache expired: the worst case),
* ``/metrics`` served from the cache (what most scrapes are: the cache lives 5 s),
* ``/healthz`` — the same listener, request and client, and no work: the HTTP round trip's own cost.

CPU time of this process (server and client) per request; a scrape's own cost is its figure minus the
``/healthz`` one, measured in the same run. Target (issue 14): under 20 ms of CPU per scrape.

    make bench            # or: .venv/bin/python -m bench.scrape_cost [--instances 10000] [--scrapes 50]

Prints a table and writes bench/results/scrape_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import sim_server
from bench.measure import simulator
from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.errors import Reason
from notifier.ops.http import OpsListener
from notifier.pipeline.events import PollProblem
from tests.support.redis_server import RedisServer

RESULTS = Path(__file__).parent / "results" / "scrape_cost.json"
TARGET_MS = 20.0
CHANNELS = ("oncall", "audit", "ops")


def config_text(base_url: str, redis_url: str) -> str:
    channels = ", ".join(f'{c}: {{type: webhook, url: "http://127.0.0.1:9/{c}"}}' for c in CHANNELS)
    return (
        f'cloud: {{endpoint: "{base_url}", project_id: {sim_server.PROJECT_ID}, '
        f"ak: {sim_server.AK}, sk: {sim_server.SK}, discover: true}}\n"
        f'redis: {{url: "{redis_url}"}}\n'
        f"channels: {{{channels}}}\n"
    )


async def cpu_per_request(session: aiohttp.ClientSession, url: str, n: int, before: Any = None) -> float:
    """CPU seconds of this process per GET of ``url`` (``before()`` run ahead of each, uncounted)."""
    total = 0.0
    for _ in range(n):
        if before is not None:
            before()
        start = time.process_time()
        async with session.get(url) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        total += time.process_time() - start
    return total / n


async def run(instances: int, scrapes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), persistence=False)
        server.start()
        try:
            async with simulator(instances, history=1) as sim:
                config = parse_config(config_text(sim.base_url, server.url), "bench", {})
                async with Daemon(config) as daemon:
                    [spec] = daemon.poller.projects
                    listing = await daemon.cloud.clients[spec.project_id].list_instances()
                    await daemon.poller.discovery.apply(spec, listing)
                    fleet = daemon.poller.fleet
                    now = datetime.now(UTC)
                    problem = PollProblem(reason=Reason.AUTH.value, message="rejected", since=now)
                    for n, w in enumerate(fleet):
                        w.last_polled = now
                        if n % 100 == 0:
                            fleet.health.announced[w.target.key] = problem
                    daemon.poller.instances.last_success = time.monotonic()
                    daemon.cloud.gate.limiter(sim.base_url.split("//", 1)[1])
                    redis, keys = daemon.store.redis, daemon.store.keys
                    for c in CHANNELS:
                        for i in range(200):
                            await redis.xadd(keys.outbox(c), {"n": "{}", "k": f"evt_{i}:{c}"})
                    for i in range(300):
                        letter = {"n": "{}", "k": f"evt_{i}", "channel": CHANNELS[i % 3], "error": "x"}
                        await redis.xadd(keys.dead_letters, letter)
                    listener = OpsListener(daemon.metrics, lambda: daemon)
                    await listener.start("127.0.0.1", 0)
                    assert listener.bound is not None
                    base = f"http://127.0.0.1:{listener.bound[1]}"

                    def expire() -> None:
                        daemon.metrics.store.read_at = 0.0

                    try:
                        async with aiohttp.ClientSession() as session:
                            async with session.get(f"{base}/metrics") as resp:  # warm-up, and a look
                                text = await resp.text()
                            assert f'dcs_notifier_instances{{state="watched"}} {float(instances)}' in text
                            rows = {}
                            for _ in range(2):  # interleaved twice: the machine's drift hits all three
                                for name, url, before in (
                                    ("metrics_fresh", f"{base}/metrics", expire),
                                    ("metrics_cached", f"{base}/metrics", None),
                                    ("healthz", f"{base}/healthz", None),
                                ):
                                    cpu = await cpu_per_request(session, url, scrapes, before)
                                    rows[name] = min(rows.get(name, cpu), cpu)
                    finally:
                        await listener.stop()
        finally:
            server.stop(kill=True)
    fresh_ms = (rows["metrics_fresh"] - rows["healthz"]) * 1000
    cached_ms = (rows["metrics_cached"] - rows["healthz"]) * 1000
    return {
        "instances": instances,
        "scrapes_per_kind": scrapes * 2,
        "cpu_ms_per_request": {k: round(v * 1000, 3) for k, v in rows.items()},
        "scrape_cpu_ms_fresh": round(fresh_ms, 3),
        "scrape_cpu_ms_cached": round(cached_ms, 3),
        "fresh_vs_healthz": round(rows["metrics_fresh"] / rows["healthz"], 2),
        "target_ms": TARGET_MS,
        "met": fresh_ms < TARGET_MS,
        "bytes": len(text),
        "python": platform.python_version(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    result = asyncio.run(run(args.instances, args.scrapes))
    print(f"one /metrics scrape, {result['instances']:,} instances watched (CPU of this process)")
    print(f"{'request':<28}{'CPU ms / request':>18}")
    for name, ms in result["cpu_ms_per_request"].items():
        print(f"{name:<28}{ms:>18.3f}")
    print(f"{'scrape own cost, fresh':<28}{result['scrape_cpu_ms_fresh']:>18.3f}  (target < {TARGET_MS} ms)")
    print(f"{'scrape own cost, cached':<28}{result['scrape_cpu_ms_cached']:>18.3f}")
    print(f"fresh scrape / /healthz round trip: {result['fresh_vs_healthz']}×; body {result['bytes']} bytes")
    print("target met" if result["met"] else "TARGET NOT MET")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
