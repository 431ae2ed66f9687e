"""The Redis state store: task snapshots, the transactional outbox, the notification log, dead letters.

Key names and types are documented in :mod:`notifier.constants`. Every Redis failure surfaces as
:class:`~notifier.errors.StateStoreError` (the URL, which may hold a password, is never in it).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.typing import EncodableT, FieldT

from notifier.constants import DEAD_LETTER_MAXLEN, DELIVERED_TTL_SECONDS, META_FIELD, POLLED_FIELD, Keys
from notifier.diff import DiffResult, SeenTask, Snapshot
from notifier.errors import StateStoreError
from notifier.events import Notification, PollProblem

log = logging.getLogger(__name__)


def _is_connection_problem(exc: redis.exceptions.ResponseError) -> bool:
    # LOADING (restart reading its data) and similar transient states count as "Redis unavailable".
    return str(exc).startswith(("LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY "))


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat()


def _dt(value: str) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def encode_seen(seen: SeenTask) -> str:
    return json.dumps(
        {"s": seen.status, "u": _iso(seen.updated_at), "c": _iso(seen.created_at)}, separators=(",", ":")
    )


def decode_seen(raw: str) -> SeenTask:
    data = json.loads(raw)
    return SeenTask(status=data["s"], updated_at=_dt(data.get("u", "")), created_at=_dt(data.get("c", "")))


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One stream entry: its id in the channel's outbox stream and the notification it carries."""

    entry_id: str
    channel: str
    notification: Notification


def _describe(exc: BaseException) -> str:
    """A Redis error as text, without the URL (it may carry a password)."""
    if isinstance(exc, OSError) and not isinstance(exc, redis.exceptions.RedisError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    detail = str(exc).split(" to redis://")[0].split(" redis://")[0][:200]
    return f"{type(exc).__name__}: {detail}"


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


class StateStore:
    """Everything dcs-notifier keeps in Redis, behind one small API."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._groups: set[str] = set()
        self.down = False  # True from the first failed call of an outage until a later call succeeds
        self._failed_at = 0.0
        self._recovered_at = 0.0

    @asynccontextmanager
    async def _op(self, action: str) -> AsyncIterator[None]:
        """Run one Redis operation: failures become StateStoreError; an outage is logged once."""
        started = time.monotonic()
        try:
            yield
        except (redis.exceptions.RedisError, OSError) as exc:
            if isinstance(exc, redis.exceptions.ResponseError) and not _is_connection_problem(exc):
                raise StateStoreError(f"Redis {action} failed: {_describe(exc)}") from None
            self._failed_at = time.monotonic()
            # A call already under way when Redis came back does not open a new outage.
            if not self.down and started >= self._recovered_at:
                self.down = True
                log.error("Redis is unavailable (%s); no state advances until it returns", _describe(exc))
            raise StateStoreError(f"Redis {action} failed: {_describe(exc)}") from None
        # Recovered: a call that began after the last failure succeeded.
        if self.down and started > self._failed_at:
            self.down = False
            self._recovered_at = time.monotonic()
            self._groups.clear()  # a restarted Redis may have lost the consumer groups
            log.info("Redis is reachable again; resuming")

    # -- snapshots -------------------------------------------------------------------------------

    async def load(
        self, project_id: str, instance_id: str, *, touch: datetime | None = None
    ) -> Snapshot | None:
        """The instance's snapshot, or None when it was never baselined (or Redis lost it).

        One round trip: an HGETALL, pipelined after an HSET of ``~polled`` when ``touch`` is given (the
        time of the previous successful poll, so a restarted daemon knows where to start its window).
        """
        key = self.keys.snapshot(project_id, instance_id)
        async with self._op("read of instance state"):
            if touch is None:
                raw: dict[str, str] = await self.redis.hgetall(key)  # type: ignore[assignment]
            else:
                pipe = self.redis.pipeline(transaction=False)
                pipe.hset(key, POLLED_FIELD, _iso(touch))
                pipe.hgetall(key)
                raw = (await pipe.execute())[1]
        meta = raw.pop(META_FIELD, None)
        polled = _dt(raw.pop(POLLED_FIELD, ""))
        if meta is None:
            return None
        data = json.loads(meta)
        baseline_at = _dt(data.get("baseline_at", ""))
        if baseline_at is None:
            return None
        return Snapshot(
            baseline_at=baseline_at,
            tasks={tid: decode_seen(v) for tid, v in raw.items()},
            polled_at=polled,
            removed_at=_dt(data.get("removed_at", "")),
        )

    async def commit(
        self,
        project_id: str,
        instance_id: str,
        result: DiffResult,
        notifications: Iterable[Notification],
        *,
        baseline_at: datetime | None = None,
        polled_at: datetime | None = None,
        revived: bool = False,
    ) -> None:
        """Write the new snapshot and its outbox entries in one MULTI/EXEC: both or neither.

        ``baseline_at`` (default: the result's, for a baseline) rewrites the meta field, dropping a
        ``removed_at``; ``polled_at`` is stored as ``~polled``. ``revived``: the instance had been announced
        as removed and answers again (its key loses its TTL).
        """
        if not result.changed and not revived:
            return
        key = self.keys.snapshot(project_id, instance_id)
        async with self._op("commit of instance state and outbox"):
            pipe = self.redis.pipeline(transaction=True)
            mapping: dict[FieldT, EncodableT] = {tid: encode_seen(s) for tid, s in result.upserts.items()}
            baseline_at = baseline_at or result.baseline_at
            if baseline_at is not None:
                mapping[META_FIELD] = json.dumps({"baseline_at": _iso(baseline_at)})
            if polled_at is not None:
                mapping[POLLED_FIELD] = _iso(polled_at)
            if mapping:
                pipe.hset(key, mapping=mapping)
            if result.removals:
                pipe.hdel(key, *result.removals)
            if revived:
                pipe.persist(key)
            self._queue(pipe, notifications)
            await pipe.execute()

    async def mark_removed(
        self,
        project_id: str,
        instance_id: str,
        notifications: Iterable[Notification],
        *,
        removed_at: datetime,
        baseline_at: datetime,
        ttl_seconds: int,
    ) -> None:
        """Record ``instance.removed`` (announced once): outbox entries, the mark, and a TTL on the state."""
        key = self.keys.snapshot(project_id, instance_id)
        async with self._op("record of a removed instance"):
            pipe = self.redis.pipeline(transaction=True)
            meta = {"baseline_at": _iso(baseline_at), "removed_at": _iso(removed_at)}
            pipe.hset(key, META_FIELD, json.dumps(meta))
            pipe.expire(key, ttl_seconds)
            self._queue(pipe, notifications)
            await pipe.execute()

    def _queue(self, pipe: Any, notifications: Iterable[Notification]) -> None:
        for n in notifications:
            pipe.xadd(self.keys.outbox(n.channel), {"n": n.model_dump_json(), "k": n.key})

    # -- poller health -----------------------------------------------------------------------------

    async def load_health(self) -> dict[str, PollProblem]:
        """Instances announced as ``poller.unhealthy`` and not yet recovered: key → problem."""
        async with self._op("read of poller health"):
            raw: dict[str, str] = await self.redis.hgetall(self.keys.health)  # type: ignore[assignment]
        out = {}
        for key, value in raw.items():
            try:
                out[key] = PollProblem.model_validate_json(value)
            except ValueError:
                log.warning("poller health entry %s is unreadable; forgetting it", key)
        return out

    async def record_health(
        self, key: str, problem: PollProblem | None, notifications: Iterable[Notification]
    ) -> None:
        """Announce unhealthy (``problem``) or recovered (None), with its outbox entries, atomically."""
        async with self._op("record of poller health"):
            pipe = self.redis.pipeline(transaction=True)
            if problem is None:
                pipe.hdel(self.keys.health, key)
            else:
                pipe.hset(self.keys.health, key, problem.model_dump_json())
            self._queue(pipe, notifications)
            await pipe.execute()

    # -- outbox ----------------------------------------------------------------------------------

    async def ensure_group(self, channel: str, *, force: bool = False) -> None:
        if channel in self._groups and not force:
            return
        async with self._op("creation of the delivery consumer group"):
            try:
                await self.redis.xgroup_create(
                    self.keys.outbox(channel), self.keys.group, id="0", mkstream=True
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
                async with self._op("move to dead letters"):
                    await self._bury(channel, entry_id, fields, f"unreadable outbox entry: {exc}"[:500], 0)
        if gone:
            async with self._op("acknowledgement of deleted entries"):
                await self.redis.xack(self.keys.outbox(channel), self.keys.group, *gone)
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
        key = self.keys.outbox(channel)
        start = "0" if pending else ">"
        async with self._op("read of the outbox"):
            result = await self._grouped(
                channel,
                lambda: self.redis.xreadgroup(
                    self.keys.group, consumer, {key: start}, count=count, block=block_ms
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
        key = self.keys.outbox(channel)
        async with self._op("claim of stale outbox entries"):
            result = await self._grouped(
                channel,
                lambda: self.redis.xautoclaim(
                    key, self.keys.group, consumer, min_idle_ms, "0-0", count=count
                ),
            )
        return await self._entries(channel, result[1] if result else [])

    async def was_delivered(self, entry: OutboxEntry) -> bool:
        async with self._op("read of the notification log"):
            return bool(
                await self.redis.exists(self.keys.delivered(entry.channel, entry.notification.event.id))
            )

    async def record_attempt(self, entry: OutboxEntry) -> int:
        """Count one more failed attempt at this entry; returns the total so far."""
        async with self._op("count of a failed attempt"):
            return int(await self.redis.hincrby(self.keys.attempts(entry.channel), entry.entry_id, 1))

    async def attempts(self, entry: OutboxEntry) -> int:
        async with self._op("read of an attempt count"):
            value = await self.redis.hget(self.keys.attempts(entry.channel), entry.entry_id)
        return int(value or 0)

    async def mark_delivered(self, entry: OutboxEntry, ttl: int = DELIVERED_TTL_SECONDS) -> None:
        """Record the delivery and drop the entry from the outbox, atomically."""
        key = self.keys.outbox(entry.channel)
        async with self._op("acknowledgement of a delivery"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(self.keys.delivered(entry.channel, entry.notification.event.id), "1", ex=ttl)
            pipe.xack(key, self.keys.group, entry.entry_id)
            pipe.xdel(key, entry.entry_id)
            pipe.hdel(self.keys.attempts(entry.channel), entry.entry_id)
            await pipe.execute()

    async def _bury(
        self, channel: str, entry_id: str, fields: dict[str, str], error: str, attempts: int
    ) -> None:
        key = self.keys.outbox(channel)
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(
            self.keys.dead_letters,
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
        pipe.xack(key, self.keys.group, entry_id)
        pipe.xdel(key, entry_id)
        pipe.hdel(self.keys.attempts(channel), entry_id)
        await pipe.execute()

    async def dead_letter(self, entry: OutboxEntry, error: str, attempts: int) -> None:
        """Move an entry a channel refused for good to the dead-letter stream, atomically."""
        fields = {"n": entry.notification.model_dump_json(), "k": entry.notification.key}
        async with self._op("move to dead letters"):
            await self._bury(entry.channel, entry.entry_id, fields, error, attempts)

    async def backlog(self, channel: str) -> int:
        """Entries in the channel's outbox not yet delivered (pending or new)."""
        async with self._op("read of the outbox length"):
            return int(await self.redis.xlen(self.keys.outbox(channel)))

    # -- dead letters ----------------------------------------------------------------------------

    async def dead_letters(self, count: int = 1000) -> list[DeadLetter]:
        async with self._op("read of dead letters"):
            rows: list[tuple[str, dict[str, str]]] = await self.redis.xrange(  # type: ignore[assignment]
                self.keys.dead_letters, count=count
            )
        out: list[DeadLetter] = []
        for entry_id, f in rows:
            try:
                n: Notification | None = Notification.model_validate_json(f.get("n", ""))
            except ValueError:
                n = None
            out.append(
                DeadLetter(
                    entry_id=entry_id,
                    channel=f.get("channel", ""),
                    error=f.get("error", ""),
                    attempts=int(f.get("attempts", "0") or 0),
                    failed_at=f.get("failed_at", ""),
                    notification=n,
                    raw=f.get("n", ""),
                )
            )
        return out

    async def select_dead(self, ids: Iterable[str] | None = None) -> list[DeadLetter]:
        """The dead letters with these ids (all when None); an unknown id is an error naming it."""
        wanted = None if ids is None else set(ids)
        letters = [
            d
            for d in await self.dead_letters(count=DEAD_LETTER_MAXLEN)
            if wanted is None or d.entry_id in wanted
        ]
        if wanted is not None:
            missing = wanted - {d.entry_id for d in letters}
            if missing:
                raise StateStoreError(f"no dead letter with id {', '.join(sorted(missing))}")
        return letters

    async def requeue_dead(self, letters: Iterable[DeadLetter]) -> list[DeadLetter]:
        """Put dead letters back at the end of their channel's outbox (fresh attempts and age), atomically."""
        replayable = [d for d in letters if d.notification is not None]
        async with self._op("replay of dead letters"):
            pipe = self.redis.pipeline(transaction=True)
            for d in replayable:
                assert d.notification is not None
                n = d.notification
                pipe.xadd(self.keys.outbox(d.channel), {"n": n.model_dump_json(), "k": n.key})
                pipe.delete(self.keys.delivered(d.channel, n.event.id))
                pipe.xdel(self.keys.dead_letters, d.entry_id)
            await pipe.execute()
        return replayable

    async def purge_dead(self) -> int:
        async with self._op("purge of dead letters"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.xlen(self.keys.dead_letters)
            pipe.delete(self.keys.dead_letters)
            n, _ = await pipe.execute()
        return int(n)

    async def resolve_dead(self, letter: DeadLetter, ttl: int = DELIVERED_TTL_SECONDS) -> None:
        """A dead letter was delivered directly (``replay``): log the delivery and drop it, atomically."""
        assert letter.notification is not None
        n = letter.notification
        async with self._op("record of a replayed delivery"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(self.keys.delivered(n.channel, n.event.id), "1", ex=ttl)
            pipe.xdel(self.keys.dead_letters, letter.entry_id)
            await pipe.execute()

    async def held_elsewhere(self, channel: str, consumer: str) -> bool:
        """Whether another consumer holds unacknowledged entries of this channel (they come first)."""
        async with self._op("read of pending entries"):
            summary = await self._grouped(
                channel, lambda: self.redis.xpending(self.keys.outbox(channel), self.keys.group)
            )
        return any(c["name"] != consumer and int(c["pending"]) > 0 for c in summary.get("consumers") or [])

    async def renew(self, channel: str, consumer: str, limit: int = 1000) -> set[str]:
        """Reset the idle time of every entry this consumer holds, so that no other consumer claims them
        while this one waits to retry; returns the ids it still holds."""
        key = self.keys.outbox(channel)
        async with self._op("renewal of pending entries"):
            rows = await self.redis.xpending_range(
                key, self.keys.group, "-", "+", limit, consumername=consumer
            )
            ids: list[str] = [str(r["message_id"]) for r in rows]
            if ids:
                await self.redis.xclaim(key, self.keys.group, consumer, 0, list[Any](ids), justid=True)
        return set(ids)

    async def orphan_outboxes(self, channels: Iterable[str]) -> dict[str, int]:
        """Outbox streams with entries for channels no longer in the config: name → entries."""
        known = {self.keys.outbox(c) for c in channels}
        found: dict[str, int] = {}
        async with self._op("scan for outbox streams"):
            async for key in self.redis.scan_iter(match=self.keys.outbox("*"), _type="stream"):
                if key not in known:
                    n = int(await self.redis.xlen(key))
                    if n:
                        found[key.removeprefix(self.keys.outbox(""))] = n
        return found

    async def heartbeat(self, ttl_seconds: int) -> None:
        async with self._op("heartbeat"):
            await self.redis.set(self.keys.heartbeat, datetime.now(UTC).isoformat(), ex=max(1, ttl_seconds))

    async def last_heartbeat(self) -> str | None:
        """When the daemon last wrote its heartbeat (ISO 8601), or None if it expired."""
        async with self._op("read of the heartbeat"):
            value = await self.redis.get(self.keys.heartbeat)
        return None if value is None else str(value)
