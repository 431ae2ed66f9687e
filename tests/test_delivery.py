"""The delivery loop against a real redis-server and real HTTP receivers: claims, the notification log,
retry policy, dead letters, pacing, acknowledgements across a Redis outage."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from notifier.config.models import DeliveryConfig
from notifier.delivery.cards import Card
from notifier.delivery.channels.base import Channel
from notifier.delivery.channels.webhook import WebhookChannel, WebhookChannelConfig
from notifier.delivery.worker import Deliverer, Verdict, backoff_delay, retry_delay
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.errors import DeliveryError, Reason, StoreError
from notifier.pipeline.diff import DiffContext, diff
from notifier.pipeline.events import Notification
from notifier.pipeline.rules import route
from notifier.store.connect import Store, connect_redis
from notifier.store.keys import Keys
from tests.factories import INSTANCE, T0, task
from tests.support.redis_server import RedisServer

FAST = DeliveryConfig(
    max_attempts=3, backoff_initial=0.01, backoff_max=0.02, consumer="alive", claim_idle=0.05
)


async def queue(store: Store, n: int, channel: str = "audit") -> list[Notification]:
    """Commit ``n`` task.started events for ``channel`` through the real diff/commit path."""
    now = T0 + timedelta(seconds=30)
    ctx = DiffContext("p", "r", INSTANCE, now, timedelta(minutes=15), now - timedelta(days=1))
    result = diff(None, [task(f"t{i}", created=T0 + timedelta(seconds=i)) for i in range(n)], ctx)
    notes = [x for e in result.events for x in route(e, [], [channel])]
    await store.snapshots.commit("p", INSTANCE.id, result, notes)
    return notes


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as r:
        yield r


def webhook(receiver: WebhookReceiver) -> WebhookChannel:
    return WebhookChannel("audit", WebhookChannelConfig(type="webhook", url=receiver.url))


async def test_entries_of_a_dead_consumer_are_claimed(
    redis_client: aioredis.Redis, receiver: WebhookReceiver
) -> None:
    store = Store(redis_client, Keys("d"))
    notes = await queue(store, 2)
    taken = await store.outbox.read("audit", "dead-worker", count=10)  # read, never acknowledged: it "died"
    assert len(taken) == 2
    channel = webhook(receiver)
    try:
        deliverer = Deliverer(store.outbox, {"audit": channel}, FAST)
        # Wait (with a deadline) until Redis reports the entries idle for longer than claim_idle (50 ms).
        for _ in range(500):
            pending = await redis_client.xpending_range("d:outbox:audit", "d-delivery", "-", "+", 10)
            if min(p["time_since_delivered"] for p in pending) > 50:
                break
            await asyncio.sleep(0.01)
        result = await deliverer.drain("audit")
    finally:
        await channel.aclose()
    assert result.delivered == 2
    assert [r.header("webhook-id") for r in receiver.requests] == [n.event.id for n in notes]
    assert await store.outbox.backlog("audit") == 0


async def test_notification_log_stops_a_second_send_of_a_claimed_entry(
    redis_client: aioredis.Redis, receiver: WebhookReceiver
) -> None:
    store = Store(redis_client, Keys("d"))
    await queue(store, 1)
    [slow_worker_copy] = await store.outbox.read("audit", "slow-worker", count=1)
    [claimed] = await store.outbox.claim_stale("audit", "alive", min_idle_ms=0, count=1)
    await store.outbox.mark_delivered(slow_worker_copy)  # the slow worker's send succeeded after all
    channel = webhook(receiver)
    try:
        verdict, _ = await Deliverer(store.outbox, {"audit": channel}, FAST).deliver(channel, claimed)
    finally:
        await channel.aclose()
    assert verdict is Verdict.DUPLICATE
    assert receiver.requests == []


class ScriptedChannel(Channel):
    """A channel whose answers are scripted: a test double of a *channel*, not of Redis or HTTP."""

    kind = "scripted"

    def __init__(self, answers: list[DeliveryError | None], rate: float | None = None) -> None:
        super().__init__("audit", rate=rate)
        self.answers = answers
        self.sent: list[str] = []

    async def send(self, notification: Notification, card: Card | None = None) -> None:
        self.sent.append(notification.event.id)
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


def retryable(retry_after: float | None = None) -> DeliveryError:
    return DeliveryError("audit", True, Reason.SERVER_ERROR, "HTTP 503", retry_after=retry_after)


async def test_retries_then_gives_up_into_dead_letters_with_the_attempt_count(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, Keys("d"))
    [note] = await queue(store, 1)
    channel = ScriptedChannel([retryable()] * 5)
    result = await Deliverer(store.outbox, {"audit": channel}, FAST).drain("audit")
    assert channel.sent == [note.event.id] * 3  # max_attempts = 3
    assert result.dead_lettered == 1
    [dead] = await store.dead_letters.oldest()
    assert dead.attempts == 3
    assert dead.error.startswith("gave up after 3 attempt(s)")
    assert dead.notification == note


async def test_permanent_error_is_not_retried(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, Keys("d"))
    notes = await queue(store, 2)
    channel = ScriptedChannel([DeliveryError("audit", False, Reason.NOT_FOUND, "HTTP 404")])
    result = await Deliverer(store.outbox, {"audit": channel}, FAST).drain("audit")
    assert channel.sent == [notes[0].event.id, notes[1].event.id]  # dead-lettered once, then the next one
    assert (result.dead_lettered, result.delivered) == (1, 1)
    [dead] = await store.dead_letters.oldest()
    assert dead.attempts == 1
    assert "HTTP 404" in dead.error


async def test_attempts_survive_a_restart_and_the_budget_leaves_entries_queued(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, Keys("d"))
    notes = await queue(store, 2)
    cfg = FAST.model_copy(update={"max_attempts": 4})
    first = await Deliverer(store.outbox, {"audit": ScriptedChannel([retryable()] * 2)}, cfg).drain(
        "audit", budget=2
    )
    assert first.failed
    assert await store.outbox.backlog("audit") == 2  # left queued, in order: the second was not tried
    restarted = ScriptedChannel([retryable()] * 2)
    second = await Deliverer(store.outbox, {"audit": restarted}, cfg).drain("audit")
    assert second.dead_lettered == 1  # 2 + 2 attempts = max_attempts
    assert second.delivered == 1
    assert restarted.sent == [notes[0].event.id, notes[0].event.id, notes[1].event.id]


async def test_too_old_entries_become_dead_letters(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, Keys("d"))
    [note] = await queue(store, 1)
    await store.outbox.ensure_group("audit")
    # Written a day ago (stream ids carry the write time): older than max_age.
    old_id = f"{int((time.time() - 86_400) * 1000)}-0"
    await redis_client.delete("d:outbox:audit")
    await store.outbox.ensure_group("audit", force=True)
    await redis_client.xadd("d:outbox:audit", {"n": note.model_dump_json(), "k": note.key}, id=old_id)
    cfg = FAST.model_copy(update={"max_attempts": 100, "max_age": 3600})
    result = await Deliverer(store.outbox, {"audit": ScriptedChannel([retryable()])}, cfg).drain("audit")
    assert result.dead_lettered == 1
    [dead] = await store.dead_letters.oldest()
    assert "gave up after 1 attempt(s)" in dead.error


async def test_unreadable_outbox_entry_does_not_block_the_stream(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, Keys("d"))
    await store.outbox.ensure_group("audit")
    await redis_client.xadd("d:outbox:audit", {"n": "{not json", "k": "x"})
    [note] = await queue(store, 1)
    channel = ScriptedChannel([])
    result = await Deliverer(store.outbox, {"audit": channel}, FAST).drain("audit")
    assert channel.sent == [note.event.id]
    assert result.delivered == 1
    [dead] = await store.dead_letters.oldest()
    assert dead.notification is None
    assert dead.error.startswith("unreadable outbox entry")


async def test_replay_and_purge(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, Keys("d"))
    await queue(store, 2)
    channel = ScriptedChannel([DeliveryError("audit", False, Reason.AUTH, "HTTP 403")] * 2)
    await Deliverer(store.outbox, {"audit": channel}, FAST).drain("audit")
    first, _ = await store.dead_letters.oldest()
    with pytest.raises(StoreError, match="no dead letter with id 0-1"):
        await store.dead_letters.select(["0-1"])
    selected = await store.dead_letters.select([first.entry_id])
    assert [d.entry_id for d in await store.dead_letters.requeue(selected)] == [first.entry_id]
    assert await store.outbox.backlog("audit") == 1
    result = await Deliverer(store.outbox, {"audit": ScriptedChannel([])}, FAST).drain("audit")
    assert result.delivered == 1
    assert await store.dead_letters.purge() == 1
    assert await store.dead_letters.oldest() == []


async def test_channel_pacing(redis_client: aioredis.Redis) -> None:
    """Sends are spaced by 1/rate, measured where the deliverer hands them over (a receiver's clock
    would also count the first connection's set-up)."""
    store = Store(redis_client, Keys("d"))
    await queue(store, 4)
    times: list[float] = []

    class Timed(ScriptedChannel):
        async def send(self, notification: Notification, card: Card | None = None) -> None:
            times.append(time.monotonic())
            await super().send(notification)

    channel = Timed([], rate=5)
    result = await Deliverer(store.outbox, {"audit": channel}, FAST).drain("audit")
    assert result.delivered == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3
    assert all(g >= 0.19 for g in gaps), gaps


async def test_a_send_acknowledged_after_a_redis_outage_is_not_repeated(own_redis: RedisServer) -> None:
    client = connect_redis(own_redis.url)
    store = Store(client, Keys("d"))

    class RedisDiesOnSend(ScriptedChannel):
        async def send(self, notification: Notification, card: Card | None = None) -> None:
            await super().send(notification)
            own_redis.stop()  # accepted by the channel, then Redis goes away before the XACK

    try:
        [note] = await queue(store, 1)
        channel = RedisDiesOnSend([])
        deliverer = Deliverer(store.outbox, {"audit": channel}, FAST)
        with pytest.raises(StoreError):
            await deliverer.drain("audit")
        assert store.link.down
        own_redis.start()
        result = await deliverer.drain("audit")
        assert channel.sent == [note.event.id]  # sent once, acknowledged when Redis returned
        assert result.delivered == 0
        assert await store.outbox.backlog("audit") == 0
    finally:
        await client.aclose()


def test_backoff_policy() -> None:
    assert backoff_delay(1, 1.0, 60.0, rng=lambda: 1.0) == 1.0
    assert backoff_delay(4, 1.0, 60.0, rng=lambda: 1.0) == 8.0
    assert backoff_delay(20, 1.0, 60.0, rng=lambda: 1.0) == 60.0  # capped
    assert backoff_delay(3, 1.0, 60.0, rng=lambda: 0.0) == 0.5  # jitter floor
    cfg = DeliveryConfig(backoff_initial=0.1, backoff_max=0.2)
    assert retry_delay(1, retryable(retry_after=2.0), cfg) == 2.0  # never sooner than Retry-After
    assert retry_delay(1, retryable(retry_after=10_000), cfg) == 300.0  # an absurd Retry-After is capped


async def test_a_new_consumer_waits_for_older_entries_another_holds(redis_client: aioredis.Redis) -> None:
    """A restart under a new consumer name must not send a task's "finished" before its "started"."""
    store = Store(redis_client, Keys("d"))
    [started] = await queue(store, 1)
    await store.outbox.read("audit", "old-host", count=10)  # held by a consumer that died
    done = started.event.model_copy(update={"id": "evt_done"})
    await redis_client.xadd(
        "d:outbox:audit", {"n": started.model_copy(update={"event": done}).model_dump_json()}
    )
    channel = ScriptedChannel([])
    slow_claim = FAST.model_copy(update={"claim_idle": 3600})  # then: 0.0001 s, i.e. claim at once
    result = await Deliverer(store.outbox, {"audit": channel}, slow_claim).drain("audit")
    assert result.waiting
    assert channel.sent == []  # nothing overtakes the entry the dead consumer holds
    result = await Deliverer(
        store.outbox, {"audit": channel}, FAST.model_copy(update={"claim_idle": 0.0001})
    ).drain("audit")
    assert channel.sent == [started.event.id, "evt_done"]
    assert result.delivered == 2


async def test_an_entry_taken_over_while_retrying_is_left_to_its_new_owner(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, Keys("d"))
    await queue(store, 1)
    [entry] = await store.outbox.read("audit", "alive", count=1)

    class TakenOver(ScriptedChannel):
        async def send(self, notification: Notification, card: Card | None = None) -> None:
            await store.outbox.claim_stale(
                "audit", "other", min_idle_ms=0, count=1
            )  # another consumer claims it
            await super().send(notification)

    channel = TakenOver([retryable()])
    verdict, why = await Deliverer(store.outbox, {"audit": channel}, FAST).deliver(channel, entry)
    assert verdict is Verdict.PENDING
    assert "taken over by another consumer" in why
    assert len(channel.sent) == 1  # not sent a second time by the old owner


async def test_a_channel_bug_becomes_a_dead_letter_not_a_wedge(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, Keys("d"))
    notes = await queue(store, 2)

    class Buggy(ScriptedChannel):
        async def send(self, notification: Notification, card: Card | None = None) -> None:
            await super().send(notification)
            if notification.event.id == notes[0].event.id:
                raise KeyError("formatter bug")

    channel = Buggy([])
    result = await Deliverer(store.outbox, {"audit": channel}, FAST).drain("audit")
    assert (result.dead_lettered, result.delivered) == (1, 1)
    [dead] = await store.dead_letters.oldest()
    assert dead.error == "channel 'audit': unexpected KeyError (permanent, internal)"


def test_slack_is_paced_to_one_message_per_second_by_default() -> None:
    from notifier.delivery.channels.slack import SlackChannel, SlackChannelConfig

    cfg = SlackChannelConfig(type="slack", webhook_url="https://hooks.slack.com/services/T/B/X")
    assert cfg.rate == 1.0
    assert SlackChannel("oncall", cfg).rate == 1.0
    assert WebhookChannelConfig(type="webhook", url="https://example.com/h").rate is None
