"""The Redis state store: task snapshots, the transactional outbox, the notification log, dead letters.

Key names and types are documented in :mod:`notifier.store.keys`. Every Redis failure surfaces as
:class:`~notifier.errors.StateStoreError` (the URL, which may hold a password, is never in it).

The store works on one Redis server, a Sentinel-managed master (both: a plain client) and a Redis
Cluster (:class:`redis.asyncio.cluster.RedisCluster`, with the hash-tagged key names of
``Keys(prefix, cluster=True)``). On a cluster, every MULTI/EXEC touches keys of one hash slot; the
writes that span an instance's state and several channels' outboxes (``commit``, ``mark_removed``,
``record_health``) queue the outbox entries first, then change the state (see :mod:`notifier.store.keys`).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.typing import EncodableT, FieldT

from notifier.errors import CorruptStateError, StateStoreError
from notifier.pipeline.diff import DiffResult, SeenTask, Snapshot
from notifier.pipeline.events import Notification, PollProblem
from notifier.store.keys import DEAD_LETTER_MAXLEN, DELIVERED_TTL_SECONDS, META_FIELD, POLLED_FIELD, Keys

log = logging.getLogger(__name__)


#: A client of one server or Sentinel-managed master, or of a Redis Cluster.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster


def _is_outage(exc: BaseException) -> bool:
    """Whether a failure means "Redis is unavailable for now" (as opposed to a refused command)."""
    if isinstance(exc, redis.exceptions.RedisClusterException):
        # No reachable node, slots not covered yet (the cluster is forming or failing over); a
        # cross-slot transaction or a broken pipeline is a bug, not an outage.
        return not isinstance(
            exc, redis.exceptions.CrossSlotTransactionError | redis.exceptions.InvalidPipelineStack
        )
    if isinstance(exc, redis.exceptions.ClusterError | redis.exceptions.TryAgainError):
        return True  # CLUSTERDOWN, MASTERDOWN, TRYAGAIN (resharding)
    if isinstance(exc, redis.exceptions.ResponseError):
        # LOADING (restart reading its data), READONLY (a failed-over master now a replica) and similar
        # transient states count as "Redis unavailable".
        return str(exc).startswith(("LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY ", "READONLY", "CLUSTERDOWN"))
    return True  # connection errors, timeouts, OSError


#: The cause of an episode of Redis being unreachable (see StateStore._op).
UNAVAILABLE = "unavailable"
#: Seconds without a refusal after which any success ends a refusal's episode.
EPISODE_QUIET = 60.0


def _cause(exc: BaseException) -> str:
    """Why a call failed, as an episode's name: ``unavailable``, or the refusal's Redis error code."""
    if _is_outage(exc):
        return UNAVAILABLE
    if type(exc) is not redis.exceptions.ResponseError:
        return type(exc).__name__  # OutOfMemoryError, NoPermissionError, ...
    # A pipeline's error reads "Command # 1 (...) of pipeline caused error: OOM command not allowed..."
    code = str(exc).rsplit("caused error: ", 1)[-1].split(" ", 1)[0]
    return code if code.isalpha() and code.isupper() else "ResponseError"


@dataclass(slots=True)
class _Episode:
    """One Redis problem under way: since when, its last failure (monotonic), the actions it refused."""

    opened: float
    last: float
    actions: set[str]


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
class Committed:
    """What :meth:`StateStore.commit` did: how many MULTI/EXECs, and whether it had to write the whole
    snapshot because Redis no longer held the state the change was made on."""

    parts: int
    rewritten: bool


#: A diff that found nothing (for writes of a whole snapshot).
_NOTHING = DiffResult(events=[], upserts={}, removals=[], baseline_at=None)

#: At most this many task states and outbox entries, together, in one MULTI/EXEC of a commit.
COMMIT_CHUNK = 500


def _parts(
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


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One stream entry: its id in the channel's outbox stream and the notification it carries."""

    entry_id: str
    channel: str
    notification: Notification


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


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

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.redis = client
        #: Cluster mode: hash-tagged key names, no MULTI/EXEC across slots. A cluster client always
        #: gets it; ``Keys(prefix, cluster=True)`` asks for it on any client.
        self.cluster = keys.cluster or isinstance(client, RedisCluster)
        self.keys = keys if keys.cluster == self.cluster else Keys(keys.prefix, cluster=True)
        self._groups: set[str] = set()
        #: Redis problems under way, by cause (see _op), and when each cause last ended (monotonic).
        self._episodes: dict[str, _Episode] = {}
        self._ended: dict[str, float] = {}

    @property
    def down(self) -> bool:
        """Whether some Redis problem is under way (unreachable, or refusing commands)."""
        return bool(self._episodes)

    @asynccontextmanager
    async def _op(self, action: str) -> AsyncIterator[None]:
        """Run one Redis operation: failures become StateStoreError, logged once per episode.

        An episode is one cause ("unavailable", or a refusal such as OOM or NOAUTH). It is logged when
        it starts and when it ends, never per call: an unreachable Redis ends when any call that began
        after its last failure succeeds; a refusal when such a call of an action it refused does (a
        read that works while Redis refuses writes for want of memory does not end it), or any call
        once nothing was refused for EPISODE_QUIET seconds. A WRONGTYPE is
        one key's problem, not Redis's: it is raised as :class:`CorruptStateError` for its owner to
        report.
        """
        started = time.monotonic()
        try:
            yield
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            message = f"Redis {action} failed: {_describe(exc)}"
            cause = _cause(exc)
            if cause == "WRONGTYPE":
                raise CorruptStateError(message) from None
            self._failed(cause, action, started, exc)
            raise StateStoreError(message) from None
        if self._episodes:
            self._succeeded(action, started)

    def _failed(self, cause: str, action: str, started: float, exc: BaseException) -> None:
        now = time.monotonic()
        episode = self._episodes.get(cause)
        if episode is not None:
            episode.last = now
            episode.actions.add(action)
            return
        if started < self._ended.get(cause, 0.0):
            return  # a call already under way when the problem ended does not start it again
        self._episodes[cause] = _Episode(now, now, {action})
        if cause == UNAVAILABLE:
            log.error("Redis is unavailable (%s); no state advances until it returns", _describe(exc))
        else:
            log.error(
                "Redis refuses commands (%s), the %s first; no state advances while it does",
                _describe(exc),
                action,
            )

    def _succeeded(self, action: str, started: float) -> None:
        now = time.monotonic()
        for cause, episode in list(self._episodes.items()):
            if started <= episode.last:
                continue
            # A refusal ends when an action it refused works again; or, should none be tried again,
            # once nothing has been refused for a while and something works.
            if cause != UNAVAILABLE and action not in episode.actions and now - episode.last < EPISODE_QUIET:
                continue
            del self._episodes[cause]
            self._ended[cause] = now
            self._groups.clear()  # a restarted Redis may have lost the consumer groups
            if cause == UNAVAILABLE:
                log.info("Redis is reachable again; resuming")
            else:
                log.info(
                    "Redis accepts commands again (%s for %.0f s); resuming", cause, now - episode.opened
                )

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
                tasks={tid: decode_seen(v) for tid, v in raw.items()},
                polled_at=polled,
                removed_at=_dt(data.get("removed_at", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptStateError(
                f"the state of instance {instance_id} in Redis ({key}) is unreadable "
                f"({type(exc).__name__}: {str(exc)[:100]}); delete the key to record it afresh"
            ) from None

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
        key = self.keys.snapshot(project_id, instance_id)
        source = result.upserts if whole is None else whole.tasks
        fields: dict[str, str] = {tid: encode_seen(s) for tid, s in source.items()}
        parts = _parts(fields, list(notifications))
        last: dict[FieldT, EncodableT] = {}
        baseline_at = baseline_at or result.baseline_at
        if baseline_at is not None:
            last[META_FIELD] = json.dumps({"baseline_at": _iso(baseline_at)})
        if polled_at is not None:
            last[POLLED_FIELD] = _iso(polled_at)
        existed = True
        async with self._op("commit of instance state and outbox"):
            for n, (part_fields, part_notes) in enumerate(parts, 1):
                pipe = await self._state_pipeline(part_notes)
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
        again = await self.write_snapshot(project_id, instance_id, expected, baseline_at=baseline_at)
        return Committed(len(parts) + again.parts, True)

    async def write_snapshot(
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
        key = self.keys.snapshot(project_id, instance_id)
        async with self._op("record of a removed instance"):
            pipe = await self._state_pipeline(notifications)
            meta = {"baseline_at": _iso(baseline_at), "removed_at": _iso(removed_at)}
            pipe.hset(key, META_FIELD, json.dumps(meta))
            pipe.expire(key, ttl_seconds)
            await self._execute(pipe)

    def _queue(self, pipe: Any, notifications: Iterable[Notification]) -> int:
        queued = 0
        for n in notifications:
            pipe.xadd(self.keys.outbox(n.channel), {"n": n.model_dump_json(), "k": n.key})
            queued += 1
        return queued

    async def _state_pipeline(self, notifications: Iterable[Notification]) -> Any:
        """A MULTI/EXEC pipeline for a state change and the outbox entries it causes.

        Standalone: the entries are queued in it, so state and outbox are written both or neither.
        Cluster: the entries (in several slots) are written now, pipelined per node, and the pipeline
        returned holds only the state change (one key, one slot). A failure in between leaves entries
        whose state change is missing: the next poll queues them again with the same event ids, and the
        notification log keeps each from being delivered twice.
        """
        if not self.cluster:
            pipe = self.redis.pipeline(transaction=True)
            self._queue(pipe, notifications)
            return pipe
        outbox = self.redis.pipeline(transaction=False)
        if self._queue(outbox, notifications):
            await outbox.execute()
        return self.redis.pipeline(transaction=True)

    @staticmethod
    async def _execute(pipe: Any) -> None:
        if len(pipe):
            await pipe.execute()

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
            pipe = await self._state_pipeline(notifications)
            if problem is None:
                pipe.hdel(self.keys.health, key)
            else:
                pipe.hset(self.keys.health, key, problem.model_dump_json())
            await self._execute(pipe)

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
            self.keys.dead(channel),
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
    #
    # Standalone: one stream ``{p}:dead`` for every channel. Cluster: one stream per channel
    # (``{p}:dead:{channel}``, in the channel's slot, so that dead-lettering stays one MULTI/EXEC with
    # the XACK); the methods below read and change all of them. ``channels`` (the config's) adds streams
    # to look at beyond those a SCAN of every primary finds.

    async def _scan(self, match: str, type_: str) -> AsyncIterator[str]:
        """Keys matching ``match`` of type ``type_``; on a cluster, from every primary."""
        if isinstance(self.redis, RedisCluster):
            keys = self.redis.scan_iter(match=match, _type=type_, target_nodes=RedisCluster.PRIMARIES)
        else:
            keys = self.redis.scan_iter(match=match, _type=type_)
        async for key in keys:
            yield str(key)

    async def _dead_streams(self, channels: Iterable[str] | None) -> list[str]:
        if not self.cluster:
            return [self.keys.dead_letters]
        names = set(channels or ())
        async for key in self._scan(self.keys.dead("*"), "stream"):
            channel = self.keys.dead_channel(key)
            if channel is not None:
                names.add(channel)
        return [self.keys.dead(c) for c in sorted(names)]

    async def _read_dead(self, per_stream: int, channels: Iterable[str] | None) -> list[DeadLetter]:
        """Dead letters, oldest first (over every stream, on a cluster)."""
        out: list[DeadLetter] = []
        async with self._op("read of dead letters"):
            for stream in await self._dead_streams(channels):
                rows: list[tuple[str, dict[str, str]]] = await self.redis.xrange(  # type: ignore[assignment]
                    stream, count=per_stream
                )
                out.extend(
                    self._dead_letter(entry_id, f, self.keys.dead_channel(stream)) for entry_id, f in rows
                )
        if self.cluster:
            out.sort(key=lambda d: (_stream_id(d.entry_id), d.channel))
        return out

    @staticmethod
    def _dead_letter(entry_id: str, f: dict[str, str], stream_channel: str | None) -> DeadLetter:
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

    async def dead_letters(
        self, count: int = 1000, *, channels: Iterable[str] | None = None
    ) -> list[DeadLetter]:
        """The oldest ``count`` dead letters. ``channels``: see the section comment (cluster only)."""
        return (await self._read_dead(count, channels))[:count]

    async def select_dead(
        self, ids: Iterable[str] | None = None, *, channels: Iterable[str] | None = None
    ) -> list[DeadLetter]:
        """The dead letters with these ids (all when None); an unknown id is an error naming it.

        An id is a stream entry id (as ``dead-letters list`` shows it) or ``CHANNEL/ID``; on a cluster,
        where each channel has its own stream, an id found in several channels must be qualified so.
        """
        letters = await self._read_dead(DEAD_LETTER_MAXLEN, channels)
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
                raise StateStoreError(
                    f"dead letter id {entry_id} is in several channels: name one of {where}"
                )
            else:
                chosen.add((hits[0].channel, entry_id))
        if missing:
            raise StateStoreError(f"no dead letter with id {', '.join(sorted(missing))}")
        return [d for d in letters if (d.channel, d.entry_id) in chosen]

    def _by_slot(self, letters: Iterable[DeadLetter]) -> list[list[DeadLetter]]:
        """Dead letters grouped so that each group's keys may share one MULTI/EXEC (one per channel on a
        cluster, all together otherwise)."""
        groups: dict[str, list[DeadLetter]] = {}
        for d in letters:
            groups.setdefault(d.channel if self.cluster else "", []).append(d)
        return list(groups.values())

    async def requeue_dead(self, letters: Iterable[DeadLetter]) -> list[DeadLetter]:
        """Put dead letters back at the end of their channel's outbox (fresh attempts and age), atomically
        (per channel, on a cluster)."""
        replayable = [d for d in letters if d.notification is not None]
        async with self._op("replay of dead letters"):
            for group in self._by_slot(replayable):
                pipe = self.redis.pipeline(transaction=True)
                for d in group:
                    assert d.notification is not None
                    n = d.notification
                    pipe.xadd(self.keys.outbox(d.channel), {"n": n.model_dump_json(), "k": n.key})
                    pipe.delete(self.keys.delivered(d.channel, n.event.id))
                    pipe.xdel(self.keys.dead(d.channel), d.entry_id)
                await pipe.execute()
        return replayable

    async def purge_dead(self, *, channels: Iterable[str] | None = None) -> int:
        """Delete every dead letter; returns how many there were."""
        total = 0
        async with self._op("purge of dead letters"):
            for stream in await self._dead_streams(channels):
                pipe = self.redis.pipeline(transaction=True)
                pipe.xlen(stream)
                pipe.delete(stream)
                n, _ = await pipe.execute()
                total += int(n)
        return total

    async def resolve_dead(self, letter: DeadLetter, ttl: int = DELIVERED_TTL_SECONDS) -> None:
        """A dead letter was delivered directly (``replay``): log the delivery and drop it, atomically."""
        assert letter.notification is not None
        n = letter.notification
        async with self._op("record of a replayed delivery"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(self.keys.delivered(letter.channel, n.event.id), "1", ex=ttl)
            pipe.xdel(self.keys.dead(letter.channel), letter.entry_id)
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
        known = set(channels)
        found: dict[str, int] = {}
        async with self._op("scan for outbox streams"):
            async for key in self._scan(self.keys.outbox("*"), "stream"):
                channel = self.keys.outbox_channel(key)
                if channel is not None and channel not in known:
                    n = int(await self.redis.xlen(key))
                    if n:
                        found[channel] = n
        return found

    async def claim_epoch(self) -> str:
        """Mark this Redis as holding the daemon's data (``{p}:epoch``) unless it already is; the marker's
        token either way (one written anew after a loss differs from the one before)."""
        token = f"{datetime.now(UTC).isoformat()} {secrets.token_hex(8)}"
        async with self._op("write of the epoch marker"):
            await self.redis.set(self.keys.epoch, token, nx=True)
            current = await self.redis.get(self.keys.epoch)
        return token if current is None else str(current)

    async def epoch(self) -> str | None:
        """The epoch marker's token (None: gone, Redis lost its data)."""
        async with self._op("read of the epoch marker"):
            value = await self.redis.get(self.keys.epoch)
        return None if value is None else str(value)

    async def rewrite_health(self, announced: dict[str, PollProblem]) -> None:
        """Write back which instances are announced unhealthy (after Redis lost its data)."""
        if not announced:
            return
        async with self._op("record of poller health"):
            await self.redis.hset(
                self.keys.health, mapping={k: p.model_dump_json() for k, p in announced.items()}
            )

    async def heartbeat(self, ttl_seconds: int) -> None:
        async with self._op("heartbeat"):
            await self.redis.set(self.keys.heartbeat, datetime.now(UTC).isoformat(), ex=max(1, ttl_seconds))

    async def last_heartbeat(self) -> str | None:
        """When the daemon last wrote its heartbeat (ISO 8601), or None if it expired."""
        async with self._op("read of the heartbeat"):
            value = await self.redis.get(self.keys.heartbeat)
        return None if value is None else str(value)
