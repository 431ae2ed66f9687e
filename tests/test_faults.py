"""Issue 3's fault tests: never lose, never repeat a notification.

Each test injects a known set of task transitions through the simulator and counts, at the receivers,
unique event ids and duplicates. Faults of the process (kill -9, SIGTERM) run the real CLI as a
subprocess; faults of Redis use a redis-server of the test's own (AOF on, same data dir on restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.config.models import Config
from notifier.devtools.simulator import Simulator
from notifier.devtools.standins import CannedResponse, RecordedRequest
from notifier.devtools.standins.slack import SlackStandIn
from notifier.devtools.standins.webhook import WebhookReceiver
from tests.conftest import ORDERS, PROJECT_ID, SESSIONS
from tests.support.daemons import cli_env
from tests.support.redis_server import RedisServer
from tests.support.wait import until, until_async

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

CONFIG = """
cloud: {endpoint: "${SIM_URL}", project_id: "__PROJECT__", ak: "${CLOUD_SDK_AK}", sk: "${CLOUD_SDK_SK}"}
instances:
  - {id: "__ORDERS__", name: orders-cache}
  - {id: "__SESSIONS__", name: sessions-cache}
poll: {interval: 0.2}
redis: {url: "${REDIS_URL}", key_prefix: f}
channels:
  oncall: __ONCALL__
  audit: {type: webhook, url: "${AUDIT_URL}", secret: "__SECRET__"}
rules:
  - {name: switchovers, tasks: [masterStandbySwapJob], channels: [oncall, audit]}
  - {name: everything, channels: [audit]}
delivery: {max_attempts: 1000, backoff_initial: 0.05, backoff_max: 0.4, claim_idle: 1, stop_timeout: 10, group_wait: 0}
"""
CONFIG = (
    CONFIG.replace("__PROJECT__", PROJECT_ID)
    .replace("__ORDERS__", ORDERS)
    .replace("__SESSIONS__", SESSIONS)
    .replace("__SECRET__", SECRET)
)


def accepted(requests: list[RecordedRequest]) -> list[RecordedRequest]:
    return [r for r in requests if 200 <= r.status < 300]


def event_ids(requests: list[RecordedRequest]) -> Counter[str]:
    """Accepted deliveries per event id (webhook-id header, or the event id in a Slack message)."""
    ids: Counter[str] = Counter()
    for r in accepted(requests):
        ids[r.header("webhook-id") or _slack_event_id(r)] += 1
    return ids


def _slack_event_id(r: RecordedRequest) -> str:
    text = json.dumps(r.json)
    start = text.index("evt_")
    return text[start : start + 36]


def no_duplicates(requests: list[RecordedRequest]) -> None:
    dupes = {k: n for k, n in event_ids(requests).items() if n > 1}
    assert dupes == {}


def task_order(requests: list[RecordedRequest]) -> dict[str, list[str]]:
    """Per task id, the event types in the order the receiver accepted them."""
    order: dict[str, list[str]] = {}
    for r in accepted(requests):
        payload = json.loads(r.body)
        order.setdefault(payload["data"]["task"]["id"], []).append(payload["type"])
    return order


@dataclass
class Rig:
    sim: Simulator
    slack: SlackStandIn
    audit: WebhookReceiver
    redis_url: str
    tmp: Path
    audit_port: int  # kept across stop/start of the receiver
    oncall: str = ""

    def env(self) -> dict[str, str]:
        return cli_env(
            self.sim.base_url, self.redis_url, AUDIT_URL=f"http://127.0.0.1:{self.audit_port}/hooks/dcs"
        )

    def config_text(self) -> str:
        oncall = self.oncall or f'{{type: slack, webhook_url: "{self.slack.webhook_url}", rate: 20}}'
        return CONFIG.replace("__ONCALL__", oncall)

    def config(self) -> Config:
        return parse_config(self.config_text(), "faults.yaml", self.env())

    def write_config(self) -> Path:
        path = self.tmp / "config.yaml"
        path.write_text(self.config_text())
        return path

    async def cli(self, *args: str) -> asyncio.subprocess.Process:
        env = {**self.env(), "DCS_NOTIFIER_CONFIG": str(self.write_config())}
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "notifier.cli", *args,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip

    async def switchovers(self, n: int) -> list[str]:
        """Start and finish ``n`` switchovers, alternating instances: 2n events per channel."""
        ids = []
        for i in range(n):
            inst = ORDERS if i % 2 == 0 else SESSIONS
            ids.append(self.sim.start_task(inst, "masterStandbySwapJob"))
        return ids

    def finish(self, ids: list[str]) -> None:
        for i, tid in enumerate(ids):
            self.sim.finish_task(ORDERS if i % 2 == 0 else SESSIONS, tid)


@pytest.fixture
async def rig(sim: Simulator, redis_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    async with SlackStandIn() as slack, WebhookReceiver(secret=SECRET) as audit:
        yield Rig(sim, slack, audit, redis_url, tmp_path, audit.port)


@contextlib.asynccontextmanager
async def running(rig: Rig, config: Config | None = None) -> AsyncIterator[asyncio.Task[None]]:
    """The daemon in this process, past its first poll of both instances; stopped and awaited on exit."""
    daemon = Daemon(config or rig.config())
    task = asyncio.create_task(daemon.run())
    try:
        await rig.sim.wait_for(lambda: len(rig.sim.task_requests(SESSIONS)) >= 2, within=15)
        yield task
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)
        await daemon.aclose()


# 1 ---------------------------------------------------------------------------------------------------


async def test_kill_9_between_outbox_write_and_send_then_restart(
    rig: Rig, redis_client: aioredis.Redis
) -> None:
    await rig.audit.stop()  # the webhook receiver is down: entries are committed but cannot be sent
    proc = await rig.cli("run")
    try:
        await rig.sim.wait_for(lambda: len(rig.sim.task_requests(SESSIONS)) >= 1, within=15)
        ids = await rig.switchovers(4)
        await until(lambda: len(accepted(rig.slack.requests)) >= 4, 15, "4 started messages on Slack")
        rig.finish(ids)
        # Slack entries are committed in the same MULTI/EXEC as the audit ones: all 8 are in the outbox.
        await until(lambda: len(accepted(rig.slack.requests)) >= 8, 15, "8 messages on Slack")

        async def slack_acknowledged() -> bool:  # Slack took the 8th before the daemon acknowledged it
            return await redis_client.xlen("f:outbox:oncall") == 0

        await until_async(slack_acknowledged, 15, "the Slack entries acknowledged")
    finally:
        proc.kill()  # kill -9: no cleanup, no acks
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert await redis_client.xlen("f:outbox:audit") == 8

    await rig.audit.start(port=rig.audit_port)
    proc = await rig.cli("run")
    try:
        await rig.audit.wait_for(8, timeout=30)
        await until(lambda: len(accepted(rig.audit.requests)) >= 8, 30, "8 webhooks accepted")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()

    assert len(event_ids(rig.audit.requests)) == 8
    no_duplicates(rig.audit.requests)
    no_duplicates(rig.slack.requests)
    assert len(event_ids(rig.slack.requests)) == 8
    assert all(
        types == ["task.started", "task.succeeded"] for types in task_order(rig.audit.requests).values()
    )
    assert await redis_client.xlen("f:outbox:audit") == 0


# 2 ---------------------------------------------------------------------------------------------------


async def test_redis_stopped_for_20_s_mid_run(
    rig: Rig, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    rig.redis_url = own_redis.url
    async with running(rig) as task:
        first = await rig.switchovers(2)
        await rig.audit.wait_for(2, timeout=15)
        await rig.slack.wait_for(2, timeout=15)

        own_redis.stop()  # Redis goes away (clean shutdown, AOF kept)
        rig.finish(first)
        second = await rig.switchovers(2)
        await asyncio.sleep(20)  # the outage itself, as the issue asks: not a synchronisation
        assert not task.done()
        # Nothing could be diffed without the state: nothing new was sent.
        assert len(accepted(rig.audit.requests)) == 2

        own_redis.start()  # same port, same data dir
        await until(lambda: len(accepted(rig.audit.requests)) >= 6, 30, "6 webhooks after Redis returned")
        await until(lambda: len(accepted(rig.slack.requests)) >= 6, 30, "6 Slack messages")
        rig.finish(second)
        await until(lambda: len(accepted(rig.audit.requests)) >= 8, 30, "all webhooks")
        await until(lambda: len(accepted(rig.slack.requests)) >= 8, 30, "all Slack messages")
    assert len(event_ids(rig.audit.requests)) == 8
    no_duplicates(rig.audit.requests)
    no_duplicates(rig.slack.requests)
    outage_reports = [r for r in caplog.records if r.getMessage().startswith("Redis is unavailable")]
    assert len(outage_reports) == 1, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(r.getMessage().startswith("Redis is reachable again") for r in caplog.records)


# 3 ---------------------------------------------------------------------------------------------------


async def test_webhook_down_then_up_keeps_order_and_slack_keeps_receiving(rig: Rig) -> None:
    await rig.audit.stop()  # connection refused
    async with running(rig):
        ids = await rig.switchovers(3)
        await until(lambda: len(accepted(rig.slack.requests)) >= 3, 15, "Slack gets the starts meanwhile")
        rig.finish(ids)
        await until(lambda: len(accepted(rig.slack.requests)) >= 6, 15, "Slack gets the finishes meanwhile")
        assert rig.audit.requests == []
        await rig.audit.start(port=rig.audit_port)
        await until(lambda: len(accepted(rig.audit.requests)) >= 6, 30, "the queued webhooks")
    no_duplicates(rig.audit.requests)
    assert len(event_ids(rig.audit.requests)) == 6
    order = task_order(rig.audit.requests)
    assert set(order) == set(ids)
    assert all(types == ["task.started", "task.succeeded"] for types in order.values())


# 4 ---------------------------------------------------------------------------------------------------


async def test_slack_429_every_third_request_is_honoured(rig: Rig) -> None:
    throttle = SlackStandIn.webhook_error(429, "rate_limited", retry_after=2)
    rig.slack.policy = lambda number, path: throttle if number % 3 == 0 else None
    async with running(rig):
        ids = await rig.switchovers(3)
        await until(lambda: len(accepted(rig.slack.requests)) >= 3, 30, "3 starts")
        rig.finish(ids)
        await until(lambda: len(accepted(rig.slack.requests)) >= 6, 30, "6 Slack messages")
    reqs = rig.slack.requests
    assert any(r.status == 429 for r in reqs)
    for before, after in itertools.pairwise(reqs):
        if before.status == 429:
            assert after.received_at - before.received_at >= 2.0  # never sooner than Retry-After
    no_duplicates(reqs)
    assert len(event_ids(reqs)) == 6


# 5 ---------------------------------------------------------------------------------------------------


async def test_permanent_error_goes_to_dead_letters_and_replay_delivers(rig: Rig) -> None:
    rig.slack.channels = {"#ops"}
    rig.oncall = (
        f'{{type: slack, token: "xoxb-test", channel: "#wrong", base_url: "{rig.slack.api_base_url}"}}'
    )
    async with running(rig):
        await rig.switchovers(2)
        await rig.audit.wait_for(2, timeout=15)
        await rig.slack.wait_for(2, timeout=15)
    # Each tried once: a permanent error is not retried.
    assert [r.json["channel"] for r in rig.slack.requests] == ["#wrong", "#wrong"]

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await rig.cli(*args)
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await cli("dead-letters", "list")
    assert code == 0, err
    lines = [line for line in out.splitlines() if "  oncall  " in line]
    assert len(lines) == 2
    assert all("attempts=1" in line and "task.started" in line for line in lines)
    assert out.count("channel_not_found") == 2
    first_id = lines[0].split()[0]

    rig.oncall = rig.oncall.replace("#wrong", "#ops")  # the config is fixed
    code, out, err = await cli("dead-letters", "replay", first_id)
    assert code == 0, err
    assert out.strip() == f"{first_id}: delivered to oncall"
    # Refused once each, then the replayed one delivered once (Web API errors come with HTTP 200).
    assert [r.json["channel"] for r in rig.slack.requests] == ["#wrong", "#wrong", "#ops"]

    code, out, _ = await cli("dead-letters", "purge")
    assert out.strip() == "purged 1 dead letter(s)"
    code, _, err = await cli("dead-letters", "list")
    assert "0 dead letter(s)" in err


# 6 ---------------------------------------------------------------------------------------------------


async def test_sigterm_during_a_burst(rig: Rig, redis_client: aioredis.Redis) -> None:
    slow = CannedResponse(204, b"", {}, 0.5)  # each webhook takes 0.5 s to be answered
    rig.audit.policy = lambda number, path: slow
    proc = await rig.cli("run")
    try:
        await rig.sim.wait_for(lambda: len(rig.sim.task_requests(SESSIONS)) >= 1, within=15)
        ids = await rig.switchovers(6)
        await until(lambda: len(accepted(rig.slack.requests)) >= 6, 15, "the starts committed")
        rig.finish(ids)  # a burst of 12 webhooks
        await rig.audit.wait_for(3, timeout=15)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    sent_before = len(rig.audit.requests)
    assert sent_before < 12
    # The send in flight at SIGTERM completed and was acknowledged; the rest stayed queued.
    remaining = await redis_client.xlen("f:outbox:audit")
    pending_ack = 12 - sent_before
    assert remaining == pending_ack

    rig.audit.policy = None
    proc = await rig.cli("run")
    try:
        await until(lambda: len(accepted(rig.audit.requests)) >= 12, 30, "the rest after restart")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert len(event_ids(rig.audit.requests)) == 12
    no_duplicates(rig.audit.requests)
    assert all(
        types == ["task.started", "task.succeeded"] for types in task_order(rig.audit.requests).values()
    )


# Redis restarted without its data ---------------------------------------------------------------------


async def test_redis_that_lost_its_data_is_treated_as_a_first_start(rig: Rig, tmp_path: Path) -> None:
    volatile = RedisServer(tmp_path / "volatile", persistence=False)
    volatile.start()
    rig.redis_url = volatile.url
    now = datetime.now(UTC)
    old = []
    for i in range(3):  # finished hours ago: must never be announced, before or after the data loss
        tid = rig.sim.start_task(ORDERS, "AddWhitelist", created_at=now - timedelta(hours=3, minutes=i))
        rig.sim.finish_task(ORDERS, tid, updated_at=now - timedelta(hours=3))
        old.append(tid)
    try:
        async with running(rig):
            [first] = await rig.switchovers(1)
            await until(lambda: len(accepted(rig.audit.requests)) >= 1, 15, "the first start")
            volatile.stop()
            volatile.start()  # empty: no snapshots, no streams, no consumer group
            second = rig.sim.start_task(SESSIONS, "masterStandbySwapJob")
            await until(
                lambda: any(
                    json.loads(r.body)["data"]["task"]["id"] == second for r in accepted(rig.audit.requests)
                ),
                30,
                "the start after the data loss",
            )
    finally:
        volatile.stop()
    seen = {json.loads(r.body)["data"]["task"]["id"] for r in accepted(rig.audit.requests)}
    assert seen == {first, second}  # the old tasks stayed silent: a baseline, not "everything is new"


# SIGTERM with a send that never ends ------------------------------------------------------------------


async def test_stop_timeout_abandons_a_hung_send_and_keeps_it_queued(
    rig: Rig, redis_client: aioredis.Redis
) -> None:
    hang = CannedResponse(204, b"", {}, 3600)  # the receiver never answers (until it stops)
    rig.audit.policy = lambda number, path: hang
    cfg = rig.config()
    cfg = cfg.model_copy(update={"delivery": cfg.delivery.model_copy(update={"stop_timeout": 0.5})})
    loop = asyncio.get_running_loop()
    async with running(rig, cfg):
        await rig.switchovers(1)
        await rig.audit.wait_for(1, timeout=15)  # the send is in flight, and hangs
        began = loop.time()
    took = loop.time() - began
    assert took < 5  # stop_timeout (0.5 s) plus the blocked reads, not the hour the receiver holds
    assert await redis_client.xlen("f:outbox:audit") == 1  # abandoned, not lost
