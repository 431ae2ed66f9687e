"""The notifier, alone in this process, against the benchmark's simulator, redis-server and webhook receiver.

Builds a :class:`~notifier.config.models.Config` (single-project form: ``cloud: {endpoint, project_id, ak,
sk}``, the ``instances`` list, ``api: {rate_limit: 1000000, max_concurrency: 64, region_concurrency: 64}``,
a webhook channel to the receiver, the Redis URL) and a :class:`~notifier.app.Daemon`, then:

1. **baseline** — ``daemon.poller.poll_all()`` (each instance's first poll pages through ``poll.window``
   of history), repeated while some polls fail (at most 3 rounds), then one more round ("settle": the
   first poll of the steady window gets another answer than the day-long baseline window, so it is
   parsed and diffed once), all timed apart, not in the figures — without it, a scenario with fewer
   polls per phase than instances would measure that first round instead of unchanged polls;
2. **unchanged** — ``poll_all()`` rounds for ``--seconds`` (at least one round): CPU of this process
   (``getrusage(RUSAGE_SELF)``) around the rounds only, wall time, Redis commands (``INFO commandstats``
   deltas without INFO/CONFIG) and round trips (``total_reads_processed`` of ``INFO stats``: one read
   event per request the server receives — a pipeline sent at once is one — minus this process's own
   INFO calls);
3. **changing** — the same, but before each round (outside the CPU window) ``--change-fraction`` of the
   instances (at least one) start or finish a task in the simulator (``POST /_bench/change``);
4. peak RSS holding the targets (``ru_maxrss``) after these phases;
5. **latency** — a second daemon (same Redis state, channel ``live`` instead of ``audit`` so that the
   changing phase's queued notifications are not delivered now) runs ``Daemon.run()`` with
   ``poll.interval = --latency-interval`` while the simulator changes ``--latency-rate`` of the instances
   per second for ``--latency-seconds``, then ``--tail`` seconds more for deliveries in flight; then
   ``request_stop()``. Its CPU is reported overall and for the "steady" part, from one interval in (every
   instance polled once) to the last change. With ``--quiet-seconds``, before stopping, it waits one
   interval more (every instance polled once since the last change) and then measures ``Daemon.run()``
   with nothing changing for that long: the daemon's whole cost (scheduling, leases off, delivery idle)
   at that interval. The simulator records when each change became visible and
   when it was first served; the receiver (in :mod:`bench.compare`) when it arrived: the latency is
   computed there.

With ``--profile FILE`` only phases 1-2 run, the unchanged rounds under cProfile (dumped to FILE).

Prints one JSON line with the figures of every phase.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import redis

from bench import sim_server
from bench.measure import (
    cpu_seconds,
    current_rss_mib,
    emit,
    no_proxies,
    peak_rss_mib,
    per_thousand,
    resolve_loop,
    run_async,
)
from notifier.app import Daemon, freeze_startup_heap
from notifier.config.load import parse_config
from notifier.config.models import Config

#: Not the poller's work: the benchmark's own reads of the counters.
IGNORED_COMMANDS = frozenset({"info", "config"})
BASELINE_ROUNDS = 3


def config(
    sim_url: str, redis_url: str, receiver_url: str, instances: int, *, channel: str, interval: float = 30.0
) -> Config:
    data = {
        "cloud": sim_server.cloud_config(sim_url),
        "instances": [{"id": i} for i in sim_server.instance_ids(instances)],
        "api": {"rate_limit": 1_000_000, "max_concurrency": 64, "region_concurrency": 64},
        "poll": {"interval": interval},
        "redis": {"url": redis_url},
        "channels": {channel: {"type": "webhook", "url": f"{receiver_url}/{channel}"}},
    }
    return parse_config(json.dumps(data), "bench", {})  # JSON is YAML


class RedisCounters:
    """Commands by name and round trips, read from the server with a connection of our own."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)

    def read(self) -> tuple[dict[str, int], int]:
        commands = self.client.info("commandstats")
        reads = int(self.client.info("stats")["total_reads_processed"])
        calls = {}
        for key, value in commands.items():
            name = key.removeprefix("cmdstat_")
            if name.split("|")[0] not in IGNORED_COMMANDS:
                calls[name] = int(value["calls"])
        return calls, reads

    def close(self) -> None:
        self.client.close()


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    changed = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in sorted(changed.items()) if v}


class Control:
    """The simulator's bench routes (no signature; not counted as API requests)."""

    def __init__(self, session: aiohttp.ClientSession, sim_url: str) -> None:
        self.session = session
        self.base = f"{sim_url}{sim_server.CONTROL}"

    async def call(self, what: str, **params: str) -> dict[str, Any]:
        method = "GET" if what == "stats" else "POST"
        async with self.session.request(method, f"{self.base}/{what}", params=params) as resp:
            resp.raise_for_status()
            data: dict[str, Any] = await resp.json()
            return data


async def rounds(
    daemon: Daemon,
    seconds: float,
    counters: RedisCounters,
    *,
    before_round: Any = None,
    profile: cProfile.Profile | None = None,
) -> dict[str, Any]:
    """``poll_all()`` rounds for ``seconds`` (at least one); CPU counted around the rounds only."""
    calls0, reads0 = counters.read()
    cpu = wall = 0.0
    polls = events = errors = rounds_done = 0
    first_error: str | None = None
    started = time.perf_counter()
    while rounds_done == 0 or time.perf_counter() - started < seconds:
        if before_round is not None:
            await before_round()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        if profile is not None:
            profile.enable()
        outcomes = await daemon.poller.poll_all()
        if profile is not None:
            profile.disable()
        cpu += cpu_seconds() - cpu0
        wall += time.perf_counter() - wall0
        rounds_done += 1
        polls += len(outcomes)
        for outcome in outcomes:
            error = getattr(outcome, "error", None)
            if error is not None:
                errors += 1
                first_error = first_error or str(error)
            events += len(getattr(outcome, "events", None) or [])
    calls1, reads1 = counters.read()
    commands = _delta(calls1, calls0)
    # The second read() issued two INFO commands before its reading: both are in reads1 - reads0.
    round_trips = reads1 - reads0 - 2
    return {
        "rounds": rounds_done,
        "polls": polls,
        "events": events,
        "errors": errors,
        "first_error": first_error,
        "cpu_seconds": round(cpu, 4),
        "wall_seconds": round(wall, 3),
        "polls_per_second": round(polls / wall, 1) if wall else None,
        "cpu_s_per_1000_polls": per_thousand(cpu, polls),
        "redis_commands": commands,
        "redis_commands_per_poll": round(sum(commands.values()) / polls, 3) if polls else None,
        "redis_round_trips_per_poll": round(round_trips / polls, 3) if polls else None,
    }


async def baseline(daemon: Daemon) -> list[dict[str, Any]]:
    """``poll_all()`` until every instance has polled without error (at most BASELINE_ROUNDS rounds).

    A first round that fails for some instances (Redis pool exhausted, say) would otherwise leave their
    baselines to the measured rounds.
    """
    out = []
    for _ in range(BASELINE_ROUNDS):
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        outcomes = await daemon.poller.poll_all()
        errors = [str(e) for e in (getattr(o, "error", None) for o in outcomes) if e is not None]
        out.append(
            {
                "cpu_seconds": round(cpu_seconds() - cpu0, 3),
                "wall_seconds": round(time.perf_counter() - wall0, 3),
                "errors": len(errors),
                "first_error": errors[0] if errors else None,
            }
        )
        if not errors:
            break
    return out


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"client": "notifier", "instances": args.instances}
    report["loop"] = resolve_loop(args.loop)
    counters = RedisCounters(args.redis)
    async with aiohttp.ClientSession() as session:
        control = Control(session, args.sim)
        cfg = config(args.sim, args.redis, args.receiver, args.instances, channel="audit")
        async with Daemon(cfg) as daemon:
            report["baseline"] = await baseline(daemon)
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            settled = await daemon.poller.poll_all()
            report["settle"] = {
                "cpu_seconds": round(cpu_seconds() - cpu0, 3),
                "wall_seconds": round(time.perf_counter() - wall0, 3),
                "errors": sum(1 for o in settled if getattr(o, "error", None) is not None),
            }
            profile = cProfile.Profile() if args.profile else None
            report["unchanged"] = await rounds(daemon, args.seconds, counters, profile=profile)
            if profile is not None:
                profile.dump_stats(args.profile)
                report["peak_rss_mib"] = peak_rss_mib()
                return report
            count = max(1, math.ceil(args.instances * args.change_fraction))

            async def change() -> None:
                await control.call("change", count=str(count))

            changing = await rounds(daemon, args.seconds, counters, before_round=change)
            changing["changed_per_round"] = count
            report["changing"] = changing
            report["peak_rss_mib"] = peak_rss_mib()
            report["rss_mib_now"] = current_rss_mib()
            # Nobody delivers these rounds' notifications (the receiver counts only the latency run's):
            # dropped, so that the next daemon, with channel "live" only, has no orphaned outbox.
            await daemon.store.redis.delete(daemon.store.keys.outbox("audit"))
        if args.latency_seconds > 0:
            report["latency_run"] = await latency_run(args, control)
    counters.close()
    return report


class GcPauses:
    """Pauses of the cyclic garbage collector (``callback`` goes into ``gc.callbacks``), per generation;
    every full (generation 2) collection with its time since the start, in seconds."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.longest_ms = [0.0, 0.0, 0.0]
        self.full: list[tuple[float, float]] = []
        self._start = time.perf_counter()
        self._began = 0.0

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        generation = info["generation"]
        self.count[generation] += 1
        pause = round((time.perf_counter() - self._began) * 1000, 2)
        self.longest_ms[generation] = max(self.longest_ms[generation], pause)
        if generation == 2:
            self.full.append((round(self._began - self._start, 2), pause))

    def report(self) -> dict[str, Any]:
        return {"collections": self.count, "longest_ms": self.longest_ms, "full_at_s_ms": self.full}


async def latency_run(args: argparse.Namespace, control: Control) -> dict[str, Any]:
    """``Daemon.run()`` while the simulator changes instances; CPU overall and after the first interval."""
    cfg = config(
        args.sim, args.redis, args.receiver, args.instances, channel="live", interval=args.latency_interval
    )
    await control.call("reset")
    pauses = GcPauses()
    async with Daemon(cfg) as daemon:
        freeze_startup_heap(cfg.poll.interval)  # as `dcs-notifier run` does
        gc.callbacks.append(pauses.callback)
        sim0 = await control.call("stats")
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        started_at = time.time()
        running = asyncio.create_task(daemon.run())
        await control.call("rate", per_second=str(args.latency_rate))
        # The steady part: from one interval in (each instance polled once: start-up over) to the last change.
        first = min(args.latency_interval, args.latency_seconds)
        await asyncio.sleep(first)
        sim_a, cpu_a, wall_a = await control.call("stats"), cpu_seconds(), time.perf_counter()
        await asyncio.sleep(args.latency_seconds - first)
        sim_b, cpu_b, wall_b = await control.call("stats"), cpu_seconds(), time.perf_counter()
        await control.call("rate", per_second="0")
        await asyncio.sleep(args.tail)
        sim1, cpu1, wall1 = await control.call("stats"), cpu_seconds(), time.perf_counter()
        quiet: dict[str, Any] | None = None
        if args.quiet_seconds > 0:
            await asyncio.sleep(args.latency_interval)  # every instance has seen its last change
            sim_q, cpu_q, wall_q = await control.call("stats"), cpu_seconds(), time.perf_counter()
            await asyncio.sleep(args.quiet_seconds)
            sim_r, cpu_r, wall_r = await control.call("stats"), cpu_seconds(), time.perf_counter()
            quiet_polls = int(sim_r["task_requests"] - sim_q["task_requests"])
            quiet = {
                "requests": quiet_polls,
                "changes": int(sim_r["changes"] - sim_q["changes"]),
                "wall_seconds": round(wall_r - wall_q, 3),
                "cpu_seconds": round(cpu_r - cpu_q, 3),
                "cpu_share_of_one_core": round((cpu_r - cpu_q) / (wall_r - wall_q), 4),
                "cpu_s_per_1000_polls": per_thousand(cpu_r - cpu_q, quiet_polls),
            }
        daemon.request_stop()
        await running
        gc.callbacks.remove(pauses.callback)
        cpu, wall = cpu1 - cpu0, wall1 - wall0
    polls = int(sim1["task_requests"] - sim0["task_requests"])
    steady_polls = int(sim_b["task_requests"] - sim_a["task_requests"])
    steady_cpu, steady_wall = cpu_b - cpu_a, wall_b - wall_a
    return {
        "started_at": started_at,
        "interval": args.latency_interval,
        "change_rate": args.latency_rate,
        "change_seconds": args.latency_seconds,
        "tail_seconds": args.tail,
        "changes": int(sim1["changes"] - sim0["changes"]),
        "requests": polls,
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "cpu_share_of_one_core": round(cpu / wall, 3) if wall else None,
        "steady": {
            "requests": steady_polls,
            "wall_seconds": round(steady_wall, 3),
            "cpu_seconds": round(steady_cpu, 3),
            "cpu_share_of_one_core": round(steady_cpu / steady_wall, 3) if steady_wall > 0 else None,
            "cpu_s_per_1000_polls": per_thousand(steady_cpu, steady_polls),
        },
        "quiet": quiet,
        "gc": pauses.report(),
        "peak_rss_mib": peak_rss_mib(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim", required=True, help="the simulator's base URL")
    parser.add_argument("--redis", required=True, help="redis:// URL")
    parser.add_argument("--receiver", required=True, help="the webhook receiver's base URL")
    parser.add_argument("--instances", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measured phase")
    parser.add_argument("--change-fraction", type=float, default=0.01, help="changing phase, per round")
    parser.add_argument("--latency-seconds", type=float, default=5.0, help="0: no latency run")
    parser.add_argument(
        "--latency-interval", type=float, default=1.0, help="poll.interval of the latency run"
    )
    parser.add_argument(
        "--latency-rate", type=float, default=0.1, help="fraction of instances changing per s"
    )
    parser.add_argument("--tail", type=float, default=2.0, help="seconds after the last change")
    parser.add_argument(
        "--quiet-seconds", type=float, default=0.0, help="then Daemon.run() with nothing changing (0: not)"
    )
    parser.add_argument("--profile", default=None, help="cProfile the unchanged rounds into this file")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="notifier_proc %(levelname)s %(name)s: %(message)s")
    no_proxies()
    emit(run_async(lambda: measure(args), args.loop))


if __name__ == "__main__":
    main()
