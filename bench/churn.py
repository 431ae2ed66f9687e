"""Does a process that watches instances come and go keep memory of them? (It must not.)

The DCS simulator runs in a process of its own (:mod:`bench.sim_server`, ``--instances`` instances) and
the poller (:class:`~notifier.pipeline.poll.Poller`, a real redis-server) runs here. One round of churn:
every instance is discovered (the simulator's instance list, read once, applied as a listing), polled
once (its baseline committed to Redis), then gone from the list twice in a row (confirmed deleted:
``instance.removed`` recorded, the instance retired). Redis is emptied between rounds so that every
round is the same. A round of 100 instances comes first, unmeasured: what a first poll loads once
(modules, caches, pooled connections) is not what churn leaves behind.

Measured in this process: RSS (``/proc/self/statm``) before the first measured round, at its peak (all
the instances watched) and after each round, with the garbage collected; then the same rounds again under
tracemalloc (traced Python memory, which RSS blurs with allocator arenas). Two ratios, target within
10 % each: RSS after the rounds / before the first one, and RSS after the last round / after the first
(growth from round to round is what a leak looks like; the first round also leaves the allocator holding
freed memory, which the process reuses but does not give back). Also shown: the entries of every
module-level ``lru_cache`` of notifier after each round, which no ``forget()`` reaches.

    make bench            # or: .venv/bin/python -m bench.churn [--instances 5000] [--rounds 5]

Prints a table and writes bench/results/churn.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import sim_server
from bench.measure import simulator
from notifier.config.load import parse_config
from notifier.dcs.cloud import Cloud
from notifier.pipeline.poll import Poller
from notifier.store.connect import Store
from notifier.store.keys import Keys
from tests.support.redis_server import RedisServer

RESULTS = Path(__file__).parent / "results" / "churn.json"
TARGET_RATIO = 1.10
WARM_UP = 100
#: Polls in flight at once (api.max_concurrency's default).
CONCURRENCY = 16
PAGE = os.sysconf("SC_PAGE_SIZE")

Row = dict[str, Any]


def rss_mib() -> float:
    """This process's resident memory now (Linux), after a full garbage collection."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def traced_mib() -> float:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] / 2**20


def lru_caches() -> dict[str, int]:
    """Entries held by every ``functools.lru_cache`` of notifier's modules (module-level: no ``forget()``
    reaches them, so one keyed by instance keeps instances that are gone)."""
    sizes = {}
    for name, module in sorted(sys.modules.items()):
        if not name.startswith("notifier."):
            continue
        for attr, value in vars(module).items():
            if isinstance(value, functools._lru_cache_wrapper) and value.__module__ == name:
                sizes[f"{name}.{attr}"] = value.cache_info().currsize
    return sizes


def config_text(base_url: str, redis_url: str) -> str:
    return (
        f'cloud: {{endpoint: "{base_url}", project_id: {sim_server.PROJECT_ID}, '
        f"ak: {sim_server.AK}, sk: {sim_server.SK}, discover: true}}\n"
        f'redis: {{url: "{redis_url}"}}\n'
        'channels: {audit: {type: webhook, url: "http://127.0.0.1:9/"}}\n'
        "api: {rate_limit: 100000}\n"
    )


async def churn_round(
    poller: Poller, redis: aioredis.Redis, listing: list[dict[str, Any]], measure: Callable[[], float]
) -> float:
    """One round; returns ``measure()`` at its peak (all the instances watched)."""
    [spec] = poller.projects
    await poller.discovery.apply(spec, listing)  # every instance discovered
    polled: list[int] = []
    failed: list[Exception | None] = []  # the first few errors, not every outcome (the daemon keeps none)
    queue = iter(list(poller.targets.values()))

    async def worker() -> None:
        for target in queue:  # each polled once: its baseline committed
            outcome = await poller.poll_target(target)
            polled.append(1)
            if not outcome.ok and len(failed) < 3:
                failed.append(outcome.error)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    assert len(polled) == len(listing) and not failed, failed
    peak = measure()
    await poller.discovery.apply(spec, [])  # gone from the list: woken to confirm
    await poller.discovery.apply(spec, [])  # gone twice: deleted, retired
    assert not poller.targets, f"{len(poller.targets)} instance(s) still watched"
    await redis.flushdb()
    return peak


async def run(instances: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), persistence=False)
        server.start()
        try:
            async with (
                simulator(instances, history=10) as sim,
                aioredis.Redis.from_url(server.url) as redis,
            ):
                config = parse_config(config_text(sim.base_url, server.url), "bench", {})
                cloud = Cloud(config)
                try:
                    poller = Poller(config, cloud.clients, Store(redis, Keys("churn")))
                    # The simulator's instance list, read once; each round applies it as a discovery would.
                    listing = await cloud.clients[sim_server.PROJECT_ID].list_instances()
                    assert len(listing) == instances, len(listing)
                    # A small round first: what any first poll loads once (modules, caches, pooled
                    # connections) is not what churn leaves behind.
                    await churn_round(poller, redis, listing[:WARM_UP], rss_mib)
                    phases: dict[str, Any] = {}
                    for name, measure in (("rss", rss_mib), ("tracemalloc", traced_mib)):
                        if name == "tracemalloc":
                            tracemalloc.start()
                        before = measure()
                        rows: list[Row] = []
                        for n in range(1, rounds + 1):
                            started = time.perf_counter()
                            peak = await churn_round(poller, redis, listing, measure)
                            after = measure()
                            rows.append(
                                {
                                    "round": n,
                                    "peak_mib": round(peak, 2),
                                    "after_mib": round(after, 2),
                                    "ratio": round(after / before, 3) if name == "rss" else "-",
                                    "retained_mib": round(after - before, 3),
                                    "seconds": round(time.perf_counter() - started, 2),
                                    "lru_cache_entries": lru_caches(),
                                }
                            )
                        if name == "tracemalloc":
                            tracemalloc.stop()
                        phases[name] = {"before_mib": round(before, 2), "rounds": rows}
                finally:
                    await cloud.aclose()
        finally:
            server.stop()
    return phases


def table(phases: dict[str, Any]) -> str:
    head = ("measure", "round", "before MiB", "peak MiB", "after MiB", "retained MiB", "after/before")
    lines = ["{:<12} {:>5} {:>10} {:>9} {:>9} {:>12} {:>12}".format(*head)]
    for name, phase in phases.items():
        for row in phase["rounds"]:
            lines.append(
                f"{name:<12} {row['round']:>5} {phase['before_mib']:>10.2f} {row['peak_mib']:>9.2f} "
                f"{row['after_mib']:>9.2f} {row['retained_mib']:>12.3f} {row['ratio']!s:>12}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    phases = asyncio.run(run(args.instances, args.rounds))
    rss = phases["rss"]["rounds"]
    ratio = max(row["ratio"] for row in rss)
    steady = round(max(row["after_mib"] for row in rss[1:] or rss) / rss[0]["after_mib"], 3)
    result: dict[str, Any] = {
        "instances": args.instances,
        "rounds": args.rounds,
        "target_ratio": TARGET_RATIO,
        "worst_ratio_to_before": ratio,
        "worst_ratio_to_first_round": steady,
        "within_target": {"to_before": ratio <= TARGET_RATIO, "to_first_round": steady <= TARGET_RATIO},
        "python": platform.python_version(),
        **phases,
    }
    print(f"memory before and after churn ({args.instances} instances discovered, polled, deleted per round)")
    print(table(phases))
    print(f"RSS after / before churn, worst round: {ratio} (target ≤ {TARGET_RATIO})")
    print(f"RSS after / after round 1, worst round: {steady} (target ≤ {TARGET_RATIO})")
    last = phases["tracemalloc"]["rounds"][-1]["lru_cache_entries"]
    print(
        "entries in notifier's lru caches after the last round:",
        ", ".join(f"{k} {v}" for k, v in last.items()),
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
