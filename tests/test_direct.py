"""Deliveries outside the outbox: the dead-letter replay policy, against a real redis-server and a real
webhook receiver."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from notifier.config.load import parse_config
from notifier.config.models import DeliveryConfig
from notifier.delivery.channels.webhook import WebhookChannel, WebhookChannelConfig
from notifier.delivery.direct import Replay, replay
from notifier.delivery.worker import Deliverer
from notifier.devtools.standins import CannedResponse
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.pipeline.diff import DiffContext, diff
from notifier.pipeline.events import Notification
from notifier.pipeline.rules import route
from notifier.store.connect import Store
from notifier.store.keys import Keys
from tests.factories import INSTANCE, T0, task

FAST = DeliveryConfig(max_attempts=1, backoff_initial=0.01, backoff_max=0.02)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as r:
        yield r


async def dead_letters(store: Store, receiver: WebhookReceiver, channel: str, n: int) -> list[Notification]:
    """``n`` notifications for ``channel``, committed, then refused for good (HTTP 400): dead letters."""
    now = T0 + timedelta(seconds=30)
    ctx = DiffContext("p", "r", INSTANCE, now, timedelta(minutes=15), now - timedelta(days=1))
    tasks = [task(f"{channel}-{i}", created=T0 + timedelta(seconds=i)) for i in range(n)]
    result = diff(None, tasks, ctx)
    notes = [x for e in result.events for x in route(e, [], [channel])]
    await store.snapshots.commit("p", f"{INSTANCE.id}-{channel}", result, notes)
    receiver.enqueue(*[CannedResponse(400, b"no")] * n)
    sender = WebhookChannel(channel, WebhookChannelConfig(type="webhook", url=receiver.url))
    try:
        assert (await Deliverer(store.outbox, {channel: sender}, FAST).drain(channel)).dead_lettered == n
    finally:
        await sender.aclose()
    return notes


async def test_replay_delivers_requeues_or_keeps_each_dead_letter(
    redis_client: aioredis.Redis, receiver: WebhookReceiver
) -> None:
    store = Store(redis_client, Keys("rp"))
    notes = await dead_letters(store, receiver, "audit", 3)
    await dead_letters(store, receiver, "gone", 1)  # a channel since removed from the config
    letters = await store.dead_letters.oldest()
    by_event = {d.notification.event.id: d for d in letters if d.notification}
    ordered = [*(by_event[n.event.id] for n in notes), next(d for d in letters if d.channel == "gone")]
    config = parse_config(
        f"""
cloud: {{project_id: p, ak: a, sk: b}}
instances: [{{id: i}}]
channels: {{audit: {{type: webhook, url: "{receiver.url}"}}}}
delivery: {{once_attempts: 1, backoff_initial: 0.01, backoff_max: 0.02}}
""",
        "test",
        {},
    )
    before = len(receiver.requests)
    # The fixed channel takes the first, is down for the second, still refuses the third.
    receiver.enqueue(CannedResponse(204), CannedResponse(503), CannedResponse(400, b"still no"))

    async with contextlib.aclosing(replay(config, store, ordered)) as results:
        outcomes = [(r.letter.entry_id, r.outcome) async for r in results]

    assert outcomes == [
        (ordered[0].entry_id, Replay.DELIVERED),
        (ordered[1].entry_id, Replay.REQUEUED),
        (ordered[2].entry_id, Replay.REFUSED),
        (ordered[3].entry_id, Replay.NO_CHANNEL),
    ]
    sent = [r.header("webhook-id") for r in receiver.requests[before:]]
    assert sent == [n.event.id for n in notes]  # one try each (once_attempts), nothing for "gone"
    kept = {d.entry_id for d in await store.dead_letters.oldest()}
    assert kept == {ordered[2].entry_id, ordered[3].entry_id}
    assert await store.outbox.backlog("audit") == 1  # the re-queued one, for the daemon
