"""The outbox: one Redis stream per channel, written with the state change that causes its entries, read
by delivery (``{p}:outbox:{channel}``, ``{p}:delivered:...``, ``{p}:attempts:...`` in
:mod:`notifier.store.keys`).

The writing side is :func:`transaction_with`: the MULTI/EXEC a state change (a snapshot, a health
record) shares with the outbox entries it causes. The delivery side is :class:`Outbox`: read, claim,
count attempts, acknowledge with the notification log, bury in the dead letters, renew.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.exceptions
from redis.typing import EncodableT, FieldT

from notifier.delivery.cards import Card, Group, card_key
from notifier.pipeline.events import Notification
from notifier.store.cards import Cards
from notifier.store.keys import DEAD_LETTER_MAXLEN, DELIVERED_TTL_SECONDS, SILENCE_LOG_MAXLEN, Keys
from notifier.store.link import Link

log = logging.getLogger(__name__)

#: At most this many of a consumer's pending entries are renewed at once (a batch is far fewer).
RENEW_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One stream entry: its id in the channel's outbox stream and the notification it carries."""

    entry_id: str
    channel: str
    notification: Notification


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a channel's outbox holds (:meth:`Outbox.backlogs`), read without its entries' contents."""

    #: Entries not delivered yet (XLEN: delivered ones are deleted), pending or never read.
    depth: int
    #: Of those, entries read by a consumer and not acknowledged (being sent or waiting to be retried).
    pending: int
    #: Entries with failed attempts counted (``{p}:attempts:{channel}``).
    retrying: int
    #: The oldest entry's id (its first part is when it was queued, in ms since the epoch); None: empty.
    oldest_id: str | None
    #: The oldest pending entry's id; None: nothing pending.
    oldest_pending_id: str | None
    #: Pending entries by consumer name.
    consumers: dict[str, int]


def entry_time(entry_id: str | None) -> float | None:
    """When a stream entry was written (epoch seconds): its id starts with that time in ms. None for no
    id, or one that is not a stream id."""
    if not entry_id:
        return None
    try:
        return int(entry_id.split("-", 1)[0]) / 1000
    except ValueError:
        return None


def entry_age(entry_id: str | None, now: float) -> float:
    """Seconds since a stream entry was written (0 for none)."""
    written = entry_time(entry_id)
    return 0.0 if written is None else max(0.0, now - written)


def entry_fields(notification: Notification) -> dict[FieldT, EncodableT]:
    """The fields of a notification's outbox entry."""
    return {"n": notification.model_dump_json(), "k": notification.key}


def _queue(pipe: Any, keys: Keys, notifications: Iterable[Notification]) -> int:
    queued = 0
    for n in notifications:
        pipe.xadd(keys.outbox(n.channel), entry_fields(n))
        queued += 1
    return queued


async def transaction_with(link: Link, notifications: Iterable[Notification]) -> Any:
    """A MULTI/EXEC pipeline for a state change and the outbox entries it causes: the caller adds the
    state change and executes it (see :func:`execute`).

    Standalone: the entries are queued in it, so state and outbox are written both or neither.
    Cluster: the entries (in several slots) are written now, pipelined per node, and the pipeline
    returned holds only the state change (one key, one slot). A failure in between leaves entries
    whose state change is missing: the next poll queues them again with the same event ids, and the
    notification log keeps each from being delivered twice.
    """
    if not link.cluster:
        pipe = link.redis.pipeline(transaction=True)
        _queue(pipe, link.keys, notifications)
        return pipe
    outbox = link.redis.pipeline(transaction=False)
    if _queue(outbox, link.keys, notifications):
        await outbox.execute()
    return link.redis.pipeline(transaction=True)


async def execute(pipe: Any) -> None:
    """Execute a pipeline unless it is empty."""
    if len(pipe):
        await pipe.execute()


def _remove(pipe: Any, keys: Keys, channel: str, entry_id: str) -> None:
    """Queue what takes an entry out of the outbox: acknowledged, deleted, its attempts forgotten."""
    key = keys.outbox(channel)
    pipe.xack(key, keys.group, entry_id)
    pipe.xdel(key, entry_id)
    pipe.hdel(keys.attempts(channel), entry_id)


class Outbox:
    """The delivery side of every channel's outbox stream."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.cards = Cards(link)
        self._groups: set[str] = set()
        self._recoveries = link.recoveries

    async def ensure_group(self, channel: str, *, force: bool = False) -> None:
        link = self.link
        if self._recoveries != link.recoveries:  # a restarted Redis may have lost the consumer groups
            self._groups.clear()
            self._recoveries = link.recoveries
        if channel in self._groups and not force:
            return
        async with link.op("creation of the delivery consumer group"):
            try:
                await link.redis.xgroup_create(
                    link.keys.outbox(channel), link.keys.group, id="0", mkstream=True
                )
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups.add(channel)

    async def _entries(self, channel: str, rows: Any) -> list[OutboxEntry]:
        """Parse stream rows; an unreadable entry goes to dead letters instead of blocking the stream."""
        out: list[OutboxEntry] = []
        gone: list[str] = []
        for entry_id, fields in rows or []:
            if not fields:  # deleted while still pending: nothing to send, just acknowledge it
                gone.append(entry_id)
                continue
            try:
                out.append(OutboxEntry(entry_id, channel, Notification.model_validate_json(fields["n"])))
            except (KeyError, ValueError) as exc:
                log.error(
                    "outbox entry %s of %s is unreadable, moved to dead letters: %s", entry_id, channel, exc
                )
                async with self.link.op("move to dead letters"):
                    await self._bury(channel, entry_id, fields, f"unreadable outbox entry: {exc}"[:500], 0)
        if gone:
            async with self.link.op("acknowledgement of deleted entries"):
                await self.link.redis.xack(self.link.keys.outbox(channel), self.link.keys.group, *gone)
        return out

    async def _grouped(self, channel: str, call: Any) -> Any:
        """Run a consumer-group call, recreating the group if Redis lost it (restart without persistence)."""
        await self.ensure_group(channel)
        try:
            return await call()
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group(channel, force=True)
            return await call()

    async def read(
        self, channel: str, consumer: str, *, count: int, block_ms: int | None = None, pending: bool = False
    ) -> list[OutboxEntry]:
        """New entries (``pending=False``) or this consumer's unacknowledged ones (``pending=True``)."""
        link = self.link
        key = link.keys.outbox(channel)
        start = "0" if pending else ">"
        async with link.op("read of the outbox"):
            result = await self._grouped(
                channel,
                lambda: link.redis.xreadgroup(
                    link.keys.group, consumer, {key: start}, count=count, block=block_ms
                ),
            )
        rows: list[Any] = []
        for _stream, items in result or []:
            rows.extend(items)
        return await self._entries(channel, rows)

    async def claim_stale(
        self, channel: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[OutboxEntry]:
        """Take over entries another (dead) consumer left pending for longer than ``min_idle_ms``."""
        link = self.link
        key = link.keys.outbox(channel)
        async with link.op("claim of stale outbox entries"):
            result = await self._grouped(
                channel,
                lambda: link.redis.xautoclaim(
                    key, link.keys.group, consumer, min_idle_ms, "0-0", count=count
                ),
            )
        return await self._entries(channel, result[1] if result else [])

    async def was_delivered(self, entry: OutboxEntry) -> bool:
        """Whether the notification log holds the entry's notification (another consumer sent it)."""
        async with self.link.op("read of the notification log"):
            return bool(
                await self.link.redis.exists(
                    self.link.keys.delivered(entry.channel, entry.notification.event.id)
                )
            )

    async def delivered_among(self, entries: Sequence[OutboxEntry]) -> set[str]:
        """The entry ids among ``entries`` (of one channel) whose notification is in the notification log
        already, in one round trip."""
        if not entries:
            return set()
        keys = self.link.keys
        async with self.link.op("read of the notification log"):
            pipe = self.link.redis.pipeline(transaction=False)
            for entry in entries:
                pipe.exists(keys.delivered(entry.channel, entry.notification.event.id))
            found = await pipe.execute()
        return {e.entry_id for e, n in zip(entries, found, strict=True) if n}

    async def record_attempt(self, entry: OutboxEntry) -> int:
        """Count one more failed attempt at this entry; returns the total so far."""
        async with self.link.op("count of a failed attempt"):
            return int(
                await self.link.redis.hincrby(self.link.keys.attempts(entry.channel), entry.entry_id, 1)
            )

    async def attempts(self, entry: OutboxEntry) -> int:
        """The failed attempts counted for this entry so far."""
        async with self.link.op("read of an attempt count"):
            value = await self.link.redis.hget(self.link.keys.attempts(entry.channel), entry.entry_id)
        return int(value or 0)

    async def card(self, entry: OutboxEntry) -> Card | None:
        """The living card the entry's notification updates (None: it posts a new one)."""
        return await self.cards.get(entry.channel, card_key(entry.notification.event))

    async def mark_delivered(self, entry: OutboxEntry, card: Card | None = None) -> None:
        """Record the delivery (and the card it posted or updated) and drop the entry from the outbox,
        atomically."""
        records = {} if card is None else {card_key(entry.notification.event): card}
        await self.mark_all_delivered([entry], records)

    async def mark_all_delivered(
        self,
        entries: Sequence[OutboxEntry],
        records: Mapping[str, Card | Group],
        how: str = "1",
        burst: tuple[str, str, float] | None = None,
    ) -> None:
        """Record the delivery of entries of one channel sent as one message (a group, a digest) — with
        the cards it posted or updated, by card key — and drop them from the outbox, atomically. ``how``
        is what the notification log says of them (``digest``: told by a digest)."""
        if not entries:
            return
        keys = self.link.keys
        channel = entries[0].channel
        async with self.link.op("acknowledgement of a delivery"):
            pipe = self.link.redis.pipeline(transaction=True)
            for entry in entries:
                pipe.set(keys.delivered(channel, entry.notification.event.id), how, ex=DELIVERED_TTL_SECONDS)
            for key, record in records.items():
                self.cards.queue_put(pipe, channel, key, record)
            if burst is not None:  # (group key, group id, how long later members join it)
                self.cards.queue_burst(pipe, channel, *burst)
            for entry in entries:
                _remove(pipe, keys, channel, entry.entry_id)
            await pipe.execute()

    async def mark_silenced(
        self, entry: OutboxEntry, record: Mapping[str, str], card: Card | None = None
    ) -> None:
        """Acknowledge an entry a silence held back, atomically with its record in the silence log, its
        notification log (``silenced``: a re-claimed or replayed copy is not sent either) and, for a
        task's event, the task's card record saying so (see :mod:`notifier.delivery.silences`)."""
        keys = self.link.keys
        channel = entry.channel
        async with self.link.op("acknowledgement of a silenced notification"):
            pipe = self.link.redis.pipeline(transaction=True)
            pipe.set(
                keys.delivered(channel, entry.notification.event.id), "silenced", ex=DELIVERED_TTL_SECONDS
            )
            fields: dict[FieldT, EncodableT] = {k: v for k, v in record.items()}
            pipe.xadd(keys.silence_log(channel), fields, maxlen=SILENCE_LOG_MAXLEN, approximate=True)
            if card is not None:
                self.cards.queue_put(pipe, channel, card_key(entry.notification.event), card)
            _remove(pipe, keys, channel, entry.entry_id)
            await pipe.execute()

    async def _bury(
        self, channel: str, entry_id: str, fields: dict[FieldT, EncodableT], error: str, attempts: int
    ) -> None:
        keys = self.link.keys
        pipe = self.link.redis.pipeline(transaction=True)
        pipe.xadd(
            keys.dead(channel),
            {
                "n": fields.get("n", ""),
                "k": fields.get("k", ""),
                "channel": channel,
                "error": error,
                "attempts": str(attempts),
                "failed_at": datetime.now(UTC).isoformat(),
            },
            maxlen=DEAD_LETTER_MAXLEN,
            approximate=True,
        )
        _remove(pipe, keys, channel, entry_id)
        await pipe.execute()

    async def dead_letter(self, entry: OutboxEntry, error: str, attempts: int) -> None:
        """Move an entry a channel refused for good to the dead-letter stream, atomically."""
        async with self.link.op("move to dead letters"):
            await self._bury(entry.channel, entry.entry_id, entry_fields(entry.notification), error, attempts)

    async def backlog(self, channel: str) -> int:
        """Entries in the channel's outbox not yet delivered (pending or new)."""
        async with self.link.op("read of the outbox length"):
            return int(await self.link.redis.xlen(self.link.keys.outbox(channel)))

    async def backlogs(self, channels: Iterable[str]) -> dict[str, Backlog]:
        """Each channel's backlog, in one pipeline: XLEN, the XPENDING summary, HLEN of the attempts and
        the id of the first entry (XRANGE COUNT 1), so the cost does not grow with the backlog."""
        link = self.link
        names = list(channels)
        if not names:
            return {}
        pipe = link.redis.pipeline(transaction=False)
        for channel in names:
            key = link.keys.outbox(channel)
            pipe.xlen(key)
            pipe.xpending(key, link.keys.group)
            pipe.hlen(link.keys.attempts(channel))
            pipe.xrange(key, count=1)
        out: dict[str, Backlog] = {}
        async with link.op("read of the outbox length"):
            answers = await pipe.execute(raise_on_error=False)
            for n, channel in enumerate(names):
                length, pending, retrying, first = answers[4 * n : 4 * n + 4]
                for answer in (length, retrying, first):
                    if isinstance(answer, Exception):  # WRONGTYPE: raised as the key's problem
                        raise answer
                summary = pending if isinstance(pending, dict) else {}  # NOGROUP: nothing read yet
                out[channel] = Backlog(
                    depth=int(length),
                    pending=int(summary.get("pending") or 0),
                    retrying=int(retrying),
                    oldest_id=str(first[0][0]) if first else None,
                    oldest_pending_id=str(summary["min"]) if summary.get("min") else None,
                    consumers={str(c["name"]): int(c["pending"]) for c in summary.get("consumers") or []},
                )
        return out

    async def held_elsewhere(self, channel: str, consumer: str) -> bool:
        """Whether another consumer holds the oldest unacknowledged entry of this channel: then it comes
        before anything this consumer holds or reads (a task's "finished" must not overtake its "started")."""
        link = self.link
        key = link.keys.outbox(channel)
        async with link.op("read of pending entries"):
            rows = await self._grouped(
                channel, lambda: link.redis.xpending_range(key, link.keys.group, "-", "+", 1)
            )
        return bool(rows) and str(rows[0]["consumer"]) != consumer

    async def renew(self, channel: str, consumer: str) -> set[str]:
        """Reset the idle time of every entry this consumer holds, so that no other consumer claims them
        while this one waits to retry; returns the ids it still holds."""
        link = self.link
        key = link.keys.outbox(channel)
        async with link.op("renewal of pending entries"):
            rows = await link.redis.xpending_range(
                key, link.keys.group, "-", "+", RENEW_LIMIT, consumername=consumer
            )
            ids: list[str] = [str(r["message_id"]) for r in rows]
            if ids:
                await link.redis.xclaim(key, link.keys.group, consumer, 0, list[Any](ids), justid=True)
        return set(ids)

    async def orphans(self, channels: Iterable[str]) -> dict[str, int]:
        """Outbox streams with entries for channels no longer in the config: name → entries."""
        link = self.link
        known = set(channels)
        found: dict[str, int] = {}
        async with link.op("scan for outbox streams"):
            async for key in link.scan(link.keys.outbox("*"), "stream"):
                channel = link.keys.outbox_channel(key)
                if channel is not None and channel not in known:
                    n = int(await link.redis.xlen(key))
                    if n:
                        found[channel] = n
        return found
