"""Delivery: the one retry loop between the outbox and the channels.

Channels send once and raise :class:`~notifier.errors.DeliveryError`; only this module retries.
Per channel, one worker reads that channel's outbox stream in order — its own unacknowledged entries
first, then entries a dead consumer left pending (XAUTOCLAIM), then new ones — and for each entry:

1. skips the send if the notification log says it was already delivered (another consumer sent it
   while this one had claimed it), else
2. waits for the channel's pace (``rate`` calls per second) and sends — to a channel with living
   cards, with the card the notification updates (read from Redis);
3. on success writes the notification log (and the card posted or updated) and acknowledges the
   entry in one MULTI/EXEC (if Redis is down at that moment, the acknowledgement is kept in memory
   and written first when Redis returns, so the send is not repeated);
4. on a permanent failure moves the entry to the dead-letter stream at once;
5. on a retryable failure counts the attempt in Redis and waits (exponential backoff with full jitter,
   capped, never sooner than ``Retry-After``) before trying the same entry again, until
   ``delivery.max_attempts`` or ``delivery.max_age`` is reached: then it goes to dead letters.

An entry is never skipped while it is being retried, so a task's "finished" never overtakes its
"started" on a channel. A dead channel delays only itself: each channel has its own stream and worker.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from notifier.config.models import DeliveryConfig
from notifier.delivery.cards import Card, holds, with_note
from notifier.delivery.channels.base import Channel
from notifier.errors import CorruptStateError, DeliveryError, Reason, StoreError
from notifier.ops.metrics import Metrics
from notifier.pipeline.events import Notification
from notifier.store.outbox import Outbox, OutboxEntry, entry_age

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 300.0
#: How long an idle worker's read of new entries blocks in Redis (also the latency of a stop).
IDLE_BLOCK_MS = 1000


def backoff_delay(
    attempt: int, initial: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Full-jitter exponential backoff: a random delay in [initial/2, min(cap, initial·2^(attempt-1))]."""
    ceiling = min(cap, initial * 2.0 ** max(0, attempt - 1))
    return max(initial / 2, ceiling * rng())


def retry_delay(attempt: int, error: DeliveryError, config: DeliveryConfig) -> float:
    """How long to wait before the next attempt: backoff, but never sooner than the channel asked."""
    delay = backoff_delay(attempt, config.backoff_initial, config.backoff_max)
    if error.retry_after is not None:
        delay = max(delay, min(error.retry_after, MAX_RETRY_AFTER))
    return delay


async def pause(seconds: float, stop: asyncio.Event) -> bool:
    """Sleep up to ``seconds``, returning early (True) if ``stop`` is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Attempt:
    """One send: the error (None = accepted) and, for a channel with living cards, the card it left."""

    error: DeliveryError | None = None
    card: Card | None = None


async def attempt(channel: Channel, notification: Notification, card: Card | None = None) -> Attempt:
    """One send. Any failure comes back as a DeliveryError: an exception that is not one (a bug in a
    formatter or a library) is a permanent INTERNAL error, so it cannot wedge a channel."""
    try:
        return Attempt(card=await channel.send(notification, card))
    except DeliveryError as exc:
        return Attempt(exc)
    except Exception as exc:
        log.exception("channel %s failed unexpectedly on %s", channel.name, notification.event.id)
        return Attempt(
            DeliveryError(channel.name, False, Reason.INTERNAL, f"unexpected {type(exc).__name__}")
        )
    return Attempt()


async def send_with_retries(
    channel: Channel,
    notification: Notification,
    config: DeliveryConfig,
    stop: asyncio.Event,
    card: Card | None = None,
) -> Attempt:
    """Send outside the outbox (``send-test``, the replay) with the same retry policy and pace."""
    for n in range(1, config.max_attempts + 1):
        await channel.pace()
        result = await attempt(channel, notification, card)
        error = result.error
        if error is None or not error.retryable or n == config.max_attempts:
            return result
        if await pause(retry_delay(n, error, config), stop):
            return result
    raise AssertionError("unreachable")  # pragma: no cover


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # already in the notification log: acknowledged without sending
    HELD = "held"  # kept for the next message of its task (a channel without cards), acknowledged
    DEAD = "dead"
    PENDING = "pending"  # left in the outbox for a later pass


@dataclass
class PassResult:
    """What one pass over a channel's outbox did."""

    delivered: int = 0
    skipped_duplicates: int = 0
    dead_lettered: int = 0
    failed: list[str] = field(default_factory=list)  # why entries were left pending
    waiting: bool = False  # another consumer still holds older entries: this pass delivered no further

    @property
    def ok(self) -> bool:
        """Nothing left pending by a failure (dead-lettered entries are done with)."""
        return not self.failed


class Deliverer:
    """Owns retries, pacing and acknowledgements for every channel; one per process."""

    def __init__(
        self,
        outbox: Outbox,
        channels: Mapping[str, Channel],
        config: DeliveryConfig,
        *,
        stop: asyncio.Event | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.outbox = outbox
        self.metrics = metrics or Metrics()
        self.channels = dict(channels)
        self.config = config
        self.stop = stop or asyncio.Event()
        self._unacked: dict[str, list[tuple[OutboxEntry, Card | None]]] = {name: [] for name in self.channels}

    @property
    def unacknowledged(self) -> int:
        """Notifications sent while Redis was down, whose acknowledgement waits in memory."""
        return sum(len(v) for v in self._unacked.values())

    def request_stop(self) -> None:
        """Stop after the sends in flight; backoff waits end at once, blocked reads within a second."""
        self.stop.set()

    async def _ack(self, entry: OutboxEntry, card: Card | None = None) -> None:
        try:
            await self.outbox.mark_delivered(entry, card)
        except StoreError:
            # Sent, but Redis is gone: remember, and acknowledge before anything else when it returns.
            self._unacked[entry.channel].append((entry, card))
            raise

    async def _flush_unacked(self, name: str) -> None:
        pending = self._unacked[name]
        while pending:
            await self.outbox.mark_delivered(*pending[0])
            pending.pop(0)

    async def deliver(
        self, channel: Channel, entry: OutboxEntry, budget: int | None = None
    ) -> tuple[Verdict, str]:
        """Deliver one entry, retrying as the policy says; ``budget`` caps the attempts of this call."""
        cfg = self.config
        metrics = self.metrics
        if await self.outbox.was_delivered(entry):
            await self._ack(entry)
            metrics.delivery(channel.name, "duplicate")
            return Verdict.DUPLICATE, ""
        event = entry.notification.event
        card = await self.outbox.card(entry) if channel.keeps_record(event) else None
        if channel.notes_in_next and holds(entry.notification, card):
            await self._ack(entry, with_note(card, event))
            metrics.delivery(channel.name, "held")
            return Verdict.HELD, ""
        tries = 0
        while True:
            await channel.pace()
            result = await attempt(channel, entry.notification, card)
            error = result.error
            if error is None:
                await self._ack(entry, result.card)
                metrics.accepted(channel.name, event.detected_at.timestamp())
                return Verdict.DELIVERED, ""
            tries += 1
            if not error.retryable:
                attempts = await self.outbox.attempts(entry) + 1
                await self.outbox.dead_letter(entry, str(error), attempts)
                metrics.delivery(channel.name, "dead_lettered", error.reason.value)
                return Verdict.DEAD, str(error)
            metrics.delivery(channel.name, "failed", error.reason.value)
            attempts = await self.outbox.record_attempt(entry)
            age = entry_age(entry.entry_id, time.time())
            if attempts >= cfg.max_attempts or age >= cfg.max_age:
                reason = f"gave up after {attempts} attempt(s) over {age:.0f} s; last error: {error}"
                await self.outbox.dead_letter(entry, reason, attempts)
                metrics.delivery(channel.name, "dead_lettered", error.reason.value)
                return Verdict.DEAD, reason
            if budget is not None and tries >= budget:
                return Verdict.PENDING, str(error)
            delay = retry_delay(attempts, error, cfg)
            log.warning(
                "delivery of %s to %s failed (attempt %d of %d), retrying in %.1f s: %s",
                entry.notification.event.id,
                channel.name,
                attempts,
                cfg.max_attempts,
                delay,
                error.message,
                extra={"channel": channel.name, "event_id": event.id, "reason": error.reason.value},
            )
            if not await self._wait_holding(channel.name, entry, delay):
                return Verdict.PENDING, str(error)
            if entry.entry_id not in await self.outbox.renew(channel.name, cfg.consumer):
                # Another consumer took it over meanwhile: it is theirs to send now.
                return Verdict.PENDING, f"{error} (entry taken over by another consumer)"

    async def _wait_holding(self, name: str, entry: OutboxEntry, delay: float) -> bool:
        """Wait ``delay`` before a retry, renewing our claim on every entry we hold (this one and the
        rest of its batch) often enough that none goes idle for ``claim_idle``. False: stop, or lost."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        step = self.config.claim_idle / 3
        while (left := until - loop.time()) > 0:
            if await pause(min(left, step), self.stop):
                return False
            if loop.time() < until and entry.entry_id not in await self.outbox.renew(
                name, self.config.consumer
            ):
                return False
        return True

    async def _process(
        self, name: str, entries: list[OutboxEntry], budget: int | None, result: PassResult
    ) -> bool:
        """Deliver entries in order; False when the pass must stop (an entry left pending, or stop)."""
        channel = self.channels[name]
        for entry in entries:
            if self.stop.is_set():
                return False
            verdict, why = await self.deliver(channel, entry, budget)
            event = entry.notification.event
            fields = {"channel": name, "event_id": event.id, "instance": event.instance.id}  # for JSON logs
            if verdict is Verdict.DELIVERED:
                result.delivered += 1
                log.info(
                    "delivered %s: %s (%s) to %s",
                    event.type.value,
                    event.summary,
                    event.id,
                    name,
                    extra=fields,
                )
            elif verdict is Verdict.HELD:
                result.delivered += 1
                log.info(
                    "%s (%s) is part of task %s: told with its next message to %s",
                    event.summary,
                    event.id,
                    event.task.id if event.task else "?",
                    name,
                    extra=fields,
                )
            elif verdict is Verdict.DUPLICATE:
                result.skipped_duplicates += 1
            elif verdict is Verdict.DEAD:
                result.dead_lettered += 1
                log.error("moved %s for %s to dead letters: %s", event.id, name, why, extra=fields)
            else:
                result.failed.append(why)
                log.error(
                    "could not deliver %s to %s; it stays queued: %s", event.id, name, why, extra=fields
                )
                return False
        return True

    async def drain(
        self,
        name: str,
        *,
        budget: int | None = None,
        recover: bool = True,
        claim: bool = True,
        block_ms: int | None = None,
    ) -> PassResult:
        """One pass over a channel's outbox, in stream order; stops at an entry left pending.

        1. ``claim``: take over entries a dead consumer left idle longer than ``claim_idle`` (they join
           this consumer's pending list, in stream order);
        2. if another consumer holds the channel's oldest unacknowledged entry, stop: it comes first (a
           task's "finished" must not overtake its "started", nor its card's post);
        3. ``recover`` (or something was claimed): this consumer's pending entries, oldest first;
        4. new entries; the first read may block up to ``block_ms``. Entries read while another consumer
           still holds older ones stay this consumer's, for a later pass (``waiting``).
        """
        cfg = self.config
        outbox = self.outbox
        result = PassResult()
        await self._flush_unacked(name)
        if claim:
            min_idle_ms = int(cfg.claim_idle * 1000)
            while claimed := await outbox.claim_stale(
                name, cfg.consumer, min_idle_ms=min_idle_ms, count=cfg.batch
            ):
                recover = True
                if len(claimed) < cfg.batch:
                    break
        if await outbox.held_elsewhere(name, cfg.consumer):
            result.waiting = True
            return result
        if recover:
            while entries := await outbox.read(name, cfg.consumer, count=cfg.batch, pending=True):
                if not await self._process(name, entries, budget, result) or len(entries) < cfg.batch:
                    break
            if not result.ok or self.stop.is_set():
                return result
        block = block_ms
        while not self.stop.is_set():
            entries = await outbox.read(name, cfg.consumer, count=cfg.batch, block_ms=block)
            block = None
            if entries and await outbox.held_elsewhere(name, cfg.consumer):
                # Another consumer read older ones just before: they go first (next pass, recovered).
                result.waiting = True
                break
            if not entries or not await self._process(name, entries, budget, result):
                break
        return result

    async def drain_all(self, *, budget: int | None = None) -> dict[str, PassResult]:
        """One pass over every channel, concurrently (``once``); one channel's failure is its own."""
        names = list(self.channels)
        outcomes = await asyncio.gather(
            *(self.drain(n, budget=budget) for n in names), return_exceptions=True
        )
        results: dict[str, PassResult] = {}
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, PassResult):
                results[name] = outcome
            elif isinstance(outcome, Exception):
                results[name] = PassResult(failed=[str(outcome)])
            else:
                raise outcome
        return results

    async def run_channel(self, name: str, retry_interval: float) -> None:
        """A channel's worker: pass after pass until stopped, idling in a blocking read of new entries."""
        recover = True
        next_claim = 0.0
        reported = ""
        while not self.stop.is_set():
            now = time.monotonic()
            claim = now >= next_claim
            if claim:
                next_claim = now + self.config.claim_idle / 2
            try:
                result = await self.drain(name, recover=recover, claim=claim, block_ms=IDLE_BLOCK_MS)
            except StoreError as exc:
                # Redis's problems are logged once per episode by the store; the channel's own keys
                # being unreadable is this channel's, logged when it starts or changes.
                if isinstance(exc, CorruptStateError) and str(exc) != reported:
                    log.error("delivery to %s paused: %s", name, exc)
                reported = str(exc)
                recover = True
                await pause(retry_interval, self.stop)
                continue
            except Exception:
                # A bug must not take the daemon down: log it whole and try again later.
                log.exception(
                    "delivery worker for %s failed unexpectedly; retrying in %g s", name, retry_interval
                )
                recover = True
                await pause(retry_interval, self.stop)
                continue
            reported = ""
            recover = not result.ok or result.waiting
            if not result.ok:
                await pause(retry_interval, self.stop)
            elif result.waiting:
                await pause(IDLE_BLOCK_MS / 1000, self.stop)
