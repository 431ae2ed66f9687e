"""Review of issue 10's hardening: each test here shows a way the change still loses, repeats or
refuses what it should not. Real things only: redis-servers on free ports, the DCS simulator, a webhook
receiver, the daemon run in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis
import redis.asyncio as aioredis

from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.config.models import Config
from notifier.dcs.cloud import Cloud
from notifier.devtools.simulator import Fault, Simulator
from notifier.devtools.simulator.state import SkewedClock
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.pipeline.poll import Poller
from notifier.store.connect import Store
from notifier.store.keys import Keys
from notifier.store.leases import DaemonConflict
from tests import test_hostile_redis as hostile
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK
from tests.support.daemons import running
from tests.support.observe import deliveries, polls_of
from tests.support.redis_server import RedisServer
from tests.support.wait import until

CONFIG = hostile.CONFIG.replace("key_prefix: o}", "key_prefix: rv}")
SCALING = CONFIG + 'scaling: {enabled: true, replica: "${REPLICA}", lease_ttl: 0.6}\n'


def config(sim: Simulator, redis_url: str, audit: WebhookReceiver, text: str = CONFIG, **env: str) -> Config:
    return hostile.config(sim, redis_url, audit, text, **env)


def outbox(r: redis.Redis) -> list[tuple[str, str]]:
    """(task id, event type) of every entry queued in the audit channel's outbox, in order."""
    out = []
    for _, fields in r.xrange("rv:outbox:audit"):
        ev = json.loads(fields["n"])["event"]
        out.append(((ev["task"] or {}).get("id", ""), ev["type"]))
    return out


def said(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


@contextlib.asynccontextmanager
async def started(daemon: Daemon) -> AsyncIterator[asyncio.Task[None]]:
    """``daemon.run()`` as a task; stopped and closed on exit whatever it raised."""
    task = asyncio.create_task(daemon.run())
    try:
        yield task
    finally:
        daemon.request_stop()
        with contextlib.suppress(DaemonConflict):
            await asyncio.wait_for(task, 15)
        await daemon.aclose()


# -- Redis losing its data while the daemon runs ---------------------------------------------------------


async def test_a_change_committed_before_the_loss_is_noticed_does_not_defeat_the_restore(
    sim: Simulator, redis_url: str, redis_client: aioredis.Redis, audit: WebhookReceiver
) -> None:
    """The daemon looks for ``{p}:epoch`` every few seconds; a poll that finds a change in between
    commits only that change into the emptied Redis (with a fresh ~meta). When the loss is noticed,
    restore() is then futile: the next poll reads that partial snapshot (restoring only when it reads
    nothing), so every task it lacks is announced again at once — and delivered again, the
    notification log having gone with the flush."""
    cfg = config(sim, redis_url, audit)
    cloud = Cloud(cfg)
    try:
        poller = Poller(cfg, cloud.clients, Store(redis_client, Keys("rv")))
        running_task = sim.start_task(ORDERS, "masterStandbySwapJob")
        await poller.poll_all()  # baseline: the switchover's start is queued
        await redis_client.flushall()  # Redis loses everything (FLUSHALL, restart without persistence)
        scale = sim.start_task(ORDERS, "EXTEND")
        await poller.poll_all()  # a poll before the loss is noticed: it commits the scale's start
        assert poller.restore() == 2  # the daemon notices the epoch is gone (Daemon._check_data)
        await poller.poll_all()
        await poller.poll_all()
        restarted = Poller(cfg, cloud.clients, Store(redis_client, Keys("rv")))
        await restarted.poll_all()
    finally:
        await cloud.aclose()
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        queued = outbox(r)
    assert queued == [(scale, "task.started")], "announced again after the restore: " + repr(
        [q for q in queued if q[0] == running_task]
    )


async def test_an_instance_failing_when_redis_lost_its_data_is_not_baselined_again_at_the_next_start(
    sim: Simulator, redis_url: str, audit: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """restore() only marks the state to write back with the instance's next successful poll. An
    instance whose API answers 503 at that moment has none before the daemon is restarted (a deploy):
    what it held in memory is lost, and the next start baselines it — its task in progress is announced
    again ("nor at the next start is anything announced twice")."""
    caplog.set_level(logging.INFO)
    cfg = config(sim, redis_url, audit)
    tid = sim.start_task(ORDERS, "masterStandbySwapJob")
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        async with running(cfg):
            await until(lambda: len(deliveries(audit)) == 1, 10, "the switchover announced")
            sim.inject(Fault.server_error(503), times=10_000, instance_id=ORDERS)
            await polls_of(sim, ORDERS, 1)
            r.flushall()
            await until(lambda: said(caplog, "Redis has lost its data"), 10, "the loss noticed")
            await polls_of(sim, SESSIONS, 3)  # the healthy instance wrote its state back meanwhile
        sim.clear_faults()
        async with running(cfg):  # restarted (a deploy); the API answers again
            await polls_of(sim, ORDERS, 3)
    assert deliveries(audit) == [(tid, "task.started")]


async def test_restore_when_redis_kept_its_data_does_not_overwrite_newer_state(
    sim: Simulator, redis_url: str, redis_client: aioredis.Redis, audit: WebhookReceiver
) -> None:
    """Passes (guard): the marker alone gone (deleted by hand, evicted) while another process
    (``dcs-notifier once``) recorded newer state — restore() must not write the older snapshot back,
    nor announce anything again."""
    cfg = config(sim, redis_url, audit)
    cloud = Cloud(cfg)
    try:
        daemon_side = Poller(cfg, cloud.clients, Store(redis_client, Keys("rv")))
        tid = sim.start_task(ORDERS, "EXTEND")
        await daemon_side.poll_all()
        sim.finish_task(ORDERS, tid)
        once_side = Poller(cfg, cloud.clients, Store(redis_client, Keys("rv")))
        await once_side.poll_all()  # records the success
        assert daemon_side.restore() == 2
        await daemon_side.poll_all()
        await daemon_side.poll_all()
    finally:
        await cloud.aclose()
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        queued = outbox(r)
        stored = json.loads(r.hget(f"rv:snap:{PROJECT_ID}:{ORDERS}", tid) or "{}")
    assert queued == [(tid, "task.started"), (tid, "task.succeeded")]
    assert stored.get("s") == "SUCCESS"


async def test_a_scaling_replica_writes_its_state_back_after_redis_lost_its_data(
    sim: Simulator, redis_url: str, audit: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The flush takes the shard leases with it: the next lease tick (every lease_ttl / 3) sees them
    lost and drops each instance's state (``w.known = None``; nothing is kept in ``remembered``); the
    next tick takes them back and wakes the instances, whose polls read nothing from Redis and baseline
    again — their tasks in progress announced twice — all before the epoch check comes (which then
    "restores" the fresh baselines). Here the flush lands right after an epoch check; with the defaults
    (interval 30, lease_ttl 30) a tick precedes the check in about a quarter of the cases. Replicas in
    other processes also miss the loss when another one has already written ``{p}:epoch`` back."""
    caplog.set_level(logging.INFO)
    text = CONFIG.replace("interval: 0.2", "interval: 0.6") + (
        'scaling: {enabled: true, replica: "replica-1", lease_ttl: 0.6}\n'
    )
    tid = sim.start_task(ORDERS, "masterStandbySwapJob")
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        async with running(config(sim, redis_url, audit, text)):
            await until(lambda: len(deliveries(audit)) == 1, 10, "the switchover announced")
            r.flushall()  # a lease tick (every 0.2 s) comes before the next epoch check (every 0.6 s)
            await until(lambda: said(caplog, "Redis has lost its data"), 5, "the loss noticed")
            await polls_of(sim, ORDERS, 3)
    assert deliveries(audit) == [(tid, "task.started")]


# -- the one-daemon lock ---------------------------------------------------------------------------------------


async def test_a_second_daemon_with_the_same_host_and_pid_refuses_to_run(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    """The lock's owner is ``{hostname}-{pid}``, and a holder of the same name is taken for this very
    daemon: two daemons that share it both run. That is two containers with PID 1 on the host's
    network (same hostname), or, as here, two daemons of one process."""
    cfg = config(sim, redis_url, audit)
    async with running(cfg):
        await polls_of(sim, ORDERS, 2)
        async with started(Daemon(cfg)) as second:
            with contextlib.suppress(AssertionError):
                await until(second.done, 4.5, "the second daemon refusing to start")
            refused = second.done() and isinstance(second.exception(), DaemonConflict)
    assert refused, "the second daemon runs beside the first (both poll and deliver everything)"


async def test_once_is_not_blocked_by_a_running_daemons_lock(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    """Passes (guard): ``once`` takes no lock; beside a running daemon it polls every instance."""
    cfg = config(sim, redis_url, audit)
    async with running(cfg):
        await polls_of(sim, ORDERS, 2)
        async with Daemon(cfg) as once:
            report = await asyncio.wait_for(once.once(), 10)
    assert sorted(p.instance.name for p in report.polls if p.ok) == ["orders-cache", "sessions-cache"]


async def test_sigterm_while_waiting_for_a_dead_daemons_lock_stops_at_once(
    sim: Simulator, redis_url: str, audit: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop requested while ``acquire`` waits for a killed predecessor's lock ends the wait's pause at
    once, so acquire spins on Redis (EVAL after EVAL) until the old lock expires; it then takes the
    lock and returns without running — and without releasing it: the next daemon must wait a TTL."""
    caplog.set_level(logging.INFO)
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        r.set("rv:daemon", "killed-host-4242", px=3000)  # a predecessor killed with SIGKILL
        daemon = Daemon(config(sim, redis_url, audit))
        owner = daemon.lock.owner if daemon.lock is not None else None
        async with started(daemon) as task:
            await until(lambda: said(caplog, "waiting up to"), 5, "the daemon waiting for the old lock")
            commands = int(r.info("stats")["total_commands_processed"])
            daemon.request_stop()
            done, _ = await asyncio.wait({task}, timeout=1.0)
            stopped_at_once = task in done
            with contextlib.suppress(DaemonConflict):
                await asyncio.wait_for(task, 10)
            spent = int(r.info("stats")["total_commands_processed"]) - commands
            left_behind = r.get("rv:daemon")
    problems = []
    if not stopped_at_once:
        problems.append("still starting 1 s after the stop was requested")
    if spent >= 100:
        problems.append(f"{spent} Redis commands while stopping")
    if left_behind == owner:
        problems.append("the stopped daemon left the lock held: its successor must wait for it")
    assert problems == []


async def test_a_replica_started_after_a_killed_daemon_waits_for_its_lock_instead_of_refusing(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    """Moving to scaling.enabled after the old daemon died (SIGKILL, OOM-killed): its lock is no longer
    renewed and expires within its TTL, as a successor without scaling waits for — but a replica's
    ``check_no_daemon`` refuses at once (exit 2, "a dcs-notifier without scaling.enabled ... runs"),
    and so does a daemon finding a killed replica's unexpired membership."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        r.set("rv:daemon", "killed-host-4242", px=1000)  # the old daemon, killed a moment ago
    cfg = config(sim, redis_url, audit, SCALING, REPLICA="replica-1")
    async with started(Daemon(cfg)) as task:
        await until(lambda: task.done() or bool(sim.task_requests(ORDERS)), 5, "a poll, or a refusal")
        refused = task.exception() if task.done() else None
    assert refused is None, f"refused to start: {refused}"


async def test_a_daemon_started_while_redis_was_down_does_not_run_beside_replicas(
    sim: Simulator, own_redis: RedisServer, audit: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Without Redis at start the daemon says it will check "when it answers" — but it only ever renews
    its own lock, never looks at ``{p}:replicas`` again, and the replicas check ``{p}:daemon`` at their
    start only: a daemon without scaling.enabled and a replica then both poll and deliver everything."""
    caplog.set_level(logging.INFO)
    replica_cfg = config(sim, own_redis.url, audit, SCALING, REPLICA="replica-1")
    daemon_cfg = config(sim, own_redis.url, audit)
    async with running(replica_cfg) as replica:
        await polls_of(sim, ORDERS, 2)
        own_redis.stop()
        async with started(Daemon(daemon_cfg)) as task:
            await until(lambda: said(caplog, "cannot check for another daemon now"), 10, "the start")
            own_redis.start()
            with contextlib.suppress(AssertionError):
                await until(lambda: task.done() or replica.stop.is_set(), 3, "one of the two giving way")
            gave_way = task.done() or replica.stop.is_set()
    assert gave_way, "a daemon without scaling.enabled runs beside a replica with scaling.enabled"


# -- the DCS API -------------------------------------------------------------------------------------------


async def test_a_date_header_far_off_does_not_break_every_poll_of_the_endpoint(
    redis_client: aioredis.Redis, redis_url: str, audit: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The API's ``Date`` (a gateway stamping year 9000) widens poll.skew to thousands of years; the
    next poll of every instance of that endpoint then fails with an unexpected OverflowError
    (``last - skew``), with a traceback, on every poll — one header's fault, not an answer's."""
    caplog.set_level(logging.INFO)
    far = SkewedClock(timedelta(days=7000 * 365))
    async with Simulator(
        project_id=PROJECT_ID, credentials={AK: SK}, gateway_clock=far, max_clock_skew=None
    ) as sim:
        sim.add_instance(ORDERS, "orders-cache")
        sim.add_instance(SESSIONS, "sessions-cache")
        cfg = config(sim, redis_url, audit)
        cloud = Cloud(cfg)
        try:
            poller = Poller(cfg, cloud.clients, Store(redis_client, Keys("rv")))
            await poller.poll_all()  # reads the Date header
            tid = sim.start_task(ORDERS, "EXTEND")
            second = await poller.poll_all()
        finally:
            await cloud.aclose()
    failures = {o.instance.name: str(o.error) for o in second if o.error is not None}
    assert failures == {}
    assert [(ev.task.id if ev.task else "", ev.type.value) for o in second for ev in o.events] == [
        (tid, "task.started")
    ]
    assert not said(caplog, "failed unexpectedly")


# -- configuration -----------------------------------------------------------------------------------------

FLEET = """
cloud:
  - name: prod
    credentials: {ak: "AK1", sk: "SK1"}
    filter: &base {names: ["orders-*"], statuses: [RUNNING]}
    projects:
      - project_id: "p-prod-1"
        endpoint: "http://127.0.0.1:8080"
        discover: true
        filter: &eu {<<: *base, statuses: [RUNNING, EXTENDING]}
  - name: staging
    credentials: {ak: "AK2", sk: "SK2"}
    discover: true
    filter: {<<: *eu, names: ["*"]}
    projects: [{project_id: "p-staging-1", endpoint: "http://127.0.0.1:8080"}]
redis: {url: "redis://127.0.0.1:6379/0"}
channels:
  audit: {type: webhook, url: "http://127.0.0.1:9/hook"}
"""


def test_a_merge_key_overriding_an_anchor_merged_further_up_is_not_a_duplicate() -> None:
    """PyYAML flattens a merged anchor in place when a mapping nearer the top merges it first; the
    duplicate-key check then runs on the anchor's already flattened pairs and takes the key its own
    ``<<: *base`` brought in for one written twice: a valid config refused with exit 2."""
    cfg = parse_config(FLEET, "fleet.yaml", {})
    statuses = {spec.project_id: spec.filter.statuses for spec in cfg.projects()}
    assert statuses["p-prod-1"] == ["RUNNING", "EXTENDING"]
