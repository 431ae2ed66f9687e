"""One Redis connection as every store uses it, and the once-per-episode log of its problems.

Every store (:mod:`~notifier.store.snapshots`, :mod:`~notifier.store.health`, :mod:`~notifier.store.outbox`,
:mod:`~notifier.store.dead_letters`, :mod:`~notifier.store.heartbeat`) runs its calls through one
:class:`Link`: a Redis failure surfaces as :class:`~notifier.errors.StoreError` (the URL, which may
hold a password, is never in it), and an outage or a refusal is logged when it starts and when it ends,
once for the whole process, whichever store met it.

The stores work on one Redis server, a Sentinel-managed master (both: a plain client) and a Redis Cluster
(:class:`redis.asyncio.cluster.RedisCluster`, with the hash-tagged key names of ``Keys(prefix,
cluster=True)``; see :mod:`notifier.store.keys`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeAlias

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from notifier.errors import CorruptStateError, StoreError
from notifier.store.keys import Keys

log = logging.getLogger(__name__)

#: A client of one server or Sentinel-managed master, or of a Redis Cluster.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster

#: The cause of an episode of Redis being unreachable (see Link.op).
UNAVAILABLE = "unavailable"
#: Seconds without a refusal after which any success ends a refusal's episode.
EPISODE_QUIET = 60.0


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
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
        # NOAUTH, a wrong password: Redis answers and refuses us (redis-py raises it as a connection
        # error): the operator must be told it is the password, not that Redis is away.
        return False
    if isinstance(exc, redis.exceptions.ResponseError):
        # LOADING (restart reading its data), READONLY (a failed-over master now a replica) and similar
        # transient states count as "Redis unavailable".
        return str(exc).startswith(("LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY ", "READONLY", "CLUSTERDOWN"))
    return True  # connection errors, timeouts, OSError


def _cause(exc: BaseException) -> str:
    """Why a call failed, as an episode's name: ``unavailable``, or the refusal's Redis error code."""
    if _is_outage(exc):
        return UNAVAILABLE
    if type(exc) is not redis.exceptions.ResponseError:
        return type(exc).__name__  # OutOfMemoryError, NoPermissionError, ...
    # A pipeline's error reads "Command # 1 (...) of pipeline caused error: OOM command not allowed..."
    code = str(exc).rsplit("caused error: ", 1)[-1].split(" ", 1)[0]
    return code if code.isalpha() and code.isupper() else "ResponseError"


def _describe(exc: BaseException) -> str:
    """A Redis error as text, without the URL (it may carry a password)."""
    if isinstance(exc, OSError) and not isinstance(exc, redis.exceptions.RedisError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    detail = str(exc).split(" to redis://")[0].split(" redis://")[0][:200]
    return f"{type(exc).__name__}: {detail}"


@dataclass(slots=True)
class _Episode:
    """One Redis problem under way: since when, its last failure (monotonic), the actions it refused."""

    opened: float
    last: float
    actions: set[str]


class Link:
    """The Redis client and key names every store shares, and the one log of Redis's problems."""

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.redis = client
        #: Cluster mode: hash-tagged key names, no MULTI/EXEC across slots. A cluster client always
        #: gets it; ``Keys(prefix, cluster=True)`` asks for it on any client.
        self.cluster = keys.cluster or isinstance(client, RedisCluster)
        self.keys = keys if keys.cluster == self.cluster else Keys(keys.prefix, cluster=True)
        #: How many episodes have ended: a store that caches something Redis may have lost meanwhile
        #: (the outbox's consumer groups) compares it with the count it saw.
        self.recoveries = 0
        #: Redis problems under way, by cause (see op), and when each cause last ended (monotonic).
        self._episodes: dict[str, _Episode] = {}
        self._ended: dict[str, float] = {}
        #: Told the action of every failed operation (the daemon's metrics count them).
        self.on_error: Callable[[str], None] | None = None

    @property
    def down(self) -> bool:
        """Whether some Redis problem is under way (unreachable, or refusing commands)."""
        return bool(self._episodes)

    @asynccontextmanager
    async def op(self, action: str) -> AsyncIterator[None]:
        """Run one Redis operation: failures become StoreError, logged once per episode.

        An episode is one cause ("unavailable", or a refusal such as OOM or NOAUTH). It is logged when
        it starts and when it ends, never per call: an unreachable Redis ends when any call that began
        after its last failure succeeds; a refusal when such a call of an action it refused does (a
        read that works while Redis refuses writes for want of memory does not end it), or any call
        once nothing was refused for EPISODE_QUIET seconds. A WRONGTYPE is one key's problem, not
        Redis's: it is raised as :class:`CorruptStateError` for its owner to report.
        """
        started = time.monotonic()
        try:
            yield
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            message = f"Redis {action} failed: {_describe(exc)}"
            cause = _cause(exc)
            if cause == "WRONGTYPE":
                raise CorruptStateError(message) from None
            if self.on_error is not None:
                self.on_error(action)
            self._failed(cause, action, started, exc)
            raise StoreError(message) from None
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
            self.recoveries += 1
            if cause == UNAVAILABLE:
                log.info("Redis is reachable again; resuming")
            else:
                log.info(
                    "Redis accepts commands again (%s for %.0f s); resuming", cause, now - episode.opened
                )

    async def scan(self, match: str, type_: str, *, count: int | None = None) -> AsyncIterator[str]:
        """Keys matching ``match`` of type ``type_``; on a cluster, from every primary. ``count``: keys
        looked at per SCAN call (Redis's default, 10, makes a large keyspace take many round trips)."""
        if isinstance(self.redis, RedisCluster):
            keys = self.redis.scan_iter(
                match=match, _type=type_, count=count, target_nodes=RedisCluster.PRIMARIES
            )
        else:
            keys = self.redis.scan_iter(match=match, _type=type_, count=count)
        async for key in keys:
            yield str(key)
