"""Living cards and mentions, unit by unit: which card an event belongs to, what a card, an update and a
thread reply show, who is mentioned where, and the config that asks for it. (The daemon end to end, against
the Slack stand-in, is in tests/test_slack_cards.py.)"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from notifier.config.load import parse_config
from notifier.dcs.limits import HEADROOM_WAIT, ApiGate
from notifier.dcs.models import Outcome, classify_status
from notifier.delivery.cards import Card, after, card_key, holds, needs_new_card, tracks, with_note
from notifier.delivery.formatters.slack import format_card, format_reply, format_slack
from notifier.errors import ConfigError
from notifier.pipeline.events import CloudEyeInfo, Event, EventType, Notification
from notifier.pipeline.rules import route
from tests.factories import T0, event, poller_event, removed_event, task
from tests.support.clock import TestClock
from tests.support.wait import until

GROUP, USER = "<!subteam^S0123ABC>", "<@U0456DEF>"


def note(type_: EventType, status: str, mentions: tuple[str, ...] = (), **kw: Any) -> Notification:
    t = task(status=status, updated=T0 + timedelta(minutes=3, seconds=12), **kw)
    return Notification(event=event(type_, t), channel="oncall", rule="switchovers", mentions=mentions)


def all_text(blocks: list[dict[str, Any]]) -> str:
    return repr(blocks)


def test_a_tasks_events_share_one_card_per_task_and_health_events_one_per_instance() -> None:
    started, done = event(EventType.STARTED, task(id="t1")), event(EventType.SUCCEEDED, task(id="t1"))
    other = event(EventType.STARTED, task(id="t2"))
    assert card_key(started) == card_key(done) != card_key(other)
    assert card_key(started).endswith("/task/t1")
    sick, well = poller_event(EventType.POLLER_UNHEALTHY), poller_event(EventType.POLLER_RECOVERED)
    assert card_key(sick) == card_key(well) == card_key(removed_event()) != card_key(started)


def test_a_recovery_closes_the_health_card_and_the_next_failure_starts_a_new_one() -> None:
    sick, well = poller_event(EventType.POLLER_UNHEALTHY), poller_event(EventType.POLLER_RECOVERED)
    assert needs_new_card(sick, None)
    card = after(sick, Card("C1", "1.1"))
    assert card.open and not needs_new_card(well, card)
    closed = after(well, card)
    assert not closed.open and (closed.channel_id, closed.ts) == ("C1", "1.1")
    assert needs_new_card(sick, closed)  # a new episode: a new card
    assert not needs_new_card(removed_event(), closed)  # a removal after recovery updates it


def test_an_older_event_replayed_later_does_not_rewind_the_card() -> None:
    started = event(EventType.STARTED, task(status="RUNNING"))
    done = event(EventType.SUCCEEDED, task(status="SUCCESS", updated=T0 + timedelta(minutes=3)))
    card = after(done, after(started, Card("C1", "1.1")))
    assert card.shows_later_than(started) and not card.shows_later_than(done)
    assert after(started, card) == card  # the replayed start leaves the card as the success left it


def test_a_card_survives_its_round_trip_through_redis_and_garbage_is_no_card() -> None:
    card = Card("C0123ABCDEF", "1700000001.000001", open=False, shown=1764633600.25)
    assert Card.from_json(card.to_json()) == card
    assert Card.from_json(b'{"c": "C1", "ts": "1.1"}') == Card("C1", "1.1")  # written before "at" was kept
    for junk in (b"", b"[]", b'{"c": 1, "ts": "1"}', b'{"c": "C1"}', b"\xff"):
        assert Card.from_json(junk) is None


@pytest.mark.parametrize(
    ("type_", "status"),
    [
        (EventType.STARTED, "RUNNING"),
        (EventType.STARTED, "CREATED"),
        (EventType.SUCCEEDED, "SUCCESS"),
        (EventType.FAILED, "FAILED"),
        (EventType.UPDATED, "EXECUTING"),
        (EventType.UPDATED, "SOMETHING_NEW"),
    ],
)
def test_every_status_gives_a_card_and_reply_within_block_kits_limits(type_: EventType, status: str) -> None:
    n = note(type_, status, (GROUP,), user_name="<!channel> & " + "x" * 5000)
    for message in (format_slack(n), format_card(n), format_reply(n)):
        assert message.text and len(message.text) <= 3000
        for raw in message.blocks:
            block = Block.parse(raw)
            assert block is not None
            block.validate_json()  # slack-sdk's own checks of Block Kit's limits
        assert "<!channel>" not in all_text(message.blocks) + message.text  # API data stays escaped


def test_the_mention_pings_once_in_the_post_or_the_reply_never_in_an_edit() -> None:
    failed = note(EventType.FAILED, "FAILED", (GROUP, USER))
    post, edit, reply = format_slack(failed), format_card(failed), format_reply(failed)
    assert post.text.startswith(f"{GROUP} {USER} ") and GROUP in all_text(post.blocks)
    assert reply.text.startswith(f"{GROUP} {USER} ") and USER in all_text(reply.blocks)
    assert GROUP not in edit.text and GROUP not in all_text(edit.blocks)
    quiet = note(EventType.SUCCEEDED, "SUCCESS")
    assert "<@" not in format_slack(quiet).text + format_reply(quiet).text


def test_the_reply_says_what_changed_and_when() -> None:
    reply = format_reply(note(EventType.SUCCEEDED, "SUCCESS")).text
    assert "succeeded on orders-cache" in reply and "<!date^" in reply and "took " in reply
    sick = format_reply(Notification(event=poller_event(), channel="oncall")).text
    assert "Cannot poll orders-cache" in sick and "DCS.5000" in sick


RULES = """
cloud: {{endpoint: "http://127.0.0.1:1", project_id: p1, ak: a, sk: b}}
instances: [{{id: i-1}}]
channels:
  oncall: {{type: webhook, url: "http://127.0.0.1:9/"}}
  audit: {{type: webhook, url: "http://127.0.0.1:9/a"}}
rules:
  - name: switchovers
    tasks: [masterStandbySwapJob]
    channels: [oncall, audit]
    mention: {mention}
{extra}
  - name: everything
    channels: [oncall]
    mention: ["<!here>"]
    mention_on: ["*"]
"""


def config(mention: str = f'["{GROUP}", "{USER}"]', extra: str = "") -> Any:
    return parse_config(RULES.format(mention=mention, extra=extra), "rules.yaml", {})


def test_mentions_come_from_the_matching_rules_for_their_events_only() -> None:
    cfg = config()
    failed = event(EventType.FAILED, task(status="FAILED"))
    by_channel = {n.channel: n.mentions for n in route(failed, cfg.rules, list(cfg.channels))}
    assert by_channel == {"oncall": (GROUP, USER, "<!here>"), "audit": (GROUP, USER)}
    started = event(EventType.STARTED, task())
    by_channel = {n.channel: n.mentions for n in route(started, cfg.rules, list(cfg.channels))}
    assert by_channel == {
        "oncall": ("<!here>",),
        "audit": (),
    }  # task.started is not in the default mention_on
    cfg = config(extra="    mention_on: [task.succeeded]")
    done = event(EventType.SUCCEEDED, task(status="SUCCESS"))
    assert {n.channel: n.mentions for n in route(done, cfg.rules, list(cfg.channels))}["audit"] == (
        GROUP,
        USER,
    )


@pytest.mark.parametrize(
    "bad", ["@oncall", "<@oncall>", "<!subteam^>", "here", "<!here> <!channel>", "<#C123>"]
)
def test_check_config_refuses_a_malformed_mention_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(mention=f'["{bad}"]')
    assert "is not a Slack mention" in str(err.value) and "rules" in str(err.value)


def test_active_interval_defaults_to_5_s_never_beyond_interval_and_an_explicit_one_beyond_it_is_an_error() -> (
    None
):
    base = RULES.format(mention="[]", extra="")
    assert parse_config(base, "x.yaml", {}).poll.active_every == 5.0
    assert parse_config(base + "poll: {interval: 3}\n", "x.yaml", {}).poll.active_every == 3.0
    assert parse_config(base + "poll: {active_interval: 0}\n", "x.yaml", {}).poll.active_every == 30.0
    with pytest.raises(ConfigError, match="active_interval"):
        parse_config(base + "poll: {interval: 3, active_interval: 10}\n", "x.yaml", {})


async def test_an_endpoint_has_headroom_unless_its_queue_has_not_emptied_for_a_second_or_it_pauses() -> None:
    clock = TestClock()  # the limiter's waits move it
    gate = ApiGate(
        max_concurrency=1, region_concurrency=1, rate=1000, min_rate=1, clock=clock, sleep=clock.sleep
    )
    release = asyncio.Event()

    async def call() -> None:
        async with gate.slot("r1", "dcs"):
            await release.wait()

    calls = [asyncio.create_task(call()) for _ in range(3)]  # one in flight, two queued for its slot
    await until(lambda: gate.in_flight("r1") == 1, 2, "one call in flight")
    assert gate.has_headroom("r1", "dcs")  # a queue of the moment (polls due in one tick) is no saturation
    clock.advance(HEADROOM_WAIT)
    assert not gate.has_headroom("r1", "dcs")  # a queue that has not emptied for a second is
    release.set()
    await asyncio.gather(*calls)
    assert gate.has_headroom("r1", "dcs")
    gate.limiter("dcs").pause(5)  # a Retry-After
    assert not gate.has_headroom("r1", "dcs")


def test_statuses_in_progress_are_what_keeps_an_instance_on_the_fast_cadence() -> None:
    assert classify_status("RUNNING") is Outcome.IN_PROGRESS
    assert classify_status("SUCCESS") is not Outcome.IN_PROGRESS


def cloud_eye_event(type_: EventType, name: str, event_id: str = "ev1606302402256R6doP5YeZ") -> Event:
    info = CloudEyeInfo(
        event_id=event_id,
        event_name=name,
        event_source="SYS.DCS",
        level="Major",
        state="incident",
        time=T0,
        resource_id="i-1",
        content={"old_master": "10.0.0.3:6379", "new_master": "10.0.0.4:6379", "note": "<!channel>"},
    )
    base = event(EventType.STARTED)
    return Event(
        id=f"evt_{event_id}",
        type=type_,
        project_id=base.project_id,
        region=base.region,
        instance=base.instance,
        detected_at=T0,
        cloud_eye=info,
    )


def test_a_failover_card_says_it_was_automatic_which_node_when_and_links_to_the_console() -> None:
    failover = cloud_eye_event(EventType.INSTANCE_FAILOVER, "masterStandbyFailover")
    message = format_slack(Notification(event=failover, channel="oncall", mentions=(GROUP,)))
    shown = all_text(message.blocks)
    assert message.text.startswith(
        f"{GROUP} :rotating_light: Automatic master/standby failover on orders-cache"
    )
    assert "10.0.0.3:6379" in shown and "10.0.0.4:6379" in shown and "<!date^" in shown
    assert "https://console.huaweicloud.com/dcs/?region=cn-north-4" in shown
    assert "<!channel>" not in shown  # what Cloud Eye says stays escaped
    for raw in message.blocks:
        block = Block.parse(raw)
        assert block is not None
        block.validate_json()


def test_a_node_gone_abnormal_and_its_recovery_share_one_card_other_cloud_eye_events_one_each() -> None:
    sick = cloud_eye_event(EventType.NODE_ABNORMAL, "redisNodeStatusAbnormal", "ev1")
    well = cloud_eye_event(EventType.NODE_RECOVERED, "redisNodeStatusNormal", "ev2")
    assert card_key(sick) == card_key(well) != card_key(poller_event())
    card = after(sick, Card("C1", "1.1"))
    assert not needs_new_card(well, card) and not after(well, card).open
    assert needs_new_card(sick, after(well, card))  # the node's next failure: a new card
    one = cloud_eye_event(EventType.INSTANCE_FAILOVER, "masterStandbyFailover", "ev3")
    two = cloud_eye_event(EventType.INSTANCE_FAILOVER, "masterStandbyFailover", "ev4")
    assert card_key(one) != card_key(two)


def test_without_cards_a_switchover_during_a_running_task_is_kept_until_the_tasks_next_message() -> None:
    swap = task(id="t1", name="masterStandbySwapJob", status="RUNNING")
    switch = cloud_eye_event(EventType.INSTANCE_SWITCHOVER, "masterStandbySwitchover", "ev9")
    part = Notification(event=switch.model_copy(update={"task": swap}), channel="oncall", folds=True)
    started = event(EventType.STARTED, swap)
    assert tracks(started) and not tracks(poller_event())
    record = after(started, Card())
    assert holds(part, record) and holds(part, None)  # the end is still to come there
    assert not holds(part.model_copy(update={"folds": False}), record)  # that channel never gets the end
    kept = with_note(with_note(record, part.event), part.event)  # read twice (a crash before the ack): once
    assert [n.event_id for n in kept.notes] == ["ev9"]
    assert Card.from_json(kept.to_json()) == kept  # kept in Redis with the acknowledgement
    done = event(EventType.SUCCEEDED, task(id="t1", name="masterStandbySwapJob", status="SUCCESS"))
    shown = all_text(format_slack(Notification(event=done, channel="oncall"), notes=kept.notes).blocks)
    assert "Also during this task" in shown and "masterStandbySwitchover" in shown
    told = after(done, kept)
    assert told.notes == () and not told.open
    assert not holds(part, told)  # after the end: a message of its own
