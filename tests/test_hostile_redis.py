"""Issue 10: Redis in odd states and operators' mistakes around it — OOM, NOAUTH, FLUSHALL while running,
two daemons on one config, instances that come and go — through the real daemon (in this process, or
the CLI as a subprocess where processes are the point), a redis-server of the test's own, the simulator
and a webhook receiver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.config.models import Config
from notifier.dcs.cloud import Cloud
from notifier.devtools.simulator import Simulator
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.pipeline.events import EventType, Notification
from notifier.pipeline.poll import Poller
from notifier.store.connect import Store
from notifier.store.keys import Keys
from notifier.store.snapshots import COMMIT_CHUNK, split
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK, WEBHOOK_SECRET
from tests.factories import event, task
from tests.support.daemons import running
from tests.support.observe import deliveries, polls_of
from tests.support.redis_server import RedisServer
from tests.support.wait import until

CONFIG = f"""
cloud: {{endpoint: "${{SIM_URL}}", project_id: "{PROJECT_ID}", ak: "{AK}", sk: "{SK}"}}
instances:
  - {{id: "{ORDERS}", name: orders-cache}}
  - {{id: "{SESSIONS}", name: sessions-cache}}
poll: {{interval: 0.2, jitter: 0}}
redis: {{url: "${{REDIS_URL}}", key_prefix: o}}
channels:
  audit: {{type: webhook, url: "${{AUDIT_URL}}", secret: "{WEBHOOK_SECRET}"}}
delivery: {{backoff_initial: 0.05, backoff_max: 0.2}}
"""


def config(sim: Simulator, redis_url: str, audit: WebhookReceiver, text: str = CONFIG, **env: str) -> Config:
    values = {"SIM_URL": str(sim.base_url), "REDIS_URL": redis_url, "AUDIT_URL": audit.url, **env}
    return parse_config(text, "hostile.yaml", values)


def redis_complaints(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "Redis" in r.getMessage()
    ]


def admin(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)


def errors(r: redis.Redis) -> int:
    return int(r.info("stats")["total_error_replies"])


def connections(r: redis.Redis) -> int:
    return int(r.info("stats")["total_connections_received"])


# -- OOM: refused writes are one episode; what changed meanwhile is still announced ---------------------


async def test_redis_out_of_memory_is_logged_once_and_the_started_task_is_still_announced(
    sim: Simulator, own_redis: RedisServer, audit: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: every poll of every instance logged the refused commit (308 ERROR lines in 50 s), and a
    task that started and finished while Redis refused writes lost its task.started."""
    caplog.set_level(logging.INFO)
    with admin(own_redis) as r:
        async with running(config(sim, own_redis.url, audit)):
            await polls_of(sim, ORDERS, 2)  # baselines done
            r.config_set("maxmemory-policy", "noeviction")
            r.config_set("maxmemory", 1)  # every write that may grow memory is refused: OOM
            tid = sim.start_task(ORDERS, "masterStandbySwapJob")
            await polls_of(sim, ORDERS, 5)
            sim.finish_task(ORDERS, tid)
            await polls_of(sim, ORDERS, 5)
            assert deliveries(audit) == []
            r.config_set("maxmemory", 0)
            await until(lambda: len(deliveries(audit)) >= 2, 10, "both events after Redis accepts writes")
    assert deliveries(audit) == [(tid, "task.started"), (tid, "task.succeeded")]
    complaints = redis_complaints(caplog)
    assert len(complaints) == 1, complaints
    assert complaints[0].startswith("Redis refuses commands (OutOfMemoryError")
    assert sum("Redis accepts commands again" in r.getMessage() for r in caplog.records) == 1


async def test_redis_asking_for_a_password_is_one_episode(
    sim: Simulator, own_redis: RedisServer, audit: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """NOAUTH on every connection (a password set, connections dropped): one ERROR line, one recovery."""
    caplog.set_level(logging.INFO)
    with admin(own_redis) as r:
        async with running(config(sim, own_redis.url, audit)):
            await polls_of(sim, ORDERS, 2)
            r.config_set("requirepass", "now-with-a-password")
            r.client_kill_filter(_type="normal", skipme=True)
            tid = sim.start_task(ORDERS, "masterStandbySwapJob")
            # Every poll now fails at its first Redis call (not reaching the API): wait for many refused
            # connections, i.e. many polls and delivery passes.
            refused = connections(r)
            await until(lambda: connections(r) >= refused + 30, 15, "30 connections refused")
            r.config_set("requirepass", "")
            await until(lambda: len(deliveries(audit)) >= 1, 15, "the start once Redis lets us in")
    assert deliveries(audit) == [(tid, "task.started")]
    complaints = redis_complaints(caplog)
    assert len(complaints) == 1, complaints
    assert "now-with-a-password" not in " ".join(complaints)
    assert "refuses commands (AuthenticationError" in complaints[0]  # the password, not an outage
    assert sum("Redis accepts commands again" in r.getMessage() for r in caplog.records) == 1


async def test_redis_refusing_our_user_by_acl_is_one_episode(
    sim: Simulator, own_redis: RedisServer, audit: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: NOPERM (an ACL change) was "a refused command", not an outage: every poll and every
    delivery pass logged it again."""
    caplog.set_level(logging.INFO)
    with admin(own_redis) as r:
        r.acl_setuser("ops", enabled=True, passwords=["+ops-password"], keys=["*"], channels=["*"],
                      commands=["+@all"])  # fmt: skip
        r.execute_command("AUTH", "ops", "ops-password")  # this connection keeps its rights
        async with running(config(sim, own_redis.url, audit)):
            await polls_of(sim, ORDERS, 2)
            r.acl_setuser("default", enabled=True, nopass=True, commands=["-@all", "+ping", "+hello"])
            tid = sim.start_task(ORDERS, "masterStandbySwapJob")
            refused = errors(r)  # polls stop at their first Redis call: count refusals instead
            await until(lambda: errors(r) >= refused + 30, 15, "30 commands refused")
            r.acl_setuser("default", enabled=True, nopass=True, commands=["+@all"], keys=["*"])
            await until(lambda: len(deliveries(audit)) >= 1, 15, "the start once Redis accepts commands")
    assert deliveries(audit) == [(tid, "task.started")]
    complaints = redis_complaints(caplog)
    assert len(complaints) == 1, complaints
    assert complaints[0].startswith("Redis refuses commands (NoPermissionError")
    assert sum("Redis accepts commands again" in r.getMessage() for r in caplog.records) == 1


# -- FLUSHALL while running --------------------------------------------------------------------------------


async def test_flushall_while_running_is_noticed_and_a_restart_repeats_nothing(
    sim: Simulator, redis_url: str, audit: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the flush went unnoticed (an unchanged poll reads nothing from Redis) until the next
    restart, which baselined every instance again and re-sent what was already delivered."""
    caplog.set_level(logging.INFO)
    cfg = config(sim, redis_url, audit)
    running_task = sim.start_task(ORDERS, "masterStandbySwapJob")
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        async with running(cfg):
            await until(lambda: len(deliveries(audit)) == 1, 10, "the running task announced")
            r.flushall()
            await until(lambda: r.exists("o:epoch") == 1, 10, "the loss noticed (epoch written again)")
            await until(lambda: r.hexists(f"o:snap:{PROJECT_ID}:{ORDERS}", running_task), 10, "state back")
            finished = sim.start_task(SESSIONS, "EXTEND")
            sim.finish_task(SESSIONS, finished)
            await until(lambda: len(deliveries(audit)) == 2, 10, "a change after the flush")
        async with running(cfg):  # a restart: nothing is announced again
            await polls_of(sim, ORDERS, 3)
            await polls_of(sim, SESSIONS, 3)
    assert deliveries(audit) == [(running_task, "task.started"), (finished, "task.succeeded")]
    assert sum("Redis has lost its data" in r.getMessage() for r in caplog.records) == 1
    assert sum(r.getMessage().startswith("baseline of") for r in caplog.records) == 2  # the first start only


# -- two daemons on one config -------------------------------------------------------------------------------


async def test_a_second_daemon_on_the_same_config_refuses_to_start(
    sim: Simulator, redis_url: str, audit: WebhookReceiver, tmp_path: Path
) -> None:
    """Before: two daemons without scaling.enabled both polled and delivered: 4.7 % of sends twice, no
    warning. Now the second refuses (exit 2, naming scaling.enabled); a successor of a daemon killed
    with SIGKILL starts once its lock expires; one stopped with SIGTERM hands over at once."""
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    env = {"PATH": os.environ.get("PATH", ""), "SIM_URL": str(sim.base_url), "REDIS_URL": redis_url,
           "AUDIT_URL": audit.url, "DCS_NOTIFIER_CONFIG": str(path)}  # fmt: skip

    started: list[asyncio.subprocess.Process] = []

    async def start() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "notifier.cli", "run", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        started.append(proc)
        return proc

    async def stop(proc: asyncio.subprocess.Process) -> str:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        return err.decode()

    try:
        first = await start()
        await polls_of(sim, ORDERS, 2, within=20)
        second = await start()
        _, err = await asyncio.wait_for(second.communicate(), 20)
        assert second.returncode == 2, err.decode()
        assert "another dcs-notifier" in err.decode() and "scaling.enabled" in err.decode()
        tid = sim.start_task(ORDERS, "masterStandbySwapJob")
        await until(lambda: len(deliveries(audit)) == 1, 10, "the first daemon still working")
        assert first.returncode is None
        first.kill()
        await first.wait()
        third = await start()  # after a SIGKILL: waits for the dead daemon's lock to expire, then runs
        sim.finish_task(ORDERS, tid)
        await until(lambda: len(deliveries(audit)) == 2, 20, "the successor delivering")
        err_third = await stop(third)
        assert third.returncode == 0, err_third
        assert "waiting up to" in err_third
        fourth = await start()  # after a SIGTERM the lock is released: no wait
        await polls_of(sim, ORDERS, 2, within=20)
        assert "waiting up to" not in await stop(fourth)
    finally:
        for proc in started:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert Counter(deliveries(audit)) == {(tid, "task.started"): 1, (tid, "task.succeeded"): 1}


# -- churn: nothing kept of instances that are gone ----------------------------------------------------------

DISCOVERING = f"""
cloud: {{endpoint: "${{SIM_URL}}", project_id: "{PROJECT_ID}", ak: "{AK}", sk: "{SK}", discover: true}}
poll: {{interval: 30}}
api: {{rate_limit: 100000}}
redis: {{url: "${{REDIS_URL}}", key_prefix: churn}}
channels:
  audit: {{type: webhook, url: "${{AUDIT_URL}}"}}
"""


async def test_instances_deleted_before_their_first_poll_leave_nothing_behind(
    sim: Simulator, redis_client: aioredis.Redis, redis_url: str, audit: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Before: the poller's per-instance maps and the client's path cache kept entries for instances
    deleted before their first poll, and each such instance logged its 404 DCS.3022 as an ERROR."""
    cfg = parse_config(DISCOVERING, "churn.yaml", {"SIM_URL": str(sim.base_url), "REDIS_URL": redis_url,
                                                   "AUDIT_URL": audit.url})  # fmt: skip
    cloud = Cloud(cfg)
    poller = Poller(cfg, cloud.clients, Store(redis_client, Keys("churn")))
    [spec] = poller.projects
    caplog.set_level(logging.INFO)
    try:
        for round_ in range(5):
            ids = [f"churn-{round_}-{n}" for n in range(40)]
            for iid in ids:
                sim.add_instance(iid, iid)
            await poller.discover(spec)
            for iid in ids:
                sim.remove_instance(iid)
            for target in list(poller.targets.values()):
                if target.instance.id.startswith("churn-"):
                    await poller.poll_target(target)
        assert {t.instance.id for t in poller.targets.values()} == {ORDERS, SESSIONS}
        assert all(not key.split("/")[1].startswith("churn-") for key in poller.health.announced)
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert sum("was deleted before its first poll" in r.getMessage() for r in caplog.records) == 200
    finally:
        await cloud.aclose()


# -- commits in parts --------------------------------------------------------------------------------------


def test_a_large_commit_is_cut_into_parts_that_keep_each_task_with_its_events() -> None:
    notes = []
    for n in range(COMMIT_CHUNK + 200):
        t = task(id=f"t{n}")
        notes.append(Notification(event=event(EventType.STARTED, t), channel="audit"))
    finished = task(id="t0", status="SUCCESS")
    notes.append(Notification(event=event(EventType.SUCCEEDED, finished, "RUNNING"), channel="audit"))
    fields = {f"t{n}": "{}" for n in range(COMMIT_CHUNK + 200)} | {f"silent{n}": "{}" for n in range(900)}
    parts = split(fields, notes)
    assert [n for _, ns in parts for n in ns] == notes  # every entry once, in order
    assert {k for fs, _ in parts for k in fs} == set(fields)
    assert all(len(fs) + len(ns) <= 2 * COMMIT_CHUNK for fs, ns in parts)
    [(where, _)] = [(i, fs) for i, (fs, _) in enumerate(parts) if "t0" in fs]
    assert any(n.event.type is EventType.SUCCEEDED for n in parts[where][1])  # with its last event


async def test_a_baseline_of_many_running_tasks_is_committed_in_parts_and_said_in_one_line(
    sim: Simulator, redis_url: str, audit: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a baseline seeing 400,000 tasks in progress was one MULTI/EXEC (24 s of event loop)."""
    for _ in range(1200):
        sim.start_task(ORDERS, "EXTEND")
    caplog.set_level(logging.INFO)
    async with Daemon(config(sim, redis_url, audit)) as daemon:
        polls = await daemon.poller.poll_all()
    [orders] = [p for p in polls if p.target.instance.id == ORDERS]
    assert orders.ok and len(orders.events) == 1200
    said = [r.getMessage() for r in caplog.records if "committed in" in r.getMessage()]
    assert said == [
        f"orders-cache ({ORDERS}): 1200 event(s) and 1200 task change(s) in one poll, committed in 3 parts"
    ]
    with redis.Redis.from_url(redis_url) as r:
        assert r.xlen("o:outbox:audit") == 1200
        assert r.hlen(f"o:snap:{PROJECT_ID}:{ORDERS}") == 1200 + 2  # tasks, ~meta, ~polled
