"""Dead letters: the notifications a channel refused for good, and what an operator does with them
(``dcs-notifier dead-letters list/replay/purge``).

Delivery buries entries here (:meth:`notifier.store.outbox.Outbox.dead_letter`). A cluster has one stream
per channel (``{p}:dead`` in :mod:`notifier.store.keys`): the methods below read and change all of them,
those a SCAN of every primary finds and those of the ``channels`` given (the config's).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from notifier.errors import StoreError
from notifier.pipeline.events import Notification
from notifier.store.keys import DEAD_LETTER_MAXLEN, DELIVERED_TTL_SECONDS
from notifier.store.link import Link
from notifier.store.outbox import entry_fields


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of the dead-letter stream."""

    entry_id: str
    channel: str
    error: str
    attempts: int
    failed_at: str
    notification: Notification | None  # None when the entry itself was unreadable
    raw: str


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


def _parse(entry_id: str, f: dict[str, str], stream_channel: str | None) -> DeadLetter:
    try:
        n: Notification | None = Notification.model_validate_json(f.get("n", ""))
    except ValueError:
        n = None
    return DeadLetter(
        entry_id=entry_id,
        channel=stream_channel or f.get("channel", ""),
        error=f.get("error", ""),
        attempts=int(f.get("attempts", "0") or 0),
        failed_at=f.get("failed_at", ""),
        notification=n,
        raw=f.get("n", ""),
    )


#: Dead letters read, at most, to count them per channel on one server (see DeadLetters.counts).
COUNT_SCAN = 1000


class DeadLetters:
    """List, select, replay, resolve and purge dead letters."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def _streams(self, channels: Iterable[str] | None) -> list[str]:
        keys = self.link.keys
        if not self.link.cluster:
            return [keys.dead_letters]
        names = set(channels or ())
        async for key in self.link.scan(keys.dead("*"), "stream"):
            channel = keys.dead_channel(key)
            if channel is not None:
                names.add(channel)
        return [keys.dead(c) for c in sorted(names)]

    async def _read(self, per_stream: int, channels: Iterable[str] | None) -> list[DeadLetter]:
        """Dead letters, oldest first (over every stream, on a cluster)."""
        link = self.link
        out: list[DeadLetter] = []
        async with link.op("read of dead letters"):
            for stream in await self._streams(channels):
                rows: list[tuple[str, dict[str, str]]] = await link.redis.xrange(  # type: ignore[assignment]
                    stream, count=per_stream
                )
                out.extend(_parse(entry_id, f, link.keys.dead_channel(stream)) for entry_id, f in rows)
        if link.cluster:
            out.sort(key=lambda d: (_stream_id(d.entry_id), d.channel))
        return out

    async def counts(
        self, *, channels: Iterable[str] | None = None, scan: int = COUNT_SCAN
    ) -> tuple[int, dict[str, int] | None]:
        """How many dead letters there are: the total, and per channel — on a cluster from each channel's
        stream length; on one server, whose one stream mixes the channels, by reading the letters when
        there are at most ``scan`` of them (else None: only the total, at a bounded cost)."""
        link = self.link
        channels = None if channels is None else list(channels)
        async with link.op("read of dead letters"):
            streams = await self._streams(channels)
            pipe = link.redis.pipeline(transaction=False)
            for stream in streams:
                pipe.xlen(stream)
            lengths = [int(n) for n in await pipe.execute()]
        if not link.cluster:
            total = sum(lengths)
            if total > scan:
                return total, None
            by_channel = dict.fromkeys(channels or (), 0)
            for letter in await self._read(scan, channels) if total else ():
                by_channel[letter.channel] = by_channel.get(letter.channel, 0) + 1
            return total, by_channel
        by_channel = {link.keys.dead_channel(s) or s: n for s, n in zip(streams, lengths, strict=True)}
        return sum(lengths), by_channel

    async def oldest(self, count: int = 1000, *, channels: Iterable[str] | None = None) -> list[DeadLetter]:
        """The oldest ``count`` dead letters. ``channels``: see the module docstring (cluster only)."""
        return (await self._read(count, channels))[:count]

    async def select(
        self, ids: Iterable[str] | None = None, *, channels: Iterable[str] | None = None
    ) -> list[DeadLetter]:
        """The dead letters with these ids (all when None); an unknown id is an error naming it.

        An id is a stream entry id (as ``dead-letters list`` shows it) or ``CHANNEL/ID``; on a cluster,
        where each channel has its own stream, an id found in several channels must be qualified so.
        """
        letters = await self._read(DEAD_LETTER_MAXLEN, channels)
        if ids is None:
            return letters
        chosen: set[tuple[str, str]] = set()
        missing: list[str] = []
        for wanted in ids:
            channel, _, entry_id = wanted.rpartition("/")
            hits = [d for d in letters if d.entry_id == entry_id and channel in ("", d.channel)]
            if not hits:
                missing.append(wanted)
            elif len(hits) > 1:
                where = ", ".join(f"{d.channel}/{d.entry_id}" for d in hits)
                raise StoreError(f"dead letter id {entry_id} is in several channels: name one of {where}")
            else:
                chosen.add((hits[0].channel, entry_id))
        if missing:
            raise StoreError(f"no dead letter with id {', '.join(sorted(missing))}")
        return [d for d in letters if (d.channel, d.entry_id) in chosen]

    def _by_slot(self, letters: Iterable[DeadLetter]) -> list[list[DeadLetter]]:
        """Dead letters grouped so that each group's keys may share one MULTI/EXEC (one per channel on a
        cluster, all together otherwise)."""
        groups: dict[str, list[DeadLetter]] = {}
        for d in letters:
            groups.setdefault(d.channel if self.link.cluster else "", []).append(d)
        return list(groups.values())

    async def requeue(self, letters: Iterable[DeadLetter]) -> list[DeadLetter]:
        """Put dead letters back at the end of their channel's outbox (fresh attempts and age), atomically
        (per channel, on a cluster); returns those that could be (an unreadable one cannot)."""
        link, keys = self.link, self.link.keys
        replayable = [d for d in letters if d.notification is not None]
        async with link.op("replay of dead letters"):
            for group in self._by_slot(replayable):
                pipe = link.redis.pipeline(transaction=True)
                for d in group:
                    assert d.notification is not None
                    pipe.xadd(keys.outbox(d.channel), entry_fields(d.notification))
                    pipe.delete(keys.delivered(d.channel, d.notification.event.id))
                    pipe.xdel(keys.dead(d.channel), d.entry_id)
                await pipe.execute()
        return replayable

    async def purge(self, *, channels: Iterable[str] | None = None) -> int:
        """Delete every dead letter; returns how many there were."""
        total = 0
        async with self.link.op("purge of dead letters"):
            for stream in await self._streams(channels):
                pipe = self.link.redis.pipeline(transaction=True)
                pipe.xlen(stream)
                pipe.delete(stream)
                n, _ = await pipe.execute()
                total += int(n)
        return total

    async def resolve(self, letter: DeadLetter) -> None:
        """A dead letter was delivered directly (``replay``): log the delivery and drop it, atomically."""
        assert letter.notification is not None
        keys = self.link.keys
        async with self.link.op("record of a replayed delivery"):
            pipe = self.link.redis.pipeline(transaction=True)
            pipe.set(
                keys.delivered(letter.channel, letter.notification.event.id), "1", ex=DELIVERED_TTL_SECONDS
            )
            pipe.xdel(keys.dead(letter.channel), letter.entry_id)
            await pipe.execute()
