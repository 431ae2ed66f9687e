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
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from notifier.config.models import DeliveryConfig, DigestConfig, RuleConfig
from notifier.delivery.cards import Card, Group, card_key, holds, member_card, with_note
from notifier.delivery.channels.base import Channel
from notifier.delivery.grouping import GATHER_MAX, Unit, plan
from notifier.errors import CorruptStateError, DeliveryError, Reason, StoreError
from notifier.ops.metrics import Metrics
from notifier.pipeline.events import Notification
from notifier.store.outbox import Outbox, OutboxEntry, entry_age
from notifier.store.silences import Silences

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 300.0
#: How long an idle worker's read of new entries blocks in Redis (also the latency of a stop).
IDLE_BLOCK_MS = 1000
#: A pass of a channel that groups plans its entries anew once a unit took longer than this (seconds).
REPLAN_AFTER = 1.0


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
    #: For a group sent to a channel with cards: the group card it left.
    group: Group | None = None


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
    SILENCED = "silenced"  # held back by a silence: acknowledged unsent, recorded in the silence log


@dataclass
class PassResult:
    """What one pass over a channel's outbox did."""

    delivered: int = 0
    skipped_duplicates: int = 0
    dead_lettered: int = 0
    failed: list[str] = field(default_factory=list)  # why entries were left pending
    waiting: bool = False  # another consumer still holds older entries: this pass delivered no further
    silenced: int = 0  # held back by a silence (acknowledged, in the silence log)
    #: A group waits for its members until then (epoch seconds): the pass delivered no further.
    wake_at: float | None = None

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
        rules: Sequence[RuleConfig] = (),
        digest: DigestConfig | None = None,
        silences: Silences | None = None,
    ) -> None:
        self.outbox = outbox
        #: The silences applied before each send (None: none).
        self.silences = silences
        self.metrics = metrics or Metrics()
        self.channels = dict(channels)
        self.config = config
        self.stop = stop or asyncio.Event()
        self._unacked: dict[
            str, list[tuple[list[OutboxEntry], dict[str, Card | Group], str, tuple[str, str, float] | None]]
        ] = {name: [] for name in self.channels}
        #: The rules, by name (each notification names the one that sent it: its grouping).
        self.rules = {rule.name: rule for rule in rules}
        self.digest = digest or DigestConfig()
        #: False for ``once``: a group is sent at once rather than after its ``group_wait``.
        self.wait_for_groups = True

    @property
    def unacknowledged(self) -> int:
        """Notifications sent while Redis was down, whose acknowledgement waits in memory."""
        return sum(len(acked[0]) for v in self._unacked.values() for acked in v)

    def request_stop(self) -> None:
        """Stop after the sends in flight; backoff waits end at once, blocked reads within a second."""
        self.stop.set()

    async def _ack(self, entry: OutboxEntry, card: Card | None = None) -> None:
        records: dict[str, Card | Group] = {}
        if card is not None:
            records[card_key(entry.notification.event)] = card
        await self._ack_all([entry], records)

    async def _ack_all(
        self,
        entries: list[OutboxEntry],
        records: dict[str, Card | Group],
        how: str = "1",
        burst: tuple[str, str, float] | None = None,
    ) -> None:
        try:
            await self.outbox.mark_all_delivered(entries, records, how, burst)
        except StoreError:
            # Sent, but Redis is gone: remember, and acknowledge before anything else when it returns.
            self._unacked[entries[0].channel].append((entries, records, how, burst))
            raise

    async def _flush_unacked(self, name: str) -> None:
        pending = self._unacked[name]
        while pending:
            await self.outbox.mark_all_delivered(*pending[0])
            pending.pop(0)

    async def deliver(
        self, channel: Channel, entry: OutboxEntry, budget: int | None = None
    ) -> tuple[Verdict, str]:
        """Deliver one entry, retrying as the policy says; ``budget`` caps the attempts of this call."""
        if await self.outbox.was_delivered(entry):
            await self._ack(entry)
            self.metrics.delivery(channel.name, "duplicate")
            return Verdict.DUPLICATE, ""
        if self.silences is not None:
            if await self._silenced(channel, entry):
                return Verdict.SILENCED, ""
            entry = await self.silences.told(entry)  # its task's news held back earlier: say so
        event = entry.notification.event
        card = await self.outbox.card(entry) if channel.keeps_record(event) else None
        if card is not None and card.group and channel.living_cards:
            # Its task was told on a group card: its news updates that card.
            outcome: list[tuple[Verdict, str]] = []

            def keep(_: list[OutboxEntry], verdict: Verdict, why: str) -> bool:
                outcome.append((verdict, why))
                return verdict is not Verdict.PENDING

            await self._deliver_many(channel, "group", [entry], budget, keep)
            return outcome[-1] if outcome else (Verdict.DELIVERED, "")
        return await self._deliver_one(channel, entry, card, budget)

    async def _deliver_one(
        self, channel: Channel, entry: OutboxEntry, card: Card | None, budget: int | None
    ) -> tuple[Verdict, str]:
        event = entry.notification.event
        if channel.notes_in_next and holds(entry.notification, card):
            await self._ack(entry, with_note(card, event))
            self.metrics.delivery(channel.name, "held")
            return Verdict.HELD, ""

        async def send() -> Attempt:
            return await attempt(channel, entry.notification, card)

        async def accepted(result: Attempt) -> None:
            await self._ack(entry, result.card)

        return await self._retrying(channel, [entry], send, accepted, budget)

    async def _deliver_many(
        self,
        channel: Channel,
        kind: str,
        entries: list[OutboxEntry],
        budget: int | None,
        tally: Callable[[list[OutboxEntry], Verdict, str], bool],
        key: tuple[str, ...] = (),
    ) -> bool:
        """Deliver entries as one message each ``kind`` (group or digest) — as several where their
        members belong to different group cards — and ``tally`` what became of each (False: stop, an
        entry stays pending). Members already delivered (a crash after a send, before its
        acknowledgement) and members a silence holds are acknowledged alone; on a channel with cards a
        member with a card of its own is told there, and the others join their group card, or the one
        their burst of ``key`` grew lately (``group_interval``), or a new one."""
        done = await self.outbox.delivered_among(entries)
        dups = [e for e in entries if e.entry_id in done]
        for entry in dups:
            await self._ack(entry)
            self.metrics.delivery(channel.name, "duplicate")
        if dups and not tally(dups, Verdict.DUPLICATE, ""):
            return False
        members = [e for e in entries if e.entry_id not in done]
        if members and self.silences is not None:  # a silence in effect holds its members back
            kept: list[OutboxEntry] = []
            held: list[OutboxEntry] = []
            for entry in members:
                (held if await self._silenced(channel, entry) else kept).append(entry)
            if held and not tally(held, Verdict.SILENCED, ""):
                return False
            members = [await self.silences.told(e) for e in kept]
        if not members:
            return True
        parts: list[tuple[list[OutboxEntry], Group | None]] = []
        if kind == "group" and channel.living_cards:
            records = await self.outbox.cards.get_many(
                channel.name, [card_key(e.notification.event) for e in members]
            )
            by_group: dict[str, list[OutboxEntry]] = {}
            loose: list[OutboxEntry] = []
            for entry, record in zip(members, records, strict=True):
                if record is None:
                    loose.append(entry)
                elif record.group:
                    by_group.setdefault(record.group, []).append(entry)
                else:  # a card of its own: its news goes there
                    verdict, why = await self._deliver_one(channel, entry, record, budget)
                    if not tally([entry], verdict, why):
                        return False
            for group_id, grouped in by_group.items():
                group = await self.outbox.cards.get_group(channel.name, group_id)
                if group is None:
                    loose.extend(grouped)  # its card record is gone: a new group
                else:
                    parts.append((grouped, group))
            if loose:
                burst = None
                if key and self.config.group_interval:
                    burst = await self.outbox.cards.burst(channel.name, "|".join(key))
                if burst is None and len(loose) == 1:
                    verdict, why = await self._deliver_one(channel, loose[0], None, budget)
                    if not tally(loose, verdict, why):
                        return False
                else:
                    parts.append((loose, burst))
        elif kind == "group" and len(members) == 1:
            verdict, why = await self._deliver_one(channel, members[0], None, budget)
            return tally(members, verdict, why)
        else:
            parts.append((members, None))
        for part, group in parts:
            verdict, why = await self._send_many(channel, kind, part, group, budget, key)
            if not tally(part, verdict, why):
                return False
        return True

    async def _send_many(
        self,
        channel: Channel,
        kind: str,
        members: list[OutboxEntry],
        group: Group | None,
        budget: int | None,
        key: tuple[str, ...],
    ) -> tuple[Verdict, str]:
        """One message for ``members`` (retried as one), acknowledged together with the group card it
        left and each member's record pointing to it."""
        notifications = [e.notification for e in members]

        async def send() -> Attempt:
            try:
                return Attempt(group=await channel.send_many(kind, notifications, group))
            except DeliveryError as exc:
                return Attempt(exc)
            except Exception as exc:
                log.exception("channel %s failed unexpectedly on a %s", channel.name, kind)
                return Attempt(
                    DeliveryError(channel.name, False, Reason.INTERNAL, f"unexpected {type(exc).__name__}")
                )

        async def accepted(result: Attempt) -> None:
            records: dict[str, Card | Group] = {}
            burst: tuple[str, str, float] | None = None
            told = result.group
            if told is not None:
                records[told.key] = told
                for e in members:
                    records[card_key(e.notification.event)] = member_card(told, e.notification.event)
                if key and self.config.group_interval:
                    burst = ("|".join(key), told.id, self.config.group_interval)
            await self._ack_all(members, records, "digest" if kind == "digest" else "1", burst)

        verdict, why = await self._retrying(channel, members, send, accepted, budget)
        if verdict is Verdict.DELIVERED and kind == "digest" and channel.living_cards:
            await self._refresh_cards(channel, members)
        return verdict, why

    async def _refresh_cards(self, channel: Channel, members: list[OutboxEntry]) -> None:
        """After a digest, the living cards of its members show their latest state (an edit, no word in
        the channel): a task told "started" on a card and "succeeded" in a digest must not stay running.
        Best effort: the digest is delivered; a card that cannot be edited now stays as it was."""
        latest: dict[str, Notification] = {}
        for e in members:
            latest[card_key(e.notification.event)] = e.notification
        keys = list(latest)
        records = await self.outbox.cards.get_many(channel.name, keys)
        groups: dict[str, list[Notification]] = {}
        for k, record in zip(keys, records, strict=True):
            if record is None:
                continue
            if record.group:
                groups.setdefault(record.group, []).append(latest[k])
                continue
            await channel.pace()
            try:
                card = await channel.refresh([latest[k]], record)
            except DeliveryError as exc:
                log.info("after a digest, the card of %s on %s stays as it was: %s", k, channel.name, exc)
                continue
            if card is not None:
                await self.outbox.cards.put(channel.name, k, card)
        for group_id, notes in groups.items():
            group = await self.outbox.cards.get_group(channel.name, group_id)
            if group is None:
                continue
            await channel.pace()
            try:
                moved = await channel.refresh(notes, group)
            except DeliveryError as exc:
                log.info("after a digest, a group card on %s stays as it was: %s", channel.name, exc)
                continue
            if moved is not None:
                await self.outbox.cards.put(channel.name, group.key, moved)

    async def _retrying(
        self,
        channel: Channel,
        entries: list[OutboxEntry],
        send: Callable[[], Awaitable[Attempt]],
        accepted: Callable[[Attempt], Awaitable[None]],
        budget: int | None,
    ) -> tuple[Verdict, str]:
        """The one retry loop: ``send`` until accepted, given up on (dead letters) or left pending. The
        attempts of a message of several entries are counted on the first."""
        cfg = self.config
        metrics = self.metrics
        lead = entries[0]
        event = lead.notification.event
        tries = 0
        while True:
            await channel.pace()
            result = await send()
            error = result.error
            if error is None:
                await accepted(result)
                for e in entries:
                    metrics.accepted(channel.name, e.notification.event.detected_at.timestamp())
                return Verdict.DELIVERED, ""
            tries += 1
            if not error.retryable:
                attempts = await self.outbox.attempts(lead) + 1
                for e in entries:
                    await self.outbox.dead_letter(e, str(error), attempts)
                    metrics.delivery(channel.name, "dead_lettered", error.reason.value)
                return Verdict.DEAD, str(error)
            metrics.delivery(channel.name, "failed", error.reason.value)
            attempts = await self.outbox.record_attempt(lead)
            age = entry_age(lead.entry_id, time.time())
            if attempts >= cfg.max_attempts or age >= cfg.max_age:
                reason = f"gave up after {attempts} attempt(s) over {age:.0f} s; last error: {error}"
                for e in entries:
                    await self.outbox.dead_letter(e, reason, attempts)
                    metrics.delivery(channel.name, "dead_lettered", error.reason.value)
                return Verdict.DEAD, reason
            if budget is not None and tries >= budget:
                return Verdict.PENDING, str(error)
            delay = retry_delay(attempts, error, cfg)
            log.warning(
                "delivery of %s to %s failed (attempt %d of %d), retrying in %.1f s: %s",
                event.id if len(entries) == 1 else f"{len(entries)} notifications ({event.id}…)",
                channel.name,
                attempts,
                cfg.max_attempts,
                delay,
                error.message,
                extra={"channel": channel.name, "event_id": event.id, "reason": error.reason.value},
            )
            if not await self._wait_holding(channel.name, lead, delay):
                return Verdict.PENDING, str(error)
            held = await self.outbox.renew(channel.name, cfg.consumer)
            if any(e.entry_id not in held for e in entries):
                # Another consumer took it over meanwhile: it is theirs to send now.
                return Verdict.PENDING, f"{error} (entry taken over by another consumer)"

    async def _hold_until(self, name: str, wake_at: float) -> None:
        """Wait until ``wake_at`` (epoch seconds) while a group gathers, keeping what this consumer read
        its own: a ``group_wait`` longer than ``claim_idle`` must not let another consumer take it."""
        step = self.config.claim_idle / 3
        while (left := wake_at - time.time()) > 0:
            if await pause(min(left, step), self.stop):
                return
            if wake_at - time.time() > 0:
                with contextlib.suppress(StoreError):  # Redis away: logged by the store
                    await self.outbox.renew(name, self.config.consumer)

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

    async def _silenced(self, channel: Channel, entry: OutboxEntry) -> bool:
        """Whether a silence in effect holds ``entry`` back: then it is acknowledged without being sent,
        recorded in the silence log (and its task's card record marked), counted and logged."""
        if self.silences is None:
            return False
        silence = await self.silences.match(entry.notification)
        if silence is None:
            return False
        await self.silences.hold(entry, silence)
        self.metrics.delivery(channel.name, "silenced")
        event = entry.notification.event
        log.info(
            "silenced %s: %s (%s) to %s, by silence %s",
            event.type.value,
            event.summary,
            event.id,
            channel.name,
            silence.id,
            extra={"channel": channel.name, "event_id": event.id, "instance": event.instance.id},
        )
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
            if not self._tally(name, [entry], verdict, why, result):
                return False
        return True

    def _tally(
        self, name: str, entries: list[OutboxEntry], verdict: Verdict, why: str, result: PassResult
    ) -> bool:
        """Count and log what became of entries sent as one message; False when they stay pending."""
        event = entries[0].notification.event
        n = len(entries)
        what = f"{event.id}" if n == 1 else f"{n} notifications ({event.id}…)"
        fields = {"channel": name, "event_id": event.id, "instance": event.instance.id}  # for JSON logs
        if verdict is Verdict.DELIVERED:
            result.delivered += n
            log.info(
                "delivered %s: %s (%s) to %s",
                event.type.value if n == 1 else f"{n} notifications",
                event.summary if n == 1 else f"{event.summary}…",
                event.id,
                name,
                extra=fields,
            )
        elif verdict is Verdict.HELD:
            result.delivered += n
            log.info(
                "%s (%s) is part of task %s: told with its next message to %s",
                event.summary,
                event.id,
                event.task.id if event.task else "?",
                name,
                extra=fields,
            )
        elif verdict is Verdict.DUPLICATE:
            result.skipped_duplicates += n
        elif verdict is Verdict.SILENCED:
            result.silenced += n  # logged by _silenced
        elif verdict is Verdict.DEAD:
            result.dead_lettered += n
            log.error("moved %s for %s to dead letters: %s", what, name, why, extra=fields)
        else:
            result.failed.append(why)
            log.error("could not deliver %s to %s; it stays queued: %s", what, name, why, extra=fields)
            return False
        return True

    def gathers(self, name: str) -> bool:
        """Whether a channel's entries are planned together (grouped, or gathered in a digest): a chat
        channel, or one a rule asks to group, or any with ``digest.webhooks``."""
        channel = self.channels[name]
        if channel.chat or (self.digest.webhooks and self.digest.after):
            return True
        return any(name in r.channels and r.group_wait for r in self.rules.values())

    async def _gathered_pass(
        self, name: str, budget: int | None, block_ms: int | None, result: PassResult
    ) -> None:
        """A pass over a channel that groups: its pending entries and the new ones (up to GATHER_MAX) are
        planned into units (:func:`notifier.delivery.grouping.plan`) and delivered in order, stopping at
        a group still gathering its members (``wake_at``) or an entry left pending."""
        cfg = self.config
        outbox = self.outbox
        channel = self.channels[name]
        entries = await outbox.read(name, cfg.consumer, count=GATHER_MAX, pending=True)
        if len(entries) < GATHER_MAX:
            block = None if entries else block_ms
            new = await outbox.read(name, cfg.consumer, count=GATHER_MAX - len(entries), block_ms=block)
            if new and await outbox.held_elsewhere(name, cfg.consumer):
                result.waiting = True  # another consumer read older ones just before: they go first
                return
            entries += new
        if not entries:
            return
        now = time.time()
        units = plan(
            entries,
            rules=self.rules,
            chat=channel.chat,
            digest=self.digest,
            now=now,
            default_wait=cfg.group_wait,
        )
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + cfg.claim_idle / 3
        for unit in units:
            if self.stop.is_set():
                return
            if self.wait_for_groups and unit.ready_at > time.time():
                result.wake_at = unit.ready_at
                return
            if loop.time() >= renew_at:  # a long pass: keep the rest of what it read ours
                await outbox.renew(name, cfg.consumer)
                renew_at = loop.time() + cfg.claim_idle / 3
            if unit.kind == "single" and not (unit.key and channel.living_cards):
                if not await self._process(name, unit.entries, budget, result):
                    return
            elif not await self._process_unit(name, unit, budget, result):
                return
            if time.time() - now > REPLAN_AFTER:
                return  # a unit took long (a channel came back): plan what waits anew (a digest?)

    async def _process_unit(self, name: str, unit: Unit, budget: int | None, result: PassResult) -> bool:
        channel = self.channels[name]
        kind = "digest" if unit.kind == "digest" else "group"  # (a lone one may join its burst's card)

        def tally(entries: list[OutboxEntry], verdict: Verdict, why: str) -> bool:
            return self._tally(name, entries, verdict, why, result)

        return await self._deliver_many(channel, kind, unit.entries, budget, tally, unit.key)

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
        if self.gathers(name):
            await self._gathered_pass(name, budget, block_ms, result)
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
            elif result.wake_at is not None:  # a group gathers its members: read again when it is due
                await self._hold_until(name, result.wake_at)
