"""Issue 4: a whole fleet — accounts and projects, every credential kind, discovery, incremental windows,
politeness toward the API, and poller health as events.

Everything runs for real: the daemon in this process, the project's DCS simulator (with its IAM endpoint and
its API-gateway rate limit) on 127.0.0.1, a real redis-server, a real webhook receiver.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.config.models import Config
from notifier.dcs.models import parse_api_time
from notifier.devtools.simulator import Simulator
from notifier.devtools.simulator.state import RecordedRequest as SimRequest
from notifier.devtools.simulator.state import SkewedClock
from notifier.devtools.standins import RecordedRequest
from notifier.devtools.standins.webhook import WebhookReceiver
from tests.support.daemons import running
from tests.support.wait import until

P1 = "0b6ae7c1f2a34f6e9d1b7a2c3e4f5a61"
AK = "HPUAFLEETAK000000001"
SK = "sk-fleet-EXAMPLE-0001"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def access_key(r: SimRequest) -> str | None:
    auth = r.headers.get("Authorization", "")
    m = re.search(r"Access=([^,]+)", auth)
    return m.group(1) if m else None


def webhooks(receiver: WebhookReceiver, type_: str | None = None) -> list[dict[str, Any]]:
    """Accepted webhook payloads (signature verified), optionally of one event type."""
    out = []
    for r in receiver.requests:
        if 200 <= r.status < 300 and isinstance(r.json, dict):
            assert r.verified, "every webhook is signed"
            if type_ is None or r.json.get("type") == type_:
                out.append(r.json)
    return out


def ids_of(requests: list[RecordedRequest]) -> Counter[str]:
    return Counter(r.header("webhook-id") or "" for r in requests if 200 <= r.status < 300)


@dataclass
class Fleet:
    sim: Simulator
    audit: WebhookReceiver
    ops: WebhookReceiver
    redis_url: str
    redis: aioredis.Redis

    def config(
        self, cloud: str, extra: str = "", poll: str = "interval: 0.2, skew: 60", **env: str
    ) -> Config:
        text = f"""
cloud:
{cloud}
poll: {{jitter: 0, recheck: 0.2, {poll}}}
discovery: {{interval: 0.3}}
redis: {{url: "{self.redis_url}", key_prefix: "fl"}}
channels:
  audit: {{type: webhook, url: "{self.audit.url}", secret: "{SECRET}"}}
  ops: {{type: webhook, url: "{self.ops.url}", secret: "{SECRET}"}}
rules:
  - {{name: all-tasks, events: [task.started, task.succeeded, task.failed, task.updated, instance.removed],
      channels: [audit]}}
health: {{after: 0.6, channels: [ops]}}
delivery: {{backoff_initial: 0.05, backoff_max: 0.2, consumer: fleet-test}}
{extra}
"""
        return parse_config(text, "fleet.yaml", {"SIM_URL": str(self.sim.base_url), **env})


@pytest.fixture
async def fleet(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Fleet]:
    sim = Simulator(project_id=P1, credentials={AK: SK})
    await sim.start()
    async with WebhookReceiver(secret=SECRET) as audit, WebhookReceiver(secret=SECRET) as ops:
        yield Fleet(sim, audit, ops, redis_url, redis_client)
    await sim.stop()


def polled(sim: Simulator, instance_id: str, ok: bool = True) -> Callable[[], int]:
    return lambda: sum(1 for r in sim.task_requests(instance_id) if not ok or r.status == 200)


def account(ak: str = AK, sk: str = SK, projects: str = "", name: str = "main") -> str:
    return f"""  - name: {name}
    credentials: {{ak: "{ak}", sk: "{sk}"}}
    projects:
{projects}"""


# -- discovery ---------------------------------------------------------------------------------------


async def test_discovery_adds_new_instances_and_announces_a_deleted_one_once(fleet: Fleet) -> None:
    sim = fleet.sim
    sim.add_instance("i-orders", "orders-cache", tags={"env": "prod", "team": "checkout"})
    sim.add_instance("i-scratch", "scratch-cache", tags={"env": "dev"})
    sim.add_instance("i-legacy", "legacy-cache", tags={"env": "prod"}, status="ERROR")
    project = f"""      - {{project_id: "{P1}", endpoint: "${{SIM_URL}}", discover: true, labels: {{owner: dba}},
         filter: {{names: ["*-cache"], exclude: ["legacy-*"], statuses: [RUNNING], tags: {{env: prod}}}}}}"""
    async with running(fleet.config(account(projects=project))) as daemon:
        await until(lambda: polled(sim, "i-orders")() >= 2, 10, "orders-cache polled")
        # A new instance, already carrying a finished task from an hour ago: baselined, no flood.
        sim.add_instance("i-carts", "carts-cache", tags={"env": "prod"})
        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        sim.finish_task(
            "i-carts", sim.start_task("i-carts", "EXTEND", created_at=hour_ago), updated_at=hour_ago
        )
        await until(lambda: polled(sim, "i-carts")() >= 2, 10, "carts-cache discovered and polled")
        started = sim.start_task("i-carts", "masterStandbySwapJob")
        await until(lambda: len(webhooks(fleet.audit, "task.started")) >= 1, 10, "task.started of carts")

        sim.remove_instance("i-orders")
        await until(lambda: len(webhooks(fleet.audit, "instance.removed")) >= 1, 10, "instance.removed")
        # Several more discovery rounds: still announced exactly once, and no longer polled.
        rounds = len([r for r in sim.requests if r.path.endswith("/instances")])
        await until(
            lambda: len([r for r in sim.requests if r.path.endswith("/instances")]) >= rounds + 3,
            10,
            "three more discovery rounds",
        )
        assert "i-orders" not in {t.instance.id for t in daemon.poller.targets.values()}

    assert polled(sim, "i-scratch", ok=False)() == 0  # filtered out by tag
    assert polled(sim, "i-legacy", ok=False)() == 0  # excluded by name and status
    [started_event] = webhooks(fleet.audit, "task.started")
    assert started_event["data"]["task"]["id"] == started
    assert started_event["data"]["instance"]["labels"] == {"owner": "dba", "env": "prod"}
    assert [e["data"]["task"]["name"] for e in webhooks(fleet.audit) if e["data"]["task"]] == [
        "masterStandbySwapJob"
    ]  # the hour-old EXTEND was recorded silently
    [removed] = webhooks(fleet.audit, "instance.removed")
    assert removed["data"]["instance"]["id"] == "i-orders"
    assert removed["data"]["task"] is None
    assert removed["data"]["summary"] == "Instance orders-cache was deleted"
    assert ids_of(fleet.audit.requests)[removed["data"]["event_id"]] == 1
    # Its state is kept for discovery.removed_ttl (7 days by default), then Redis drops it.
    ttl = await fleet.redis.ttl(f"fl:snap:{P1}:i-orders")
    assert 6 * 86_400 < ttl <= 7 * 86_400


async def test_static_instance_answering_404_is_announced_removed_once(fleet: Fleet) -> None:
    sim = fleet.sim
    sim.add_instance("i-one", "one-cache")
    project = (
        f"""      - {{project_id: "{P1}", endpoint: "${{SIM_URL}}", instances: [{{id: i-one, name: one}}]}}"""
    )
    async with running(fleet.config(account(projects=project))):
        await until(lambda: polled(sim, "i-one")() >= 1, 10, "first poll")
        sim.remove_instance("i-one")
        await until(lambda: len(webhooks(fleet.audit, "instance.removed")) >= 1, 10, "instance.removed")
        gone = polled(sim, "i-one", ok=False)()
        await until(lambda: polled(sim, "i-one", ok=False)() >= gone + 3, 10, "three more 404 re-checks")
    assert len(webhooks(fleet.audit, "instance.removed")) == 1
    assert webhooks(fleet.ops) == []  # a deleted instance is not a poller health problem


# -- credentials -------------------------------------------------------------------------------------


async def test_fifty_projects_each_polled_with_its_own_credentials(fleet: Fleet) -> None:
    sim = fleet.sim
    accounts = []
    for n in range(50):
        pid, ak, sk = f"proj{n:02d}{'0' * 26}", f"HPUAPROJECT{n:02d}AK000", f"sk-project-{n:02d}"
        sim.add_project(pid, {ak: sk})
        sim.add_instance(f"i-{n:02d}", f"cache-{n:02d}", project_id=pid)
        proj = f"""      - {{project_id: "{pid}", endpoint: "${{SIM_URL}}", region: cn-north-{n % 3 + 1},
         instances: [{{id: "i-{n:02d}"}}]}}"""
        accounts.append(account(ak, sk, proj, name=f"acct{n:02d}"))
    config = fleet.config("\n".join(accounts))
    assert len(config.projects()) == 50
    async with Daemon(config) as daemon:
        report = await daemon.once()
    assert report.problems == []
    assert len(report.polls) == 50
    for n in range(50):
        [request] = sim.task_requests(f"i-{n:02d}")
        assert request.status == 200
        assert access_key(request) == f"HPUAPROJECT{n:02d}AK000"
        assert request.path.startswith(f"/v2/proj{n:02d}")
    # Each project has its own state in Redis.
    assert len([k async for k in fleet.redis.scan_iter("fl:snap:*")]) == 50


async def test_temporary_credentials_in_a_file_rotated_without_restart(fleet: Fleet, tmp_path: Path) -> None:
    sim = fleet.sim
    sim.add_instance("i-rot", "rot-cache")
    sim.add_temporary_credentials("HPUATEMP0000000000A1", "sk-temp-one", "token-one")
    creds = tmp_path / "credentials.json"
    creds.write_text(
        json.dumps(
            {
                "credential": {
                    "access": "HPUATEMP0000000000A1",
                    "secret": "sk-temp-one",
                    "securitytoken": "token-one",
                }
            }
        )
    )
    text = f"""  - name: temp
    credentials: {{type: file, path: "{creds}"}}
    projects:
      - {{project_id: "{P1}", endpoint: "${{SIM_URL}}", instances: [{{id: i-rot}}]}}"""
    async with running(fleet.config(text)):
        await until(lambda: polled(sim, "i-rot")() >= 2, 10, "polls with the first credentials")
        first = sim.task_requests("i-rot")[-1]
        assert first.headers.get("X-Security-Token") == "token-one"
        assert "x-security-token" in first.headers["Authorization"]

        # Rotation: the old temporary credentials are revoked, new ones are written (atomic rename).
        sim.revoke("HPUATEMP0000000000A1")
        sim.add_temporary_credentials("HPUATEMP0000000000B2", "sk-temp-two", "token-two")
        new = tmp_path / "credentials.json.new"
        new.write_text(
            json.dumps({"ak": "HPUATEMP0000000000B2", "sk": "sk-temp-two", "security_token": "token-two"})
        )
        os.replace(new, creds)
        await until(
            lambda: any(
                access_key(r) == "HPUATEMP0000000000B2" and r.status == 200
                for r in sim.task_requests("i-rot")
            ),
            10,
            "a poll with the rotated credentials",
        )
        tid = sim.start_task("i-rot", "UpdatePort")
        await until(lambda: len(webhooks(fleet.audit, "task.started")) >= 1, 10, "task after rotation")
    [ev] = webhooks(fleet.audit, "task.started")
    assert ev["data"]["task"]["id"] == tid


async def test_iam_token_obtained_once_and_renewed_when_rejected(fleet: Fleet) -> None:
    sim = fleet.sim
    sim.add_instance("i-iam", "iam-cache")
    sim.add_iam_user("acme", "dcs-reader", "pa55-w0rd-EXAMPLE", [P1])
    text = f"""  - name: iam
    credentials: {{type: iam, domain: acme, user: dcs-reader, password: "${{IAM_PASSWORD}}",
                   iam_endpoint: "${{SIM_URL}}"}}
    projects:
      - {{project_id: "{P1}", endpoint: "${{SIM_URL}}", instances: [{{id: i-iam}}]}}"""
    config = fleet.config(text, IAM_PASSWORD="pa55-w0rd-EXAMPLE")
    async with running(config):
        await until(lambda: polled(sim, "i-iam")() >= 5, 10, "five polls with an IAM token")
        assert len(sim.iam_requests) == 1
        assert all(
            "X-Auth-Token" in r.headers and "Authorization" not in r.headers for r in sim.task_requests()
        )
        sim.revoke_iam_tokens()  # e.g. the user's password changed elsewhere: every token is invalid
        done = polled(sim, "i-iam")()
        await until(lambda: polled(sim, "i-iam")() >= done + 3, 10, "polls with a new token")
        assert len(sim.iam_requests) == 2
    # A rejected token was replaced at once (the poll retried once with the new one): never unhealthy.
    assert webhooks(fleet.ops) == []
    assert all("pa55-w0rd" not in json.dumps(r.headers) for r in sim.requests)


# -- health ------------------------------------------------------------------------------------------


async def test_revoked_ak_is_one_unhealthy_then_one_recovered(fleet: Fleet) -> None:
    sim = fleet.sim
    sim.add_instance("i-h", "health-cache")
    project = f"""      - {{project_id: "{P1}", endpoint: "${{SIM_URL}}", instances: [{{id: i-h, name: health-cache}}]}}"""
    async with running(fleet.config(account(projects=project))):
        await until(lambda: polled(sim, "i-h")() >= 1, 10, "a first good poll")
        sim.revoke(AK)
        await until(lambda: len(webhooks(fleet.ops)) >= 1, 10, "poller.unhealthy")
        failed = polled(sim, "i-h", ok=False)()
        await until(lambda: polled(sim, "i-h", ok=False)() >= failed + 5, 10, "five more failing polls")
        assert len(webhooks(fleet.ops)) == 1
        sim.add_project(P1, {AK: SK})
        await until(lambda: len(webhooks(fleet.ops)) >= 2, 10, "poller.recovered")
        ok = polled(sim, "i-h")()
        await until(lambda: polled(sim, "i-h")() >= ok + 3, 10, "three more good polls")
    assert [e["type"] for e in webhooks(fleet.ops)] == ["poller.unhealthy", "poller.recovered"]
    unhealthy, recovered = webhooks(fleet.ops)
    problem = unhealthy["data"]["problem"]
    assert (
        problem["reason"] == "auth" and problem["http_status"] == 401 and problem["error_code"] == "DCS.1001"
    )
    assert "health-cache" in unhealthy["data"]["summary"]
    assert recovered["data"]["problem"]["since"] == problem["since"]
    assert unhealthy["data"]["event_id"] != recovered["data"]["event_id"]
    assert webhooks(fleet.audit) == []  # the task rules do not route poller events
    assert await fleet.redis.hlen("fl:health") == 0


# -- windows and politeness --------------------------------------------------------------------------


def window_start(r: SimRequest) -> datetime:
    return datetime.strptime(r.query["start_time"], "%Y%m%d%H%M%S").replace(tzinfo=UTC)


async def test_windows_are_incremental_and_follow_a_running_task(fleet: Fleet) -> None:
    sim = fleet.sim
    sim.add_instance("i-w", "window-cache")
    old = sim.start_task("i-w", "EXTEND", created_at=datetime.now(UTC) - timedelta(hours=3))  # still running
    for n in range(20):  # finished history
        at = datetime.now(UTC) - timedelta(hours=5, minutes=n)
        sim.finish_task("i-w", sim.start_task("i-w", "modify", created_at=at), updated_at=at)
    project = f"""      - {{project_id: "{P1}", endpoint: "${{SIM_URL}}", instances: [{{id: i-w}}]}}"""
    config = fleet.config(account(projects=project))
    async with Daemon(config) as daemon:
        t0 = datetime.now(UTC)
        await daemon.once()  # baseline: poll.window (1 day) back
        await daemon.once()  # the running task keeps its creation time in the window
        sim.finish_task("i-w", old)
        await daemon.once()  # sees it finish
        await daemon.once()  # incremental: last poll - skew (60 s)
    first, second, third, fourth = sim.task_requests("i-w")
    assert abs(window_start(first) - (t0 - timedelta(days=1))) < timedelta(seconds=5)
    created = parse_api_time(sim.get_task("i-w", old)["created_at"])
    assert created is not None and window_start(second) == created.replace(microsecond=0)
    assert window_start(third) == window_start(second)
    assert abs(window_start(fourth) - (t0 - timedelta(seconds=60))) < timedelta(seconds=5)
    # The fourth poll got only what is new, not the 20 finished tasks of five hours ago.
    assert [e["type"] for e in webhooks(fleet.audit)] == ["task.started", "task.succeeded"]


async def test_clock_skew_within_the_margin_loses_nothing(fleet: Fleet) -> None:
    sim = Simulator(project_id=P1, credentials={AK: SK}, clock=SkewedClock(timedelta(minutes=-4)))
    sim.add_instance("i-s", "skew-cache")
    async with sim:
        fleet.sim = sim
        project = f"""      - {{project_id: "{P1}", endpoint: "${{SIM_URL}}", instances: [{{id: i-s}}]}}"""
        config = fleet.config(account(projects=project), poll="interval: 0.2, skew: 300")
        async with running(config):
            await until(lambda: polled(sim, "i-s")() >= 2, 10, "baseline")
            tid = sim.start_task("i-s", "masterStandbySwapJob")  # created 4 minutes "ago" by our clock
            await until(lambda: len(webhooks(fleet.audit, "task.started")) >= 1, 10, "task.started")
            sim.finish_task("i-s", tid)
            await until(lambda: len(webhooks(fleet.audit, "task.succeeded")) >= 1, 10, "task.succeeded")


async def test_rate_limited_api_is_polled_at_or_under_its_limit_without_losing_transitions(
    fleet: Fleet,
) -> None:
    sim = fleet.sim
    limit = 10.0
    sim.rate_limit = limit
    ids = [f"i-r{n:02d}" for n in range(12)]
    for n, iid in enumerate(ids):
        sim.add_instance(iid, f"rate-{n:02d}")
    instances = ", ".join(f"{{id: {iid}}}" for iid in ids)
    project = f"""      - {{project_id: "{P1}", endpoint: "${{SIM_URL}}", instances: [{instances}]}}"""
    # 12 instances every 0.5 s want 24 requests/s; the limiter starts at 40/s and must learn 10/s.
    config = fleet.config(
        account(projects=project),
        "api: {rate_limit: 40, min_rate: 1, max_concurrency: 4}",
        poll="interval: 0.5",
    )
    loop = asyncio.get_running_loop()
    async with running(config):
        await until(lambda: all(polled(sim, i)() >= 1 for i in ids), 20, "every instance baselined")
        started = {iid: sim.start_task(iid, "masterStandbySwapJob") for iid in ids}
        await until(lambda: len(webhooks(fleet.audit, "task.started")) >= 12, 30, "12 task.started")
        for iid, tid in started.items():
            sim.finish_task(iid, tid)
        await until(lambda: len(webhooks(fleet.audit, "task.succeeded")) >= 12, 30, "12 task.succeeded")
        # Adapted by now: measure the next 4 seconds of traffic.
        t0 = loop.time()
        await until(lambda: loop.time() >= t0 + 4, 10, "four seconds of steady polling")
    api = [r for r in sim.requests if r.path.endswith("/tasks") and r.at >= t0]
    throttled = [r for r in api if r.status == 429]
    per_second = Counter(int(r.at - t0) for r in api if r.at < t0 + 4)
    assert max(per_second.values()) <= limit * 1.1, per_second
    assert len(throttled) <= 0.1 * len(api), (len(throttled), len(api))
    assert len(api) >= 4 * limit * 0.5  # and still busy: not starved
    # Nothing lost: each transition delivered exactly once.
    assert Counter(e["data"]["task"]["id"] for e in webhooks(fleet.audit, "task.started")) == Counter(
        started.values()
    )
    assert len(webhooks(fleet.audit, "task.succeeded")) == 12


async def test_clock_skew_beyond_the_margin_is_measured_and_covered(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    # The API's clock is 10 minutes behind ours; poll.skew is only 60 s. Its Date header tells.
    sim = Simulator(project_id=P1, credentials={AK: SK}, clock=SkewedClock(timedelta(minutes=-10)))
    sim.add_instance("i-k", "late-cache")
    async with sim:
        fleet.sim = sim
        project = f"""      - {{project_id: "{P1}", endpoint: "${{SIM_URL}}", instances: [{{id: i-k}}]}}"""
        async with running(fleet.config(account(projects=project), poll="interval: 0.2, skew: 60")):
            await until(lambda: polled(sim, "i-k")() >= 2, 10, "baseline")
            tid = sim.start_task("i-k", "masterStandbySwapJob")  # created "10 minutes ago" by our clock
            await until(lambda: len(webhooks(fleet.audit, "task.started")) >= 1, 10, "task.started")
            sim.finish_task("i-k", tid)
            await until(lambda: len(webhooks(fleet.audit, "task.succeeded")) >= 1, 10, "task.succeeded")
        start = window_start(sim.task_requests("i-k")[-1])
        assert datetime.now(UTC) - start > timedelta(minutes=10)  # the window covered the offset
    warnings = [r.getMessage() for r in caplog.records if "differs from ours" in r.getMessage()]
    assert len(warnings) == 1 and re.search(r"by -60[01] s", warnings[0]), warnings  # Date: 1 s resolution
