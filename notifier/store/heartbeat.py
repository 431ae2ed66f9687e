"""The heartbeat (``{p}:heartbeat``): written while polls succeed, checked by ``dcs-notifier health``."""

from __future__ import annotations

from datetime import UTC, datetime

from notifier.store.link import Link


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

    async def last(self) -> str | None:
        """When the daemon last wrote its heartbeat (ISO 8601), or None if it expired."""
        async with self.link.op("read of the heartbeat"):
            value = await self.link.redis.get(self.link.keys.heartbeat)
        return None if value is None else str(value)
