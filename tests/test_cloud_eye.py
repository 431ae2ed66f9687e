"""Issue 13 through the daemon: Cloud Eye events (an automatic failover...) beside the background tasks.

The simulator serves both APIs on one port; the daemon runs in this process (``Daemon.run()``) with a
short ``cloud_eye.interval``. What is asserted is what the receivers got.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from notifier.config.display import verdict
from notifier.config.load import parse_config
from notifier.config.models import Config
from notifier.devtools.simulator import Fault, Simulator
from notifier.devtools.standins.slack import SlackStandIn
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.pipeline.cloud_eye import switching_task
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK
from tests.factories import T0, task
from tests.support.daemons import running

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
UNWATCHED = "0f0f0f0f-0000-4000-8000-000000000000"

CONFIG = f"""
cloud: {{endpoint: "${{SIM_URL}}", ces_endpoint: "${{SIM_URL}}", project_id: "{PROJECT_ID}", ak: {AK}, sk: {SK}}}
instances:
  - {{id: "{ORDERS}", name: orders-cache}}
  - {{id: "{SESSIONS}", name: sessions-cache}}
poll: {{interval: 0.3, baseline_grace: 900}}
cloud_eye: {{enabled: true, interval: 0.2, overlap: 600}}
health: {{after: 0.3}}
redis: {{url: "${{REDIS_URL}}", key_prefix: ce}}
channels:
  audit: {{type: webhook, url: "${{AUDIT_URL}}", secret: "{SECRET}"}}
delivery: {{backoff_initial: 0.05, backoff_max: 0.2, group_wait: 0}}
"""


def config(sim: Simulator, redis_url: str, audit: WebhookReceiver) -> Config:
    env = {"SIM_URL": str(sim.base_url), "REDIS_URL": redis_url, "AUDIT_URL": audit.url}
    return parse_config(CONFIG, "cloud-eye.yaml", env)


def payloads(audit: WebhookReceiver, type_: str | None = None) -> list[dict[str, Any]]:
    out = [json.loads(r.body) for r in audit.requests if 200 <= r.status < 300]
    return [p for p in out if type_ is None or p["type"] == type_]


async def cloud_eye_polled(sim: Simulator, n: int = 2) -> None:
    await sim.wait_for(lambda: len(sim.ces_requests("ces_events")) >= n, within=10)


@pytest.fixture
async def audit() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(secret=SECRET) as receiver:
        yield receiver


async def test_a_failover_is_delivered_once_with_what_cloud_eye_said_even_across_a_restart(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    cfg = config(sim, redis_url, audit)
    async with running(cfg):
        await cloud_eye_polled(sim)
        eid = sim.add_cloud_eye_event(
            "masterStandbyFailover",
            resource_id=ORDERS,
            content={"old_master": "10.0.0.3", "new_master": "10.0.0.4"},
        )
        await audit.wait_for(1, timeout=10)
        polled = len(sim.ces_requests("ces_events"))
        await cloud_eye_polled(sim, polled + 3)  # the same event in three more overlapping windows
    async with running(cfg):  # and a restart reads it again
        await cloud_eye_polled(sim, polled + 6)
    [failover] = payloads(audit)
    assert failover["type"] == "instance.failover"
    data = failover["data"]
    assert data["instance"]["name"] == "orders-cache" and data["task"] is None
    assert data["summary"] == "Automatic master/standby failover on orders-cache"
    ce = data["cloud_eye"]
    assert (ce["event_id"], ce["event_name"], ce["event_source"]) == (eid, "masterStandbyFailover", "SYS.DCS")
    assert ce["content"] == {"old_master": "10.0.0.3", "new_master": "10.0.0.4"}  # parsed, not a string
    assert audit.requests[0].header("webhook-id") == data["event_id"]


async def test_a_late_event_inside_the_overlap_is_delivered_and_an_unwatched_instance_is_ignored(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    async with running(config(sim, redis_url, audit)):
        await cloud_eye_polled(sim)
        now = datetime.now(UTC)
        sim.add_cloud_eye_event("redisNodeStatusAbnormal", resource_id=UNWATCHED)
        sim.add_cloud_eye_event(
            "instanceBackupFailure", resource_id=SESSIONS, time=now - timedelta(minutes=5)
        )
        await audit.wait_for(1, timeout=10)
        polled = len(sim.ces_requests("ces_events"))
        await cloud_eye_polled(sim, polled + 2)
    [late] = payloads(audit)
    assert late["type"] == "backup.failed" and late["data"]["instance"]["name"] == "sessions-cache"


async def test_the_first_poll_is_a_baseline_announcing_only_recent_events(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    now = datetime.now(UTC)
    sim.add_cloud_eye_event("masterStandbyFailover", resource_id=ORDERS, time=now - timedelta(hours=2))
    sim.add_cloud_eye_event("nodeRestarted", resource_id=ORDERS, time=now - timedelta(minutes=2))
    async with running(config(sim, redis_url, audit)):
        await audit.wait_for(1, timeout=10)
        await cloud_eye_polled(sim, len(sim.ces_requests("ces_events")) + 2)
    assert [p["type"] for p in payloads(audit)] == ["node.restarted"]


async def test_a_rejected_cloud_eye_is_one_unhealthy_naming_it_and_tasks_are_still_polled(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    sim.inject(Fault.ces_error(401, "ces.0015", "signature mismatch"), times=10_000, api="ces")
    async with running(config(sim, redis_url, audit)):
        await audit.wait_for(1, timeout=10)
        tid = sim.start_task(ORDERS, "masterStandbySwapJob")
        await audit.wait_for(2, timeout=10)
        await cloud_eye_polled(sim, len(sim.ces_requests("ces_events")) + 3)
    unhealthy = payloads(audit, "poller.unhealthy")
    assert len(unhealthy) == 1
    assert unhealthy[0]["data"]["instance"]["id"] == f"cloud-eye:{PROJECT_ID}"
    assert "Cloud Eye API error" in unhealthy[0]["data"]["problem"]["message"]
    [started] = payloads(audit, "task.started")
    assert started["data"]["task"]["id"] == tid


async def test_a_switchover_during_a_swap_is_told_in_the_tasks_thread_and_a_lone_one_is_its_own_card(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    async with SlackStandIn(token="xoxb-ce") as slack:
        text = CONFIG.replace(
            '  audit: {type: webhook, url: "${AUDIT_URL}", secret: "' + SECRET + '"}',
            '  audit: {type: webhook, url: "${AUDIT_URL}", secret: "'
            + SECRET
            + '"}\n  oncall: {type: slack, token: xoxb-ce, channel: "#oncall", base_url: "${SLACK_API}", rate: 50}',
        )
        env = {
            "SIM_URL": str(sim.base_url),
            "REDIS_URL": redis_url,
            "AUDIT_URL": audit.url,
            "SLACK_API": slack.api_base_url,
        }
        async with running(parse_config(text, "cloud-eye.yaml", env)):
            await cloud_eye_polled(sim)
            tid = sim.start_task(ORDERS, "masterStandbySwapJob")
            [card] = await slack.wait_until(lambda: slack.cards("#oncall") or None, timeout=10)
            sim.add_cloud_eye_event("masterStandbySwitchover", resource_id=ORDERS)
            await slack.wait_until(lambda: slack.replies(card.channel, card.ts) or None, timeout=10)
            sim.add_cloud_eye_event("masterStandbySwitchover", resource_id=SESSIONS)
            await slack.wait_until(lambda: len(slack.cards("#oncall")) == 2, timeout=10)
            await audit.wait_for(3, timeout=10)
        [task_card, lone] = slack.cards("#oncall")
        assert task_card.ts == card.ts and task_card.edits == []  # the task's card is not rewritten
        [reply] = slack.replies(card.channel, card.ts)
        assert (
            "Master/standby switchover (Cloud Eye) on orders-cache, during Master/standby switchover"
            in reply.text
        )
        assert "Master/standby switchover (Cloud Eye) on sessions-cache" in lone.text
    part, alone = payloads(audit, "instance.switchover")
    assert part["data"]["task"]["id"] == tid and alone["data"]["task"] is None


async def test_without_cards_a_switchover_during_a_running_swap_is_a_line_of_the_swaps_next_message(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    async with SlackStandIn() as slack:
        text = CONFIG.replace(
            "channels:\n",
            'channels:\n  oncall: {type: slack, webhook_url: "${SLACK_HOOK}"}\n',
        )
        env = {
            "SIM_URL": str(sim.base_url),
            "REDIS_URL": redis_url,
            "AUDIT_URL": audit.url,
            "SLACK_HOOK": slack.webhook_url,
        }
        channel = slack.webhook_channel

        def shown() -> list[str]:  # what a person reads in each message, in order
            return [m.text + json.dumps(m.blocks) for m in slack.cards(channel)]

        async with running(parse_config(text, "cloud-eye.yaml", env)):
            await cloud_eye_polled(sim)
            tid = sim.start_task(ORDERS, "masterStandbySwapJob")
            await slack.wait_until(lambda: len(shown()) == 1, timeout=10)
            eid = sim.add_cloud_eye_event(
                "masterStandbySwitchover", resource_id=ORDERS, content={"new_master": "10.0.0.4"}
            )
            await audit.wait_for(2, timeout=10)  # the webhook (machines) gets the event itself
            sim.finish_task(ORDERS, tid)
            await slack.wait_until(lambda: len(shown()) == 2, timeout=10)
            # Once the swap's end was told, a switchover still within the window is a message of its own.
            sim.add_cloud_eye_event("masterStandbySwitchover", resource_id=ORDERS)
            await slack.wait_until(lambda: len(shown()) == 3, timeout=10)
            await audit.wait_for(4, timeout=10)
        started, ended, later = shown()
        assert "Master/standby switchover started on orders-cache" in started
        assert "Master/standby switchover succeeded on orders-cache" in ended
        assert "Also during this task" in ended and "masterStandbySwitchover" in ended
        assert "new_master: 10.0.0.4" in ended
        assert "Also during this task" not in started
        assert (
            "Master/standby switchover (Cloud Eye) on orders-cache, during Master/standby switchover" in later
        )
    part, after_end = payloads(audit, "instance.switchover")
    assert part["data"]["cloud_eye"]["event_id"] == eid and part["data"]["task"]["id"] == tid
    assert after_end["data"]["task"]["id"] == tid


def test_the_task_a_switchover_belongs_to_switches_over_and_runs_then_or_ends_within_the_window() -> None:
    window, now = timedelta(minutes=5), T0 + timedelta(hours=1)
    swap = task(id="swap", name="masterStandbySwapJob", status="SUCCESS", updated=T0 + timedelta(minutes=2))
    spec = task(id="spec", name="EXTEND", status="RUNNING", created=T0 + timedelta(minutes=30))
    port = task(id="port", name="UpdatePort", status="RUNNING", created=T0)
    assert (
        switching_task([swap, spec, port], T0 + timedelta(minutes=6), now, window) == swap
    )  # ended 4 min before
    assert (
        switching_task([swap, spec, port], T0 + timedelta(minutes=8), now, window) is None
    )  # ended 6 min before
    assert (
        switching_task([swap, spec, port], T0 + timedelta(minutes=50), now, window) == spec
    )  # still running
    assert (
        switching_task([port], T0 + timedelta(minutes=1), now, window) is None
    )  # a port change does not switch
    restart = task(id="restart", name="RestartInstance", status="RUNNING", created=T0)
    assert switching_task([restart], T0, now, window) is None  # a restart's task name is unconfirmed...
    assert switching_task([restart], T0, now, window, {"RestartInstance"}) == restart  # ...configurable


async def test_dcs_notifier_run_delivers_a_failover_once_across_a_kill_and_with_two_replicas(
    sim: Simulator, redis_url: str, audit: WebhookReceiver, tmp_path: Path
) -> None:
    text = CONFIG.replace(
        "cloud_eye: {enabled: true, interval: 0.2, overlap: 600}",
        "cloud_eye: {enabled: true, interval: 0.2, overlap: 600}\nscaling: {enabled: true, shards: 4, lease_ttl: 1}",
    )
    path = tmp_path / "cloud-eye.yaml"
    path.write_text(text)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "SIM_URL": str(sim.base_url),
        "REDIS_URL": redis_url,
        "AUDIT_URL": audit.url,
        "DCS_NOTIFIER_CONFIG": str(path),
    }

    async def replica() -> asyncio.subprocess.Process:  # each names itself {hostname}-{pid}
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "notifier.cli", "run", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip

    one, two = await replica(), await replica()
    try:
        await cloud_eye_polled(sim, 3)
        sim.add_cloud_eye_event("masterStandbyFailover", resource_id=ORDERS)
        await audit.wait_for(1, timeout=15)
        one.kill()  # kill -9 of one replica; the other (and a new one) read the same windows again
        await one.wait()
        three = await replica()
        try:
            await cloud_eye_polled(sim, len(sim.ces_requests("ces_events")) + 6)
        finally:
            three.send_signal(signal.SIGTERM)
            await asyncio.wait_for(three.communicate(), 20)
    finally:
        for proc in (one, two):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.communicate(), 20)
    assert [p["type"] for p in payloads(audit)] == ["instance.failover"]


def test_check_config_says_when_cloud_eye_is_watched() -> None:
    cfg = parse_config(
        CONFIG,
        "cloud-eye.yaml",
        {
            "SIM_URL": "http://127.0.0.1:1",
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "AUDIT_URL": "http://127.0.0.1:2/",
        },
    )
    assert (
        "Cloud Eye: every SYS.DCS event, every 0.2 s per project (windows overlap 600 s)"
        in verdict(cfg).lines
    )
    assert [s.ces_endpoint for s in cfg.projects()] == ["http://127.0.0.1:1"]


async def test_a_project_with_no_watched_instance_costs_no_cloud_eye_call(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    sim.add_project("p-empty", {AK: SK})
    text = f"""
cloud:
  - region: cn-north-4
    credentials: {{type: aksk, ak: {AK}, sk: {SK}}}
    projects:
      - {{project_id: "{PROJECT_ID}", endpoint: "${{SIM_URL}}", ces_endpoint: "${{SIM_URL}}",
         instances: [{{id: "{ORDERS}", name: orders-cache}}]}}
      - {{project_id: p-empty, endpoint: "${{SIM_URL}}", ces_endpoint: "${{SIM_URL}}", discover: true,
         filter: {{names: [nothing-*]}}}}
cloud_eye: {{enabled: true, interval: 0.2}}
redis: {{url: "${{REDIS_URL}}", key_prefix: ce2}}
channels: {{audit: {{type: webhook, url: "${{AUDIT_URL}}"}}}}
"""
    env = {"SIM_URL": str(sim.base_url), "REDIS_URL": redis_url, "AUDIT_URL": audit.url}
    async with running(parse_config(text, "two-projects.yaml", env)):
        # The watched project's Cloud Eye is polled interval after interval...
        await sim.wait_for(
            lambda: len([r for r in sim.ces_requests() if PROJECT_ID in r.path]) >= 4, within=10
        )
    # ...the other's instance list was read, and its Cloud Eye never asked.
    assert any(r.route == "instances" and "p-empty" in r.path for r in sim.requests)
    assert [r.path for r in sim.ces_requests() if "p-empty" in r.path] == []
