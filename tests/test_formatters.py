"""Formatters are pure: an event in, a payload out. These tests read what a person or a machine gets."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from notifier.dcs.models import Task
from notifier.delivery.formatters import SlackMessage, format_slack, format_webhook, webhook_body
from notifier.delivery.formatters.slack import clip, escape, format_duration, slack_date
from notifier.pipeline.events import Event, EventType, InstanceRef, Notification, event_id
from tests.factories import T0, poller_event, problem, removed_event

DETECTED = datetime(2020, 6, 17, 8, 18, 11, tzinfo=UTC)
INSTANCE = InstanceRef(id="inst-1", name="orders-cache", labels={"env": "prod"})

# The example of the API reference, verbatim.
EXTEND_EXAMPLE: dict[str, Any] = {
    "id": "8abf6e1e72c12e7c0172c15b508500aa",
    "name": "EXTEND",
    "user_name": "dcs_000_02",
    "user_id": "d53977d1adfb49c5b025ba7d33a13fd7",
    "details": {
        "old_cache_mode": "single",
        "new_cache_mode": "single",
        "old_capacity": "0.125",
        "new_capacity": "0.25",
        "old_resource_spec_code": "redis.single.xu1.tiny.125",
        "new_resource_spec_code": "redis.single.xu1.tiny.256",
        "old_replica_num": 1,
        "new_replica_num": 1,
        "old_cache_type": "single",
        "new_cache_type": "single",
        "replica_ip": "192.192.0.1",
        "replica_az": "az01",
        "group_name": "group1",
        "old_port": 6379,
        "new_port": 6379,
        "is_only_adjust_charging": False,
        "account_name": "account1",
        "source_ip": "192.192.0.0",
        "target_ip": "192.192.0.1",
        "node_name": "node1",
        "rename_commands": [],
        "updated_config_length": 0,
    },
    "enable_show": False,
    "status": "SUCCESS",
    "created_at": "2020-06-17T08:18:06.597Z",
    "updated_at": "2020-06-17T08:18:10.106Z",
}


def make_task(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "task-1",
        "name": "masterStandbySwapJob",
        "user_name": "alice",
        "status": "SUCCESS",
        "created_at": "2020-06-17T08:18:06.597Z",
        "updated_at": "2020-06-17T08:18:10.106Z",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def make_notification(
    task: dict[str, Any],
    type_: EventType,
    *,
    previous_status: str | None = None,
    instance: InstanceRef = INSTANCE,
    rule: str | None = "prod-all",
) -> Notification:
    t = Task.model_validate(task)
    event = Event(
        id=event_id(instance.id, t.id, type_, t.status),
        type=type_,
        project_id="0605767b5b00d5762f91c0158a2d9b5f",
        region="ap-southeast-1",
        instance=instance,
        task=t,
        previous_status=previous_status,
        detected_at=DETECTED,
    )
    return Notification(event=event, channel="ops-slack", rule=rule)


def texts(message: SlackMessage) -> list[str]:
    """Every text a reader sees: the fallback text and each text object of each block."""
    found = [message.text]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                found.append(node["text"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(message.blocks)
    return found


def everything(message: SlackMessage) -> str:
    return "\n".join(texts(message))


def header(message: SlackMessage) -> str:
    block = message.blocks[0]
    assert block["type"] == "header"
    text: str = block["text"]["text"]
    return text


def fields(message: SlackMessage) -> list[str]:
    section = message.blocks[1]
    assert section["type"] == "section"
    return [f["text"] for f in section["fields"]]


def field(message: SlackMessage, title: str) -> str | None:
    prefix = f"*{title}*\n"
    found = [f[len(prefix) :] for f in fields(message) if f.startswith(prefix)]
    return found[0] if found else None


def details_text(message: SlackMessage) -> str:
    sections = [b for b in message.blocks[2:] if b["type"] == "section"]
    return "\n".join(s["text"]["text"] for s in sections)


def context(message: SlackMessage) -> str:
    block = message.blocks[-1]
    assert block["type"] == "context"
    return "\n".join(e["text"] for e in block["elements"])


# --- Slack -------------------------------------------------------------------------------------------------


def test_switchover_started() -> None:
    n = make_notification(make_task(status="RUNNING", updated_at=""), EventType.STARTED)
    m = format_slack(n)
    assert header(m) == ":arrows_counterclockwise: Master/standby switchover started on orders-cache"
    assert m.text == ":arrows_counterclockwise: Master/standby switchover started on orders-cache"
    assert field(m, "Instance") == "orders-cache (`inst-1`)"
    assert field(m, "Task") == "Master/standby switchover (`masterStandbySwapJob`)"
    assert field(m, "Status") == ":hourglass_flowing_sand: `RUNNING`"
    assert field(m, "Started by") == "alice"
    assert field(m, "Started at") == "<!date^1592381886^{date_short_pretty} {time}|2020-06-17 08:18:06 UTC>"
    assert field(m, "Duration") is None  # still running
    assert field(m, "Region") == "ap-southeast-1"


def test_switchover_succeeded() -> None:
    n = make_notification(make_task(), EventType.SUCCEEDED)
    m = format_slack(n)
    assert header(m) == ":white_check_mark: Master/standby switchover succeeded on orders-cache"
    assert field(m, "Status") == ":white_check_mark: `SUCCESS`"
    assert field(m, "Duration") == "4 s"  # 3.509 s
    ctx = context(m)
    assert "Rule *prod-all*" in ctx
    assert f"`{n.event.id}`" in ctx
    assert "task.succeeded" in ctx
    assert "`task-1`" in ctx


def test_extend_reference_example_shows_what_changed() -> None:
    m = format_slack(make_notification(EXTEND_EXAMPLE, EventType.SUCCEEDED))
    assert header(m) == ":white_check_mark: Scale succeeded on orders-cache"
    assert field(m, "Task") == "Scale (`EXTEND`)"
    assert field(m, "Started by") == "dcs_000_02"
    lines = details_text(m).splitlines()
    assert "*Capacity:* 0.125 GB → 0.25 GB" in lines
    assert "*Spec:* `redis.single.xu1.tiny.125` → `redis.single.xu1.tiny.256`" in lines
    assert "*Whitelist group:* group1" in lines
    assert "*Replica:* `192.192.0.1` in az01" in lines
    assert "*Node:* node1" in lines
    assert "*Source → target IP:* `192.192.0.0` → `192.192.0.1`" in lines
    assert "*Account:* account1" in lines
    text = details_text(m)
    # Unchanged pairs are not news.
    for label in ("*Port:*", "*Replicas:*", "*Cache mode:*", "*Cache type:*"):
        assert label not in text
    # Changes come first.
    assert lines[0].startswith("*Capacity:*")


def test_replica_and_cache_mode_changes() -> None:
    details = {"old_replica_num": 1, "new_replica_num": 3, "old_cache_mode": "single", "new_cache_mode": "ha"}
    m = format_slack(make_notification(make_task(name="AddReplica", details=details), EventType.SUCCEEDED))
    assert header(m) == ":white_check_mark: Add replicas succeeded on orders-cache"
    lines = details_text(m).splitlines()
    assert "*Replicas:* 1 → 3" in lines
    assert "*Cache mode:* single → ha" in lines


def test_bind_eip() -> None:
    details = {"enable_public_ip": True, "public_ip_address": "49.0.10.7", "public_ip_id": "eip-42"}
    m = format_slack(make_notification(make_task(name="BindEip", details=details), EventType.SUCCEEDED))
    assert header(m) == ":white_check_mark: Enable public access succeeded on orders-cache"
    lines = details_text(m).splitlines()
    assert "*Public access:* enabled" in lines
    assert "*Public IP:* `49.0.10.7`" in lines


def test_unbind_eip() -> None:
    details = {"enable_public_ip": False, "public_ip_address": "49.0.10.7"}
    m = format_slack(make_notification(make_task(name="UnBindEip", details=details), EventType.SUCCEEDED))
    assert header(m) == ":white_check_mark: Disable public access succeeded on orders-cache"
    assert "*Public access:* disabled" in details_text(m)


def test_add_whitelist_escapes_api_values() -> None:
    details = {"group_name": "<!channel> & <@U123>"}
    m = format_slack(make_notification(make_task(name="AddWhitelist", details=details), EventType.SUCCEEDED))
    assert header(m) == ":white_check_mark: IP whitelist change succeeded on orders-cache"
    assert "*Whitelist group:* &lt;!channel&gt; &amp; &lt;@U123&gt;" in details_text(m)
    assert "<!channel>" not in everything(m)


def test_instance_name_and_user_are_escaped() -> None:
    instance = InstanceRef(id="inst-<1>", name="a&b <cache>", labels={})
    m = format_slack(make_notification(make_task(user_name="<@U1>"), EventType.SUCCEEDED, instance=instance))
    assert field(m, "Instance") == "a&amp;b &lt;cache&gt; (`inst-&lt;1&gt;`)"
    assert field(m, "Started by") == "&lt;@U1&gt;"
    assert m.text == ":white_check_mark: Master/standby switchover succeeded on a&amp;b &lt;cache&gt;"
    # The header is plain_text: Slack shows it literally, so it is not escaped.
    assert header(m) == ":white_check_mark: Master/standby switchover succeeded on a&b <cache>"


def test_update_port() -> None:
    details = {"old_port": 6379, "new_port": 6380}
    m = format_slack(make_notification(make_task(name="UpdatePort", details=details), EventType.SUCCEEDED))
    assert header(m) == ":white_check_mark: Port change succeeded on orders-cache"
    assert details_text(m) == "*Port:* 6379 → 6380"


def test_failed_task() -> None:
    task = make_task(
        name="EXTEND",
        status="FAILED",
        created_at="2024-03-01T10:00:00.000Z",
        updated_at="2024-03-01T10:03:12.000Z",
        details={"old_capacity": "1", "new_capacity": "2"},
    )
    m = format_slack(make_notification(task, EventType.FAILED))
    assert header(m) == ":x: Scale failed on orders-cache (status FAILED)"
    assert m.text.startswith(":x: ")
    assert field(m, "Status") == ":x: `FAILED`"
    assert field(m, "Duration") == "3 min 12 s"
    assert "*Capacity:* 1 GB → 2 GB" in details_text(m)


def test_unknown_kind_and_status_pass_through() -> None:
    task = make_task(name="FlushDB", status="PAUSED", updated_at="", details={"flush_mode": "async"})
    m = format_slack(make_notification(task, EventType.UPDATED, previous_status="RUNNING"))
    assert header(m) == ":information_source: FlushDB on orders-cache changed status RUNNING → PAUSED"
    assert field(m, "Task") == "FlushDB"  # no "(`FlushDB`)" repetition
    assert field(m, "Status") == ":hourglass_flowing_sand: `RUNNING` → `PAUSED`"
    assert "*flush_mode:* async" in details_text(m)


def test_task_updated_shows_previous_status() -> None:
    task = make_task(status="EXECUTING", updated_at="")
    m = format_slack(make_notification(task, EventType.UPDATED, previous_status="WAITING"))
    assert header(m).startswith(
        ":information_source: Master/standby switchover on orders-cache changed status"
    )
    assert field(m, "Status") == ":hourglass_flowing_sand: `WAITING` → `EXECUTING`"


def test_no_details_no_rule_no_user() -> None:
    task = make_task(user_name=None, created_at=None, updated_at=None, status="SUCCESS")
    m = format_slack(make_notification(task, EventType.SUCCEEDED, rule=None))
    assert [b["type"] for b in m.blocks] == ["header", "section", "divider", "context"]
    assert field(m, "Started by") is None
    assert field(m, "Started at") is None
    assert "Rule" not in context(m)


def test_output_is_deterministic() -> None:
    n = make_notification(EXTEND_EXAMPLE, EventType.SUCCEEDED)
    assert format_slack(n) == format_slack(n)
    assert format_slack(n) == format_slack(Notification.model_validate_json(n.model_dump_json()))


def test_block_kit_limits_hold_for_huge_values() -> None:
    huge = "x&<>" * 5000
    instance = InstanceRef(id="i" * 5000, name=huge, labels={})
    details = {
        "group_name": huge,
        "old_resource_spec_code": huge,
        "new_resource_spec_code": "y" * 9000,
        "rename_commands": [huge] * 50,
        **{f"extra_{i}": huge for i in range(40)},
    }
    task = make_task(name=huge, user_name=huge, status="S" * 3000, details=details)
    m = format_slack(
        make_notification(task, EventType.UPDATED, previous_status=huge, instance=instance, rule=huge)
    )
    assert len(header(m)) <= 150
    assert len(m.text) <= 1000
    assert 1 <= len(fields(m)) <= 10
    for f in fields(m):
        assert len(f) <= 2000
    for block in m.blocks:
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= 3000
        if block["type"] == "context":
            assert len(block["elements"]) <= 10
            for element in block["elements"]:
                assert len(element["text"]) <= 2000
    # Clipping never leaves half an entity (which Slack would render as garbage) or a raw "<".
    for text in [m.text, *fields(m), details_text(m), context(m)]:
        assert not re.search(r"&(?!amp;|lt;|gt;)", text)
    assert "<x" not in details_text(m)
    assert len(json.dumps(m.blocks)) < 40_000


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0 s"),
        (0.2, "< 1 s"),
        (3.509, "4 s"),
        (59.4, "59 s"),
        (60, "1 min"),
        (192, "3 min 12 s"),
        (3600, "1 h"),
        (3725, "1 h 2 min"),
        (90000, "1 d 1 h"),
    ],
)
def test_format_duration(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


def test_helpers() -> None:
    assert escape("a<b>&c") == "a&lt;b&gt;&amp;c"
    assert clip("abc", 3) == "abc"
    assert clip("abcdef", 4) == "abc…"
    assert clip("ab&amp;cd", 5) == "ab…"  # would have cut inside "&amp;"
    assert slack_date(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == (
        "<!date^1704164645^{date_short_pretty} {time}|2024-01-02 03:04:05 UTC>"
    )


# --- generic webhook ---------------------------------------------------------------------------------------

GOLDEN_BODY = (
    b'{"data":{"event_id":"evt_643bfc919bc3ef78fc405e485e2204a2",'
    b'"instance":{"id":"inst-1","labels":{"env":"prod"},"name":"orders-cache"},'
    b'"project_id":"0605767b5b00d5762f91c0158a2d9b5f","region":"ap-southeast-1","rule":"prod-all",'
    b'"summary":"Scale succeeded on orders-cache","task":{"created_at":"2020-06-17T08:18:06.597Z",'
    b'"details":{"account_name":"account1","group_name":"group1","is_only_adjust_charging":false,'
    b'"new_cache_mode":"single","new_cache_type":"single","new_capacity":"0.25","new_port":6379,'
    b'"new_replica_num":1,"new_resource_spec_code":"redis.single.xu1.tiny.256","node_name":"node1",'
    b'"old_cache_mode":"single","old_cache_type":"single","old_capacity":"0.125","old_port":6379,'
    b'"old_replica_num":1,"old_resource_spec_code":"redis.single.xu1.tiny.125","rename_commands":[],'
    b'"replica_az":"az01","replica_ip":"192.192.0.1","source_ip":"192.192.0.0","target_ip":"192.192.0.1",'
    b'"updated_config_length":0},"display_name":"Scale","duration_seconds":3.509,"enable_show":false,'
    b'"id":"8abf6e1e72c12e7c0172c15b508500aa","name":"EXTEND","previous_status":null,"status":"SUCCESS",'
    b'"updated_at":"2020-06-17T08:18:10.106Z","user_id":"d53977d1adfb49c5b025ba7d33a13fd7",'
    b'"user_name":"dcs_000_02"}},"timestamp":"2020-06-17T08:18:11.000Z","type":"task.succeeded"}'
)


def test_webhook_golden_body() -> None:
    n = make_notification(EXTEND_EXAMPLE, EventType.SUCCEEDED)
    assert n.event.id == "evt_643bfc919bc3ef78fc405e485e2204a2"
    assert webhook_body(n) == GOLDEN_BODY
    assert json.loads(GOLDEN_BODY) == format_webhook(n)


def test_webhook_shape() -> None:
    task = dict(EXTEND_EXAMPLE, error_code="DCS.0000", job_id="job-9")
    n = make_notification(task, EventType.SUCCEEDED)
    payload = format_webhook(n)
    assert set(payload) == {"type", "timestamp", "data"}
    assert payload["type"] == "task.succeeded"
    assert payload["timestamp"] == "2020-06-17T08:18:11.000Z"
    data = payload["data"]
    assert set(data) == {"event_id", "project_id", "region", "instance", "task", "rule", "summary"}
    assert data["instance"] == {"id": "inst-1", "name": "orders-cache", "labels": {"env": "prod"}}
    # Unknown API fields are passed on as the API sent them; timestamps keep the API's form.
    assert data["task"]["error_code"] == "DCS.0000"
    assert data["task"]["job_id"] == "job-9"
    assert data["task"]["created_at"] == EXTEND_EXAMPLE["created_at"]
    assert data["task"]["details"] == EXTEND_EXAMPLE["details"]
    assert data["task"]["display_name"] == "Scale"
    assert data["task"]["duration_seconds"] == pytest.approx(3.509)


def test_webhook_body_is_compact_utf8_and_stable() -> None:
    n = make_notification(
        make_task(status="EXECUTING", updated_at=""), EventType.UPDATED, previous_status="WAITING"
    )
    body = webhook_body(n)
    assert "→".encode() in body  # UTF-8, not \u2192
    assert b'": ' not in body
    assert b', "' not in body
    payload = json.loads(body)
    assert payload["data"]["task"]["previous_status"] == "WAITING"
    assert payload["data"]["task"]["duration_seconds"] is None
    assert "updated_at" not in payload["data"]["task"]  # unfinished: the API sent none
    again = Notification.model_validate_json(n.model_dump_json())
    assert webhook_body(again) == body


# --- events without a task: instance.removed, poller.unhealthy / poller.recovered -------------------------

INST_ID = "5560df16-cebf-4473-95c4-d1b573c16e79"
PROJECT = "a4d31cb6-3d72-4fdc-8ec9-6e3a41e47f71"
ERROR = f"DCS API error for instance {INST_ID}, HTTP 503, DCS.5000: busy"
REMOVED_ID = "evt_ee20ea7b8c1ac7a15c8cc87711b78684"
UNHEALTHY_ID = "evt_7b7f6a46c13d4c4b8c25768db498f515"
RECOVERED_ID = "evt_442eb69fd2f16830a1e0d8439142e90f"
SINCE_DATE = "<!date^1795852800^{date_short_pretty} {time}|2026-11-28 08:00:00 UTC>"


def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def routed(event: Event, rule: str | None = "health") -> Notification:
    return Notification(event=event, channel="ops", rule=rule)


def instance_blocks(headline: str, event_id_: str, kind: str, *, with_problem: bool) -> list[dict[str, Any]]:
    fields_ = [mrkdwn(f"*Instance*\norders-cache (`{INST_ID}`)")]
    if with_problem:
        fields_ += [
            mrkdwn("*Problem*\nserver_error, HTTP 503 `DCS.5000`"),
            mrkdwn(f"*Failing since*\n{SINCE_DATE}"),
        ]
    fields_.append(mrkdwn("*Region*\ncn-north-4"))
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline, "emoji": True}},
        {"type": "section", "fields": fields_},
    ]
    if with_problem:
        blocks.append({"type": "section", "text": mrkdwn(f"*Error:* {ERROR}")})
    blocks += [
        {"type": "divider"},
        {
            "type": "context",
            "elements": [mrkdwn(f"Rule *health* · Event `{event_id_}` ({kind}) · Project `{PROJECT}`")],
        },
    ]
    return blocks


def test_slack_instance_removed() -> None:
    n = routed(removed_event())
    assert n.event.id == REMOVED_ID
    m = format_slack(n)
    assert m.text == ":wastebasket: Instance orders-cache was deleted"
    assert m.blocks == instance_blocks(
        ":wastebasket: Instance orders-cache was deleted", REMOVED_ID, "instance.removed", with_problem=False
    )


def test_slack_poller_unhealthy() -> None:
    n = routed(poller_event(EventType.POLLER_UNHEALTHY))
    assert n.event.id == UNHEALTHY_ID
    m = format_slack(n)
    assert m.text == ":rotating_light: Cannot poll orders-cache: server_error DCS.5000"
    assert m.blocks == instance_blocks(
        ":rotating_light: Cannot poll orders-cache: server_error DCS.5000",
        UNHEALTHY_ID,
        "poller.unhealthy",
        with_problem=True,
    )


def test_slack_poller_recovered() -> None:
    n = routed(poller_event(EventType.POLLER_RECOVERED, detected=T0 + timedelta(minutes=30)))
    assert n.event.id == RECOVERED_ID
    m = format_slack(n)
    assert m.text == ":large_green_circle: Polling orders-cache works again"
    assert m.blocks == instance_blocks(
        ":large_green_circle: Polling orders-cache works again",
        RECOVERED_ID,
        "poller.recovered",
        with_problem=True,
    )


def test_slack_poller_problem_without_status_or_code() -> None:
    p = problem(reason="timeout", message="read timed out", http_status=None, error_code=None)
    m = format_slack(routed(poller_event(p=p), rule=None))
    assert m.text == ":rotating_light: Cannot poll orders-cache: timeout"
    assert field(m, "Problem") == "timeout"
    assert context(m) == f"Event `{poller_event(p=p).id}` (poller.unhealthy) · Project `{PROJECT}`"


def test_slack_poller_event_escapes_the_error_message() -> None:
    p = problem(reason="client_error", message="bad <!channel> & <@U1> > 0", error_code="DCS.<4>&")
    m = format_slack(routed(poller_event(p=p)))
    assert m.blocks[2] == {
        "type": "section",
        "text": mrkdwn("*Error:* bad &lt;!channel&gt; &amp; &lt;@U1&gt; &gt; 0"),
    }
    assert field(m, "Problem") == "client_error, HTTP 503 `DCS.&lt;4&gt;&amp;`"
    assert m.text == ":rotating_light: Cannot poll orders-cache: client_error DCS.&lt;4&gt;&amp;"
    assert header(m) == ":rotating_light: Cannot poll orders-cache: client_error DCS.<4>&"  # plain_text
    assert "<!channel>" not in everything(m) and "<@U1>" not in everything(m)


def test_slack_block_kit_limits_hold_for_a_huge_error_message() -> None:
    huge = "x<&>" * 1250
    assert len(huge) == 5000
    p = problem(reason="r" * 5000, message=huge, error_code="E" * 5000)
    instance = InstanceRef(id="i" * 5000, name="n&" * 2500, labels={})
    m = format_slack(routed(poller_event(p=p, instance=instance), rule="r" * 5000))
    assert len(header(m)) <= 150
    assert len(m.text) <= 1000
    assert 1 <= len(fields(m)) <= 10
    for f in fields(m):
        assert len(f) <= 2000
    error = m.blocks[2]["text"]["text"]
    assert error.startswith("*Error:* x&lt;&amp;&gt;x")
    assert error.endswith("…")
    assert len(error) <= 3000
    assert len(context(m)) <= 2000
    for text in [m.text, *fields(m), error, context(m)]:
        assert not re.search(r"&(?!amp;|lt;|gt;)", text)
        assert "<&" not in text
    assert len(json.dumps(m.blocks)) < 40_000


def test_webhook_instance_removed_body() -> None:
    assert webhook_body(routed(removed_event(), rule="everything")) == (
        b'{"data":{"event_id":"evt_ee20ea7b8c1ac7a15c8cc87711b78684",'
        b'"instance":{"id":"5560df16-cebf-4473-95c4-d1b573c16e79","labels":{"env":"prod"},"name":"orders-cache"},'
        b'"project_id":"a4d31cb6-3d72-4fdc-8ec9-6e3a41e47f71","region":"cn-north-4","rule":"everything",'
        b'"summary":"Instance orders-cache was deleted","task":null},'
        b'"timestamp":"2026-11-28T08:00:00.000Z","type":"instance.removed"}'
    )


def test_webhook_poller_unhealthy_body() -> None:
    assert webhook_body(routed(poller_event())) == (
        b'{"data":{"event_id":"evt_7b7f6a46c13d4c4b8c25768db498f515",'
        b'"instance":{"id":"5560df16-cebf-4473-95c4-d1b573c16e79","labels":{"env":"prod"},"name":"orders-cache"},'
        b'"problem":{"error_code":"DCS.5000","http_status":503,'
        b'"message":"DCS API error for instance 5560df16-cebf-4473-95c4-d1b573c16e79, HTTP 503, DCS.5000: busy",'
        b'"reason":"server_error","since":"2026-11-28T08:00:00.000Z"},'
        b'"project_id":"a4d31cb6-3d72-4fdc-8ec9-6e3a41e47f71","region":"cn-north-4","rule":"health",'
        b'"summary":"Cannot poll orders-cache: server_error DCS.5000","task":null},'
        b'"timestamp":"2026-11-28T08:05:00.000Z","type":"poller.unhealthy"}'
    )


def test_webhook_poller_recovered_body() -> None:
    n = routed(poller_event(EventType.POLLER_RECOVERED, detected=T0 + timedelta(minutes=30)))
    assert webhook_body(n) == (
        b'{"data":{"event_id":"evt_442eb69fd2f16830a1e0d8439142e90f",'
        b'"instance":{"id":"5560df16-cebf-4473-95c4-d1b573c16e79","labels":{"env":"prod"},"name":"orders-cache"},'
        b'"problem":{"error_code":"DCS.5000","http_status":503,'
        b'"message":"DCS API error for instance 5560df16-cebf-4473-95c4-d1b573c16e79, HTTP 503, DCS.5000: busy",'
        b'"reason":"server_error","since":"2026-11-28T08:00:00.000Z"},'
        b'"project_id":"a4d31cb6-3d72-4fdc-8ec9-6e3a41e47f71","region":"cn-north-4","rule":"health",'
        b'"summary":"Polling orders-cache works again","task":null},'
        b'"timestamp":"2026-11-28T08:30:00.000Z","type":"poller.recovered"}'
    )


def test_webhook_problem_since_is_formatted_like_api_times() -> None:
    since = datetime(2026, 11, 28, 16, 0, 1, 123456, tzinfo=timezone(timedelta(hours=8)))
    p = problem(since=since, http_status=None, error_code=None, message="naïve → ünïcode")
    payload = format_webhook(routed(poller_event(p=p)))
    data = payload["data"]
    assert data["task"] is None
    assert data["problem"] == {
        "reason": "server_error",
        "message": "naïve → ünïcode",
        "http_status": None,
        "error_code": None,
        "since": "2026-11-28T08:00:01.123Z",
    }
    assert set(data) == {"event_id", "project_id", "region", "instance", "task", "rule", "summary", "problem"}
    body = webhook_body(routed(poller_event(p=p)))
    assert "naïve → ünïcode".encode() in body
    assert json.loads(body) == payload


def test_webhook_instance_removed_has_no_problem_key() -> None:
    data = format_webhook(routed(removed_event()))["data"]
    assert data["task"] is None
    assert "problem" not in data


def test_events_without_a_task_are_deterministic() -> None:
    for ev in (removed_event(), poller_event(), poller_event(EventType.POLLER_RECOVERED)):
        n = routed(ev)
        again = Notification.model_validate_json(n.model_dump_json())
        assert format_slack(again) == format_slack(n)
        assert webhook_body(again) == webhook_body(n)
