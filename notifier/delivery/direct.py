"""Deliveries that bypass the outbox: ``send-test`` and the dead-letter replay.

Both send with the delivery loop's own retry policy (:func:`~notifier.delivery.worker.send_with_retries`),
never through the outbox, so they cannot race a running daemon for an entry.

The replay policy, per dead letter:

* delivered → recorded as delivered (the notification log) and removed from the dead letters;
* refused again for a retryable reason → put back in its channel's outbox for the daemon, with a fresh
  attempt count and age;
* refused for good, unreadable, or its channel gone from the config → kept, with the reason.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from notifier.config.models import Config
from notifier.delivery.cards import card_key
from notifier.delivery.channels import Channel, build_channel
from notifier.delivery.worker import send_with_retries
from notifier.errors import DeliveryError
from notifier.pipeline.events import Notification
from notifier.store.connect import Store
from notifier.store.dead_letters import DeadLetter


async def send_direct(config: Config, notification: Notification) -> DeliveryError | None:
    """Send one notification to its channel now, retrying as the daemon would; None = accepted."""
    name = notification.channel
    channel = build_channel(name, config.channels[name])
    try:
        return (await send_with_retries(channel, notification, config.delivery, asyncio.Event())).error
    finally:
        await channel.aclose()


class Replay(enum.Enum):
    DELIVERED = "delivered"
    REQUEUED = "requeued"  # still failing, for a reason that may pass: back in the outbox
    REFUSED = "refused"  # refused for good: kept
    UNREADABLE = "unreadable"  # the entry itself cannot be read: kept (purge it)
    NO_CHANNEL = "no-channel"  # its channel is no longer in the config: kept


@dataclass(frozen=True)
class Replayed:
    letter: DeadLetter
    outcome: Replay
    error: DeliveryError | None = None

    @property
    def kept(self) -> bool:
        """Whether the dead letter is still one (the replay failed for it)."""
        return self.outcome not in (Replay.DELIVERED, Replay.REQUEUED)


async def replay(
    config: Config, store: Store, letters: Sequence[DeadLetter]
) -> AsyncGenerator[Replayed, None]:
    """Replay ``letters`` one by one, each at its channel's pace, yielding what became of each (a
    notification of a living card updates the card its channel keeps).

    A failing notification is tried ``delivery.once_attempts`` times. Use with ``contextlib.aclosing``:
    the channels built for the replay are closed when the iteration ends.
    """
    built: dict[str, Channel] = {}
    policy = config.delivery.model_copy(update={"max_attempts": config.delivery.once_attempts})
    try:
        for letter in letters:
            notification = letter.notification
            if notification is None:
                yield Replayed(letter, Replay.UNREADABLE)
                continue
            if letter.channel not in config.channels:
                yield Replayed(letter, Replay.NO_CHANNEL)
                continue
            channel = built.get(letter.channel)
            if channel is None:
                channel = built[letter.channel] = build_channel(
                    letter.channel, config.channels[letter.channel]
                )
            event = notification.event
            key = card_key(event)
            card = await store.cards.get(letter.channel, key) if channel.keeps_record(event) else None
            sent = await send_with_retries(channel, notification, policy, asyncio.Event(), card)
            error = sent.error
            if error is None:
                if sent.card is not None:
                    # Before the dead letter is resolved: a crash in between leaves the letter, whose
                    # replay then updates this card instead of posting another.
                    await store.cards.put(letter.channel, key, sent.card)
                await store.dead_letters.resolve(letter)
                yield Replayed(letter, Replay.DELIVERED)
            elif error.retryable:
                await store.dead_letters.requeue([letter])
                yield Replayed(letter, Replay.REQUEUED, error)
            else:
                yield Replayed(letter, Replay.REFUSED, error)
    finally:
        for channel in built.values():
            await channel.aclose()
