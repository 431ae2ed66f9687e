"""The notifier against the official Huawei SDK and a bare aiohttp loop: CPU per poll, Redis, RSS, latency.

    make bench            # bench.poll_cost, bench.history_cost, then this with --quick
    .venv/bin/python -m bench.compare [--instances 100,1000,10000] [--histories 10,10000] [--seconds 5]

For each scenario (N instances, H history tasks each) one command starts, all on 127.0.0.1:

* the DCS simulator in its own process (:mod:`bench.sim_server`): N instances, H finished tasks each
  over the last 7 days (up to 1 hour ago), generated lazily by arithmetic so that 10⁸ tasks fit; it
  verifies every signature, makes changes on demand and records when each became visible and when a poll
  first saw it;
* a real ``redis-server`` (:class:`tests.support.redis_server.RedisServer`, no persistence);
* a webhook receiver, in this (the coordinating) process, recording each arrival's ``time.time()``;

then runs each client in a process of its own, one after another, so that its CPU is counted alone
(``getrusage(RUSAGE_SELF)`` inside it, around its measured polls only; the whole process's CPU, start-up
included, is also read here with ``RUSAGE_CHILDREN`` when it exits):

1. ``aiohttp-bare`` — a bare aiohttp loop (32 in flight) doing the same GETs with nothing else: it only
   signs, requests, reads the body and parses it with orjson (what any aiohttp client must do);
2. ``sdk-sync`` — the official ``huaweicloudsdkdcs`` ``DcsClient``, one thread;
3. ``sdk-async`` — the official ``DcsAsyncClient`` (its pool of 8 threads), 32 in flight;
   (all three: :mod:`bench.baseline_proc`; the same steady polls as the notifier's, with the window
   [now - 300 s, now + 300 s], ``offset``/``limit`` 100, every page, for ``--seconds``)
4. ``notifier`` — :mod:`bench.notifier_proc`: the real ``Daemon``; an unmeasured baseline
   ``poll_all()`` (repeated, 3 rounds at most, while some polls fail), then ``poll_all()`` rounds for
   ``--seconds`` with (a) unchanged instances and (b) 1 % of the instances starting or finishing a task
   before each round; Redis commands per poll (``INFO commandstats`` deltas without INFO/CONFIG) and
   round trips per poll (the server's ``total_reads_processed`` delta: one read event per request
   received, a pipeline written at once counting once); peak RSS (``ru_maxrss``, the baseline included)
   and RSS after the rounds, holding N targets; then ``Daemon.run()`` with delivery on.

The baselines run first, while no instance has a task in the steady window, so every client's
"unchanged" polls return empty pages. The notifier and the bare loop run on uvloop when it is installed,
as ``dcs-notifier run`` does (``--loop asyncio`` for asyncio's own loop); the SDK has no event loop.

Latency (detection → delivery beyond the poll): during ``Daemon.run()`` with ``poll.interval`` =
max(1 s, N / 333) (the issue's 10,000 instances per 30 s: 333 polls/s, or all N every second when fewer)
and 10 % of the polls seeing a change (change rate 0.1 / interval of the instances per second) for one
interval plus ``--latency-seconds``, then a 2 s tail, each change has ``visible_at`` (made, in the
simulator), ``served_at`` (the first task-list answer for its instance after it: the poll that saw it)
and its webhook's arrival here. Latency = arrival - served_at, i.e. (arrival - visible_at) minus the
time the change waited for its poll (served_at - visible_at). Clocks: ``time.time()`` of three
processes on one host. Changes never served before the stop are left out (not yet polled); changes
superseded by a later change of the same instance in the same poll are left out (one poll saw both: the
notifier reports the later state only); served changes with no arrival are counted as ``undelivered``.
p50/p99 are over all measured changes, and again ("steady") over those served after the first interval
(every instance already polled once by this daemon: its start-up is over). The five slowest are listed
in the JSON with their time relative to the steady part. The CPU of ``Daemon.run()`` per poll (its own
scheduling, delivery on, 10 % changing) is shown too; then, one interval after the last change, the same
daemon runs ``--latency-seconds`` more with nothing changing ("quiet"): at N = 10,000 that is the issue's
deployment, 10,000 instances every 30 s, measured whole rather than derived from the cost per poll.

Derived: notifier/SDK-sync and notifier/aiohttp-bare ratios of CPU s per 1,000 unchanged polls (same run:
the notifier pays for aiohttp like the bare loop does, so the second ratio is what the notifier adds);
for N = 10,000, the CPU share of one core at a 30 s interval = CPU s per poll × 10,000 / 30, and the
RSS of the notifier process holding 10,000 targets; per N, the H = max / H = min ratio of the
notifier's CPU per poll.

Scenarios: every N × H of ``--instances`` × ``--histories`` with N × H ≤ ``--max-tasks`` (default
10⁷): the notifier's baseline pages through ``poll.window`` (a day, ≈ H / 7 tasks per instance), so
10,000 × 10,000 would parse 14 M tasks before measuring anything (and hold them all in memory): it is
skipped and listed as such unless ``--max-tasks`` is raised. ``--quick`` (``make bench``): ``--seconds 2``,
latency 5 s, ``--max-tasks 10⁶`` (H = 10,000 only with N = 100). Without it: ``--seconds 5``, latency
10 s. How long each takes, and what was measured, is in the README (Scaling).

``--profile``: also runs the notifier once more per scenario under cProfile (unchanged rounds only) and
prints its top 15 functions by own time (bench/results/profile_N{n}_H{h}.txt).

Prints two tables and writes bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import platform
import pstats
import re
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.measure import resolve_loop, simulator
from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results.json"
PROFILES = Path(__file__).parent / "results"
SIM_START_TIMEOUT = 120.0
CLIENT_TIMEOUT = 1800.0
BASELINES = ("aiohttp-bare", "sdk-sync", "sdk-async")
#: The issue's deployment: 10,000 instances every 30 s.
TARGET_INSTANCES = 10_000
TARGET_INTERVAL = 30.0
TARGET_POLL_RATE = TARGET_INSTANCES / TARGET_INTERVAL
#: Share of the latency run's polls that see a change.
LATENCY_CHANGE_SHARE = 0.1
TAIL_SECONDS = 2.0
#: Webhook event type → the simulator's change kind it reports.
KINDS = {"task.started": "started", "task.succeeded": "finished", "task.failed": "finished"}
TARGETS = {
    "cpu_s_per_1000_unchanged_max": 0.15,
    "vs_sdk_sync_max_ratio": 1 / 5,
    "vs_aiohttp_bare_max_ratio": 1.3,
    "round_trips_per_unchanged_poll_max": 1.0,
    "history_ratio_max": 1.5,
    "cpu_share_10k_at_30s_max": 0.10,
    "rss_mib_10k_max": 150.0,
    "latency_p99_ms_max": 50.0,
}

Json = dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    instances: int
    history: int

    @property
    def name(self) -> str:
        return f"N{self.instances}_H{self.history}"

    @property
    def latency_interval(self) -> float:
        return max(1.0, self.instances / TARGET_POLL_RATE)


# -- the webhook receiver ------------------------------------------------------------------------------


@dataclass
class Receiver:
    """Records the first arrival (``time.time()``) of each (task id, change kind); answers 204."""

    arrivals: dict[tuple[str, str], float] = field(default_factory=dict)
    received: int = 0
    duplicates: int = 0
    base_url: str = ""
    _runner: web.AppRunner | None = None

    async def _receive(self, request: web.Request) -> web.Response:
        arrived = time.time()
        body = await request.read()
        self.received += 1
        try:
            payload = json.loads(body)
            kind = KINDS.get(payload["type"])
            task_id = payload["data"]["task"]["id"]
        except (ValueError, KeyError, TypeError):
            return web.Response(status=204)
        if kind is not None:
            if (task_id, kind) in self.arrivals:
                self.duplicates += 1
            self.arrivals.setdefault((task_id, kind), arrived)
        return web.Response(status=204)

    def reset(self) -> None:
        self.arrivals.clear()
        self.received = self.duplicates = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# -- the simulator process -----------------------------------------------------------------------------


# -- client processes ----------------------------------------------------------------------------------


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


async def run_client(module: str, args: Sequence[str]) -> Json:
    """Run ``python -m module args`` to its end; its last stdout line is its JSON report."""
    before = children_cpu()
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), CLIENT_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{module} {' '.join(args)} did not finish within {CLIENT_TIMEOUT:g} s") from None
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{module} {' '.join(args)} failed with exit code {proc.returncode}")
    report: Json = json.loads(lines[-1])
    # Reaped by now (communicate waits): the whole process, start-up and imports included.
    report["process_cpu_seconds"] = round(children_cpu() - before, 3)
    report["process_wall_seconds"] = round(time.perf_counter() - started, 3)
    return report


# -- latency -------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency(
    changes: Sequence[Sequence[Any]], arrivals: dict[tuple[str, str], float], steady_from: float
) -> Json:
    """Detection → delivery figures from the simulator's change records and the receiver's arrivals.

    ``steady_from``: changes served from then on (one poll interval after ``Daemon.run()`` began: every
    instance polled once already) are "steady"; the earlier ones share the daemon's start-up.
    """
    latest: dict[tuple[str, float], float] = {}  # (instance, served_at) → visible_at of its latest change
    for _task_id, _kind, instance_id, visible_at, served_at in changes:
        if served_at is not None:
            key = (instance_id, served_at)
            latest[key] = max(latest.get(key, visible_at), visible_at)
    beyond: list[float] = []
    steady: list[float] = []
    total: list[float] = []
    waited: list[float] = []
    slowest: list[tuple[float, float, str, str]] = []  # (beyond, served_at, instance, kind)
    unserved = superseded = undelivered = 0
    for task_id, kind, instance_id, visible_at, served_at in changes:
        if served_at is None:
            unserved += 1
            continue
        if latest[(instance_id, served_at)] != visible_at:
            superseded += 1
            continue
        arrived = arrivals.get((task_id, kind))
        if arrived is None:
            undelivered += 1
            continue
        beyond.append(arrived - served_at)
        if served_at >= steady_from:
            steady.append(arrived - served_at)
        total.append(arrived - visible_at)
        waited.append(served_at - visible_at)
        slowest.append((arrived - served_at, served_at, instance_id, kind))

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "changes": len(changes),
        "measured": len(beyond),
        "measured_steady": len(steady),
        "not_yet_polled": unserved,
        "superseded": superseded,
        "undelivered": undelivered,
        "beyond_poll_ms_p50": ms(percentile(beyond, 50)),
        "beyond_poll_ms_p99": ms(percentile(beyond, 99)),
        "beyond_poll_ms_max": ms(max(beyond) if beyond else None),
        "steady_beyond_poll_ms_p50": ms(percentile(steady, 50)),
        "steady_beyond_poll_ms_p99": ms(percentile(steady, 99)),
        "total_ms_p50": ms(percentile(total, 50)),
        "total_ms_p99": ms(percentile(total, 99)),
        "waited_for_poll_ms_p50": ms(percentile(waited, 50)),
        # The five slowest: [ms beyond the poll, s since the steady part began (<0: start-up), instance, kind]
        "slowest": [
            [ms(b), round(s - steady_from, 2), instance_id, kind]
            for b, s, instance_id, kind in sorted(slowest, reverse=True)[:5]
        ],
    }


# -- one scenario --------------------------------------------------------------------------------------


def top_functions(path: Path, count: int = 15) -> str:
    """The ``count`` functions with the most own time; paths cut to the package (``aiohttp/client.py``).

    cProfile counts every resumption of a coroutine as a call: ``ncalls`` of async functions are
    higher than the number of polls.
    """
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(count)
    text = out.getvalue().replace(f"{ROOT}/", "")
    return re.sub(r"\S*/(site-packages|lib/python3\.\d+)/", "", text)


async def run_scenario(scenario: Scenario, args: argparse.Namespace, receiver: Receiver) -> Json:
    n = str(scenario.instances)
    seconds = str(args.seconds)
    result: Json = {"instances": scenario.instances, "history": scenario.history}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), persistence=False)
        server.start()
        try:
            async with simulator(scenario.instances, scenario.history, SIM_START_TIMEOUT) as sim:
                clients: Json = {}
                common = ["--sim", sim.base_url, "--instances", n, "--seconds", seconds, "--loop", args.loop]
                for client in BASELINES:
                    log(f"  {scenario.name}: {client}")
                    clients[client] = await run_client("bench.baseline_proc", ["--client", client, *common])
                log(f"  {scenario.name}: notifier")
                receiver.reset()
                interval = scenario.latency_interval
                notifier_args = [
                    "--sim", sim.base_url,
                    "--redis", server.url,
                    "--receiver", receiver.base_url,
                    "--instances", n,
                    "--seconds", seconds,
                    "--loop", args.loop,
                ]  # fmt: skip
                latency_args = [
                    "--latency-seconds", str(interval + args.latency_seconds),
                    "--latency-interval", str(interval),
                    "--latency-rate", str(LATENCY_CHANGE_SHARE / interval),
                    "--tail", str(TAIL_SECONDS),
                    "--quiet-seconds", str(args.latency_seconds),
                ]  # fmt: skip
                clients["notifier"] = await run_client("bench.notifier_proc", [*notifier_args, *latency_args])
                changes = (await sim.command("changes"))["changes"]
                run = clients["notifier"]["latency_run"]
                result["latency"] = latency(changes, receiver.arrivals, run["started_at"] + run["interval"])
                result["latency"]["webhooks_received"] = receiver.received
                result["latency"]["duplicate_arrivals"] = receiver.duplicates
                result["simulator"] = await sim.command("stats")
                if args.profile:
                    log(f"  {scenario.name}: notifier under cProfile")
                    PROFILES.mkdir(parents=True, exist_ok=True)
                    prof = PROFILES / f"profile_{scenario.name}.prof"
                    await run_client(
                        "bench.notifier_proc",
                        [*notifier_args, "--latency-seconds", "0", "--profile", str(prof)],
                    )
                    text = top_functions(prof)
                    (PROFILES / f"profile_{scenario.name}.txt").write_text(text)
                    result["profile"] = str(prof.with_suffix(".txt").relative_to(ROOT))
                    print(f"\nnotifier, unchanged polls, {scenario.name}: top 15 by tottime\n{text}")
        finally:
            server.stop()
    result["clients"] = clients
    result["figures"] = figures(scenario, clients, result["latency"])
    result["scenario_wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def figures(scenario: Scenario, clients: Json, lat: Json) -> Json:
    """The headline numbers of one scenario."""
    notifier = clients["notifier"]
    unchanged, changing = notifier["unchanged"], notifier["changing"]
    ours = unchanged["cpu_s_per_1000_polls"]
    fig: Json = {
        "notifier_polls_per_second": unchanged["polls_per_second"],
        "notifier_cpu_s_per_1000_unchanged": ours,
        "notifier_cpu_s_per_1000_changing": changing["cpu_s_per_1000_polls"],
        "sdk_sync_cpu_s_per_1000": clients["sdk-sync"]["cpu_s_per_1000_polls"],
        "sdk_async_cpu_s_per_1000": clients["sdk-async"]["cpu_s_per_1000_polls"],
        "aiohttp_bare_cpu_s_per_1000": clients["aiohttp-bare"]["cpu_s_per_1000_polls"],
        "ratio_notifier_to_sdk_sync": _ratio(ours, clients["sdk-sync"]["cpu_s_per_1000_polls"]),
        "ratio_notifier_to_sdk_async": _ratio(ours, clients["sdk-async"]["cpu_s_per_1000_polls"]),
        "ratio_notifier_to_aiohttp_bare": _ratio(ours, clients["aiohttp-bare"]["cpu_s_per_1000_polls"]),
        "redis_commands_per_poll_unchanged": unchanged["redis_commands_per_poll"],
        "redis_round_trips_per_poll_unchanged": unchanged["redis_round_trips_per_poll"],
        "redis_commands_per_poll_changing": changing["redis_commands_per_poll"],
        "redis_round_trips_per_poll_changing": changing["redis_round_trips_per_poll"],
        "notifier_peak_rss_mib": notifier["peak_rss_mib"],
        "notifier_rss_mib_after_rounds": notifier.get("rss_mib_now"),
        "notifier_baseline_seconds": round(sum(b["wall_seconds"] for b in notifier["baseline"]), 1),
        "notifier_baseline_errors": sum(int(b["errors"]) for b in notifier["baseline"]),
        "latency_beyond_poll_ms_p50": lat["beyond_poll_ms_p50"],
        "latency_beyond_poll_ms_p99": lat["beyond_poll_ms_p99"],
        "latency_samples": lat["measured"],
        "latency_steady_beyond_poll_ms_p99": lat["steady_beyond_poll_ms_p99"],
        "latency_steady_samples": lat["measured_steady"],
        "errors": sum(int(c.get("errors", 0)) for c in clients.values() if "errors" in c)
        + int(unchanged["errors"])
        + int(changing["errors"]),
    }
    run = notifier.get("latency_run")
    if run and run["requests"]:
        # Daemon.run(): its own scheduling, delivery on, 10 % of the polls seeing a change; overall (with
        # the start-up: every instance's first poll by this daemon) and after the first interval.
        fig["daemon_run_cpu_s_per_1000_polls"] = round(run["cpu_seconds"] / run["requests"] * 1000, 3)
        fig["daemon_run_cpu_share"] = run["cpu_share_of_one_core"]
        fig["daemon_run_steady_cpu_s_per_1000_polls"] = run["steady"]["cpu_s_per_1000_polls"]
        fig["daemon_run_steady_cpu_share"] = run["steady"]["cpu_share_of_one_core"]
        quiet = run.get("quiet")
        if quiet and quiet["requests"]:
            # Daemon.run() with nothing changing: the whole daemon's cost at this interval.
            fig["daemon_run_quiet_cpu_s_per_1000_polls"] = quiet["cpu_s_per_1000_polls"]
            fig["daemon_run_quiet_cpu_share"] = quiet["cpu_share_of_one_core"]
    if ours is not None:
        # CPU share of one core polling 10,000 instances every 30 s at this cost per poll.
        fig["cpu_share_10k_at_30s"] = round(ours / 1000 * TARGET_INSTANCES / TARGET_INTERVAL, 4)
    return fig


# -- the report ----------------------------------------------------------------------------------------

CPU_COLUMNS = [
    ("N", "instances"),
    ("H", "history"),
    ("polls/s", "notifier_polls_per_second"),
    ("notifier", "notifier_cpu_s_per_1000_unchanged"),
    ("1%chg", "notifier_cpu_s_per_1000_changing"),
    ("sdk-sync", "sdk_sync_cpu_s_per_1000"),
    ("sdk-async", "sdk_async_cpu_s_per_1000"),
    ("bare-aio", "aiohttp_bare_cpu_s_per_1000"),
    ("n/sdk", "ratio_notifier_to_sdk_sync"),
    ("n/bare", "ratio_notifier_to_aiohttp_bare"),
]
DETAIL_COLUMNS = [
    ("N", "instances"),
    ("H", "history"),
    ("cmds/poll", "redis_commands_per_poll_unchanged"),
    ("rt/poll", "redis_round_trips_per_poll_unchanged"),
    ("cmds/poll 1%", "redis_commands_per_poll_changing"),
    ("rt/poll 1%", "redis_round_trips_per_poll_changing"),
    ("run_cpu/1k", "daemon_run_cpu_s_per_1000_polls"),
    ("steady", "daemon_run_steady_cpu_s_per_1000_polls"),
    ("quiet", "daemon_run_quiet_cpu_s_per_1000_polls"),
    ("rss_peak_MiB", "notifier_peak_rss_mib"),
    ("rss_now_MiB", "notifier_rss_mib_after_rounds"),
    ("baseline_s", "notifier_baseline_seconds"),
    ("baseline_err", "notifier_baseline_errors"),
    ("lat_p50_ms", "latency_beyond_poll_ms_p50"),
    ("lat_p99_ms", "latency_beyond_poll_ms_p99"),
    ("lat_n", "latency_samples"),
    ("steady_p99", "latency_steady_beyond_poll_ms_p99"),
    ("steady_n", "latency_steady_samples"),
    ("errors", "errors"),
]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table(rows: Sequence[Json], columns: Sequence[tuple[str, str]]) -> str:
    cells = [[title for title, _ in columns], *([_cell(row.get(key)) for _, key in columns] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells)


def summary(scenarios: Sequence[Json]) -> Json:
    """Whole-run figures: history ratios, the 10,000-instance deployment, targets met."""
    out: Json = {"history_ratio": {}}
    by_n: dict[int, dict[int, float]] = {}
    for s in scenarios:
        cost = s["figures"]["notifier_cpu_s_per_1000_unchanged"]
        if cost is not None:
            by_n.setdefault(s["instances"], {})[s["history"]] = cost
    for n, costs in sorted(by_n.items()):
        if len(costs) > 1:
            out["history_ratio"][str(n)] = _ratio(costs[max(costs)], costs[min(costs)])
    big = [s for s in scenarios if s["instances"] == TARGET_INSTANCES]
    if big:
        fig = min(big, key=lambda s: s["history"])["figures"]
        out["deployment_10k_at_30s"] = {
            "cpu_share_of_one_core": fig.get("cpu_share_10k_at_30s"),
            "rss_mib": fig["notifier_peak_rss_mib"],
            "rss_mib_after_rounds": fig["notifier_rss_mib_after_rounds"],
            "daemon_run_cpu_share_measured": fig.get("daemon_run_cpu_share"),
            "daemon_run_steady_cpu_share_measured": fig.get("daemon_run_steady_cpu_share"),
            "daemon_run_quiet_cpu_share_measured": fig.get("daemon_run_quiet_cpu_share"),
        }
    checks: Json = {}

    def worst(key: str) -> float | None:
        values = [s["figures"][key] for s in scenarios if s["figures"].get(key) is not None]
        return max(values) if values else None

    def check(name: str, value: float | None, limit: float) -> None:
        met = None if value is None else value <= limit
        checks[name] = {"worst": value, "limit": round(limit, 3), "met": met}

    check("cpu_s_per_1000_unchanged", worst("notifier_cpu_s_per_1000_unchanged"), 0.15)
    check("notifier_to_sdk_sync", worst("ratio_notifier_to_sdk_sync"), TARGETS["vs_sdk_sync_max_ratio"])
    check(
        "notifier_to_aiohttp_bare",
        worst("ratio_notifier_to_aiohttp_bare"),
        TARGETS["vs_aiohttp_bare_max_ratio"],
    )
    check(
        "round_trips_per_unchanged_poll",
        worst("redis_round_trips_per_poll_unchanged"),
        TARGETS["round_trips_per_unchanged_poll_max"],
    )
    ratios = [v for v in out["history_ratio"].values() if v is not None]
    check("history_ratio", max(ratios) if ratios else None, TARGETS["history_ratio_max"])
    if "deployment_10k_at_30s" in out:
        deployment = out["deployment_10k_at_30s"]
        check(
            "cpu_share_10k_at_30s", deployment["cpu_share_of_one_core"], TARGETS["cpu_share_10k_at_30s_max"]
        )
        check(
            "cpu_share_10k_at_30s_daemon_run",
            deployment["daemon_run_quiet_cpu_share_measured"],
            TARGETS["cpu_share_10k_at_30s_max"],
        )
        check("rss_mib_10k", deployment["rss_mib"], TARGETS["rss_mib_10k_max"])
    check("latency_p99_ms", worst("latency_beyond_poll_ms_p99"), TARGETS["latency_p99_ms_max"])
    check("latency_p99_ms_steady", worst("latency_steady_beyond_poll_ms_p99"), TARGETS["latency_p99_ms_max"])
    out["targets"] = checks
    return out


def print_report(result: Json) -> None:
    rows = [
        {"instances": s["instances"], "history": s["history"], **s["figures"]} for s in result["scenarios"]
    ]
    print()
    print(
        f"CPU seconds per 1,000 polls (each client in its own process; {result['seconds']} s per phase; "
        f"event loop: {result['loop']})"
    )
    print(table(rows, CPU_COLUMNS))
    print()
    print(
        "notifier: Redis commands and round trips per poll (unchanged / 1 % changing), CPU s per 1,000 polls"
        " in Daemon.run()\n(10 % changing: overall / after the first interval; quiet: nothing changing), RSS"
        " (peak, after the rounds),\nbaseline poll_all() wall time and failed polls, detection → delivery"
        " beyond the poll (ms)"
    )
    print(table(rows, DETAIL_COLUMNS))
    for skipped in result["skipped"]:
        print(f"skipped N={skipped['instances']} H={skipped['history']}: {skipped['reason']}")
    for failed in result["failed"]:
        print(f"FAILED N={failed['instances']} H={failed['history']}: {failed['error']}")
    summ = result["summary"]
    print()
    for n, ratio in summ["history_ratio"].items():
        print(f"history ratio (notifier CPU per poll, H max / H min) at N={n}: {_cell(ratio)}")
    deployment = summ.get("deployment_10k_at_30s")
    if deployment:
        share = deployment["cpu_share_of_one_core"]
        percent = _cell(share * 100 if share is not None else None)
        print(
            f"10,000 instances every 30 s: {percent} % of one core, "
            f"peak RSS {_cell(deployment['rss_mib'])} MiB "
            f"({_cell(deployment['rss_mib_after_rounds'])} MiB after the rounds)"
        )
        measured = deployment["daemon_run_cpu_share_measured"]
        steady = deployment["daemon_run_steady_cpu_share_measured"]
        quiet = deployment["daemon_run_quiet_cpu_share_measured"]
        print(
            "  measured in Daemon.run() at 30 s: "
            f"{_cell(quiet * 100 if quiet is not None else None)} % of one core with nothing changing; "
            "with delivery and 10 % of polls changing "
            f"{_cell(measured * 100 if measured is not None else None)} % overall, "
            f"{_cell(steady * 100 if steady is not None else None)} % after the first interval"
        )
    for name, check in summ["targets"].items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
        print(f"target {name}: worst {_cell(check['worst'])} (limit {_cell(check['limit'])}): {verdict}")
    print(f"total wall time {result['wall_seconds']} s; written to {RESULTS.relative_to(ROOT)}")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def numbers(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers, e.g. 100,1000")
    return values


def report(args: argparse.Namespace, scenarios: list[Json], skipped: list[Json], failed: list[Json]) -> Json:
    return {
        "seconds": args.seconds,
        "latency_seconds": args.latency_seconds,
        "quick": args.quick,
        "max_tasks": args.max_tasks,
        "loop": resolve_loop(args.loop),
        "method": {
            "cpu": "getrusage(RUSAGE_SELF) in each client process around its measured polls only",
            "redis_commands": "INFO commandstats deltas, without info/config",
            "redis_round_trips": "INFO stats total_reads_processed delta minus the bench's own INFO calls",
            "latency": "webhook arrival - first task-list answer after the change (time.time(), one host)",
            "history": "lazy: one arithmetic layout for every instance, pages built on demand",
            "latency_interval": "max(1 s, N / 333): 333 polls/s as 10,000 instances every 30 s",
            "latency_change_rate": f"{LATENCY_CHANGE_SHARE} / interval of the instances per second",
        },
        "targets": TARGETS,
        "python": platform.python_version(),
        "machine": {"cpus": _cpus(), "platform": platform.platform()},
        "scenarios": scenarios,
        "skipped": skipped,
        "failed": failed,
        "summary": summary(scenarios),
    }


async def run(args: argparse.Namespace) -> Json:
    """Every planned scenario; one that fails is recorded as such and the others still run.

    ``bench/results.json`` is rewritten after each scenario, so an interrupted run keeps what it measured.
    """
    started = time.perf_counter()
    planned: list[Scenario] = []
    skipped: list[Json] = []
    for history in args.histories:
        for instances in args.instances:
            if instances * history > args.max_tasks:
                reason = f"N × H = {instances * history:,} tasks > --max-tasks {args.max_tasks:,}"
                skipped.append({"instances": instances, "history": history, "reason": reason})
            else:
                planned.append(Scenario(instances, history))
    receiver = Receiver()
    await receiver.start()
    scenarios: list[Json] = []
    failed: list[Json] = []
    try:
        for scenario in planned:
            log(f"scenario N={scenario.instances} H={scenario.history}")
            try:
                scenarios.append(await run_scenario(scenario, args, receiver))
            except Exception as exc:
                log(f"scenario N={scenario.instances} H={scenario.history} failed: {exc}")
                where = {"instances": scenario.instances, "history": scenario.history}
                failed.append({**where, "error": str(exc)})
            partial = report(args, scenarios, skipped, failed)
            partial["wall_seconds"] = round(time.perf_counter() - started, 1)
            RESULTS.write_text(json.dumps(partial, indent=2) + "\n")
    finally:
        await receiver.stop()
    result = report(args, scenarios, skipped, failed)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def _cpus() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--instances", type=numbers, default=[100, 1000, 10_000], help="default: 100,1000,10000"
    )
    parser.add_argument("--histories", type=numbers, default=[10, 10_000], help="default: 10,10000")
    parser.add_argument("--seconds", type=float, default=None, help="per measured phase (default 5, quick 2)")
    parser.add_argument(
        "--latency-seconds", type=float, default=None, help="Daemon.run() changes (default 10, quick 5)"
    )
    parser.add_argument(
        "--max-tasks", type=int, default=None, help="skip N × H above (default 1e7, quick 1e6)"
    )
    parser.add_argument("--quick", action="store_true", help="shorter phases, fewer big-history scenarios")
    parser.add_argument("--profile", action="store_true", help="also cProfile the notifier's unchanged polls")
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of the notifier and aiohttp-bare (auto: uvloop when installed, as dcs-notifier run)",
    )
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 2.0 if args.quick else 5.0
    if args.latency_seconds is None:
        args.latency_seconds = 5.0 if args.quick else 10.0
    if args.max_tasks is None:
        args.max_tasks = 10**6 if args.quick else 10**7
    result = asyncio.run(run(args))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)


if __name__ == "__main__":
    main()
