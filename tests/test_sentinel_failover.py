"""A real Sentinel failover under the running daemon: the master dies (SIGKILL) between the start and the
end of a task, the Sentinel promotes the replica, and the daemon carries on against the new master.

Everything is real and on loopback: a master redis-server, a replica of it, one Sentinel (quorum 1), the
project's DCS simulator, a webhook receiver, and the daemon in this test's event loop. Both notifications
arrive exactly once and in order; nothing is baselined again after the failover.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from notifier.config.load import parse_config
from notifier.config.models import Config
from notifier.devtools.simulator import Simulator
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.pipeline.events import EventType, event_id
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK
from tests.support.daemons import running
from tests.support.redis_cluster import RedisSentinelFailoverServers
from tests.support.wait import until

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PREFIX = "fo"

CONFIG = """
cloud: {region: cn-north-4, endpoint: "${SIM_URL}", project_id: "${PROJECT}", ak: "${AK}", sk: "${SK}"}
instances:
  - {id: "${ORDERS}", name: orders-cache}
  - {id: "${SESSIONS}", name: sessions-cache}
poll: {interval: 1, jitter: 0, baseline_grace: 900}
redis: {url: "${REDIS_URL}", key_prefix: "fo"}
channels:
  audit: {type: webhook, url: "${AUDIT_URL}", secret: "${SECRET}"}
rules:
  - {name: everything, channels: [audit]}
delivery: {backoff_initial: 0.05, backoff_max: 0.2, consumer: failover-test}
"""


@pytest.fixture
def failover_redis(tmp_path: Path) -> Iterator[RedisSentinelFailoverServers]:
    """A master, its replica (in sync) and one Sentinel knowing both; all stopped at the end."""
    servers = RedisSentinelFailoverServers(tmp_path / "sentinel-failover")
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def make_config(sim: Simulator, servers: RedisSentinelFailoverServers, audit: WebhookReceiver) -> Config:
    env = {
        "SIM_URL": str(sim.base_url),
        "PROJECT": PROJECT_ID,
        "AK": AK,
        "SK": SK,
        "ORDERS": ORDERS,
        "SESSIONS": SESSIONS,
        "REDIS_URL": servers.url,
        "AUDIT_URL": audit.url,
        "SECRET": SECRET,
    }
    return parse_config(CONFIG, "failover.yaml", env)


def delivered(receiver: WebhookReceiver) -> list[tuple[str, str, str]]:
    """Accepted webhooks, in arrival order: (webhook-id header, payload event id, event type)."""
    out = []
    for r in receiver.requests:
        if 200 <= r.status < 300 and isinstance(r.json, dict):
            assert r.verified, "every webhook is signed"
            out.append((r.header("webhook-id") or "", r.json["data"]["event_id"], r.json["type"]))
    return out


def polls(sim: Simulator, instance_id: str) -> int:
    return sum(1 for r in sim.task_requests(instance_id) if r.status == 200)


def direct(port: int) -> redis.Redis:
    """A plain client of one data node (not through the Sentinel), for the test's own checks."""
    return redis.Redis(
        host="127.0.0.1", port=port, decode_responses=True, socket_connect_timeout=0.5, socket_timeout=2
    )


async def test_failover_between_start_and_finish_loses_and_repeats_nothing(
    failover_redis: RedisSentinelFailoverServers, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    servers = failover_redis
    caplog.set_level(logging.INFO, logger="notifier")
    async with WebhookReceiver(secret=SECRET) as audit:
        async with running(make_config(sim, servers, audit)) as daemon:
            # The baseline of both (empty) instances: a second poll starts only after the first committed.
            await until(lambda: polls(sim, ORDERS) >= 2 and polls(sim, SESSIONS) >= 2, 10, "baselines")
            assert delivered(audit) == []

            tid = sim.start_task(ORDERS, "masterStandbySwapJob", user_name="ops_alice")
            started = event_id(ORDERS, tid, EventType.STARTED, "RUNNING")
            succeeded = event_id(ORDERS, tid, EventType.SUCCEEDED, "SUCCESS")
            await until(lambda: len(delivered(audit)) >= 1, 10, "task.started delivered")

            # Acknowledged on the master (notification log + XDEL, one MULTI/EXEC), then replicated.
            with direct(servers.master_port) as master:
                log_key = f"{PREFIX}:delivered:audit:{started}"
                await until(
                    lambda: bool(master.exists(log_key)) and master.xlen(f"{PREFIX}:outbox:audit") == 0,
                    10,
                    "the delivery of task.started acknowledged on the master",
                )
                written = servers.master_offset()
            await until(
                lambda: servers.replica_offset() >= written, 10, "the replica caught up with the master"
            )

            servers.kill_master()
            sim.finish_task(ORDERS, tid)
            await until(servers.promoted, 30, "the Sentinel promoting the replica")
            await until(lambda: len(delivered(audit)) >= 2, 30, "task.succeeded delivered after the failover")

            # A few more polls of each instance on the new master: nothing further is announced.
            seen = {i: polls(sim, i) for i in (ORDERS, SESSIONS)}
            await until(
                lambda: all(polls(sim, i) >= n + 2 for i, n in seen.items()), 10, "two more polls of each"
            )
            assert not daemon.store.link.down

        with direct(servers.replica_port) as new_master:
            assert new_master.xlen(f"{PREFIX}:outbox:audit") == 0
            assert new_master.exists(f"{PREFIX}:delivered:audit:{started}")
            assert new_master.exists(f"{PREFIX}:delivered:audit:{succeeded}")
            pending: Any = new_master.xpending(f"{PREFIX}:outbox:audit", f"{PREFIX}-delivery")
            assert pending["pending"] == 0
            assert new_master.xlen(f"{PREFIX}:dead") == 0

    got = delivered(audit)
    assert got == [
        (started, started, "task.started"),
        (succeeded, succeeded, "task.succeeded"),
    ], got
    assert Counter(r.header("webhook-id") for r in audit.requests) == {started: 1, succeeded: 1}
    # One baseline per instance, at the start: the failover did not make the daemon start over.
    baselines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("baseline of ")]
    assert len(baselines) == 2, baselines
    # What the daemon complained about: the outage (logged once per outage), nothing else.
    complaints = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert complaints and all(m.startswith("Redis is unavailable") for m in complaints), complaints
