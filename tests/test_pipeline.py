"""End to end, in process: simulator → client → Redis (real redis-server) → rules → Slack stand-in + webhook receiver."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from standardwebhooks.webhooks import Webhook

from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.config.models import Config, InstanceConfig
from notifier.delivery.formatters.slack import format_slack
from notifier.delivery.formatters.webhook import webhook_body
from notifier.devtools.simulator import Fault, Simulator
from notifier.devtools.standins.slack import SlackStandIn
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.errors import DcsApiError, Reason
from notifier.pipeline.events import Notification
from notifier.pipeline.instance import PollOutcome
from notifier.pipeline.time_intervals import MaintenanceWindow, maintenance_window
from notifier.store.keys import Keys
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK, WEBHOOK_SECRET

CONFIG = (
    """
cloud: {region: cn-north-4, endpoint: "${SIM_URL}", project_id: "__PROJECT__", ak: "${CLOUD_SDK_AK}", sk: "${CLOUD_SDK_SK}"}
instances:
  - {id: "__ORDERS__", name: orders-cache, labels: {env: prod}}
  - {id: "__SESSIONS__", name: sessions-cache, labels: {env: staging}}
poll: {interval: 0.2, baseline_grace: 900, jitter: 0}
redis: {url: "${REDIS_URL}", key_prefix: "t"}
channels:
  oncall: {type: slack, webhook_url: "${SLACK_WEBHOOK_URL}"}
  audit:  {type: webhook, url: "${AUDIT_URL}", secret: "__SECRET__", headers: {X-Team: db}}
rules:
  - {name: switchovers, tasks: [masterStandbySwapJob], events: [task.started, task.succeeded, task.failed], channels: [oncall, audit]}
  - {name: everything, tasks: ["*"], channels: [audit]}
delivery: {max_attempts: 20, once_attempts: 2, backoff_initial: 0.05, backoff_max: 0.2, consumer: test-consumer, group_wait: 0}
""".replace("__PROJECT__", PROJECT_ID)
    .replace("__ORDERS__", ORDERS)
    .replace("__SESSIONS__", SESSIONS)
    .replace("__SECRET__", WEBHOOK_SECRET)
)


@dataclass
class World:
    sim: Simulator
    slack: SlackStandIn
    audit: WebhookReceiver
    redis_url: str
    redis: aioredis.Redis

    def config(self, text: str = CONFIG, **env: str) -> Config:
        base = {
            "SIM_URL": str(self.sim.base_url),
            "CLOUD_SDK_AK": AK,
            "CLOUD_SDK_SK": SK,
            "REDIS_URL": self.redis_url,
            "SLACK_WEBHOOK_URL": self.slack.webhook_url,
            "AUDIT_URL": self.audit.url,
        }
        return parse_config(text, "test-config.yaml", {**base, **env})

    def daemon(self, **env: str) -> Daemon:
        return Daemon(self.config(**env))


@pytest.fixture
async def world(sim: Simulator, redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[World]:
    async with SlackStandIn() as slack, WebhookReceiver(secret=WEBHOOK_SECRET) as audit:
        yield World(sim, slack, audit, redis_url, redis_client)


async def poll_once(d: Daemon, inst: InstanceConfig) -> PollOutcome:
    """Poll one configured instance once, as its polling loop would."""
    [target] = [t for t in d.poller.targets.values() if t.instance.id == inst.id]
    return await d.poller.poll_target(target)


async def once(world: World, **env: str) -> list[str]:
    async with world.daemon(**env) as d:
        return (await d.once()).problems


async def test_switchover_start_and_finish_two_notifications_per_channel(world: World) -> None:
    assert await once(world) == []  # baseline of two empty instances
    tid = world.sim.start_task(ORDERS, "masterStandbySwapJob", user_name="ops_alice")
    assert await once(world) == []
    world.sim.finish_task(ORDERS, tid)
    assert await once(world) == []

    slack = world.slack.requests
    audit = world.audit.requests
    assert len(slack) == 2
    assert len(audit) == 2
    types = [json.loads(r.body)["type"] for r in audit]
    assert types == ["task.started", "task.succeeded"]

    # Byte for byte: what arrived is exactly what the pure formatters produce for these events.
    for req in audit:
        payload = json.loads(req.body)
        n = _notification_from_webhook(payload, "audit")
        assert req.body == webhook_body(n)
        assert req.headers["webhook-id"] == payload["data"]["event_id"]
        assert req.headers["X-Team"] == "db"
        # A third party verifies the signature with the standardwebhooks package.
        Webhook(WEBHOOK_SECRET).verify(req.body, dict(req.headers))
    started, finished = (json.loads(r.body)["data"] for r in audit)
    assert started["rule"] == "switchovers"
    assert started["instance"] == {"id": ORDERS, "name": "orders-cache", "labels": {"env": "prod"}}
    assert started["task"]["name"] == "masterStandbySwapJob"
    assert started["task"]["display_name"] == "Master/standby switchover"
    assert started["task"]["status"] == "RUNNING"
    assert started["task"]["previous_status"] is None
    assert finished["task"]["status"] == "SUCCESS"
    assert finished["task"]["previous_status"] == "RUNNING"
    assert finished["task"]["duration_seconds"] >= 0
    assert finished["summary"] == "Master/standby switchover succeeded on orders-cache"

    for req, twin in zip(slack, audit, strict=True):
        msg = format_slack(_notification_from_webhook(json.loads(twin.body), "oncall"))
        assert req.json == {"text": msg.text, "blocks": msg.blocks}
    assert "Master/standby switchover" in slack[0].json["text"]
    assert "ops_alice" in json.dumps(slack[0].json)

    # A restart (new daemon, same Redis) announces nothing again.
    assert await once(world) == []
    assert len(world.slack.requests) == 2
    assert len(world.audit.requests) == 2


def _window(maintenance: dict | None) -> MaintenanceWindow | None:  # type: ignore[type-arg]
    if maintenance is None:
        return None
    return maintenance_window(maintenance["window"]["begin"], maintenance["window"]["end"])


def _notification_from_webhook(payload: dict, channel: str) -> Notification:  # type: ignore[type-arg]
    """Rebuild the Notification an outbox entry carried, from what the webhook received."""
    data = payload["data"]
    task = {
        k: v
        for k, v in data["task"].items()
        if k not in ("display_name", "previous_status", "duration_seconds")
    }
    return Notification.model_validate(
        {
            "event": {
                "id": data["event_id"],
                "type": payload["type"],
                "project_id": data["project_id"],
                "region": data["region"],
                # (The instance list's maintenance window is on the instance's record.)
                "instance": {**data["instance"], "maintenance_window": _window(data.get("maintenance"))},
                "task": task,
                "previous_status": data["task"]["previous_status"],
                "detected_at": payload["timestamp"],
            },
            "channel": channel,
            "rule": data["rule"],
        }
    )


async def test_other_kinds_go_only_where_rules_send_them(world: World) -> None:
    await once(world)
    world.sim.start_task(
        SESSIONS,
        "EXTEND",
        details={"old_capacity": "0.125", "new_capacity": "0.25", "old_replica_num": 1, "new_replica_num": 2},
    )
    assert await once(world) == []
    assert world.slack.requests == []
    [req] = world.audit.requests
    data = json.loads(req.body)["data"]
    assert data["rule"] == "everything"
    assert data["task"]["details"]["new_capacity"] == "0.25"
    assert data["task"]["display_name"] == "Scale"


async def test_empty_redis_restart_does_not_flood(world: World) -> None:
    now = datetime.now(UTC)
    for i in range(5):  # finished long ago: recorded silently
        old = world.sim.start_task(ORDERS, "AddWhitelist", created_at=now - timedelta(hours=3, minutes=i))
        world.sim.finish_task(ORDERS, old, updated_at=now - timedelta(hours=3))
    recent = world.sim.start_task(ORDERS, "masterStandbySwapJob", created_at=now - timedelta(minutes=2))
    world.sim.finish_task(ORDERS, recent, updated_at=now - timedelta(minutes=1))
    world.sim.start_task(SESSIONS, "BindEip")  # in progress: announced as started
    assert await once(world) == []
    types = sorted(
        (json.loads(r.body)["type"], json.loads(r.body)["data"]["task"]["name"]) for r in world.audit.requests
    )
    assert types == [("task.started", "BindEip"), ("task.succeeded", "masterStandbySwapJob")]
    assert len(world.slack.requests) == 1


async def test_state_restart_announces_exactly_what_changed(world: World) -> None:
    running = world.sim.start_task(ORDERS, "masterStandbySwapJob")
    other = world.sim.start_task(SESSIONS, "AddReplica")
    await once(world)
    assert len(world.audit.requests) == 2
    # While the daemon is "down": one finishes, one new task starts and finishes.
    world.sim.finish_task(ORDERS, running, "FAILED")
    quick = world.sim.start_task(SESSIONS, "UpdatePort", details={"old_port": 6379, "new_port": 6380})
    world.sim.finish_task(SESSIONS, quick)
    await once(world)
    got = [
        (json.loads(r.body)["type"], json.loads(r.body)["data"]["task"]["id"])
        for r in world.audit.requests[2:]
    ]
    assert sorted(got) == sorted([("task.failed", running), ("task.succeeded", quick)])
    assert other not in {tid for _, tid in got}


async def test_down_channel_gets_its_message_later_and_slack_is_not_held_up(world: World) -> None:
    await once(world)
    port = int(world.audit.url.split(":")[2].split("/")[0])
    await world.audit.stop()  # connection refused from now on
    tid = world.sim.start_task(ORDERS, "masterStandbySwapJob")
    problems = await once(world)
    assert len(problems) == 1
    assert problems[0].startswith("delivery to audit: channel 'audit': ")
    assert "retryable" in problems[0]
    assert len(world.slack.requests) == 1  # Slack got its message meanwhile
    world.sim.finish_task(ORDERS, tid)
    problems = await once(world)
    assert len(world.slack.requests) == 2
    assert world.audit.url not in " ".join(problems)

    await world.audit.start(port=port)
    assert await once(world) == []
    types = [json.loads(r.body)["type"] for r in world.audit.requests]
    assert types == ["task.started", "task.succeeded"]  # per-task order kept
    assert await world.redis.xlen("t:outbox:audit") == 0


async def test_wrong_secret_is_a_clear_error_and_changes_no_state(world: World) -> None:
    world.sim.start_task(ORDERS, "masterStandbySwapJob")
    async with world.daemon(CLOUD_SDK_SK="wrong-secret-key") as d:
        report = await d.once()
    errors = [p.error for p in report.polls]
    assert all(isinstance(e, DcsApiError) and e.reason is Reason.AUTH for e in errors)
    assert (
        f"poll orders-cache ({ORDERS}): DCS API error for instance {ORDERS}, HTTP 401, DCS.1001: "
        in report.problems[0]
    )
    assert await world.redis.keys("t:snap:*") == []
    assert await world.redis.xlen("t:outbox:oncall") == 0
    assert await world.redis.xlen("t:outbox:audit") == 0
    assert world.slack.requests == []


async def test_malformed_api_answer_changes_nothing(world: World) -> None:
    tid = world.sim.start_task(ORDERS, "masterStandbySwapJob")
    await once(world)
    key = Keys("t").snapshot(PROJECT_ID, ORDERS)
    before = await world.redis.hgetall(key)
    world.sim.finish_task(ORDERS, tid)
    world.sim.inject(Fault.malformed_json(), instance_id=ORDERS)
    problems = await once(world)
    assert len(problems) == 1
    assert "HTTP 200 with a body that is not JSON" in problems[0]
    assert await world.redis.hgetall(key) == before
    assert len(world.audit.requests) == 1
    # The next good answer delivers the finish that the bad one hid.
    assert await once(world) == []
    assert [json.loads(r.body)["type"] for r in world.audit.requests] == ["task.started", "task.succeeded"]


async def test_unknown_status_passes_through(world: World) -> None:
    await once(world)
    tid = world.sim.start_task(ORDERS, "masterStandbySwapJob", status="QUEUED_FOR_MAINTENANCE")
    await once(world)
    world.sim.set_status(ORDERS, tid, "RUNNING")
    await once(world)
    world.sim.finish_task(ORDERS, tid)
    await once(world)
    got = [
        (json.loads(r.body)["type"], json.loads(r.body)["data"]["task"]["status"])
        for r in world.audit.requests
    ]
    assert got == [
        ("task.started", "QUEUED_FOR_MAINTENANCE"),
        ("task.updated", "RUNNING"),
        ("task.succeeded", "SUCCESS"),
    ]


async def test_unknown_instance_is_reported_once(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cfg = world.config(text=CONFIG.replace("instances:\n", "instances:\n  - {id: gone, name: gone-cache}\n"))
    async with Daemon(cfg) as d:
        for _ in range(3):
            outcome = await poll_once(d, cfg.instances[0])
            assert isinstance(outcome.error, DcsApiError)
            assert outcome.error.error_code == "DCS.3022"
            assert d.poller.next_delay(outcome) >= 300
    reports = [r for r in caplog.records if "poll of gone-cache failed" in r.getMessage()]
    assert len(reports) == 1


async def test_throttling_backs_off_honouring_retry_after(world: World) -> None:
    world.sim.inject(Fault.throttled(2), instance_id=ORDERS)
    async with world.daemon() as d:
        outcome = await poll_once(d, d.config.instances[0])
        assert isinstance(outcome.error, DcsApiError)
        assert outcome.error.retryable
        assert d.poller.next_delay(outcome) == 2
        # The endpoint's limiter holds every request to that endpoint for the Retry-After too.
        ok = await poll_once(d, d.config.instances[0])
        assert ok.ok
        throttled, retried = world.sim.task_requests(ORDERS)
        assert retried.at - throttled.at >= 2.0
        assert d.poller.next_delay(ok) == 0.2


async def test_secrets_never_reach_the_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    world.sim.start_task(ORDERS, "masterStandbySwapJob")
    await once(world, CLOUD_SDK_SK="wrong-" + SK)  # auth failure
    await world.audit.stop()
    world.slack.enqueue(SlackStandIn.webhook_error(404, "channel_not_found"))
    await once(world)  # channel errors of both kinds
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "channel 'oncall'" in text  # the failures were logged...
    secret_path = world.slack.webhook_url.split("/services/")[1]
    for secret in (
        SK,
        "wrong-" + SK,
        world.slack.webhook_url,
        secret_path,
        WEBHOOK_SECRET,
        WEBHOOK_SECRET[6:],
    ):
        assert secret not in text  # ...without a secret


async def test_a_long_task_is_followed_past_the_poll_window(world: World) -> None:
    """poll.window is 60 s here; a task still running 5 minutes later is still watched to its end."""
    cfg = world.config()
    cfg = cfg.model_copy(update={"poll": cfg.poll.model_copy(update={"window": 60.0})})
    started = datetime.now(UTC) - timedelta(seconds=30)
    tid = world.sim.start_task(ORDERS, "EXTEND", created_at=started)
    async with Daemon(cfg) as d:
        await d.once()
    world.sim.finish_task(ORDERS, tid)
    later = datetime.now(UTC) + timedelta(minutes=5)
    async with Daemon(cfg, clock=lambda: later) as d:
        assert (await d.once()).problems == []
    types = [json.loads(r.body)["type"] for r in world.audit.requests]
    assert types == ["task.started", "task.succeeded"]
    query = world.sim.task_requests(ORDERS)[-1].query
    assert query["start_time"] <= started.strftime("%Y%m%d%H%M%S")  # the task stayed in the window


async def test_redis_down_means_no_backoff_and_no_heartbeat(world: World) -> None:
    async with world.daemon(REDIS_URL="redis://127.0.0.1:1/0") as d:
        outcome = await poll_once(d, d.config.instances[0])
        assert outcome.error is not None
        assert d.poller.next_delay(outcome) == d.config.poll.interval  # resumes as soon as Redis does
        assert d.poller.last_success is None
    async with world.daemon(CLOUD_SDK_SK="wrong") as d:
        await d.poller.poll_all()
        assert d.poller.last_success is None  # failing polls keep the heartbeat (and `health`) down
    async with world.daemon() as d:
        await d.poller.poll_all()
        assert d.poller.last_success is not None


async def test_auth_errors_are_rechecked_slowly_and_server_errors_back_off(world: World) -> None:
    inst = world.config().instances[0]
    async with world.daemon(CLOUD_SDK_SK="wrong") as d:
        outcome = await poll_once(d, inst)
        assert isinstance(outcome.error, DcsApiError)
        assert outcome.error.reason is Reason.AUTH
        assert d.poller.next_delay(outcome) >= 300  # not retried in a loop
    world.sim.inject(Fault.server_error(), times=3, instance_id=ORDERS)
    async with world.daemon() as d:
        delays = []
        for _ in range(3):
            outcome = await poll_once(d, inst)
            assert isinstance(outcome.error, DcsApiError)
            assert outcome.error.reason is Reason.SERVER_ERROR
            delays.append(d.poller.next_delay(outcome))
        assert delays == [0.2, 0.4, 0.8]  # exponential from poll.interval
        assert d.poller.next_delay(await poll_once(d, inst)) == 0.2  # recovered


async def test_many_instances_polled_at_once(world: World) -> None:
    """`once` polls every instance concurrently: more instances than Redis pool connections must not fail."""
    lines = []
    for i in range(150):
        iid = f"bulk-{i:03d}"
        world.sim.add_instance(iid, iid)
        world.sim.start_task(iid, "AddWhitelist")
        lines.append(f"  - {{id: {iid}}}\n")
    text = CONFIG.replace("instances:\n", "instances:\n" + "".join(lines)) + "api: {rate_limit: 10000}\n"
    cfg = world.config(text=text)
    async with Daemon(cfg) as d:
        report = await d.once()
    assert report.problems == []
    assert sum(len(p.events) for p in report.polls) == 150
    assert len({json.loads(r.body)["data"]["instance"]["id"] for r in world.audit.requests}) == 150
