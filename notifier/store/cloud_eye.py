"""Each project's Cloud Eye state: where its next window starts, and the event ids already handled
(``{p}:ces:{project_id}:until`` and ``…:seen``, see :mod:`notifier.store.keys`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from notifier.cloudeye.models import to_ms
from notifier.pipeline.events import Notification
from notifier.store.link import Link
from notifier.store.outbox import execute, transaction_with


class CloudEyeState:
    def __init__(self, link: Link) -> None:
        self.link = link

    async def until(self, project_id: str) -> datetime | None:
        """The end of the project's last window read whole; None before its first (a baseline)."""
        async with self.link.op("read of the Cloud Eye state"):
            raw = await self.link.redis.get(self.link.keys.ces_until(project_id))
        if raw is None:
            return None
        try:
            return datetime.fromisoformat(raw.decode() if isinstance(raw, bytes) else str(raw))
        except ValueError:
            return None  # unreadable: read the window a baseline reads

    async def seen(self, project_id: str, event_ids: list[str]) -> set[str]:
        """Which of ``event_ids`` were handled already."""
        if not event_ids:
            return set()
        async with self.link.op("read of the Cloud Eye state"):
            scores = await self.link.redis.zmscore(self.link.keys.ces_seen(project_id), event_ids)
        return {eid for eid, score in zip(event_ids, scores, strict=True) if score is not None}

    async def commit(
        self,
        project_id: str,
        handled: Mapping[str, datetime],
        notifications: Iterable[Notification],
        *,
        until: datetime,
        forget_before: datetime,
    ) -> None:
        """Record a window read whole: the events handled (with the outbox entries of those announced),
        its end, and forget ids older than ``forget_before`` — in one MULTI/EXEC with the entries."""
        keys = self.link.keys
        async with self.link.op("commit of Cloud Eye events"):
            pipe = await transaction_with(self.link, notifications)
            seen = keys.ces_seen(project_id)
            if handled:
                pipe.zadd(seen, {eid: to_ms(when) for eid, when in handled.items()})
            pipe.zremrangebyscore(seen, "-inf", f"({to_ms(forget_before)}")
            pipe.set(keys.ces_until(project_id), until.isoformat())
            await execute(pipe)
