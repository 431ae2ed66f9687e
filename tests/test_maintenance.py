"""Issue 15: DCS maintenance windows (``maintain_begin``/``maintain_end`` of the instance list, UTC).

Every message says whether the change started inside its instance's window (Slack: a field; webhooks:
``data.maintenance``), rules can match ``maintenance: inside | outside``, and instances named in the config
get their window from the instance list too (read every ``discovery.interval``, not per poll).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials  # type: ignore[import-untyped]
from huaweicloudsdkcore.http.http_config import HttpConfig  # type: ignore[import-untyped]
from huaweicloudsdkdcs.v2 import DcsClient, ListInstancesRequest  # type: ignore[import-untyped]

from notifier.config.load import parse_config
from notifier.delivery.formatters import format_slack, format_webhook
from notifier.devtools.simulator import Fault, Simulator
from notifier.devtools.standins.slack import SlackStandIn
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.pipeline.diff import DiffContext, diff
from notifier.pipeline.discovery import select
from notifier.pipeline.events import CloudEyeInfo, Event, EventType, Notification, event_id
from notifier.pipeline.preview import preview
from notifier.pipeline.rules import route
from notifier.pipeline.time_intervals import MaintenanceWindow, maintenance_window, placement
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK, WEBHOOK_SECRET
from tests.factories import INSTANCE, poller_event, problem, task
from tests.support.daemons import running

CATALOG = "0c4a7e21-93d5-4c1b-8f2e-6b7d9a1c3e55"
EVENING = maintenance_window("18:00:00", "19:00:00")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- the window -----------------------------------------------------------------------------------------


def test_a_window_is_read_from_the_instance_list_and_shared() -> None:
    assert MaintenanceWindow(begin=18 * 3600, end=19 * 3600) == EVENING
    assert EVENING is maintenance_window("18:00:00", "19:00:00")  # one object for a whole fleet
    assert (EVENING.label, EVENING.begin_text, EVENING.end_text) == (
        "18:00–19:00 UTC",
        "18:00:00",
        "19:00:00",
    )
    odd = maintenance_window("02:30:15", "03:00")
    assert odd is not None and odd.label == "02:30:15–03:00 UTC"
    for begin, end in [
        (None, "19:00:00"),
        ("", "19:00:00"),
        ("25:00:00", "02:00:00"),
        (1800, 3600),
        ("18:00:00", "18:00:00"),
    ]:
        assert maintenance_window(begin, end) is None, (begin, end)  # unknown, never guessed


def test_begin_is_inside_end_is_not_and_a_window_may_wrap_midnight() -> None:
    assert EVENING is not None
    assert EVENING.contains(utc("2026-01-14 18:00")) and EVENING.contains(utc("2026-01-14 18:59:59"))
    assert not EVENING.contains(utc("2026-01-14 19:00")) and not EVENING.contains(utc("2026-01-14 17:59:59"))
    night = maintenance_window("22:00:00", "02:00:00")
    assert night is not None
    assert night.contains(utc("2026-01-14 23:00")) and night.contains(utc("2026-01-15 01:59:59"))
    assert not night.contains(utc("2026-01-15 02:00")) and not night.contains(utc("2026-01-14 21:59"))
    tokyo = datetime(2026, 1, 15, 3, 30, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert EVENING.contains(tokyo)  # 18:30 UTC the day before
    assert placement(None, utc("2026-01-14 18:30")) is None


# -- events ---------------------------------------------------------------------------------------------


def context(window: MaintenanceWindow | None, now: datetime) -> DiffContext:
    return DiffContext(
        project_id=PROJECT_ID,
        region="cn-north-4",
        instance=INSTANCE.with_window(window),
        now=now,
        baseline_grace=timedelta(minutes=15),
        window_start=now - timedelta(days=1),
    )


def test_the_diff_says_where_a_task_started_not_when_it_was_seen() -> None:
    now = utc("2026-01-14 18:05")
    before = task(id="before", created=utc("2026-01-14 17:59:59"))
    during = task(id="during", created=utc("2026-01-14 18:00"))
    found = {
        e.task.id: e.maintenance for e in diff(None, [before, during], context(EVENING, now)).events if e.task
    }
    assert found == {"before": "outside", "during": "inside"}
    [unknown] = diff(None, [during], context(None, now)).events
    assert unknown.maintenance is None
    # What the outbox stores comes back the same.
    [stored] = diff(None, [before], context(EVENING, now)).events
    again = Event.model_validate_json(stored.model_dump_json())
    assert again.maintenance == "outside" and again.instance.maintenance_window == EVENING


def test_other_events_use_cloud_eyes_time_else_the_detection_and_poller_events_have_none() -> None:
    ref = INSTANCE.with_window(EVENING)
    failover = Event(
        id="e1",
        type=EventType.INSTANCE_FAILOVER,
        project_id=PROJECT_ID,
        region="cn-north-4",
        instance=ref,
        detected_at=utc("2026-01-14 19:03"),  # read a few minutes late...
        cloud_eye=CloudEyeInfo(
            event_id="ev1", event_name="masterStandbyFailover", time=utc("2026-01-14 18:58")
        ),
    )
    assert failover.maintenance == "inside"  # ...it happened inside
    removed = Event(
        id="e2",
        type=EventType.INSTANCE_REMOVED,
        project_id=PROJECT_ID,
        region="cn-north-4",
        instance=ref,
        detected_at=utc("2026-01-14 12:00"),
    )
    assert removed.maintenance == "outside"
    unhealthy = poller_event(p=problem(), instance=ref, detected=utc("2026-01-14 18:30"))
    assert unhealthy.maintenance is None  # not a change of the instance


def test_discovery_keeps_the_window_on_each_record() -> None:
    [spec] = parse_config(BASE.replace("endpoint:", "discover: true, endpoint:"), "c.yaml", {}).projects()
    listing = select(
        [
            {"instance_id": "a", "name": "a", "maintain_begin": "18:00:00", "maintain_end": "19:00:00"},
            {"instance_id": "b", "name": "b", "maintain_begin": "18:00:00", "maintain_end": "19:00:00"},
            {"instance_id": "c", "name": "c"},
        ],
        spec,
    )
    a, b, c = (listing.watched[i].maintenance_window for i in "abc")
    assert a == EVENING and a is b and c is None


# -- rules and formatters -------------------------------------------------------------------------------

BASE = """
cloud: {project_id: p1, ak: AKEXAMPLE, sk: SKEXAMPLE, endpoint: "http://127.0.0.1:9"}
instances: [{id: i-1}]
channels:
  audit: {type: webhook, url: "http://127.0.0.1:9/hook"}
  odd-hours: {type: webhook, url: "http://127.0.0.1:9/odd"}
  planned: {type: webhook, url: "http://127.0.0.1:9/planned"}
rules:
  - {name: odd-hours, maintenance: outside, channels: [odd-hours]}
  - {name: planned, maintenance: inside, channels: [planned]}
  - {name: everything, channels: [audit]}
"""


def started(window: MaintenanceWindow | None, created: datetime) -> Event:
    t = task(created=created)
    return Event(
        id=event_id(INSTANCE.id, t.id, EventType.STARTED, t.status),
        type=EventType.STARTED,
        project_id=PROJECT_ID,
        region="cn-north-4",
        instance=INSTANCE.with_window(window),
        task=t,
        detected_at=created + timedelta(seconds=20),
    )


def test_a_rule_matches_inside_or_outside_and_an_unknown_window_matches_neither() -> None:
    config = parse_config(BASE, "c.yaml", {})
    channels = list(config.channels)

    def to(ev: Event) -> list[str]:
        return [n.channel for n in route(ev, config.rules, channels)]

    assert to(started(EVENING, utc("2026-01-14 03:00"))) == ["odd-hours", "audit"]
    assert to(started(EVENING, utc("2026-01-14 18:30"))) == ["planned", "audit"]
    assert to(started(None, utc("2026-01-14 03:00"))) == ["audit"]


def test_slack_and_webhooks_say_whether_it_started_inside() -> None:
    outside = Notification(event=started(EVENING, utc("2026-01-14 03:00")), channel="oncall", rule="r")
    inside = Notification(event=started(EVENING, utc("2026-01-14 18:30")), channel="oncall", rule="r")
    unknown = Notification(event=started(None, utc("2026-01-14 03:00")), channel="oncall", rule="r")

    def fields(n: Notification) -> list[str]:
        return [f["text"] for b in format_slack(n).blocks for f in b.get("fields", [])]

    assert "*Maintenance window*\n:warning: outside (18:00–19:00 UTC)" in fields(outside)
    assert "*Maintenance window*\ninside (18:00–19:00 UTC)" in fields(inside)
    assert not any("Maintenance" in f for f in fields(unknown))
    window = {"begin": "18:00:00", "end": "19:00:00"}
    assert format_webhook(outside)["data"]["maintenance"] == {"window": window, "started_inside": False}
    assert format_webhook(inside)["data"]["maintenance"] == {"window": window, "started_inside": True}
    assert "maintenance" not in format_webhook(unknown)["data"]


async def test_the_official_sdk_reads_the_simulators_window(sim: Simulator, no_proxies: None) -> None:
    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    client = (
        DcsClient.new_builder()
        .with_credentials(BasicCredentials(AK, SK, PROJECT_ID))
        .with_http_config(config)
        .with_endpoints([sim.base_url])
        .build()
    )
    sim.set_instance(SESSIONS, maintain_begin="02:00:00", maintain_end="03:00:00")
    request = ListInstancesRequest(offset=0, limit=10)
    listed = (await asyncio.to_thread(client.list_instances, request)).instances
    assert [(i.maintain_begin, i.maintain_end) for i in listed] == [
        ("18:00:00", "19:00:00"),
        ("02:00:00", "03:00:00"),
    ]


# -- through the daemon ---------------------------------------------------------------------------------


def window_around(now: datetime, *, inside: bool) -> tuple[str, str]:
    """A one-hour window (whole minutes, UTC) holding ``now``, or one that starts two hours later."""
    start = (now - timedelta(minutes=30) if inside else now + timedelta(hours=2)).replace(
        second=0, microsecond=0
    )
    return f"{start:%H:%M}:00", f"{start + timedelta(hours=1):%H:%M}:00"


def daemon_config(hooks: WebhookReceiver, slack: SlackStandIn, *, windows: bool = True) -> str:
    return f"""
cloud: {{endpoint: "${{SIM_URL}}", project_id: "{PROJECT_ID}", ak: {AK}, sk: {SK}}}
instances:
  - {{id: "{ORDERS}", name: orders-cache}}
  - {{id: "{SESSIONS}", name: sessions-cache}}
  - {{id: "{CATALOG}", name: catalog-cache}}
poll: {{interval: 0.3, baseline_grace: 900}}
discovery: {{interval: 0.3, maintenance_windows: {str(windows).lower()}}}
redis: {{url: "${{REDIS_URL}}", key_prefix: mw}}
channels:
  audit: {{type: webhook, url: "{hooks.base_url}/audit", secret: "{WEBHOOK_SECRET}"}}
  odd-hours: {{type: webhook, url: "{hooks.base_url}/odd", secret: "{WEBHOOK_SECRET}"}}
  planned: {{type: webhook, url: "{hooks.base_url}/planned", secret: "{WEBHOOK_SECRET}"}}
  oncall: {{type: slack, webhook_url: "{slack.webhook_url}"}}
rules:
  - {{name: odd-hours, maintenance: outside, channels: [odd-hours]}}
  - {{name: planned, maintenance: inside, channels: [planned]}}
  - {{name: everything, channels: [audit]}}
  - {{name: people, channels: [oncall], group_wait: 0}}
delivery: {{backoff_initial: 0.05, backoff_max: 0.2}}
"""


def delivered(hooks: WebhookReceiver, path: str) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in hooks.requests if r.path == path and 200 <= r.status < 300]


def by_instance(hooks: WebhookReceiver, path: str) -> dict[str, Any]:
    return {p["data"]["instance"]["name"]: p["data"].get("maintenance") for p in delivered(hooks, path)}


async def listed(sim: Simulator, more: int = 2) -> None:
    """``more`` further instance listings: each one's windows are applied before the next is asked for."""
    seen = sum(r.route == "instances" for r in sim.requests)
    await sim.wait_for(lambda: sum(r.route == "instances" for r in sim.requests) >= seen + more, within=10)


async def test_a_change_outside_the_window_is_flagged_and_routed_for_instances_named_in_the_config(
    sim: Simulator, redis_url: str
) -> None:
    now = datetime.now(UTC)
    sim.add_instance(CATALOG, "catalog-cache", maintain_begin=None, maintain_end=None)  # no window listed
    outside, inside = window_around(now, inside=False), window_around(now, inside=True)
    sim.set_instance(ORDERS, maintain_begin=outside[0], maintain_end=outside[1])
    sim.set_instance(SESSIONS, maintain_begin=inside[0], maintain_end=inside[1])
    async with WebhookReceiver(secret=WEBHOOK_SECRET) as hooks, SlackStandIn() as slack:
        env = {"SIM_URL": str(sim.base_url), "REDIS_URL": redis_url}
        async with running(parse_config(daemon_config(hooks, slack), "mw.yaml", env)):
            await listed(sim)
            for iid in (ORDERS, SESSIONS, CATALOG):
                sim.start_task(iid, "masterStandbySwapJob")
            await slack.wait_until(lambda: len(slack.cards(slack.webhook_channel)) == 3, timeout=10)
            await hooks.wait_for(5, timeout=10)
            # The window moves (the instance list is read again every discovery.interval): ORDERS' next
            # change starts inside it.
            sim.set_instance(ORDERS, maintain_begin=inside[0], maintain_end=inside[1])
            await listed(sim)
            sim.start_task(ORDERS, "AddWhitelist")
            await hooks.wait_for(7, timeout=10)
        was = {"window": {"begin": outside[0], "end": outside[1]}, "started_inside": False}
        now_in = {"window": {"begin": inside[0], "end": inside[1]}, "started_inside": True}
        audit = {
            (p["data"]["instance"]["name"], p["data"]["task"]["name"]): p["data"].get("maintenance")
            for p in delivered(hooks, "/audit")
        }
        assert audit == {
            ("orders-cache", "masterStandbySwapJob"): was,
            ("sessions-cache", "masterStandbySwapJob"): now_in,
            ("catalog-cache", "masterStandbySwapJob"): None,
            ("orders-cache", "AddWhitelist"): now_in,
        }
        assert by_instance(hooks, "/odd") == {"orders-cache": was}
        assert [p["data"]["instance"]["name"] for p in delivered(hooks, "/planned")] == [
            "sessions-cache",
            "orders-cache",
        ]
        shown = {
            m.text.split(" on ")[-1]: json.dumps(m.blocks, ensure_ascii=False)
            for m in slack.cards(slack.webhook_channel)
            if "switchover" in m.text
        }
        label = f"{outside[0][:5]}–{outside[1][:5]} UTC"
        assert f":warning: outside ({label})" in shown["orders-cache"]
        assert f"inside ({inside[0][:5]}–{inside[1][:5]} UTC)" in shown["sessions-cache"]
        assert "Maintenance window" not in shown["catalog-cache"]


async def test_without_maintenance_windows_a_named_project_is_never_listed(
    sim: Simulator, redis_url: str
) -> None:
    async with WebhookReceiver(secret=WEBHOOK_SECRET) as hooks, SlackStandIn() as slack:
        env = {"SIM_URL": str(sim.base_url), "REDIS_URL": redis_url}
        async with running(parse_config(daemon_config(hooks, slack, windows=False), "mw.yaml", env)):
            await sim.wait_for(lambda: sum(r.route == "tasks" for r in sim.requests) >= 6, within=10)
            sim.start_task(ORDERS, "masterStandbySwapJob")
            await hooks.wait_for(1, timeout=10)
        assert by_instance(hooks, "/audit") == {"orders-cache": None}
        assert not any(r.route == "instances" for r in sim.requests)


async def test_a_refused_instance_list_leaves_the_window_unknown_and_tasks_still_flow(
    sim: Simulator, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    sim.inject(Fault.error(403, "DCS.2003", "Forbidden."), times=10_000, route="instances")
    caplog.set_level(logging.INFO, logger="notifier.pipeline.discovery")
    async with WebhookReceiver(secret=WEBHOOK_SECRET) as hooks, SlackStandIn() as slack:
        env = {"SIM_URL": str(sim.base_url), "REDIS_URL": redis_url}
        async with running(parse_config(daemon_config(hooks, slack), "mw.yaml", env)):
            await listed(sim, 3)
            sim.start_task(ORDERS, "masterStandbySwapJob")
            await hooks.wait_for(1, timeout=10)
        assert by_instance(hooks, "/audit") == {"orders-cache": None}
        assert delivered(hooks, "/odd") == [] and delivered(hooks, "/planned") == []
        warned = [r.getMessage() for r in caplog.records if "read for maintenance windows" in r.getMessage()]
        assert len(warned) == 1 and "DCS.2003" in warned[0]  # said once, not at every listing
        assert SK not in caplog.text


async def test_a_dry_run_reads_the_windows_of_the_instances_named_in_the_config(sim: Simulator) -> None:
    now = datetime.now(UTC)
    outside = window_around(now, inside=False)
    sim.set_instance(ORDERS, maintain_begin=outside[0], maintain_end=outside[1])
    sim.set_instance(SESSIONS, maintain_begin=None)
    sim.start_task(ORDERS, "masterStandbySwapJob")
    sim.start_task(SESSIONS, "masterStandbySwapJob")
    async with WebhookReceiver() as hooks, SlackStandIn() as slack:
        text = daemon_config(hooks, slack).replace(f'  - {{id: "{CATALOG}", name: catalog-cache}}\n', "")
        config = parse_config(
            text, "mw.yaml", {"SIM_URL": str(sim.base_url), "REDIS_URL": "redis://127.0.0.1:1/0"}
        )
        result = await preview(config, None)
    found = {
        p.instance.name: [(e.maintenance, [n.channel for n in p.notifications]) for e in p.events]
        for p in result.instances
    }
    assert found == {
        "orders-cache": [("outside", ["odd-hours", "audit", "oncall"])],
        "sessions-cache": [(None, ["audit", "oncall"])],  # its window is not listed: unknown
    }
