"""Poller health records (``{p}:health``): the instances announced as ``poller.unhealthy`` and not yet
recovered, so that a restarted daemon still announces their recovery.

An announcement is recorded with its outbox entries in one MULTI/EXEC (through
:func:`notifier.store.outbox.transaction_with`), so it is made exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from notifier.pipeline.events import Notification, PollProblem
from notifier.store.link import Link
from notifier.store.outbox import execute, transaction_with

log = logging.getLogger(__name__)


class HealthRecords:
    """Which instances are announced unhealthy, by instance key (``{project_id}/{instance_id}``)."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def load(self) -> dict[str, PollProblem]:
        """Instances announced as ``poller.unhealthy`` and not yet recovered: key → problem."""
        async with self.link.op("read of poller health"):
            raw: dict[str, str] = await self.link.redis.hgetall(self.link.keys.health)  # type: ignore[assignment]
        out = {}
        for key, value in raw.items():
            try:
                out[key] = PollProblem.model_validate_json(value)
            except ValueError:
                log.warning("poller health entry %s is unreadable; forgetting it", key)
        return out

    async def record(
        self, key: str, problem: PollProblem | None, notifications: Iterable[Notification]
    ) -> None:
        """Announce unhealthy (``problem``) or recovered (None), with its outbox entries, atomically."""
        async with self.link.op("record of poller health"):
            pipe = await transaction_with(self.link, notifications)
            if problem is None:
                pipe.hdel(self.link.keys.health, key)
            else:
                pipe.hset(self.link.keys.health, key, problem.model_dump_json())
            await execute(pipe)

    async def rewrite(self, announced: dict[str, PollProblem]) -> None:
        """Write back which instances are announced unhealthy (after Redis lost its data)."""
        if not announced:
            return
        async with self.link.op("record of poller health"):
            await self.link.redis.hset(
                self.link.keys.health, mapping={k: p.model_dump_json() for k, p in announced.items()}
            )
