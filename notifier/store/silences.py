"""Where silences are kept (``{p}:silences``), what they held back (``{p}:silence-log``), and the view a
delivering process has of them (see :mod:`notifier.store.keys` for both keys, and
:mod:`notifier.delivery.silences` for what a silence is).

:class:`SilenceStore` is what ``dcs-notifier silence`` and ``status`` use: add, list, expire, read the
log. :class:`Silences` is what delivery asks, per notification, whether a silence holds it back: it reads
the silences at most once a second per process (every replica reads the same hash, so a silence added on
any host applies everywhere within a second) and never makes one Redis call per notification for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from notifier.dcs.models import format_api_time
from notifier.delivery.cards import with_silence
from notifier.delivery.silences import Silence, first_match, marks_task, new_id
from notifier.errors import CorruptStateError
from notifier.pipeline.events import Notification
from notifier.store.keys import SILENCE_LOG_MAXLEN, SILENCE_RETENTION_SECONDS
from notifier.store.link import Link
from notifier.store.outbox import Outbox, OutboxEntry

log = logging.getLogger(__name__)

#: Seconds a delivering process keeps what it read of ``{p}:silences`` before reading it again.
REFRESH_SECONDS = 1.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Held:
    """One entry of the silence log: a notification a silence held back."""

    entry_id: str
    silence: str
    event_id: str
    type: str
    summary: str
    instance: str
    instance_name: str
    project: str
    task: str
    channel: str
    rule: str
    at: str

    def to_dict(self) -> dict[str, str]:
        return {
            "id": self.entry_id,
            "silence": self.silence,
            "event_id": self.event_id,
            "type": self.type,
            "summary": self.summary,
            "instance": self.instance,
            "instance_name": self.instance_name,
            "project": self.project,
            "task": self.task,
            "channel": self.channel,
            "rule": self.rule,
            "at": self.at,
        }


def log_record(notification: Notification, silence: Silence, now: datetime) -> dict[str, str]:
    """The silence log's entry for ``notification`` held back by ``silence``."""
    event = notification.event
    return {
        "silence": silence.id,
        "event_id": event.id,
        "type": event.type.value,
        "summary": event.summary,
        "instance": event.instance.id,
        "instance_name": event.instance.name,
        "project": event.project_id,
        "task": event.task.id if event.task is not None else "",
        "channel": notification.channel,
        "rule": notification.rule or "",
        "at": format_api_time(now),
    }


def _held(entry_id: str, fields: dict[str, str], stream_channel: str | None) -> Held:
    get = fields.get
    return Held(
        entry_id=entry_id,
        silence=get("silence", ""),
        event_id=get("event_id", ""),
        type=get("type", ""),
        summary=get("summary", ""),
        instance=get("instance", ""),
        instance_name=get("instance_name", ""),
        project=get("project", ""),
        task=get("task", ""),
        channel=stream_channel or get("channel", ""),
        rule=get("rule", ""),
        at=get("at", ""),
    )


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


class SilenceStore:
    """The silences of a deployment and their log, in Redis."""

    def __init__(self, link: Link) -> None:
        self.link = link
        #: Unreadable entries already reported (each is logged once per process).
        self._reported: set[str] = set()

    async def load(self, now: datetime | None = None, *, prune: bool = True) -> list[Silence]:
        """Every silence kept (in effect, to come, and ended within the retention), oldest first.

        An entry that is not a silence this version can apply (unreadable, or a matcher of a field it
        does not know) is left out and logged once: it is never applied in part. With ``prune``, silences
        that ended more than the retention ago are removed (one HDEL, rarely)."""
        now = now or _utcnow()
        link = self.link
        async with link.op("read of the silences"):
            raw = await link.redis.hgetall(link.keys.silences)
        out: list[Silence] = []
        for key, value in raw.items():
            sid = str(key)
            try:
                out.append(Silence.from_json(value))
            except (ValueError, KeyError, TypeError) as exc:
                if sid not in self._reported:
                    self._reported.add(sid)
                    log.error("silence %s in Redis is unreadable, not applied: %s", sid, str(exc)[:200])
        stale = [s.id for s in out if now - s.ends_at > timedelta(seconds=SILENCE_RETENTION_SECONDS)]
        if prune and stale:
            async with link.op("removal of old silences"):
                await link.redis.hdel(link.keys.silences, *stale)
            out = [s for s in out if s.id not in stale]
        return sorted(out, key=lambda s: (s.created_at, s.id))

    async def get(self, silence_id: str) -> Silence | None:
        link = self.link
        async with link.op("read of a silence"):
            raw = await link.redis.hget(link.keys.silences, silence_id)
        return None if raw is None else Silence.from_json(raw)

    async def add(self, silence: Silence) -> Silence:
        """Store a new silence under a fresh id (``silence.id`` is replaced should it be taken)."""
        link = self.link
        for _ in range(10):
            async with link.op("write of a silence"):
                if await link.redis.hsetnx(link.keys.silences, silence.id, silence.to_json()):
                    return silence
            silence = Silence(
                new_id(),
                silence.matchers,
                silence.starts_at,
                silence.ends_at,
                silence.comment,
                silence.author,
                silence.created_at,
            )
        raise RuntimeError("could not find a free silence id")  # pragma: no cover - 10 collisions of 2^32

    async def expire(self, silence_id: str, by: str, now: datetime | None = None) -> Silence | None:
        """End a silence now (``ends_at`` = now, ``expired_by`` = ``by``); an ended one is left as it is.
        None when there is no such silence."""
        now = now or _utcnow()
        current = await self.get(silence_id)
        if current is None or current.state(now) == "expired":
            return current
        ended = Silence(
            current.id,
            current.matchers,
            min(current.starts_at, now),
            now,
            current.comment,
            current.author,
            current.created_at,
            by,
        )
        link = self.link
        async with link.op("write of a silence"):
            await link.redis.hset(link.keys.silences, silence_id, ended.to_json())
        return ended

    async def _log_streams(self, channels: Iterable[str] | None) -> list[str]:
        keys = self.link.keys
        if not self.link.cluster:
            return [keys.silence_log("")]
        names = set(channels or ())
        async for key in self.link.scan(keys.silence_log("*"), "stream"):
            channel = keys.silence_log_channel(key)
            if channel is not None:
                names.add(channel)
        return [keys.silence_log(c) for c in sorted(names)]

    async def held(
        self,
        *,
        silence_id: str | None = None,
        limit: int | None = 100,
        channels: Iterable[str] | None = None,
    ) -> list[Held]:
        """What silences held back, newest first: all of them, or ``silence_id``'s; at most ``limit``.
        ``channels``: the config's (a cluster has one log per channel; others a SCAN finds are read too)."""
        link = self.link
        # The log is capped (~10,000 entries): filtering by silence reads it whole, still bounded.
        count = limit if silence_id is None and limit is not None else SILENCE_LOG_MAXLEN * 2
        out: list[Held] = []
        async with link.op("read of the silence log"):
            for stream in await self._log_streams(channels):
                rows: list[tuple[str, dict[str, str]]] = await link.redis.xrevrange(  # type: ignore[assignment]
                    stream, count=count
                )
                channel = link.keys.silence_log_channel(stream) if link.cluster else None
                out.extend(_held(entry_id, fields, channel) for entry_id, fields in rows)
        if silence_id is not None:
            out = [h for h in out if h.silence == silence_id]
        out.sort(key=lambda h: (_stream_id(h.entry_id), h.channel), reverse=True)
        return out if limit is None else out[:limit]


class Silences:
    """The silences as a delivering process applies them (one per process, shared by its channels).

    :meth:`match` says whether a silence in effect holds a notification back, from a copy of
    ``{p}:silences`` read at most every ``refresh`` seconds; :meth:`hold` acknowledges it without
    sending, into the silence log; :meth:`told` gives a task's later notification the note of a silence
    that held back an earlier one (from the task's card record, read only while silences are kept)."""

    def __init__(
        self,
        store: SilenceStore,
        outbox: Outbox,
        *,
        refresh: float = REFRESH_SECONDS,
        clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.refresh = refresh
        self.clock = clock
        self._monotonic = monotonic
        self._cache: list[Silence] = []
        self._read_at: float | None = None
        self._lock = asyncio.Lock()
        self._corrupt = ""

    def _fresh(self) -> bool:
        return self._read_at is not None and self._monotonic() - self._read_at < self.refresh

    async def current(self) -> list[Silence]:
        """Every silence kept (in effect or not), read from Redis at most once per ``refresh``: the
        channels' workers share one read (a StoreError when Redis cannot answer: delivery waits)."""
        if self._fresh():
            return self._cache
        async with self._lock:
            if not self._fresh():
                self._cache = await self._read()
                self._read_at = self._monotonic()
        return self._cache

    async def _read(self) -> list[Silence]:
        try:
            silences = await self.store.load(self.clock())
        except CorruptStateError as exc:
            # A key of the wrong type: no silence can be read, so none applies (notifications go out
            # rather than being held back by silences nobody can see), said once.
            if str(exc) != self._corrupt:
                log.error("silences cannot be read, none is applied: %s", exc)
            self._corrupt = str(exc)
            return []
        self._corrupt = ""
        return silences

    async def match(self, notification: Notification) -> Silence | None:
        """The silence in effect that holds ``notification`` back, or None."""
        silences = await self.current()
        return first_match(silences, notification, self.clock()) if silences else None

    async def hold(self, entry: OutboxEntry, silence: Silence) -> None:
        """Acknowledge ``entry`` without sending it, recorded in the silence log; a task's event also
        marks the task's card record on that channel (any channel), for the task's later messages."""
        notification = entry.notification
        card = None
        if marks_task(notification):
            existing = await self.outbox.card(entry)
            card = with_silence(existing, silence.note(notification))
            if card is existing:
                card = None  # already says a silence held its task's news back: nothing to write
        await self.outbox.mark_silenced(entry, log_record(notification, silence, self.clock()), card)

    async def told(self, entry: OutboxEntry) -> OutboxEntry:
        """``entry``, its notification carrying the note of a silence that held back an earlier one of
        its task on this channel (so the message says so), if its task's card record keeps one. The
        record is read only while some silence is kept at all: without silences, no Redis call."""
        notification = entry.notification
        if notification.event.task is None or not await self.current():
            return entry
        card = await self.outbox.card(entry)
        if card is None or card.silenced is None:
            return entry
        update: dict[str, Any] = {"silenced": card.silenced}
        return OutboxEntry(entry.entry_id, entry.channel, notification.model_copy(update=update))
