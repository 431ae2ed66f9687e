"""Per-instance snapshots (``{p}:snap:...``) and the epoch marker (``{p}:epoch``) that tells whether Redis
still holds them.

A change is committed with the outbox entries it causes in one MULTI/EXEC (through
:func:`notifier.store.outbox.transaction_with`): both or neither. On a cluster the entries are written
first, then the snapshot (see :mod:`notifier.store.keys`).
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.exceptions
from redis.typing import EncodableT, FieldT

from notifier.errors import CorruptStateError
from notifier.pipeline.diff import DiffResult, SeenTask, Snapshot
from notifier.pipeline.events import Notification
from notifier.store.keys import META_FIELD, POLLED_FIELD
from notifier.store.link import Link
from notifier.store.outbox import execute, transaction_with

#: At most this many task states and outbox entries, together, in one MULTI/EXEC of a commit.
COMMIT_CHUNK = 500

#: A diff that found nothing (for writes of a whole snapshot).
_NOTHING = DiffResult(events=[], upserts={}, removals=[], baseline_at=None)


def _iso(value: datetime | None) -> str:
    """A time as stored (ISO 8601 in UTC), "" for None."""
    return "" if value is None else value.astimezone(UTC).isoformat()


def _dt(value: str) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _encode(seen: SeenTask) -> str:
    data = {"s": seen.status, "u": _iso(seen.updated_at), "c": _iso(seen.created_at)}
    if seen.name:
        data["n"] = seen.name
    if seen.stuck_at is not None:  # absent in state written before the watchdog: never announced
        data["k"] = _iso(seen.stuck_at)
    return json.dumps(data, separators=(",", ":"))


def _decode(raw: str) -> SeenTask:
    data = json.loads(raw)
    name = data.get("n")
    return SeenTask(
        status=data["s"],
        updated_at=_dt(data.get("u", "")),
        created_at=_dt(data.get("c", "")),
        name=sys.intern(name) if isinstance(name, str) else "",
        stuck_at=_dt(data.get("k", "")),
    )


def _parse(key: str, instance_id: str, raw: dict[str, str]) -> Snapshot | None:
    """A snapshot hash as read (HGETALL; changed in place), or None when it was never baselined."""
    try:
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
            tasks={tid: _decode(v) for tid, v in raw.items()},
            polled_at=polled,
            removed_at=_dt(data.get("removed_at", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptStateError(
            f"the state of instance {instance_id} in Redis ({key}) is unreadable "
            f"({type(exc).__name__}: {str(exc)[:100]}); delete the key to record it afresh"
        ) from None


@dataclass(frozen=True, slots=True)
class Committed:
    """What :meth:`Snapshots.commit` did: how many MULTI/EXECs, and whether it had to write the whole
    snapshot because Redis no longer held the state the change was made on."""

    parts: int
    rewritten: bool


def split(
    fields: dict[str, str], notifications: list[Notification]
) -> list[tuple[dict[str, str], list[Notification]]]:
    """A commit split into parts of at most COMMIT_CHUNK items, in order; a task's state goes with its
    last event's outbox entries (so no part records a task whose later events are still to come)."""
    if len(fields) + len(notifications) <= COMMIT_CHUNK:
        return [(fields, notifications)]
    last_part: dict[str, int] = {}
    parts: list[tuple[dict[str, str], list[Notification]]] = [({}, [])]
    for n in notifications:
        if len(parts[-1][1]) >= COMMIT_CHUNK:
            parts.append(({}, []))
        parts[-1][1].append(n)
        task = n.event.task
        if task is not None:
            last_part[task.id] = len(parts) - 1
    for tid, value in fields.items():
        where = last_part.get(tid)
        if where is None:  # no event: a part of its own, after those with events
            if len(parts[-1][0]) + len(parts[-1][1]) >= COMMIT_CHUNK:
                parts.append(({}, []))
            parts[-1][0][tid] = value
        else:
            parts[where][0][tid] = value
    return parts


class Snapshots:
    """What was last seen of each watched instance, committed with the notifications it caused."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def load(
        self, project_id: str, instance_id: str, *, touch: datetime | None = None
    ) -> Snapshot | None:
        """The instance's snapshot, or None when it was never baselined (or Redis lost it).

        One round trip: an HGETALL, pipelined after an HSET of ``~polled`` when ``touch`` is given (the
        time of the previous successful poll, so a restarted daemon knows where to start its window).
        """
        link = self.link
        key = link.keys.snapshot(project_id, instance_id)
        async with link.op("read of instance state"):
            if touch is None:
                raw: dict[str, str] = await link.redis.hgetall(key)  # type: ignore[assignment]
            else:
                pipe = link.redis.pipeline(transaction=False)
                pipe.hset(key, POLLED_FIELD, _iso(touch))
                pipe.hgetall(key)
                raw = (await pipe.execute())[1]
        return _parse(key, instance_id, raw)

    async def load_many(
        self, ids: Sequence[tuple[str, str]], *, chunk: int = 200
    ) -> list[Snapshot | CorruptStateError | None]:
        """The snapshots of ``(project_id, instance_id)`` pairs, in order, read without writing anything
        (HGETALLs pipelined ``chunk`` at a time): each a Snapshot, None (never baselined), or the
        CorruptStateError that :meth:`load` would raise."""
        link = self.link
        out: list[Snapshot | CorruptStateError | None] = []
        async with link.op("read of instance state"):
            for start in range(0, len(ids), chunk):
                part = ids[start : start + chunk]
                pipe = link.redis.pipeline(transaction=False)
                for project_id, instance_id in part:
                    pipe.hgetall(link.keys.snapshot(project_id, instance_id))
                answers = await pipe.execute(raise_on_error=False)
                for (project_id, instance_id), raw in zip(part, answers, strict=True):
                    key = link.keys.snapshot(project_id, instance_id)
                    try:
                        if isinstance(raw, redis.exceptions.ResponseError):  # WRONGTYPE: this key's problem
                            raise CorruptStateError(
                                f"the state of instance {instance_id} in Redis ({key}) is unreadable "
                                f"({str(raw)[:100]}); delete the key to record it afresh"
                            )
                        out.append(_parse(key, instance_id, raw))
                    except CorruptStateError as exc:
                        out.append(exc)
        return out

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
        whole: Snapshot | None = None,
        expected: Snapshot | None = None,
    ) -> Committed:
        """Write the new snapshot and its outbox entries in one MULTI/EXEC: both or neither.

        On a cluster the outbox entries are written first, then the snapshot (in a MULTI/EXEC of its
        own): a crash in between leaves the entries without the snapshot, so the next poll queues the
        same events again (same ids) and delivery's notification log drops the repeats.

        A change larger than COMMIT_CHUNK (a baseline of thousands of tasks) is written in parts, each
        a MULTI/EXEC holding a task's state change with the outbox entries of its events, the meta
        field last: a crash between parts leaves every task either recorded with its notifications or
        not at all (a baseline without its meta is done again), and no part holds Redis long.

        ``baseline_at`` (default: the result's, for a baseline) rewrites the meta field, dropping a
        ``removed_at``; ``polled_at`` is stored as ``~polled``. ``revived``: the instance had been announced
        as removed and answers again (its key loses its TTL). ``whole``: write all of this snapshot
        (Redis lost the instance's state), not only what changed. ``expected``: the whole state after
        this change, which is written when Redis turns out not to hold the state the change was made on
        (it lost its data since): a change alone would leave a partial snapshot that looks whole.
        """
        if not result.changed and not revived and whole is None:
            return Committed(0, False)
        key = self.link.keys.snapshot(project_id, instance_id)
        source = result.upserts if whole is None else whole.tasks
        fields: dict[str, str] = {tid: _encode(s) for tid, s in source.items()}
        parts = split(fields, list(notifications))
        last: dict[FieldT, EncodableT] = {}
        baseline_at = baseline_at or result.baseline_at
        if baseline_at is not None:
            last[META_FIELD] = json.dumps({"baseline_at": _iso(baseline_at)})
        if polled_at is not None:
            last[POLLED_FIELD] = _iso(polled_at)
        existed = True
        async with self.link.op("commit of instance state and outbox"):
            for n, (part_fields, part_notes) in enumerate(parts, 1):
                pipe = await transaction_with(self.link, part_notes)
                probe = len(pipe)
                if n == 1 and expected is not None:
                    pipe.exists(key)
                mapping: dict[FieldT, EncodableT] = {}
                mapping.update(part_fields)
                if n == len(parts):
                    mapping.update(last)
                if mapping:
                    pipe.hset(key, mapping=mapping)
                if n == len(parts):
                    if result.removals:
                        pipe.hdel(key, *result.removals)
                    if revived:
                        pipe.persist(key)
                answers = await pipe.execute() if len(pipe) else []
                if n == 1 and expected is not None:
                    existed = bool(answers[probe])
        if existed or expected is None:
            return Committed(len(parts), False)
        again = await self.write(project_id, instance_id, expected, baseline_at=baseline_at)
        return Committed(len(parts) + again.parts, True)

    async def write(
        self, project_id: str, instance_id: str, snapshot: Snapshot, *, baseline_at: datetime | None = None
    ) -> Committed:
        """Write all of ``snapshot`` (Redis lost the instance's state), no notifications."""
        return await self.commit(
            project_id,
            instance_id,
            _NOTHING,
            [],
            baseline_at=baseline_at or snapshot.baseline_at,
            polled_at=snapshot.polled_at,
            whole=snapshot,
        )

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
        key = self.link.keys.snapshot(project_id, instance_id)
        async with self.link.op("record of a removed instance"):
            pipe = await transaction_with(self.link, notifications)
            meta = {"baseline_at": _iso(baseline_at), "removed_at": _iso(removed_at)}
            pipe.hset(key, META_FIELD, json.dumps(meta))
            pipe.expire(key, ttl_seconds)
            await execute(pipe)

    async def claim_epoch(self) -> str:
        """Mark this Redis as holding the daemon's data (``{p}:epoch``) unless it already is; the marker's
        token either way (one written anew after a loss differs from the one before)."""
        token = f"{datetime.now(UTC).isoformat()} {secrets.token_hex(8)}"
        async with self.link.op("write of the epoch marker"):
            await self.link.redis.set(self.link.keys.epoch, token, nx=True)
            current = await self.link.redis.get(self.link.keys.epoch)
        return token if current is None else str(current)

    async def epoch(self) -> str | None:
        """The epoch marker's token (None: gone, Redis lost its data)."""
        async with self.link.op("read of the epoch marker"):
            value = await self.link.redis.get(self.link.keys.epoch)
        return None if value is None else str(value)
