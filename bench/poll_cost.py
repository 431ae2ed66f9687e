"""Cost of the hot path: polling instances whose tasks did not change.

Runs the real poller (signing, HTTP to the simulator on 127.0.0.1, parsing, one HGETALL, the diff)
against a redis-server of its own, and reports CPU per poll and the process's peak memory. The
simulator serves from the same process, so its CPU is included: the figure is an upper bound.

    make bench            # or: .venv/bin/python -m bench.poll_cost [--instances 50] [--rounds 20]

Prints a table and writes bench/results/poll_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.devtools.simulator import Simulator
from notifier.devtools.standins.webhook import WebhookReceiver
from tests.support.redis_server import RedisServer

RESULTS = Path(__file__).parent / "results" / "poll_cost.json"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(instances: int, tasks: int, rounds: int) -> dict[str, float | int | str]:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), persistence=False)
        server.start()
        try:
            sim = Simulator(project_id="bench", credentials={"BENCHAK": "BENCHSK"})
            ids = [f"bench-{i:04d}" for i in range(instances)]
            for iid in ids:
                sim.add_instance(iid, iid)
                for _ in range(tasks):
                    sim.finish_task(iid, sim.start_task(iid, "EXTEND"))
            async with sim, WebhookReceiver() as receiver:
                listed = "\n".join(f'  - {{id: "{i}"}}' for i in ids)
                config = parse_config(
                    f'cloud: {{endpoint: "{sim.base_url}", project_id: bench, ak: BENCHAK, sk: BENCHSK}}\n'
                    f"instances:\n{listed}\n"
                    f'redis: {{url: "{server.url}"}}\n'
                    "api: {rate_limit: 100000}\n"
                    f'channels: {{audit: {{type: webhook, url: "{receiver.url}"}}}}\n',
                    "bench",
                    {},
                )
                async with Daemon(config) as daemon:
                    await daemon.poller.poll_all()  # baseline, not measured
                    cpu0, wall0 = cpu_seconds(), time.perf_counter()
                    for _ in range(rounds):
                        outcomes = await daemon.poller.poll_all()
                        assert all(o.ok and not o.events for o in outcomes)
                    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        finally:
            server.stop()
    polls = instances * rounds
    return {
        "instances": instances,
        "tasks_per_instance": tasks,
        "polls": polls,
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "cpu_ms_per_poll": round(cpu / polls * 1000, 3),
        "polls_per_cpu_second": round(polls / cpu) if cpu else 0,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    result = asyncio.run(measure(args.instances, args.tasks, args.rounds))
    width = max(len(k) for k in result)
    print("poll cost (unchanged instances)")
    for key, value in result.items():
        print(f"  {key:<{width}}  {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
