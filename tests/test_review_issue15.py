"""Review of issue 15 (grouping, digests, silences, time intervals, the watchdog): each test drives the real
delivery loop against a real redis-server and the Slack stand-in (or the real daemon against the simulator).

Failing tests show shortcomings (their docstrings say what is expected and what happens instead); passing
ones pin risky behaviour that was checked."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from notifier.config.models import DeliveryConfig, DigestConfig, RuleConfig
from notifier.delivery.channels.slack import SlackChannel, SlackChannelConfig
from notifier.delivery.worker import Deliverer
from notifier.devtools.standins.slack import Message, SlackStandIn
from notifier.pipeline.events import Event, EventType, InstanceRef, Notification, event_id
from notifier.store.connect import Store
from notifier.store.keys import Keys
from notifier.store.outbox import entry_fields
from tests.factories import PROJECT_ID, task

CHANNEL = "oncall"
SLACK_CHANNEL = "#oncall"


def inst(n: int) -> InstanceRef:
    return InstanceRef(id=f"00000000-0000-4000-8000-{n:012d}", name=f"cache-{n:02d}", labels={})


def ev(
    type_: EventType,
    n: int,
    *,
    name: str = "masterStandbySwapJob",
    status: str | None = None,
    created: datetime | None = None,
    updated: datetime | None = None,
) -> Event:
    """An event of instance ``n``'s task ``t{n}`` (created a minute ago unless told)."""
    now = datetime.now(UTC)
    created = created or now - timedelta(minutes=1)
    status = status or {
        EventType.STARTED: "RUNNING",
        EventType.SUCCEEDED: "SUCCESS",
        EventType.FAILED: "FAILED",
        EventType.STUCK: "RUNNING",
    }.get(type_, "RUNNING")
    if updated is None and type_ in (EventType.SUCCEEDED, EventType.FAILED):
        updated = now
    t = task(id=f"t{n}", name=name, status=status, created=created, updated=updated)
    i = inst(n)
    return Event(
        id=event_id(i.id, t.id, type_, t.status),
        type=type_,
        project_id=PROJECT_ID,
        region="cn-north-4",
        instance=i,
        task=t,
        detected_at=now,
    )


def note(e: Event, *, rule: str = "r", mentions: tuple[str, ...] = ()) -> Notification:
    return Notification(event=e, channel=CHANNEL, rule=rule, mentions=mentions)


@dataclass
class Rig:
    store: Store
    slack: SlackStandIn
    channel: SlackChannel

    def deliverer(
        self,
        *,
        rules: Sequence[RuleConfig] = (RuleConfig(name="r", channels=[CHANNEL], group_wait=30),),
        digest: DigestConfig | None = None,
        consumer: str = "alive",
        **delivery: object,
    ) -> Deliverer:
        cfg = DeliveryConfig(
            max_attempts=3, backoff_initial=0.01, backoff_max=0.02, consumer=consumer, **delivery
        )
        d = Deliverer(
            self.store.outbox,
            {CHANNEL: self.channel},
            cfg,
            rules=rules,
            digest=digest or DigestConfig(after=0),
        )
        d.wait_for_groups = False  # what is queued goes now, grouped as it stands (as `once` does)
        return d

    async def queue(self, *notifications: Notification) -> None:
        await self.store.outbox.ensure_group(CHANNEL)
        for n in notifications:
            await self.store.redis.xadd(self.store.keys.outbox(CHANNEL), entry_fields(n))

    def cards(self) -> list[Message]:
        return self.slack.cards(SLACK_CHANNEL)

    def everything(self) -> str:
        out = []
        for card in self.cards():
            out.append(card.text + json.dumps(card.blocks, ensure_ascii=False))
            out.extend(r.text for r in self.slack.replies(SLACK_CHANNEL, card.ts))
        return "\n".join(out)


@pytest.fixture
async def rig(redis_client: aioredis.Redis) -> AsyncIterator[Rig]:
    async with SlackStandIn(token="xoxb-r15") as slack:
        config = SlackChannelConfig(
            type="slack",
            token="xoxb-r15",
            channel=SLACK_CHANNEL,
            base_url=slack.api_base_url,
            rate=1000,
        )
        channel = SlackChannel(CHANNEL, config)
        try:
            yield Rig(Store(redis_client, Keys("r15")), slack, channel)
        finally:
            await channel.aclose()


def burst(type_: EventType, members: range, **kw: object) -> list[Notification]:
    return [note(ev(type_, n, **kw)) for n in members]  # type: ignore[arg-type]


# -- findings ------------------------------------------------------------------------------------------


async def test_the_ends_of_two_bursts_arriving_together_update_both_group_cards(rig: Rig) -> None:
    """Two bursts of switchovers started more than ``group_interval`` apart are two group cards (3 and 2
    members). Their ends then reach the channel together, in one group (same rule, type, task name).

    Expected: each card ends "3 of 3 succeeded" / "2 of 2 succeeded" (or one card that tells all 5), and
    no card keeps saying "running" for tasks that are over.
    Actual: ``Deliverer._deliver_many`` finds the members' records on two group ids (``len(ids) == 2``),
    so it takes no group and posts a **third** card "5 of 5 succeeded"; the first two cards say
    "0 of 3 succeeded, 3 running" / "0 of 2 ..., 2 running" for ever. Fix: with several group ids, update
    each group with its own members (one send per group id), and only post a new group for members
    without one."""
    d = rig.deliverer(group_interval=0)  # as if the second burst came after group_interval
    await rig.queue(*burst(EventType.STARTED, range(3)))
    assert (await d.drain(CHANNEL)).delivered == 3
    await rig.queue(*burst(EventType.STARTED, range(3, 5)))
    assert (await d.drain(CHANNEL)).delivered == 2
    first, second = rig.cards()
    assert "0 of 3 succeeded, 3 running" in first.text and "0 of 2 succeeded, 2 running" in second.text
    await rig.queue(*burst(EventType.SUCCEEDED, range(5)))
    assert (await d.drain(CHANNEL)).delivered == 5
    shown = [c.text for c in rig.cards()]
    assert not [t for t in shown if "running" in t], shown


async def test_a_deleted_group_card_is_posted_again_with_every_member(rig: Rig) -> None:
    """Someone deletes a group card of 3 running switchovers; then one of them succeeds.

    Expected: the card posted again tells the whole burst: "1 of 3 succeeded, 2 running".
    Actual: ``SlackChannel.send_many`` catches ``_CardGone`` and posts ``_post_group(notifications)``,
    a group of just the members in hand: "1 of 1 succeeded" — the two still running are dropped from it
    (their records still point to the deleted card, so each of their ends posts yet another card of one).
    Fix: on a gone card post ``group.moved(events)`` (the group with every member), under a new ts."""
    d = rig.deliverer()
    await rig.queue(*burst(EventType.STARTED, range(3)))
    await d.drain(CHANNEL)
    [card] = rig.cards()
    rig.slack.delete_message(SLACK_CHANNEL, card.ts)
    await rig.queue(note(ev(EventType.SUCCEEDED, 0)))
    assert (await d.drain(CHANNEL)).delivered == 1
    [again] = rig.cards()
    assert "1 of 3 succeeded, 2 running" in again.text, again.text
    await rig.queue(*burst(EventType.SUCCEEDED, range(1, 3)))
    await d.drain(CHANNEL)
    [end] = rig.cards()  # the rest of the burst updates that card, rather than posting more
    assert "3 of 3 succeeded" in end.text, [c.text for c in rig.cards()]


async def test_a_digest_of_task_ends_does_not_leave_their_living_cards_running(rig: Rig) -> None:
    """Three scale-ups have living cards ("started"); Slack is then away, and their ends (more than
    ``digest.after``, older than ``digest.age``) come back as one digest.

    Expected: the digest is sent, and the cards of those tasks no longer say they run (updated to their
    end, or at least closed so the on-call engineer is not told three scale-ups still run).
    Actual: ``_deliver_many`` acknowledges the digest's members with no card records (``send_many``
    returns None for a digest) and never touches the cards: they say "started" for ever, and the task's
    card record stays open. Fix: after a digest, update each member's existing card (or group card) to
    its latest state without a thread reply (chat.update only), or mark it "ended — see digest"."""
    rules = (RuleConfig(name="r", channels=[CHANNEL], group_wait=0),)
    # (The tasks started two hours ago and were told then; they ended an hour ago, while Slack was away.
    # A card never goes back to an older state, so the ends must be later than the starts.)
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    told_then = rig.deliverer(rules=rules, digest=DigestConfig(after=100, age=600))
    await rig.queue(*burst(EventType.STARTED, range(3), name="EXTEND", created=two_hours_ago))
    assert (await told_then.drain(CHANNEL)).delivered == 3
    assert len(rig.cards()) == 3
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    ends = [
        note(ev(EventType.SUCCEEDED, n, name="EXTEND", created=two_hours_ago, updated=an_hour_ago))
        for n in range(3)
    ]
    await rig.queue(*ends)
    d = rig.deliverer(rules=rules, digest=DigestConfig(after=2, age=600))
    assert (await d.drain(CHANNEL)).delivered == 3
    assert any("held up" in c.text for c in rig.cards())  # the digest went out
    still = [c.text for c in rig.cards() if "held up" not in c.text and "started" in c.text.lower()]
    assert not still, still


def test_stuck_tasks_are_announced_not_folded_into_a_catch_up_digest() -> None:
    """An AZ incident: 25 switchovers hang and the watchdog announces 25 ``task.stuck`` at once, queued
    now (nothing was away).

    Expected: a group (one card, broadcast with mentions) — nothing was held up, so no catch-up digest.
    Actual: ``grouping._age`` takes the change's time from ``stamp(event)``, which for a running task is
    its ``created_at`` (no ``updated_at`` until it ends): a stuck task is by definition at least its limit
    old (30 min by default > ``digest.age`` 10 min), so 25 stuck tasks are "a backlog" and become a
    digest claiming "25 notifications held up from …". Fix: judge a ``task.stuck`` (and any event) by
    when it was detected/queued (``detected_at`` / entry id), not by its task's creation."""
    from notifier.delivery.grouping import plan
    from notifier.store.outbox import OutboxEntry

    now = datetime.now(UTC).timestamp()
    created = datetime.now(UTC) - timedelta(minutes=31)
    entries = []
    for n in range(25):
        e = ev(EventType.STUCK, n, created=created).model_copy(
            update={"stuck_since": created + timedelta(minutes=30)}
        )
        entries.append(OutboxEntry(channel=CHANNEL, entry_id=f"{int(now * 1000)}-{n}", notification=note(e)))
    rules = {"r": RuleConfig(name="r", channels=[CHANNEL])}
    units = plan(entries, rules=rules, chat=True, digest=DigestConfig(), now=now + 1)
    assert [(u.kind, len(u.entries)) for u in units] == [("group", 25)]


async def test_a_group_by_without_type_does_not_count_one_task_twice(redis_client: aioredis.Redis) -> None:
    """A rule groups by ``[project]`` (allowed) and a switchover starts and ends within ``group_wait``: on
    a Slack incoming webhook the group message is ``format_group`` of both notifications.

    Expected: one instance told once (its latest state), "1 instance(s)".
    Actual: "... on 2 instances", the same instance listed twice (started and succeeded): the count of
    a group is its notifications, not its instances. Fix: in ``format_group`` (and the digest's counts)
    count distinct card keys, listing each member's latest event."""
    async with SlackStandIn() as slack:
        config = SlackChannelConfig(type="slack", webhook_url=slack.webhook_url, rate=1000)
        channel = SlackChannel(CHANNEL, config)
        try:
            store = Store(redis_client, Keys("r15w"))
            rules = [RuleConfig(name="r", channels=[CHANNEL], group_wait=30, group_by=["project"])]
            d = Deliverer(store.outbox, {CHANNEL: channel}, DeliveryConfig(), rules=rules)
            d.wait_for_groups = False
            await store.outbox.ensure_group(CHANNEL)
            for n in (note(ev(EventType.STARTED, 0)), note(ev(EventType.SUCCEEDED, 0))):
                await store.redis.xadd(store.keys.outbox(CHANNEL), entry_fields(n))
            assert (await d.drain(CHANNEL)).delivered == 2
        finally:
            await channel.aclose()
        [message] = slack.cards(slack.webhook_channel)
        assert "2 instances" not in message.text, message.text
        assert json.dumps(message.blocks).count("cache-00") == 1, message.blocks


async def test_the_end_of_a_stuck_member_of_a_group_says_how_long_it_was_stuck(rig: Rig) -> None:
    """A switchover of a burst (told on a group card) was announced stuck; it then succeeds.

    Expected (issue: "the task's normal end says how long it was stuck"): its message says "was stuck
    for …", as the end of a task on its own card does (``format_reply`` adds ``stuck_note``).
    Actual: the end goes to the group card (``format_group_reply``), which tells only "succeeded on 1
    instances: cache-00" — the stuck time is lost. Fix: add each member's ``stuck_note`` in
    ``format_group_reply``'s line (and "1 instance" in the singular)."""
    d = rig.deliverer()
    await rig.queue(*burst(EventType.STARTED, range(3)))
    await d.drain(CHANNEL)
    created = datetime.now(UTC) - timedelta(minutes=12)
    since = created + timedelta(minutes=5)
    stuck = ev(EventType.STUCK, 0, created=created).model_copy(update={"stuck_since": since})
    await rig.queue(note(stuck))
    await d.drain(CHANNEL)
    end = ev(EventType.SUCCEEDED, 0, created=created).model_copy(update={"stuck_since": since})
    assert end.stuck_note is not None and "was stuck" in end.stuck_note
    await rig.queue(note(end))
    await d.drain(CHANNEL)
    [card] = rig.cards()
    replies = [r.text for r in rig.slack.replies(SLACK_CHANNEL, card.ts)]
    assert any("succeeded" in r and "was stuck" in r for r in replies), replies


async def test_a_silenced_member_of_a_group_is_counted_as_silenced_not_delivered(rig: Rig) -> None:
    """A silence holds back one member of a burst of three; the other two go out as a group.

    Expected: the pass reports 2 delivered and 1 silenced (what ``once`` prints and the logs say:
    "delivered 2 notifications").
    Actual: ``_process_unit`` tallies the whole unit with the verdict of the send (``_tally(name,
    unit.entries, DELIVERED)``): 3 delivered, 0 silenced — the silenced member (and any member delivered
    earlier, a duplicate, or sent on a card of its own) is counted as delivered by this group. Fix: have
    ``_deliver_many`` return what became of each member and tally those."""
    from notifier.delivery.silences import Silence, parse_matcher
    from notifier.store.silences import Silences

    now = datetime.now(UTC)
    matcher = (parse_matcher("instance=cache-01"),)
    silence = Silence("0000abce", matcher, now - timedelta(minutes=1), now + timedelta(hours=1), "", "", now)
    await rig.store.silences.add(silence)
    d = rig.deliverer()
    d.silences = Silences(rig.store.silences, rig.store.outbox)
    await rig.queue(*burst(EventType.STARTED, range(3)))
    result = await d.drain(CHANNEL)
    assert (result.delivered, result.silenced) == (2, 1)


async def test_a_failed_member_of_a_group_is_counted_and_broadcast_with_the_rule_mentions(rig: Rig) -> None:
    """A member of a group card fails: the card counts it, and the thread reply is broadcast to the
    channel with the rule's mentions."""
    d = rig.deliverer()
    await rig.queue(*burst(EventType.STARTED, range(3)))
    await d.drain(CHANNEL)
    await rig.queue(note(ev(EventType.FAILED, 1), mentions=("<!subteam^S0ONCALL>",)))
    await d.drain(CHANNEL)
    [card] = rig.cards()
    assert "1 failed" in card.text and "2 running" in card.text, card.text
    [loud] = rig.slack.broadcasts(SLACK_CHANNEL)
    assert "<!subteam^S0ONCALL>" in loud.text and "cache-01" in loud.text


async def test_a_silence_holds_only_the_members_it_matches(rig: Rig) -> None:
    """A silence on one instance holds back its member of a burst; the others are one group card."""
    from notifier.delivery.silences import Silence, parse_matcher
    from notifier.store.silences import Silences

    now = datetime.now(UTC)
    silence = Silence(
        "0000abcd",
        (parse_matcher("instance=cache-01"),),
        now - timedelta(minutes=1),
        now + timedelta(hours=1),
        "planned",
        "tester",
        now,
    )
    await rig.store.silences.add(silence)
    d = rig.deliverer()
    d.silences = Silences(rig.store.silences, rig.store.outbox)
    await rig.queue(*burst(EventType.STARTED, range(3)))
    result = await d.drain(CHANNEL)
    [card] = rig.cards()
    assert "2 instances" in card.text and "cache-01" not in rig.everything()
    [held] = await rig.store.silences.held(silence_id="0000abcd")
    assert held.instance_name == "cache-01"
    assert await rig.store.outbox.backlog(CHANNEL) == 0
    assert result.delivered + result.silenced == 3
