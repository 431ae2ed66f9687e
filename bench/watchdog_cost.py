"""What the stuck-task watchdog adds to an unchanged poll: the same polls with and without its limits.

    .venv/bin/python -m bench.watchdog_cost [--instances 200] [--rounds 20] [--loop auto]

Two daemons in this process, one with the default ``watchdog`` limits and one with every limit 0 (off),
poll the same simulator (in this process too, as in :mod:`bench.poll_cost`: its CPU is included, so the
absolute figures are upper bounds) and the same redis-server (a key prefix each). Their rounds alternate
(``poll_all()`` of every instance, then ``next_delay()`` of each outcome, as the scheduler does after each
poll), the order swapped every round, so that drift and the other load of the machine fall on both alike;
the CPU (``getrusage``) of each round is added to its daemon's total. Two fleets:

* ``idle`` — no task in progress (the usual instance): the watchdog's cost is one ``is None`` test;
* ``running`` — every instance has a task EXECUTING, far from its limit (the worst case for unchanged
  polls): one comparison with the kept deadline per poll, and the scheduler's look at it.

The difference of two CPU totals is within the noise of a shared machine, so the added operations are also
timed alone (``timeit``, same process): the unchanged poll's test, the scheduler's look at the deadline,
and what a changed answer listing a task in progress adds (its deadline, and the stuck check). The share
at 10,000 instances is that added time over the notifier's CPU per unchanged poll measured by
``bench.compare`` (bench/results.json, N = 10,000, the simulator in its own process) when present.

Prints a table and writes bench/results/watchdog_cost.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import resource
import tempfile
import timeit
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.measure import resolve_loop, run_async
from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.config.models import DEFAULT_WATCHDOG
from notifier.devtools.simulator import Simulator
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.pipeline.diff import DiffContext, SeenTask, Snapshot
from notifier.pipeline.events import InstanceRef
from notifier.pipeline.instance import PollOutcome
from notifier.pipeline.watch import Known
from notifier.pipeline.watchdog import Limits, deadline, stuck
from tests.factories import task
from tests.support.redis_server import RedisServer

RESULTS = Path(__file__).parent / "results" / "watchdog_cost.json"
COMPARE = Path(__file__).parent / "results.json"
OFF = "watchdog: {default: 0, masterStandbySwapJob: 0, EXTEND: 0}\n"
TARGET_SHARE_MAX = 0.05


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def config_text(sim: Simulator, ids: list[str], redis_url: str, hook: str, prefix: str, extra: str) -> str:
    listed = "\n".join(f'  - {{id: "{i}"}}' for i in ids)
    return (
        f'cloud: {{endpoint: "{sim.base_url}", project_id: bench, ak: BENCHAK, sk: BENCHSK}}\n'
        f"instances:\n{listed}\n"
        f'redis: {{url: "{redis_url}", key_prefix: {prefix}}}\n'
        "api: {rate_limit: 100000}\n"
        f'channels: {{audit: {{type: webhook, url: "{hook}"}}}}\n' + extra
    )


async def one_round(daemon: Daemon) -> tuple[float, int]:
    """CPU seconds of one round: every instance polled, then its next delay worked out."""
    cpu0 = cpu_seconds()
    outcomes = await daemon.poller.poll_all()
    for outcome in outcomes:
        daemon.poller.next_delay(outcome)
    cpu = cpu_seconds() - cpu0
    assert all(o.ok and not o.events for o in outcomes), "an unchanged poll found something"
    return cpu, len(outcomes)


async def fleet(instances: int, rounds: int, running: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), persistence=False)
        server.start()
        try:
            sim = Simulator(project_id="bench", credentials={"BENCHAK": "BENCHSK"})
            ids = [f"bench-{i:04d}" for i in range(instances)]
            for iid in ids:
                sim.add_instance(iid, iid)
                for _ in range(4):
                    sim.finish_task(iid, sim.start_task(iid, "EXTEND"))
                if running:  # far from its limit (5 min) for the whole run
                    sim.start_task(iid, "masterStandbySwapJob", status="EXECUTING")
            async with sim, WebhookReceiver() as receiver:
                texts = {
                    "on": config_text(sim, ids, server.url, receiver.url, "wd-on", ""),
                    "off": config_text(sim, ids, server.url, receiver.url, "wd-off", OFF),
                }
                cpu = {"on": 0.0, "off": 0.0}
                polls = {"on": 0, "off": 0}
                async with (
                    Daemon(parse_config(texts["on"], "on", {})) as on,
                    Daemon(parse_config(texts["off"], "off", {})) as off,
                ):
                    daemons = {"on": on, "off": off}
                    for d in daemons.values():
                        await d.poller.poll_all()  # baseline, not measured
                        await d.poller.poll_all()  # (a first unchanged round: warm)
                    for r in range(rounds):
                        for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                            spent, n = await one_round(daemons[name])
                            cpu[name] += spent
                            polls[name] += n
                    watched = sum(
                        1 for w in on.poller.fleet if w.known is not None and w.known.deadline is not None
                    )
                    # The scheduler's look at the kept deadline after a poll, with the limits and without.
                    target = next(iter(on.poller.targets.values()))
                    after = PollOutcome(target)
                    look = {n: ns(functools.partial(d.poller.next_delay, after)) for n, d in daemons.items()}
        finally:
            server.stop()
    per = {k: cpu[k] / polls[k] * 1e6 for k in cpu}  # µs per poll
    return {
        "instances": instances,
        "rounds": rounds,
        "polls_each": polls["on"],
        "instances_with_a_deadline": watched,
        "us_per_poll_off": round(per["off"], 1),
        "us_per_poll_on": round(per["on"], 1),
        "cpu_s_per_1000_off": round(per["off"] / 1000, 4),
        "cpu_s_per_1000_on": round(per["on"] / 1000, 4),
        "ratio_on_off": round(per["on"] / per["off"], 4),
        "next_delay_ns_off": round(look["off"], 1),
        "next_delay_ns_on": round(look["on"], 1),
    }


def ns(stmt: Callable[[], object], number: int = 100_000) -> float:
    """Nanoseconds per call of ``stmt`` (the best of 5 repeats)."""
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e9


def micro() -> dict[str, float]:
    """The watchdog's own operations, timed alone (ns per call)."""
    now = datetime.now(UTC)
    limits = Limits.of(DEFAULT_WATCHDOG)
    listed = [
        task(f"t{i}", "EXTEND", "SUCCESS", created=now - timedelta(hours=i + 1), updated=now)
        for i in range(4)
    ]
    listed.append(task("run", "masterStandbySwapJob", "EXECUTING", created=now - timedelta(minutes=1)))
    snap = Snapshot(now, {t.id: SeenTask(t.status, t.updated_at, t.created_at, t.name) for t in listed})
    running = listed[4:]
    idle = Known.of(snap, b"d", listed[:4], limits)
    busy = Known.of(snap, b"d", listed, limits)
    ctx = DiffContext("bench", "r", InstanceRef.of("i", "i", {}), now, timedelta(0), now - timedelta(days=1))

    def check(known: Known) -> bool:  # the unchanged poll's test, as InstancePoller._poll makes it
        due = known.deadline if known is not None else None
        return due is None or now < due.at

    return {
        "unchanged_check_idle_ns": round(ns(lambda: check(idle)), 1),
        "unchanged_check_running_ns": round(ns(lambda: check(busy)), 1),
        # A changed answer's tasks in progress (what InstancePoller passes on), here one of five.
        "changed_answer_deadline_ns": round(ns(lambda: deadline(snap, running, limits), 20_000), 1),
        "changed_answer_stuck_check_ns": round(ns(lambda: stuck(snap, running, limits, ctx), 20_000), 1),
    }


def notifier_us_per_poll() -> float | None:
    """The notifier's CPU per unchanged poll at N = 10,000 from bench.compare's last run (µs), if any."""
    try:
        data = json.loads(COMPARE.read_text())
    except (OSError, ValueError):
        return None
    for s in data.get("scenarios", []):
        unchanged = s.get("clients", {}).get("notifier", {}).get("unchanged")
        if s.get("instances") == 10_000 and unchanged:
            return float(unchanged["cpu_s_per_1000_polls"]) * 1000
    return None


async def measure(instances: int, rounds: int) -> dict[str, Any]:
    return {
        "idle": await fleet(instances, rounds, running=False),
        "running": await fleet(instances, rounds, running=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args()
    fleets = run_async(lambda: measure(args.instances, args.rounds), args.loop)
    ops = micro()
    base = notifier_us_per_poll()
    # Worst case per unchanged poll: an instance with a task running, its poll and its scheduling.
    running = fleets["running"]
    scheduler_ns = max(0.0, running["next_delay_ns_on"] - running["next_delay_ns_off"])
    ops["scheduler_added_ns"] = round(scheduler_ns, 1)
    added_ns = ops["unchanged_check_running_ns"] + scheduler_ns
    share = None if base is None else added_ns / (base * 1000)
    result = {
        "fleets": fleets,
        "operations_ns": ops,
        "notifier_us_per_unchanged_poll_10k": base,
        "added_ns_per_unchanged_poll_worst": round(added_ns, 1),
        "added_share_10k_worst": None if share is None else round(share, 6),
        "target_share_max": TARGET_SHARE_MAX,
        "loop": resolve_loop(args.loop),
        "python": platform.python_version(),
    }
    print("watchdog cost per unchanged poll (same run, rounds alternating)")
    head = f"{'fleet':<8} {'polls':>7} {'off µs/poll':>12} {'on µs/poll':>11} {'on/off':>7}"
    print(f"  {head} {'next_delay ns off':>18} {'on':>7}")
    for name, f in fleets.items():
        print(
            f"  {name:<8} {f['polls_each']:>7} {f['us_per_poll_off']:>12} {f['us_per_poll_on']:>11} "
            f"{f['ratio_on_off']:>7} {f['next_delay_ns_off']:>18} {f['next_delay_ns_on']:>7}"
        )
    print("  operations alone (ns per call):")
    for key, value in ops.items():
        print(f"    {key:<34} {value}")
    if share is not None:
        print(
            f"  added at 10,000 instances, worst case: {added_ns:.0f} ns on {base:.0f} µs per unchanged poll "
            f"= {share:.4%} (target < {TARGET_SHARE_MAX:.0%})"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
