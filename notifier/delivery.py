"""Delivery: the one retry loop between the outbox and the channels.

Channels send once and raise :class:`~notifier.errors.DeliveryError`; only this module retries.
Per channel, one worker reads that channel's outbox stream in order (its own unacknowledged entries
first, then entries a dead consumer left behind, then new ones) and, for each entry:

1. skips the send if the notification log says it was already delivered (a crash between send and
   acknowledgement), else
2. sends, retrying retryable failures with capped exponential backoff and full jitter, honouring
   ``Retry-After``, up to ``delivery.max_attempts`` times;
3. on success writes the notification log and acknowledges the entry in one MULTI/EXEC;
4. on a permanent failure moves the entry to the dead-letter stream;
5. when retries run out, leaves the entry pending and stops this channel's pass, so that a task's
   "finished" never overtakes its "started"; the next pass tries again. Nothing is lost.

A dead channel delays only itself: each channel has its own stream and worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from notifier.channels.base import Channel
from notifier.config import DeliveryConfig
from notifier.errors import DeliveryError, StateStoreError
from notifier.events import Notification
from notifier.state import OutboxEntry, StateStore

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 300.0
IDLE_CHECK_SECONDS = 1.0


def backoff_delay(
    attempt: int, initial: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Full-jitter exponential backoff: a random delay in [initial/2, min(cap, initial·2^(attempt-1))]."""
    ceiling = min(cap, initial * 2.0 ** max(0, attempt - 1))
    return max(initial / 2, ceiling * rng())


@dataclass
class PassResult:
    """What one pass over a channel's outbox did."""

    delivered: int = 0
    skipped_duplicates: int = 0
    dead_lettered: int = 0
    failed: list[str] = field(default_factory=list)  # messages of entries left pending

    @property
    def ok(self) -> bool:
        """Nothing left pending by a failure (dead-lettered entries are done with)."""
        return not self.failed


DeliveryHook = Callable[[OutboxEntry], None]


async def pause(seconds: float, stop: asyncio.Event) -> bool:
    """Sleep up to ``seconds``, returning early (True) if ``stop`` is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True


async def send_with_retries(
    channel: Channel, notification: Notification, config: DeliveryConfig, stop: asyncio.Event
) -> DeliveryError | None:
    """Try one notification until accepted (None), refused for good, or attempts run out (the error)."""
    last: DeliveryError | None = None
    for attempt in range(1, config.max_attempts + 1):
        try:
            await channel.send(notification)
            return None
        except DeliveryError as exc:
            last = exc
            if not exc.retryable or attempt == config.max_attempts:
                return exc
            delay = backoff_delay(attempt, config.backoff_initial, config.backoff_max)
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER))
            log.warning(
                "delivery of %s to %s failed (attempt %d/%d), retrying in %.1f s: %s",
                notification.event.id,
                channel.name,
                attempt,
                config.max_attempts,
                delay,
                exc.message,
            )
            if await pause(delay, stop):
                return exc
    return last


class Deliverer:
    """Owns retries for every channel; one instance per process."""

    def __init__(
        self,
        store: StateStore,
        channels: Mapping[str, Channel],
        config: DeliveryConfig,
        *,
        stop: asyncio.Event | None = None,
        on_delivered: DeliveryHook | None = None,
    ) -> None:
        self.store = store
        self.channels = dict(channels)
        self.config = config
        self.stop = stop or asyncio.Event()
        self.on_delivered = on_delivered
        self._wake: dict[str, asyncio.Event] = {name: asyncio.Event() for name in self.channels}

    def wake(self, channel: str | None = None) -> None:
        """Tell a channel's worker (or all) that the outbox has new entries."""
        for name, ev in self._wake.items():
            if channel is None or name == channel:
                ev.set()

    async def _pause(self, seconds: float) -> bool:
        return await pause(seconds, self.stop)

    async def _process(self, channel: Channel, entry: OutboxEntry, result: PassResult) -> bool:
        """Deliver one entry; False means stop this pass (entry left pending)."""
        if await self.store.was_delivered(entry):
            await self.store.mark_delivered(entry)
            result.skipped_duplicates += 1
            return True
        error = await send_with_retries(channel, entry.notification, self.config, self.stop)
        if error is None:
            await self.store.mark_delivered(entry)
            result.delivered += 1
            log.info(
                "delivered %s %s (%s) to %s",
                entry.notification.event.type.value,
                entry.notification.event.task.name,
                entry.notification.event.id,
                channel.name,
            )
            if self.on_delivered is not None:
                self.on_delivered(entry)
            return True
        if not error.retryable:
            await self.store.dead_letter(entry, str(error), self.config.max_attempts)
            result.dead_lettered += 1
            log.error(
                "gave up on %s for %s, moved to dead letters: %s",
                entry.notification.event.id,
                channel.name,
                error,
            )
            return True
        result.failed.append(str(error))
        log.error(
            "could not deliver %s to %s; it stays queued and is retried on the next pass: %s",
            entry.notification.event.id,
            channel.name,
            error,
        )
        return False

    async def drain(self, name: str, *, block_ms: int | None = None) -> PassResult:
        """One pass over a channel's outbox: pending entries first, then stale ones, then new ones."""
        channel = self.channels[name]
        cfg = self.config
        result = PassResult()
        consumer = cfg.consumer
        for source in ("pending", "stale", "new"):
            while not self.stop.is_set():
                if source == "stale":
                    min_idle_ms = int(cfg.claim_idle * 1000)
                    entries = await self.store.claim_stale(
                        name, consumer, min_idle_ms=min_idle_ms, count=cfg.batch
                    )
                else:
                    entries = await self.store.read(
                        name, consumer, count=cfg.batch, block_ms=block_ms, pending=source == "pending"
                    )
                if not entries:
                    break
                for entry in entries:
                    if self.stop.is_set():
                        return result
                    if not await self._process(channel, entry, result):
                        return result
                if len(entries) < cfg.batch:
                    break
        return result

    async def drain_all(self) -> dict[str, PassResult]:
        """One pass over every channel, concurrently (used by ``once`` and tests)."""
        names = list(self.channels)
        results = await asyncio.gather(*(self.drain(n) for n in names))
        return dict(zip(names, results, strict=True))

    async def run_channel(self, name: str, retry_interval: float) -> None:
        """A channel's worker: drain, wait for new entries or the retry interval, repeat until stopped."""
        outage = False
        while not self.stop.is_set():
            wake = self._wake[name]
            wake.clear()
            try:
                result = await self.drain(name)
                if outage:
                    log.info("delivery to %s resumed: Redis is reachable again", name)
                    outage = False
            except StateStoreError as exc:
                if not outage:
                    log.error("delivery to %s paused: %s", name, exc)
                    outage = True
                result = PassResult(failed=[str(exc)])
            if result.ok:
                # Idle until new entries are committed (wake) or a periodic check is due (entries
                # committed by another process, or left behind by a dead consumer).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=IDLE_CHECK_SECONDS)
            else:
                await self._pause(retry_interval)

    def request_stop(self) -> None:
        """Stop after the sends in flight; workers waiting for work return at once."""
        self.stop.set()
        self.wake()
