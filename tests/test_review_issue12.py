"""Review of issue 12 (living Slack cards, mentions, active_interval): what a person in the channel or an
operator would see go wrong, through the real SlackChannel + Slack stand-in, the real delivery loop on a
real redis-server, and the real daemon against the DCS simulator."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import Block
from slack_sdk.web.async_client import AsyncWebClient

from notifier.config.load import parse_config
from notifier.config.models import Config, DeliveryConfig
from notifier.dcs.client import DcsClient
from notifier.dcs.limits import ApiGate
from notifier.delivery.cards import card_key
from notifier.delivery.channels.slack import SlackChannel, SlackChannelConfig
from notifier.delivery.direct import Replay, replay
from notifier.delivery.formatters.slack import format_reply
from notifier.delivery.formatters.webhook import webhook_body
from notifier.delivery.worker import Deliverer, attempt
from notifier.devtools.simulator import Simulator
from notifier.devtools.standins import RecordedRequest
from notifier.devtools.standins.slack import Message, SlackStandIn
from notifier.errors import ConfigError
from notifier.pipeline.events import Event, EventType, Notification
from notifier.pipeline.rules import route
from notifier.store.connect import Store, connect_redis
from notifier.store.keys import Keys
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK
from tests.factories import T0, event, poller_event, problem, removed_event, task
from tests.support.clock import TestClock
from tests.support.daemons import running
from tests.support.redis_server import RedisServer
from tests.support.wait import until, until_async

TOKEN = "xoxb-1111-review-issue12-SECRETTOKEN"
GROUP, USER = "<!subteam^S0123ABC>", "<@U0456DEF>"
FAST = DeliveryConfig(
    max_attempts=20,
    backoff_initial=0.01,
    backoff_max=0.05,
    consumer="rev",
    claim_idle=30,
    batch=10,
    group_wait=0,
)


# --- helpers -------------------------------------------------------------------------------------------------


def bot(
    slack: SlackStandIn, name: str = "oncall", channel: str = "#oncall", rate: float | None = None
) -> SlackChannel:
    cfg = SlackChannelConfig.model_validate(
        {"type": "slack", "token": TOKEN, "channel": channel, "base_url": slack.api_base_url, "rate": rate}
    )
    return SlackChannel(name, cfg)


def ev(type_: EventType, status: str, at: float, tid: str = "t1", **extra: Any) -> Event:
    """A task event detected ``at`` seconds after T0 (later events are detected later)."""
    updated = None if status in ("RUNNING", "CREATED", "EXECUTING") else T0 + timedelta(seconds=at)
    e = event(type_, task(id=tid, status=status, updated=updated, **extra))
    return e.model_copy(update={"detected_at": T0 + timedelta(seconds=at)})


def note(e: Event, channel: str = "oncall", mentions: tuple[str, ...] = ()) -> Notification:
    return Notification(event=e, channel=channel, rule="changes", mentions=mentions)


async def enqueue_notes(r: Any, store: Store, *notes: Notification) -> None:
    for n in notes:
        await r.xadd(store.link.keys.outbox(n.channel), {"n": n.model_dump_json()})


def top(slack: SlackStandIn, channel: str = "#oncall") -> list[Message]:
    return slack.cards(channel)


def mrkdwn_texts(node: Any) -> list[str]:
    """Every mrkdwn text in a Block Kit structure."""
    if isinstance(node, dict):
        found = [str(node["text"])] if node.get("type") == "mrkdwn" and "text" in node else []
        return found + [t for v in node.values() for t in mrkdwn_texts(v)]
    if isinstance(node, list):
        return [t for v in node for t in mrkdwn_texts(v)]
    return []


def api_calls(slack: SlackStandIn) -> list[RecordedRequest]:
    return [r for r in slack.requests if r.path.startswith("/api/")]


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    async with SlackStandIn(token=TOKEN, channels=["oncall", "ops"]) as s:
        yield s


@pytest.fixture
def store(redis_client: aioredis.Redis) -> Store:
    return Store(redis_client, Keys("rv"))


async def drain(store: Store, channels: dict[str, SlackChannel], cfg: DeliveryConfig = FAST) -> Deliverer:
    d = Deliverer(store.outbox, channels, cfg)
    for name in channels:
        result = await d.drain(name)
        assert result.ok, result.failed
    return d


async def close(*channels: SlackChannel) -> None:
    for c in channels:
        await c.aclose()


# --- ordering, acknowledgement, partial failures --------------------------------------------------------------


async def test_started_and_succeeded_both_queued_while_stopped_give_one_card_edited_once(
    slack: SlackStandIn, store: Store, redis_client: aioredis.Redis
) -> None:
    """The daemon was stopped while a task ran: its start and its end wait together in the outbox. The
    channel must show one card (posted, then edited to 'succeeded') with one thread reply, not two cards."""
    ch = bot(slack)
    try:
        await enqueue_notes(
            redis_client,
            store,
            note(ev(EventType.STARTED, "RUNNING", 5)),
            note(ev(EventType.SUCCEEDED, "SUCCESS", 60)),
        )
        await drain(store, {"oncall": ch})
    finally:
        await close(ch)
    [card] = top(slack)
    assert "succeeded" in card.text and len(card.edits) == 1
    [reply] = slack.replies(card.channel, card.ts)
    assert "succeeded" in reply.text
    assert await store.outbox.backlog("oncall") == 0


async def test_redis_gone_at_the_cards_acknowledgement_still_keeps_the_card_and_the_end_edits_it(
    slack: SlackStandIn, own_redis: RedisServer
) -> None:
    """Slack took the card, then Redis went away before the acknowledgement. When Redis is back, the card's
    id must be written with the late acknowledgement, so the task's end edits that card (no second card)."""
    client = connect_redis(own_redis.url)
    st = Store(client, Keys("rv"))
    ch = bot(slack)

    def stop_redis_on_card(req: RecordedRequest) -> None:
        if req.path == "/api/chat.postMessage" and not (req.json or {}).get("thread_ts"):
            own_redis.stop()  # Slack accepted the card; Redis goes away before the XACK

    try:
        await enqueue_notes(client, st, note(ev(EventType.STARTED, "RUNNING", 5)))
        d = Deliverer(st.outbox, {"oncall": ch}, FAST)
        slack.on_message = stop_redis_on_card
        with contextlib.suppress(Exception):
            await d.drain("oncall")
        slack.on_message = None
        assert d.unacknowledged == 1
        own_redis.start()
        await enqueue_notes(client, st, note(ev(EventType.SUCCEEDED, "SUCCESS", 60)))
        result = await d.drain("oncall")
        assert result.ok, result.failed
    finally:
        await close(ch)
        await client.aclose()
    [card] = top(slack)
    assert "succeeded" in card.text and len(card.edits) == 1


async def test_a_reply_throttled_after_a_successful_edit_is_retried_without_a_second_card_or_reply(
    slack: SlackStandIn, store: Store, redis_client: aioredis.Redis
) -> None:
    """chat.update went through, the thread reply got 429 ratelimited: the retry must not post a second
    card, and the thread must end with exactly one reply."""
    ch = bot(slack)
    seen_update = [False]
    throttled = [0]

    def policy(number: int, path: str) -> Any:
        if path == "/api/chat.update":
            seen_update[0] = True
        elif path == "/api/chat.postMessage" and seen_update[0] and not throttled[0]:
            throttled[0] += 1
            return SlackStandIn.api_error("ratelimited", status=429, retry_after=0)
        return None

    try:
        await enqueue_notes(redis_client, store, note(ev(EventType.STARTED, "RUNNING", 5)))
        await drain(store, {"oncall": ch})
        slack.policy = policy
        await enqueue_notes(redis_client, store, note(ev(EventType.SUCCEEDED, "SUCCESS", 60)))
        await drain(store, {"oncall": ch})
    finally:
        await close(ch)
    assert throttled[0] == 1
    [card] = top(slack)
    assert "succeeded" in card.text
    [reply] = slack.replies(card.channel, card.ts)
    assert "succeeded" in reply.text
    assert int(await redis_client.xlen("rv:dead")) == 0


@pytest.mark.parametrize("how", ["cant_update_message", "edit_window_closed"])
async def test_a_frozen_card_is_posted_anew_and_later_events_edit_the_new_card(
    how: str, store: Store, redis_client: aioredis.Redis
) -> None:
    """A card that can no longer be edited: the next event posts a new card, and the event after that
    edits the *new* card (its id was kept), rather than posting a third one. No dead letter."""
    now = [0.0]
    window = 10.0 if how == "edit_window_closed" else None
    async with SlackStandIn(token=TOKEN, channels=["oncall"], edit_window=window, clock=lambda: now[0]) as s:
        ch = bot(s)
        try:
            await enqueue_notes(redis_client, store, note(ev(EventType.STARTED, "CREATED", 5)))
            await drain(store, {"oncall": ch})
            [first] = top(s)
            if how == "cant_update_message":
                s.mark_uneditable(first.channel, first.ts)
            else:
                now[0] = 100.0  # the edit window of the first card has passed
            await enqueue_notes(redis_client, store, note(ev(EventType.UPDATED, "EXECUTING", 30)))
            await drain(store, {"oncall": ch})
            await enqueue_notes(redis_client, store, note(ev(EventType.SUCCEEDED, "SUCCESS", 60)))
            await drain(store, {"oncall": ch})
        finally:
            await close(ch)
        cards = top(s)
    assert len(cards) == 2, [c.text for c in cards]
    assert cards[0].ts == first.ts
    assert "succeeded" in cards[1].text and len(cards[1].edits) == 1
    assert int(await redis_client.xlen("rv:dead")) == 0


# --- mentions and escaping ------------------------------------------------------------------------------------


RULES = """
cloud: {{endpoint: "http://127.0.0.1:1", project_id: p1, ak: a, sk: b}}
instances: [{{id: i-1}}]
channels:
  oncall: {{type: slack, token: "xoxb-1", channel: "#oncall"}}
  audit: {{type: webhook, url: "http://127.0.0.1:9/a"}}
rules:
  - name: switchovers
    channels: [oncall, audit]
    mention: {mention}
    mention_on: {mention_on}
"""


def rules_config(mention: list[str], mention_on: str = "[task.failed]") -> Config:
    return parse_config(
        RULES.format(mention=repr(mention).replace("'", '"'), mention_on=mention_on), "r.yaml", {}
    )


#: 50 user-group mentions with labels, each as long as check-config lets it be.
LONG = [f"<!subteam^S{i:02d}{'A' * 30}|@{'team' * 20}>" for i in range(50)]


def test_check_config_refuses_mentions_longer_than_a_message_can_carry() -> None:
    """50 user groups with long @handles (6,349 characters) cannot all ping from one Slack message: the
    config is refused, naming the rule's key, rather than every failure card being dead-lettered later."""
    with pytest.raises(ConfigError, match=r"rules.0.mention: the mentions take 6349 characters"):
        rules_config(LONG)


async def test_mentions_of_several_rules_beyond_a_block_still_get_the_failure_card_posted(
    slack: SlackStandIn,
) -> None:
    """Several rules, each within its limit, may add up to more mentions than one block holds: the card is
    still posted, within Block Kit's limits, saying what failed, its mentions cut between two mentions."""
    n = note(ev(EventType.FAILED, "FAILED", 5), mentions=tuple(LONG))
    ch = bot(slack)
    try:
        result = await attempt(ch, n)
    finally:
        await close(ch)
    assert result.error is None, result.error
    [card] = top(slack)
    for raw in card.blocks or []:
        Block.parse(raw).validate_json()  # type: ignore[union-attr]
    posted = repr(card.blocks) + card.text
    assert "failed on orders-cache" in card.text
    assert sum(m in posted for m in LONG) >= 20  # as many whole mentions as a block holds
    assert [w for w in card.text.split(" ") if w.startswith("<!subteam") and not w.endswith(">")] == []


def test_the_thread_reply_with_fifty_long_mentions_still_says_what_happened_and_breaks_no_mention() -> None:
    """The failure's thread reply (the one that pings) must still say what failed, and must not cut a
    mention in half (a broken ``<!subteam^…`` shows as garbage and pings nobody)."""
    n = note(ev(EventType.FAILED, "FAILED", 60), mentions=tuple(LONG))
    reply = format_reply(n)
    for raw in reply.blocks:
        Block.parse(raw).validate_json()  # type: ignore[union-attr]
    assert "failed on orders-cache" in reply.text
    words = reply.text.split(" ")
    broken = [w for w in words if w.startswith("<!subteam") and not w.endswith(">")]
    assert broken == []


async def test_api_data_with_slack_mentions_never_pings_in_card_edit_or_reply(slack: SlackStandIn) -> None:
    """Whatever the API says (a user name, a task name, an error message) is escaped in the card, its edit
    and its thread reply: only the config's mention may ping."""
    hostile = "<!channel> <!here> <@U0EVIL> <!subteam^S0EVIL>"
    ch = bot(slack)
    try:
        started = ev(EventType.STARTED, "RUNNING", 5, name=hostile, user_name=hostile)
        failed = ev(EventType.FAILED, "FAILED", 60, name=hostile, user_name=hostile)
        first = await attempt(ch, note(started))
        assert first.error is None and first.card is not None
        second = await attempt(ch, note(failed, mentions=(GROUP,)), first.card)
        assert second.error is None, second.error
        sick = poller_event(p=problem(message=f"HTTP 503 {hostile}"))
        third = await attempt(ch, note(sick))
        assert third.error is None, third.error
    finally:
        await close(ch)
    calls = api_calls(slack)
    assert len(calls) == 4  # card, edit, reply, health card
    for call in calls:
        # What Slack parses for mentions: the message's text and every mrkdwn text object (a plain_text
        # header shows its text literally and pings nobody).
        parsed = [str(call.json.get("text") or ""), *mrkdwn_texts(call.json.get("blocks"))]
        for text in parsed:
            for bad in ("<!channel>", "<!here>", "<@U0EVIL>", "<!subteam^S0EVIL>"):
                assert bad not in text, (call.path, bad, text[:300])
    assert GROUP in calls[2].json["text"]  # the failure's reply carries the rule's mention


async def test_mention_on_star_pings_in_every_reply_but_never_in_an_edit(slack: SlackStandIn) -> None:
    cfg = rules_config([USER], mention_on='["*"]')
    ch = bot(slack)
    try:
        card = None
        for e in (
            ev(EventType.STARTED, "CREATED", 5),
            ev(EventType.UPDATED, "EXECUTING", 30),
            ev(EventType.SUCCEEDED, "SUCCESS", 60),
        ):
            [n] = [x for x in route(e, cfg.rules, list(cfg.channels)) if x.channel == "oncall"]
            res = await attempt(ch, n, card)
            assert res.error is None, res.error
            card = res.card
    finally:
        await close(ch)
    posts = [r.json for r in api_calls(slack) if r.path == "/api/chat.postMessage"]
    updates = [r.text for r in api_calls(slack) if r.path == "/api/chat.update"]
    assert len(posts) == 3 and len(updates) == 2
    assert all(USER in (p.get("text") or "") for p in posts)  # the first post and both replies
    assert all(USER not in u for u in updates)


async def test_an_incoming_webhook_channel_keeps_one_message_per_event_with_the_mention(
    slack: SlackStandIn,
) -> None:
    cfg = SlackChannelConfig.model_validate({"type": "slack", "webhook_url": slack.webhook_url, "rate": None})
    ch = SlackChannel("hook", cfg)
    try:
        assert not ch.living_cards
        for n in (
            note(ev(EventType.STARTED, "RUNNING", 5)),
            note(ev(EventType.FAILED, "FAILED", 60), mentions=(GROUP, USER)),
        ):
            res = await attempt(ch, n)
            assert res.error is None, res.error
    finally:
        await close(ch)
    msgs = slack.cards("#incoming-webhook")
    assert len(msgs) == 2
    assert GROUP not in msgs[0].text and msgs[1].text.startswith(f"{GROUP} {USER} ")


def test_a_generic_webhook_payload_is_unchanged_by_a_rules_mentions() -> None:
    """Machines get the same bytes whether or not the rule that sent them mentions people."""
    cfg = rules_config([GROUP, USER])
    e = ev(EventType.FAILED, "FAILED", 60)
    [n] = [x for x in route(e, cfg.rules, list(cfg.channels)) if x.channel == "audit"]
    assert n.mentions == (GROUP, USER)
    plain = n.model_copy(update={"mentions": ()})
    assert webhook_body(n) == webhook_body(plain)
    assert b"subteam" not in webhook_body(n)


# --- health cards, channels, cluster keys ---------------------------------------------------------------------


async def test_health_cards_a_second_episode_gets_a_second_card_and_a_removal_edits_the_open_one(
    slack: SlackStandIn, store: Store, redis_client: aioredis.Redis
) -> None:
    first = problem(since=T0)
    second = problem(since=T0 + timedelta(hours=1))
    notes = [
        note(poller_event(EventType.POLLER_UNHEALTHY, first, detected=T0 + timedelta(minutes=5))),
        note(poller_event(EventType.POLLER_RECOVERED, first, detected=T0 + timedelta(minutes=10))),
        note(poller_event(EventType.POLLER_UNHEALTHY, second, detected=T0 + timedelta(hours=1, minutes=5))),
        note(removed_event(detected=T0 + timedelta(hours=2))),
    ]
    ch = bot(slack)
    try:
        await enqueue_notes(redis_client, store, *notes)
        await drain(store, {"oncall": ch})
    finally:
        await close(ch)
    cards = top(slack)
    assert len(cards) == 2, [c.text for c in cards]
    assert "works again" in cards[0].text and len(cards[0].edits) == 1
    assert len(cards[1].edits) == 1 and "was deleted" in cards[1].text  # the removal edited it
    assert ["works again" in r.text for r in slack.replies(cards[0].channel, cards[0].ts)] == [True]
    assert ["was deleted" in r.text for r in slack.replies(cards[1].channel, cards[1].ts)] == [True]


async def test_two_bot_channels_keep_a_card_each_for_the_same_task(
    slack: SlackStandIn, store: Store, redis_client: aioredis.Redis
) -> None:
    a, b = bot(slack, "oncall", "#oncall"), bot(slack, "ops", "#ops")
    try:
        started, done = ev(EventType.STARTED, "RUNNING", 5), ev(EventType.SUCCEEDED, "SUCCESS", 60)
        await enqueue_notes(redis_client, store, note(started, "oncall"), note(started, "ops"))
        await drain(store, {"oncall": a, "ops": b})
        await enqueue_notes(redis_client, store, note(done, "oncall"), note(done, "ops"))
        await drain(store, {"oncall": a, "ops": b})
    finally:
        await close(a, b)
    [one], [two] = top(slack, "#oncall"), top(slack, "#ops")
    assert one.channel != two.channel
    for c in (one, two):
        assert "succeeded" in c.text and len(c.edits) == 1
        assert len(slack.replies(c.channel, c.ts)) == 1


def test_on_a_cluster_a_card_shares_the_hash_slot_of_its_channels_acknowledgement() -> None:
    keys = Keys("dcsn", cluster=True)
    e = ev(EventType.STARTED, "RUNNING", 5)
    for channel in ("oncall", "ops", "audit"):
        slot = key_slot(keys.outbox(channel).encode())
        assert key_slot(keys.card(channel, card_key(e)).encode()) == slot
        assert key_slot(keys.delivered(channel, e.id).encode()) == slot
        assert key_slot(keys.card(channel, card_key(poller_event())).encode()) == slot


# --- secrets -------------------------------------------------------------------------------------------------


async def test_the_bot_token_never_shows_in_logs_or_dead_letters_when_card_calls_fail(
    slack: SlackStandIn, store: Store, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ch = bot(slack)
    try:
        await enqueue_notes(redis_client, store, note(ev(EventType.STARTED, "RUNNING", 5)))
        await drain(store, {"oncall": ch})
        [card] = top(slack)
        slack.delete_message(card.channel, card.ts)
        slack.enqueue(SlackStandIn.api_error("message_not_found"), SlackStandIn.api_error("invalid_auth"))
        await enqueue_notes(redis_client, store, note(ev(EventType.SUCCEEDED, "SUCCESS", 60)))
        await drain(store, {"oncall": ch})
    finally:
        await close(ch)
    dead = await redis_client.xrange("rv:dead") or []
    assert len(dead) == 1
    assert TOKEN not in repr(dead) and "SECRETTOKEN" not in caplog.text


# --- the dead-letter replay of an older event -----------------------------------------------------------------


async def test_replaying_an_older_event_after_the_card_was_deleted_does_not_post_a_stale_card(
    slack: SlackStandIn, store: Store, redis_client: aioredis.Redis
) -> None:
    """The task's start was dead-lettered; its end posted the card ('succeeded'); a person deleted that card.
    Replaying the start must not post a new card saying the task is still running."""
    cfg = parse_config(
        f"""
cloud: {{endpoint: "http://127.0.0.1:1", project_id: p1, ak: a, sk: b}}
instances: [{{id: i-1}}]
redis: {{url: "redis://127.0.0.1:1", key_prefix: rv}}
channels:
  oncall: {{type: slack, token: "{TOKEN}", channel: "#oncall", base_url: "{slack.api_base_url}", rate: 1000}}
""",
        "c.yaml",
        {},
    )
    ch = bot(slack)
    try:
        slack.enqueue(SlackStandIn.api_error("invalid_auth"))  # the start is refused for good
        await enqueue_notes(redis_client, store, note(ev(EventType.STARTED, "RUNNING", 5)))
        await drain(store, {"oncall": ch})
        await enqueue_notes(redis_client, store, note(ev(EventType.SUCCEEDED, "SUCCESS", 60)))
        await drain(store, {"oncall": ch})
    finally:
        await close(ch)
    [card] = top(slack)
    assert "succeeded" in card.text
    slack.delete_message(card.channel, card.ts)
    letters = await store.dead_letters.oldest()
    assert len(letters) == 1
    async with contextlib.aclosing(replay(cfg, store, letters)) as replayed:
        outcomes = [r.outcome async for r in replayed]
    assert outcomes == [Replay.DELIVERED]
    for c in top(slack):
        assert "started" not in c.text.lower() and "running" not in c.text.lower(), c.text


# --- two replicas delivering one channel ----------------------------------------------------------------------


async def test_two_replicas_never_post_a_second_card_when_the_end_arrives_while_the_card_post_is_slow(
    slack: SlackStandIn, store: Store, redis_client: aioredis.Redis
) -> None:
    """Two replicas (scaling.enabled) consume one channel's outbox. Replica A posts a task's card and Slack is
    slow to answer; meanwhile the task ends and replica B, idle in its blocking read, gets the end. B must not
    post a second card (the channel would show a 'started' card forever beside a 'succeeded' one)."""
    held = asyncio.Event()
    second_top_post = asyncio.Event()
    top_posts = [0]

    async def slow_first_card(req: RecordedRequest) -> None:
        if req.path != "/api/chat.postMessage" or (req.json or {}).get("thread_ts"):
            return
        top_posts[0] += 1
        if top_posts[0] == 1:
            held.set()
            with contextlib.suppress(TimeoutError):  # Slack is slow: at most 1.5 s, less if B posts
                await asyncio.wait_for(second_top_post.wait(), 1.5)
        else:
            second_top_post.set()

    slack.on_message = slow_first_card
    a_ch, b_ch = bot(slack), bot(slack)
    a = Deliverer(store.outbox, {"oncall": a_ch}, FAST.model_copy(update={"consumer": "rev-r1"}))
    b = Deliverer(store.outbox, {"oncall": b_ch}, FAST.model_copy(update={"consumer": "rev-r2"}))
    await store.outbox.ensure_group("oncall")
    workers = [asyncio.create_task(d.run_channel("oncall", 0.05)) for d in (a, b)]
    try:

        async def both_idle() -> bool:
            clients = await redis_client.client_list()
            return sum(1 for c in clients if c.get("cmd") == "xreadgroup") >= 2

        await until_async(both_idle, 3, "both replicas idle in a blocking read")
        await enqueue_notes(redis_client, store, note(ev(EventType.STARTED, "RUNNING", 5)))
        await asyncio.wait_for(held.wait(), 3)
        await enqueue_notes(redis_client, store, note(ev(EventType.SUCCEEDED, "SUCCESS", 60)))

        async def all_sent() -> bool:
            return await store.outbox.backlog("oncall") == 0  # acknowledged entries leave the stream

        await until_async(all_sent, 4, "both notifications acknowledged")
    finally:
        a.request_stop()
        b.request_stop()
        await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), 5)
        await close(a_ch, b_ch)
    cards = top(slack)
    assert len(cards) == 1, [c.text for c in cards]
    assert "succeeded" in cards[0].text


# --- active_interval ------------------------------------------------------------------------------------------


DAEMON = """
cloud: {endpoint: "${SIM_URL}", project_id: "__PROJECT__", ak: "${CLOUD_SDK_AK}", sk: "${CLOUD_SDK_SK}"}
instances:
  - {id: "__ORDERS__", name: orders-cache}
  - {id: "__SESSIONS__", name: sessions-cache}
poll: {interval: 0.6, active_interval: 0.05, jitter: 0}
redis: {url: "${REDIS_URL}", key_prefix: rvd}
channels:
  oncall: {type: slack, token: "${SLACK_TOKEN}", channel: "#oncall", base_url: "${SLACK_API}", rate: 50}
delivery: {max_attempts: 1000, backoff_initial: 0.05, backoff_max: 0.4, claim_idle: 1, stop_timeout: 5, group_wait: 0}
"""


def daemon_config(sim: Simulator, slack: SlackStandIn, redis_url: str) -> Config:
    text = (
        DAEMON.replace("__PROJECT__", PROJECT_ID)
        .replace("__ORDERS__", ORDERS)
        .replace("__SESSIONS__", SESSIONS)
    )
    env = {
        "SIM_URL": str(sim.base_url),
        "CLOUD_SDK_AK": AK,
        "CLOUD_SDK_SK": SK,
        "REDIS_URL": redis_url,
        "SLACK_TOKEN": TOKEN,
        "SLACK_API": slack.api_base_url,
    }
    return parse_config(text, "review.yaml", env)


async def test_an_instance_whose_running_task_the_api_stops_listing_goes_back_to_the_normal_interval(
    sim: Simulator, slack: SlackStandIn, redis_url: str
) -> None:
    """A running task vanishes from the API's answers (nothing in progress is listed any more): the instance
    must go back to poll.interval, not stay on the fast cadence (6x the API calls) for the 7 days the task
    stays in the snapshot."""
    polls: Callable[[str], int] = lambda inst: len(sim.task_requests(inst))  # noqa: E731
    async with running(daemon_config(sim, slack, redis_url)):
        await sim.wait_for(lambda: polls(ORDERS) >= 1 and polls(SESSIONS) >= 1, within=5)
        tid = sim.start_task(ORDERS, "masterStandbySwapJob")
        await slack.wait_until(lambda: len(top(slack)) == 1, timeout=5)
        n = polls(ORDERS)
        await sim.wait_for(lambda: polls(ORDERS) >= n + 5, within=2)  # on the fast cadence while it runs
        sim.remove_task(ORDERS, tid)
        n = polls(ORDERS)
        await sim.wait_for(lambda: polls(ORDERS) >= n + 2, within=2)  # the daemon has seen it gone
        s = polls(SESSIONS)
        await sim.wait_for(lambda: polls(SESSIONS) >= s + 1, within=3)
        base, s = polls(ORDERS), polls(SESSIONS)
        await sim.wait_for(lambda: polls(SESSIONS) >= s + 1, within=3)  # one more interval (0.6 s) passed
        extra = polls(ORDERS) - base
    assert extra <= 3, f"{extra} polls of an instance with nothing listed in progress, in one 0.6 s interval"


async def test_an_endpoint_whose_calls_queue_for_a_concurrency_slot_has_no_headroom_for_extra_polls() -> None:
    """Polls waiting for one of the API's concurrency slots (api.max_concurrency / region_concurrency) are
    queued: the scheduler must not add extra active_interval polls on top of them (they would delay the polls
    every other instance is due), yet has_headroom() says there is room."""
    clock = TestClock()  # the limiter's waits move it
    gate = ApiGate(
        max_concurrency=1, region_concurrency=1, rate=1000, min_rate=1, clock=clock, sleep=clock.sleep
    )
    client = DcsClient(endpoint="http://127.0.0.1:9", project_id="p1", ak="a", sk="b", region="r1", gate=gate)
    holding, release = asyncio.Event(), asyncio.Event()

    async def call() -> None:
        async with gate.slot("r1", "127.0.0.1:9"):
            holding.set()
            await release.wait()

    first = asyncio.create_task(call())
    await asyncio.wait_for(holding.wait(), 2)
    waiting: list[bool] = []

    async def queued_call() -> None:
        waiting.append(True)  # from here on it waits for a concurrency slot, without yielding before
        await call()

    queued = [asyncio.create_task(queued_call()) for _ in range(3)]
    await until(lambda: len(waiting) == 3 and gate.in_flight("r1") == 1, 1, "three polls queued")
    clock.advance(2.0)  # ...and they have been for two seconds: the API's latency paces this endpoint
    try:
        assert not client.has_headroom(), "3 polls queue for the endpoint, yet extra polls are allowed"
    finally:
        release.set()
        await asyncio.gather(first, *queued)
        await client.aclose()


# --- a real Redis Cluster, pacing -----------------------------------------------------------------------------


async def test_on_a_real_redis_cluster_the_card_is_kept_with_the_acknowledgement_and_the_end_edits_it(
    slack: SlackStandIn, redis_cluster: Any
) -> None:
    """The card is written in the acknowledgement's MULTI/EXEC: on a Redis Cluster that must not be a
    CROSSSLOT error (which would leave the notification unacknowledged and post it again)."""
    client = connect_redis(redis_cluster.url)
    st = Store(client, Keys("rv"))
    ch = bot(slack)
    try:
        for n in (note(ev(EventType.STARTED, "RUNNING", 5)), note(ev(EventType.SUCCEEDED, "SUCCESS", 60))):
            await client.xadd(st.link.keys.outbox("oncall"), {"n": n.model_dump_json()})
            result = await Deliverer(st.outbox, {"oncall": ch}, FAST).drain("oncall")
            assert result.ok and result.delivered == 1, result.failed
        assert await st.cards.get("oncall", card_key(ev(EventType.STARTED, "RUNNING", 5))) is not None
    finally:
        await close(ch)
        await client.aclose()
    [card] = top(slack)
    assert "succeeded" in card.text and len(card.edits) == 1


async def test_an_edit_and_its_thread_reply_are_both_paced_at_the_channels_rate(
    slack: SlackStandIn, store: Store, redis_client: aioredis.Redis
) -> None:
    """rate counts every call to Slack: card, edit, reply — and the new card after a deleted one."""
    ch = bot(slack, rate=10)
    try:
        await enqueue_notes(
            redis_client,
            store,
            note(ev(EventType.STARTED, "CREATED", 5)),
            note(ev(EventType.UPDATED, "EXECUTING", 30)),
        )
        await drain(store, {"oncall": ch})
        [card] = top(slack)
        slack.delete_message(card.channel, card.ts)
        await enqueue_notes(redis_client, store, note(ev(EventType.SUCCEEDED, "SUCCESS", 60)))
        await drain(store, {"oncall": ch})
    finally:
        await close(ch)
    calls = api_calls(slack)
    # post, update, reply, update (message_not_found), post of a new card
    assert [c.path.rsplit(".", 1)[-1] for c in calls] == [
        "postMessage",
        "update",
        "postMessage",
        "update",
        "postMessage",
    ]
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(calls)]
    # The first call also opened the connection (it reached the stand-in late): its gap is not the pace's.
    assert all(g >= 0.09 for g in gaps[1:]), gaps


# --- the Slack stand-in where it matters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}},
        {"type": "header", "text": {"type": "plain_text", "text": "x" * 151}},
    ],
    ids=["section-3001", "header-151"],
)
async def test_the_slack_stand_in_refuses_blocks_over_block_kits_limits_as_slack_does(
    slack: SlackStandIn, block: dict[str, Any]
) -> None:
    """Slack answers ``invalid_blocks`` to a section over 3,000 characters or a header over 150; a stand-in
    that takes them lets a formatter bug (see the 50-mention tests above) pass every end-to-end test."""
    client = AsyncWebClient(token=TOKEN, base_url=slack.api_base_url, retry_handlers=[])
    with pytest.raises(SlackApiError) as refused:
        await client.chat_postMessage(channel="#oncall", text="t", blocks=[block])
    assert refused.value.response["error"] == "invalid_blocks"
    assert top(slack) == []
