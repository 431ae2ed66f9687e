"""The heartbeat (``{p}:heartbeat``): written while polls succeed, checked by ``dcs-notifier health``;
and when each instance was last polled (``{p}:polls``), for ``dcs-notifier status``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from notifier.store.link import Link

#: Seconds ``{p}:polls`` lives past its last write (a fleet whose daemons all stopped leaves none).
POLLS_TTL = 600
#: Fields per HSET of ``{p}:polls``.
POLLS_CHUNK = 1000


class Heartbeat:
    """The daemon's sign of life: a key with a TTL."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def beat(self, ttl_seconds: int) -> None:
        """Say the daemon is alive for the next ``ttl_seconds`` (at least 1)."""
        async with self.link.op("heartbeat"):
            await self.link.redis.set(
                self.link.keys.heartbeat, datetime.now(UTC).isoformat(), ex=max(1, ttl_seconds)
            )

    async def record_polls(self, polled: Mapping[str, datetime], ttl_seconds: int = POLLS_TTL) -> None:
        """Record when each instance (``{project_id}/{instance_id}``) was last polled successfully."""
        if not polled:
            return
        key = self.link.keys.polls
        items = [(k, when.astimezone(UTC).isoformat()) for k, when in polled.items()]
        async with self.link.op("record of the last polls"):
            pipe = self.link.redis.pipeline(transaction=False)
            for start in range(0, len(items), POLLS_CHUNK):
                pipe.hset(key, mapping=dict(items[start : start + POLLS_CHUNK]))
            pipe.expire(key, ttl_seconds)
            await pipe.execute()

    async def polls(self, keys: Sequence[str]) -> dict[str, datetime]:
        """When each of ``keys`` was last recorded as polled (those never recorded are left out)."""
        if not keys:
            return {}
        async with self.link.op("read of the last polls"):
            values = await self.link.redis.hmget(self.link.keys.polls, list(keys))
        out: dict[str, datetime] = {}
        for k, raw in zip(keys, values, strict=True):
            if raw is None:
                continue
            try:
                out[k] = datetime.fromisoformat(raw.decode() if isinstance(raw, bytes) else str(raw))
            except ValueError:
                continue  # not one of ours: the next write replaces it
        return out

    async def last(self) -> str | None:
        """When the daemon last wrote its heartbeat (ISO 8601), or None if it expired."""
        async with self.link.op("read of the heartbeat"):
            value = await self.link.redis.get(self.link.keys.heartbeat)
        return None if value is None else str(value)
