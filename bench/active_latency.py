"""How soon a living Slack card shows that its task finished, with and without ``poll.active_interval``.

The issue's benchmark: with 1,000 instances of which 1 % have a task running, the time from a task's finish
to its card's update is p50 < 5 s and p99 < 8 s, at < 10 % more API calls than today. Both halves are
figures of one run: two phases, the same length and the same schedule of tasks (same ``--seed``), one with
``poll.active_interval: --active`` (the feature), one with ``active_interval: 0`` (today: every instance
every ``poll.interval``).

All on 127.0.0.1. Per phase:

* the DCS simulator in a process of its own (its CPU is not the daemon's): :class:`bench.sim_server.
  BenchSimulator` (``--instances`` instances of project ``bench``, a lazy history of 10 tasks each), run by
  this module with ``--simulator``. ``bench.sim_server``'s own ``change K`` toggles K *random* instances,
  so it cannot finish the task it started on a chosen instance after a chosen duration; the subclass here
  adds two commands (``start INSTANCE``, ``finish INSTANCE TASK``) and records, like ``change`` does, the
  ``time.time()`` a change became visible and the time of the first task-list answer for its instance after
  it (``served_at``: the poll that saw it). A fresh simulator per phase: its request counts and running
  tasks start from nothing;
* a real ``redis-server`` (:class:`tests.support.redis_server.RedisServer`, no persistence, one for both
  phases, a ``key_prefix`` of each phase's own) and the Slack stand-in
  (:class:`notifier.devtools.standins.slack.SlackStandIn`, no rate limits, a fresh one per phase) recording
  the ``time.time()`` of each change to the channel;
* the real daemon, ``Daemon(config).run()``, in this process (on uvloop when installed, with the start-up
  heap frozen, as ``dcs-notifier run`` does): the ``--instances`` instances listed, ``poll.interval:
  --interval``, ``api.rate_limit: --rate-limit`` (default 100: 1,000 instances at 30 s are 33 polls/s,
  which the default 20 would not keep up with), one Slack bot-token channel to the stand-in (``rate: 50``,
  so that nothing queues), no rules (every event to it), ``delivery`` defaults.

The tasks: ``--running`` tasks run at all times, on distinct random instances. Each runs a random
duration, uniform in [``--min-duration``, ``--max-duration``] (default 1.1 × interval + 2 s to 3 ×
interval: 35–90 s), then finishes (``SUCCESS``); a new one starts at once on another instance that runs
none. The shortest duration is longer than the longest gap between two polls of an instance (interval +
10 % jitter), so every task is seen running and its card posted before it finishes: what is measured is
the card's *update*. (A task shorter than that may be seen only once finished; its card is then posted with
the outcome, as a webhook message would be: counted apart as ``posted_finished``.)

The first ``--warm-up`` seconds (default 1.2 × interval: every instance's first, baseline poll falls in
the first interval) are not measured. Then, for ``--seconds``: every task that finishes is measured,
latency = the stand-in's ``chat.update`` of its card showing ``task.succeeded`` (matched by the task id in
the card's context line) - the simulator's time of the finish; split into detection (``served_at`` - finish:
waiting for the poll that sees it) and delivery (update - ``served_at``: diff, Redis, outbox, Slack call).
Then no new task starts and the daemon runs on until every measured finish shows on its card, at most one
interval + jitter + 10 s; a finish still not shown is counted ``undelivered`` (an infinite latency in the
percentiles). Percentiles are nearest-rank. API calls: the simulator's task-list requests during the
measured seconds, per second. Clocks: ``time.time()`` of two processes on one host. Also counted, to
explain the detection delay: how often, after a poll that saw a task in progress, the scheduler asked for
the short interval and was refused it for want of headroom (each client's ``has_headroom()`` wrapped and
counted, its answer unchanged), the instance then waiting a whole interval.

Targets, as figures of the same run: p50 < 5 s and p99 < 8 s with active polling, and its task-list
calls per second / those of ``active_interval: 0`` < 1.10. With ``--running 10`` and ``--seconds 240``
each phase measures some 35 finishes: its p99 is its slowest finish or close to it.

    .venv/bin/python -m bench.active_latency [--instances 1000] [--running 10] [--seconds 240] [--quick]

``--quick``: 200 instances, 2 running, 60 s (a smoke check, some 3 minutes). The default run takes about
10 minutes. Prints a table and writes bench/results/active_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import logging
import math
import platform
import random
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import measure, sim_server
from bench.measure import SimProcess, no_proxies, resolve_loop, run_async
from notifier.app import Daemon, freeze_startup_heap
from notifier.config.load import parse_config
from notifier.config.models import Config
from notifier.devtools.standins.slack import Change as SlackChange
from notifier.devtools.standins.slack import SlackStandIn
from tests.support.redis_server import RedisServer

RESULTS = Path(__file__).parent / "results" / "active_latency.json"
TARGET_P50 = 5.0
TARGET_P99 = 8.0
TARGET_CALL_RATIO = 1.10
HISTORY = 10
TOKEN = "xoxb-bench-active-latency"  # noqa: S105 - the stand-in's, no secret
CHANNEL = "#oncall"
#: The poll schedule's jitter (``poll.jitter`` default): an instance's polls are interval ± 10 % apart.
JITTER = 0.1
#: The card's context line names the task (``Task `id```) and the event (``Event `id` (task.succeeded)``).
TASK_RE = re.compile(r"Task `([^`]+)`")
EVENT_RE = re.compile(r"\((task\.[a-z]+)\)")
DETAILS = {"old_capacity": "0.125", "new_capacity": "0.25"}

Json = dict[str, Any]


# -- the simulator process ------------------------------------------------------------------------------


class TaskSimulator(sim_server.BenchSimulator):
    """The benchmark simulator with tasks started and finished on chosen instances, recorded as changes."""

    def start_on(self, instance_id: str) -> tuple[str, float]:
        task_id = self.start_task(instance_id, "EXTEND", details=DETAILS)
        return task_id, self._record(task_id, "started", instance_id)

    def finish_on(self, instance_id: str, task_id: str) -> float:
        self.finish_task(instance_id, task_id)
        return self._record(task_id, "finished", instance_id)

    def _record(self, task_id: str, kind: str, instance_id: str) -> float:
        change = sim_server.Change(task_id, kind, instance_id, time.time())
        self.changes.append(change)
        self._pending.setdefault(instance_id, []).append(change)  # served_at: set by the next task list
        return change.visible_at


def answer(sim: TaskSimulator, line: str) -> Json:
    command, *words = line.split()
    if command == "start" and len(words) == 1:
        task_id, at = sim.start_on(words[0])
        return {"task_id": task_id, "at": at}
    if command == "finish" and len(words) == 2:
        return {"at": sim.finish_on(words[0], words[1])}
    return sim_server.answer(sim, line)  # stats, changes...


async def serve_simulator(instances: int, history: int) -> None:
    """``--simulator``: serve, print the base URL, answer stdin lines until stdin closes (or a signal)."""
    sim = TaskSimulator(instances, history)
    print(await sim.start("127.0.0.1", 0), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while line := await reader.readline():
            if line.strip():
                sys.stdout.write(json.dumps(answer(sim, line.decode())) + "\n")
                sys.stdout.flush()

    tasks = [asyncio.create_task(commands()), asyncio.create_task(stop.wait())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await sim.stop()


def simulator(instances: int, history: int) -> contextlib.AbstractAsyncContextManager[SimProcess]:
    """This module's ``--simulator`` in a process of its own, stopped (stdin closed) on exit."""
    return measure.simulator(instances, history, 120, module=("bench.active_latency", "--simulator"))


# -- one phase ------------------------------------------------------------------------------------------


@dataclass
class Plan:
    instances: int
    running: int
    seconds: float
    interval: float
    warm_up: float
    min_duration: float
    max_duration: float
    seed: int
    rate_limit: float = 100.0

    @property
    def tail(self) -> float:
        """The longest the daemon runs on after the measured seconds for the last finishes to show."""
        return self.interval * (1 + JITTER) + 10.0


@dataclass
class Finish:
    task_id: str
    instance_id: str
    at: float  # time.time() in the simulator once the finish was visible


@dataclass
class Cards:
    """What the stand-in shows, per task: when its card was posted, when it first showed the outcome."""

    posted: dict[str, float] = field(default_factory=dict)
    outcome: dict[str, tuple[float, str]] = field(default_factory=dict)  # task → (time, "updated"/"posted")
    #: Set once every task given to :meth:`expect` shows its outcome.
    shown: asyncio.Event = field(default_factory=asyncio.Event)
    _awaited: set[str] | None = None

    def expect(self, task_ids: set[str]) -> None:
        self._awaited = task_ids - self.outcome.keys()
        if not self._awaited:
            self.shown.set()

    def on_change(self, change: SlackChange) -> None:
        if change.kind not in ("posted", "updated") or change.message.thread_ts is not None:
            return
        now = time.time()
        text = json.dumps(change.message.blocks) if change.message.blocks else change.message.text
        task, event = TASK_RE.search(text), EVENT_RE.search(text)
        if task is None:
            return
        if event is not None and event.group(1) == "task.succeeded":
            self.outcome.setdefault(task.group(1), (now, change.kind))
            if self._awaited is not None:
                self._awaited.discard(task.group(1))
                if not self._awaited:
                    self.shown.set()
        elif change.kind == "posted":
            self.posted.setdefault(task.group(1), now)


@dataclass
class Headroom:
    """How often, after a poll, an instance with a task in progress was given ``active_interval`` (its
    endpoint had headroom) or refused it (``interval`` instead): each client's ``has_headroom()`` counted,
    which the scheduler asks only then. Observed, not changed."""

    asked: int = 0
    refused: int = 0

    def watch(self, daemon: Daemon) -> None:
        for client in daemon.cloud.clients.values():
            setattr(client, "has_headroom", self._counted(client.has_headroom))  # noqa: B010

    def _counted(self, check: Callable[[], bool]) -> Callable[[], bool]:
        def counted() -> bool:
            ok = check()
            self.asked += 1
            self.refused += not ok
            return ok

        return counted


class Driver:
    """Keeps ``plan.running`` tasks running on distinct random instances, each for a random duration."""

    def __init__(self, sim: SimProcess, plan: Plan) -> None:
        self.sim = sim
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.ids = sim_server.instance_ids(plan.instances)
        self.finishes: list[Finish] = []
        self.stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._due: list[tuple[float, str, str]] = []  # (loop time to finish, instance, task)
        self._busy: set[str] = set()

    async def command(self, line: str) -> Any:
        async with self._lock:  # one pipe: one command at a time
            return await self.sim.command(line)

    async def _start(self, exclude: str | None = None) -> None:
        free = [i for i in self.ids if i not in self._busy and i != exclude]
        instance_id = self.rng.choice(free)
        duration = self.rng.uniform(self.plan.min_duration, self.plan.max_duration)
        answer = await self.command(f"start {instance_id}")
        self._busy.add(instance_id)
        due = asyncio.get_running_loop().time() + duration
        heapq.heappush(self._due, (due, instance_id, answer["task_id"]))

    async def run(self) -> None:
        """Until ``stop``: finish each task when due and start another one elsewhere."""
        loop = asyncio.get_running_loop()
        for _ in range(self.plan.running):
            await self._start()
        while not self.stop.is_set():
            due, instance_id, task_id = self._due[0]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), max(0.0, due - loop.time()))
            if self.stop.is_set():
                return
            heapq.heappop(self._due)
            answer = await self.command(f"finish {instance_id} {task_id}")
            self._busy.discard(instance_id)
            self.finishes.append(Finish(task_id, instance_id, answer["at"]))
            await self._start(exclude=instance_id)


def config(plan: Plan, sim_url: str, redis_url: str, slack_api: str, active: float, prefix: str) -> Config:
    data = {
        "cloud": sim_server.cloud_config(sim_url),
        "instances": [{"id": i} for i in sim_server.instance_ids(plan.instances)],
        "api": {"rate_limit": plan.rate_limit},
        "poll": {"interval": plan.interval, "active_interval": active},
        "redis": {"url": redis_url, "key_prefix": prefix},
        "channels": {
            "oncall": {"type": "slack", "token": TOKEN, "channel": CHANNEL, "base_url": slack_api, "rate": 50}
        },
    }
    return parse_config(json.dumps(data), "bench", {})  # JSON is YAML


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def figure(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else round(value, 3)


def spread(values: Sequence[float]) -> Json:
    return {
        "n": len(values),
        **{f"p{q}": figure(percentile(values, q)) for q in (50, 90, 99)},
        "max": figure(max(values, default=None)),
    }


def figures(
    finishes: list[Finish], cards: Cards, changes: list[list[Any]], window: tuple[float, float]
) -> Json:
    """Latency of the finishes in the measured window, split into detection and delivery."""
    served = {(row[0], row[1]): row[4] for row in changes}  # (task, kind) → served_at
    measured = [f for f in finishes if window[0] <= f.at < window[1]]
    latency: list[float] = []
    detection: list[float] = []
    delivery: list[float] = []
    rows: list[Json] = []
    undelivered = posted_finished = 0
    for f in measured:
        shown = cards.outcome.get(f.task_id)
        seen = served.get((f.task_id, "finished"))
        if shown is None:
            undelivered += 1
            latency.append(math.inf)
        else:
            latency.append(shown[0] - f.at)
            posted_finished += shown[1] == "posted"
        if seen is not None:
            detection.append(seen - f.at)
            if shown is not None:
                delivery.append(shown[0] - seen)
        rows.append(
            {
                "task": f.task_id,
                "instance": f.instance_id,
                "latency": figure(latency[-1]),
                "detection": figure(None if seen is None else seen - f.at),
                "shown_by": None if shown is None else shown[1],
            }
        )
    slowest = sorted(rows, key=lambda r: -math.inf if r["latency"] is None else -r["latency"])[:5]
    return {
        "latency_s": spread(latency),
        "detection_s": spread(detection),
        "delivery_s": spread(delivery),
        "undelivered": undelivered,
        "posted_finished": posted_finished,
        "slowest": slowest,
    }


async def phase(plan: Plan, redis_url: str, active: float, prefix: str) -> Json:
    """One phase: a fresh simulator and stand-in, the daemon, the tasks, the figures."""
    cards = Cards()
    headroom = Headroom()
    started = time.perf_counter()
    async with (
        simulator(plan.instances, HISTORY) as sim,
        SlackStandIn(token=TOKEN, channels=[CHANNEL], on_change=cards.on_change) as slack,
    ):
        cfg = config(plan, sim.base_url, redis_url, slack.api_base_url, active, prefix)
        driver = Driver(sim, plan)
        async with Daemon(cfg) as daemon:
            freeze_startup_heap(cfg.poll.interval)  # as `dcs-notifier run` does
            headroom.watch(daemon)
            running = asyncio.create_task(daemon.run())
            driving = asyncio.create_task(driver.run())
            try:
                await asyncio.sleep(plan.warm_up)
                before = await driver.command("stats")
                asked, refused = headroom.asked, headroom.refused
                window_start = time.time()
                await asyncio.sleep(plan.seconds)
                after = await driver.command("stats")
                asked, refused = headroom.asked - asked, headroom.refused - refused
                window_end = time.time()
                driver.stop.set()
                await driving
                # The last finishes: until each shows on its card, at most the tail.
                cards.expect({f.task_id for f in driver.finishes if window_start <= f.at < window_end})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cards.shown.wait(), plan.tail)
                changes = (await driver.command("changes"))["changes"]
            finally:
                driver.stop.set()
                daemon.request_stop()
                await asyncio.wait_for(asyncio.gather(running, driving, return_exceptions=True), 60)
            if running.exception() is not None:
                raise RuntimeError(f"the daemon failed: {running.exception()!r}")
        ratelimited = slack.ratelimited
    elapsed = window_end - window_start
    result = figures(driver.finishes, cards, changes, (window_start, window_end))
    result.update(
        active_interval=active,
        measured_seconds=round(elapsed, 1),
        task_calls_per_s=round((after["task_requests"] - before["task_requests"]) / elapsed, 3),
        api_calls_per_s=round((after["requests"] - before["requests"]) / elapsed, 3),
        active_polls_asked=asked,
        active_polls_refused=refused,
        cards_posted=len(cards.posted),
        slack_ratelimited=ratelimited,
        simulator_cpu_s=round(after["cpu_seconds"] - before["cpu_seconds"], 2),
        wall_seconds=round(time.perf_counter() - started, 1),
    )
    return result


async def run(plan: Plan, active: float) -> dict[str, Json]:
    no_proxies()
    phases: dict[str, Json] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), persistence=False)
        server.start()
        try:
            for name, interval, prefix in (("active", active, "al-active"), ("today", 0.0, "al-today")):
                print(f"phase {name} (active_interval {interval:g})...", file=sys.stderr, flush=True)
                phases[name] = await phase(plan, server.url, interval, prefix)
        finally:
            server.stop()
    return phases


def seconds_text(value: float | None) -> str:
    return "∞" if value is None else f"{value:.2f}"


def ms_text(value: float | None) -> str:
    return "∞" if value is None else f"{value * 1000:.0f}"


def table(phases: dict[str, Json]) -> str:
    head: tuple[str, ...] = ("phase", "n", "p50 s", "p90 s", "p99 s", "max s", "undeliv.")
    head += ("detect s p50/p99", "deliver ms p50/p99", "task calls/s")
    lines = ["{:<20} {:>4} {:>6} {:>6} {:>6} {:>6} {:>8} {:>16} {:>18} {:>12}".format(*head)]
    for p in phases.values():
        lat, det, dlv = p["latency_s"], p["detection_s"], p["delivery_s"]
        lines.append(
            f"{'active_interval ' + format(p['active_interval'], 'g'):<20} {lat['n']:>4} "
            f"{seconds_text(lat['p50']):>6} {seconds_text(lat['p90']):>6} {seconds_text(lat['p99']):>6} "
            f"{seconds_text(lat['max']):>6} {p['undelivered']:>8} "
            f"{seconds_text(det['p50']) + ' / ' + seconds_text(det['p99']):>16} "
            f"{ms_text(dlv['p50']) + ' / ' + ms_text(dlv['p99']):>18} "
            f"{p['task_calls_per_s']:>12.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=None, help="default 1000 (quick 200)")
    parser.add_argument("--running", type=int, default=None, help="tasks running at all times (default 1 %%)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="measured per phase (default 240, quick 60)"
    )
    parser.add_argument("--interval", type=float, default=30.0, help="poll.interval (default 30)")
    parser.add_argument("--active", type=float, default=5.0, help="poll.active_interval (default 5)")
    parser.add_argument(
        "--warm-up", type=float, default=None, help="unmeasured start (default 1.2 × interval)"
    )
    parser.add_argument("--min-duration", type=float, default=None, help="default 1.1 × interval + 2")
    parser.add_argument("--max-duration", type=float, default=None, help="default 3 × interval")
    parser.add_argument("--rate-limit", type=float, default=100.0, help="api.rate_limit (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="the tasks' schedule, the same in both phases")
    parser.add_argument("--quick", action="store_true", help="200 instances, 2 running, 60 s: a smoke check")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("--simulator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--history", type=int, default=HISTORY, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.simulator:
        asyncio.run(serve_simulator(args.instances or 1000, args.history))
        return
    instances = args.instances or (200 if args.quick else 1000)
    min_duration = args.min_duration or round(args.interval * (1 + JITTER) + 2, 1)
    plan = Plan(
        instances=instances,
        running=args.running or max(1, instances // 100),
        seconds=args.seconds or (60.0 if args.quick else 240.0),
        interval=args.interval,
        warm_up=args.warm_up if args.warm_up is not None else args.interval * 1.2,
        min_duration=min_duration,
        max_duration=max(min_duration, args.max_duration or args.interval * 3),
        seed=args.seed,
        rate_limit=args.rate_limit,
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    phases = run_async(lambda: run(plan, args.active), args.loop)
    active, today = phases["active"], phases["today"]
    ratio = round(active["task_calls_per_s"] / today["task_calls_per_s"], 3)
    p50, p99 = active["latency_s"]["p50"], active["latency_s"]["p99"]
    met = {
        "p50": p50 is not None and p50 < TARGET_P50,
        "p99": p99 is not None and p99 < TARGET_P99,
        "call_ratio": ratio < TARGET_CALL_RATIO,
    }
    result: Json = {
        "plan": vars(plan),
        "targets": {"p50_s": TARGET_P50, "p99_s": TARGET_P99, "call_ratio": TARGET_CALL_RATIO},
        "call_ratio": ratio,
        "targets_met": met,
        "loop": resolve_loop(args.loop),
        "python": platform.python_version(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "phases": phases,
    }
    print(
        f"task finish → card update, {plan.instances} instances, {plan.running} tasks running "
        f"({plan.min_duration:g}–{plan.max_duration:g} s each), poll.interval {plan.interval:g} s, "
        f"{plan.seconds:g} s measured per phase"
    )
    print(table(phases))
    print(f"p50 with active polling: {seconds_text(p50)} s (target < {TARGET_P50:g} s): {met['p50']}")
    print(f"p99 with active polling: {seconds_text(p99)} s (target < {TARGET_P99:g} s): {met['p99']}")
    print(f"task-list calls, active / today: {ratio} (target < {TARGET_CALL_RATIO}): {met['call_ratio']}")
    print(
        f"after a poll seeing a task in progress, active_interval granted "
        f"{active['active_polls_asked'] - active['active_polls_refused']} time(s), refused "
        f"{active['active_polls_refused']} (no headroom: polled again after interval instead)"
    )
    for name, p in phases.items():
        if p["undelivered"] or p["posted_finished"] or p["slack_ratelimited"]:
            print(
                f"{name}: {p['undelivered']} finish(es) never shown, {p['posted_finished']} card(s) posted "
                f"already finished, {p['slack_ratelimited']} Slack call(s) rate limited"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
