"""The Redis state store: task snapshots, the transactional outbox, the notification log, dead letters.

Key names and types are documented in :mod:`notifier.constants`. Every Redis failure surfaces as
:class:`~notifier.errors.StateStoreError` (the URL, which may hold a password, is never in it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.typing import EncodableT, FieldT

from notifier.constants import DEAD_LETTER_MAXLEN, DELIVERED_TTL_SECONDS, META_FIELD, Keys
from notifier.diff import DiffResult, SeenTask, Snapshot
from notifier.errors import StateStoreError
from notifier.events import Notification


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
    deliveries: int = 1  # how many times Redis has handed this entry out (XPENDING count)


@asynccontextmanager
async def redis_errors(action: str) -> AsyncIterator[None]:
    """Turn any redis-py failure into a StateStoreError naming what was being done."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        kind = type(exc).__name__
        detail = str(exc).split(" to redis://")[0].split(" redis://")[0][:200]
        raise StateStoreError(f"Redis {action} failed: {kind}: {detail}") from None
    except OSError as exc:
        raise StateStoreError(f"Redis {action} failed: {type(exc).__name__}: {exc.strerror or exc}") from None


class StateStore:
    """Everything dcs-notifier keeps in Redis, behind one small API."""

    def __init__(self, client: aioredis.Redis, keys: Keys, project_id: str) -> None:
        self.redis = client
        self.keys = keys
        self.project_id = project_id
        self._groups: set[str] = set()

    # -- snapshots -------------------------------------------------------------------------------

    async def load(self, instance_id: str) -> Snapshot | None:
        """The instance's snapshot, or None when it was never baselined (or Redis lost it): one HGETALL."""
        async with redis_errors("read of instance state"):
            key = self.keys.snapshot(self.project_id, instance_id)
            raw: dict[str, str] = await self.redis.hgetall(key)  # type: ignore[assignment]
        meta = raw.pop(META_FIELD, None)
        if meta is None:
            return None
        baseline_at = _dt(json.loads(meta).get("baseline_at", ""))
        if baseline_at is None:
            return None
        return Snapshot(baseline_at=baseline_at, tasks={tid: decode_seen(v) for tid, v in raw.items()})

    async def commit(
        self, instance_id: str, result: DiffResult, notifications: Iterable[Notification]
    ) -> None:
        """Write the new snapshot and its outbox entries in one MULTI/EXEC: both or neither."""
        if not result.changed:
            return
        key = self.keys.snapshot(self.project_id, instance_id)
        async with redis_errors("commit of instance state and outbox"):
            pipe = self.redis.pipeline(transaction=True)
            mapping: dict[FieldT, EncodableT] = {tid: encode_seen(s) for tid, s in result.upserts.items()}
            if result.baseline_at is not None:
                mapping[META_FIELD] = json.dumps({"baseline_at": _iso(result.baseline_at)})
            if mapping:
                pipe.hset(key, mapping=mapping)
            if result.removals:
                pipe.hdel(key, *result.removals)
            for n in notifications:
                pipe.xadd(self.keys.outbox(n.channel), {"n": n.model_dump_json(), "k": n.key})
            await pipe.execute()

    async def forget(self, instance_id: str) -> None:
        async with redis_errors("delete of instance state"):
            await self.redis.delete(self.keys.snapshot(self.project_id, instance_id))

    # -- outbox ----------------------------------------------------------------------------------

    async def ensure_group(self, channel: str, *, force: bool = False) -> None:
        if channel in self._groups and not force:
            return
        async with redis_errors("creation of the delivery consumer group"):
            try:
                await self.redis.xgroup_create(
                    self.keys.outbox(channel), self.keys.group, id="0", mkstream=True
                )
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups.add(channel)

    def _entries(self, channel: str, rows: Any) -> list[OutboxEntry]:
        out: list[OutboxEntry] = []
        for entry_id, fields in rows or []:
            if not fields:  # deleted while pending
                continue
            out.append(OutboxEntry(entry_id, channel, Notification.model_validate_json(fields["n"])))
        return out

    async def _read(self, channel: str, consumer: str, start: str, count: int, block_ms: int | None) -> Any:
        await self.ensure_group(channel)
        key = self.keys.outbox(channel)
        try:
            return await self.redis.xreadgroup(
                self.keys.group, consumer, {key: start}, count=count, block=block_ms
            )
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the stream (a restart without persistence): recreate the group.
            await self.ensure_group(channel, force=True)
            return await self.redis.xreadgroup(
                self.keys.group, consumer, {key: start}, count=count, block=block_ms
            )

    async def read(
        self, channel: str, consumer: str, *, count: int, block_ms: int | None = None, pending: bool = False
    ) -> list[OutboxEntry]:
        """New entries (``pending=False``) or this consumer's unacknowledged ones (``pending=True``)."""
        async with redis_errors("read of the outbox"):
            result = await self._read(channel, consumer, "0" if pending else ">", count, block_ms)
        rows: list[Any] = []
        for _stream, items in result or []:
            rows.extend(items)
        return self._entries(channel, rows)

    async def claim_stale(
        self, channel: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[OutboxEntry]:
        """Take over entries another (dead) consumer left pending for longer than ``min_idle_ms``."""
        await self.ensure_group(channel)
        async with redis_errors("claim of stale outbox entries"):
            result = await self.redis.xautoclaim(
                self.keys.outbox(channel), self.keys.group, consumer, min_idle_ms, "0-0", count=count
            )
        return self._entries(channel, result[1] if result else [])

    async def was_delivered(self, entry: OutboxEntry) -> bool:
        async with redis_errors("read of the notification log"):
            return bool(
                await self.redis.exists(self.keys.delivered(entry.channel, entry.notification.event.id))
            )

    async def mark_delivered(self, entry: OutboxEntry, ttl: int = DELIVERED_TTL_SECONDS) -> None:
        """Record the delivery and drop the entry from the outbox, atomically."""
        key = self.keys.outbox(entry.channel)
        async with redis_errors("acknowledgement of a delivery"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(self.keys.delivered(entry.channel, entry.notification.event.id), "1", ex=ttl)
            pipe.xack(key, self.keys.group, entry.entry_id)
            pipe.xdel(key, entry.entry_id)
            await pipe.execute()

    async def dead_letter(self, entry: OutboxEntry, error: str, attempts: int) -> None:
        """Move an entry a channel refused for good to the dead-letter stream, atomically."""
        key = self.keys.outbox(entry.channel)
        async with redis_errors("move to dead letters"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.xadd(
                self.keys.dead_letters,
                {
                    "n": entry.notification.model_dump_json(),
                    "k": entry.notification.key,
                    "channel": entry.channel,
                    "error": error,
                    "attempts": str(attempts),
                    "failed_at": datetime.now(UTC).isoformat(),
                },
                maxlen=DEAD_LETTER_MAXLEN,
                approximate=True,
            )
            pipe.xack(key, self.keys.group, entry.entry_id)
            pipe.xdel(key, entry.entry_id)
            await pipe.execute()

    async def backlog(self, channel: str) -> int:
        """Entries in the channel's outbox not yet delivered (pending or new)."""
        async with redis_errors("read of the outbox length"):
            return int(await self.redis.xlen(self.keys.outbox(channel)))

    async def heartbeat(self, ttl_seconds: int) -> None:
        async with redis_errors("heartbeat"):
            await self.redis.set(self.keys.heartbeat, datetime.now(UTC).isoformat(), ex=max(1, ttl_seconds))

    async def ping(self) -> None:
        async with redis_errors("ping"):
            await self.redis.ping()
