"""Does the cost of a poll grow with an instance's task history? (It must not.)

For each history H, the DCS simulator runs in a process of its own (:mod:`bench.sim_server`) with
``--instances`` instances, each holding H finished tasks created over the last 7 days (up to 1 hour
ago). The real poller (a :class:`~notifier.app.Daemon`, its own redis-server, a webhook receiver)
takes its baseline (timed apart: it pages through ``poll.window``, a day of history, once), then polls
the unchanged instances ``--rounds`` times. Each of those polls asks only for the tasks created since
the last poll minus ``poll.skew``, so its cost should be the same whatever H.

Measured for the rounds, per poll: CPU of this process only (the simulator's is in the other process
and shown apart), API requests and response bytes (counted by the simulator), Redis commands (from
``INFO commandstats``, without INFO and CONFIG). The first round also drops the baseline's old tasks
from the snapshots: it is shown apart, and "steady" is the median round after it. The API rate limit is
raised (``--rate-limit``) so that wall times show work, not the limiter's pacing.

    make bench            # or: .venv/bin/python -m bench.history_cost [--instances 20] [--rounds 30]

Prints a table and writes bench/results/history_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import sim_server
from bench.measure import simulator
from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.devtools.standins.webhook import WebhookReceiver
from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "history_cost.json"
SIM_START_TIMEOUT = 300.0
#: Not the poller's work: the benchmark's own reads of the counters.
IGNORED_COMMANDS = frozenset({"info", "config"})

Row = dict[str, float | int]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


async def redis_calls(client: aioredis.Redis) -> dict[str, int]:
    """Calls per command so far (``INFO commandstats``), without the benchmark's own INFO/CONFIG."""
    info: dict[str, Any] = await client.info("commandstats")
    calls = {}
    for key, value in info.items():
        name = key.removeprefix("cmdstat_")
        if name.split("|")[0] not in IGNORED_COMMANDS:
            calls[name] = int(value["calls"])
    return calls


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    changed = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in sorted(changed.items()) if v}


def config_text(base_url: str, redis_url: str, receiver_url: str, instances: int, rate_limit: float) -> str:
    listed = "\n".join(f'  - {{id: "{i}"}}' for i in sim_server.instance_ids(instances))
    return (
        f'cloud: {{endpoint: "{base_url}", project_id: {sim_server.PROJECT_ID}, '
        f"ak: {sim_server.AK}, sk: {sim_server.SK}}}\n"
        f"instances:\n{listed}\n"
        f'redis: {{url: "{redis_url}"}}\n'
        f'channels: {{audit: {{type: webhook, url: "{receiver_url}"}}}}\n'
        "poll: {skew: 300}\n"
        f"api: {{rate_limit: {rate_limit}}}\n"
    )


async def measure(instances: int, history: int, rounds: int, rate_limit: float) -> tuple[Row, dict[str, int]]:
    """One history's figures, and the Redis calls of the measured rounds by command."""
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), persistence=False)
        server.start()
        try:
            async with (
                simulator(instances, history, SIM_START_TIMEOUT) as sim,
                WebhookReceiver() as receiver,
                aioredis.Redis.from_url(server.url, decode_responses=True) as counters,
            ):
                config = parse_config(
                    config_text(sim.base_url, server.url, receiver.url, instances, rate_limit), "bench", {}
                )
                async with Daemon(config) as daemon:
                    sim0 = await sim.stats()
                    cpu0, wall0 = cpu_seconds(), time.perf_counter()
                    outcomes = await daemon.poller.poll_all()  # the baseline: timed apart
                    base_cpu, base_wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
                    assert all(o.ok and not o.events for o in outcomes), [o.error for o in outcomes]
                    sim1 = await sim.stats()
                    redis1 = await redis_calls(counters)
                    round_cpu: list[float] = []
                    round_wall: list[float] = []
                    for _ in range(rounds):
                        cpu0, wall0 = cpu_seconds(), time.perf_counter()
                        outcomes = await daemon.poller.poll_all()
                        round_cpu.append(cpu_seconds() - cpu0)
                        round_wall.append(time.perf_counter() - wall0)
                        assert all(o.ok and not o.events for o in outcomes), [o.error for o in outcomes]
                    redis2 = await redis_calls(counters)
                    sim2 = await sim.stats()
        finally:
            server.stop()
    polls = instances * rounds
    cpu = sum(round_cpu)
    steady = round_cpu[1:] or round_cpu
    commands = delta(redis2, redis1)
    row: Row = {
        "history": history,
        "instances": instances,
        "rounds": rounds,
        "polls": polls,
        "cpu_ms_per_poll": round(cpu / polls * 1000, 3),
        "cpu_ms_per_poll_first_round": round(round_cpu[0] / instances * 1000, 3),
        "cpu_ms_per_poll_steady": round(statistics.median(steady) / instances * 1000, 3),
        "cpu_ms_per_poll_steady_mean": round(statistics.mean(steady) / instances * 1000, 3),
        "requests_per_poll": round((sim2["task_requests"] - sim1["task_requests"]) / polls, 3),
        "bytes_per_poll": round((sim2["body_bytes"] - sim1["body_bytes"]) / polls),
        "redis_commands_per_poll": round(sum(commands.values()) / polls, 3),
        "wall_ms_per_round": round(sum(round_wall) / rounds * 1000, 2),
        "wall_ms_first_round": round(round_wall[0] * 1000, 2),
        "wall_ms_per_round_steady": round(statistics.median(round_wall[1:] or round_wall) * 1000, 2),
        "simulator_cpu_ms_per_poll": round((sim2["cpu_seconds"] - sim1["cpu_seconds"]) / polls * 1000, 3),
        "baseline_wall_seconds": round(base_wall, 3),
        "baseline_cpu_seconds": round(base_cpu, 3),
        "baseline_requests_per_instance": round(
            (sim1["task_requests"] - sim0["task_requests"]) / instances, 1
        ),
        "peak_rss_mib": peak_rss_mib(),
    }
    return row, commands


COLUMNS = [
    ("history", "H"),
    ("cpu_ms_per_poll", "cpu_ms/poll"),
    ("cpu_ms_per_poll_first_round", "1st_round"),
    ("cpu_ms_per_poll_steady", "steady"),
    ("requests_per_poll", "requests/poll"),
    ("bytes_per_poll", "bytes/poll"),
    ("redis_commands_per_poll", "redis_cmds/poll"),
    ("wall_ms_per_round", "wall_ms/round"),
    ("wall_ms_per_round_steady", "steady"),
    ("simulator_cpu_ms_per_poll", "sim_cpu_ms/poll"),
    ("baseline_wall_seconds", "baseline_s"),
    ("baseline_requests_per_instance", "baseline_req/inst"),
    ("peak_rss_mib", "peak_rss_mib"),
]


def table(rows: Sequence[Row]) -> str:
    cells = [[title for _, title in COLUMNS], *([str(row[key]) for key, _ in COLUMNS] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells)


def ratio(rows: Sequence[Row], key: str) -> float | None:
    """``key`` of the longest history over that of the shortest."""
    low, high = min(rows, key=lambda r: r["history"]), max(rows, key=lambda r: r["history"])
    return round(high[key] / low[key], 3) if low[key] else None


def histories(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive task counts, e.g. 10,10000")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--histories", type=histories, default=[10, 10_000], help="default: 10,10000")
    parser.add_argument(
        "--rate-limit", type=float, default=100_000.0, help="api.rate_limit, requests/s (default: 100000)"
    )
    args = parser.parse_args()
    measured = [asyncio.run(measure(args.instances, h, args.rounds, args.rate_limit)) for h in args.histories]
    rows = [row for row, _ in measured]
    result: dict[str, Any] = {
        "instances": args.instances,
        "rounds": args.rounds,
        "rate_limit": args.rate_limit,
        "cpu_ratio": ratio(rows, "cpu_ms_per_poll"),
        "cpu_ratio_steady": ratio(rows, "cpu_ms_per_poll_steady"),
        "python": platform.python_version(),
        "histories": [{**row, "redis_commands": commands} for row, commands in measured],
    }
    print(f"poll cost by task history ({args.instances} instances × {args.rounds} rounds, unchanged tasks)")
    print(table(rows))
    if len(rows) > 1:
        low, high = min(args.histories), max(args.histories)
        print(f"cpu ratio H={high}/H={low}: {result['cpu_ratio']} (steady: {result['cpu_ratio_steady']})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
