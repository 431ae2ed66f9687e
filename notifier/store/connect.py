"""Connecting to Redis, and the stores of one connection.

:func:`open_store` gives a :class:`Store`: one Redis client (see :func:`connect_redis`) and one
:class:`~notifier.store.link.Link` (the key names and the once-per-episode log of Redis's problems)
shared by every store, one per stage it serves:

* ``snapshots`` — per-instance state committed with its outbox entries, the epoch marker (the poller);
* ``health`` — which instances are announced unhealthy (the poller);
* ``outbox`` — reading, claiming, acknowledging and burying outbox entries (delivery);
* ``cards`` — the living card of each task per channel (delivery, the dead-letter replay);
* ``cloud_eye`` — each project's Cloud Eye window and the event ids it handled (the poller);
* ``dead_letters`` — list, replay, resolve, purge (the ``dead-letters`` commands);
* ``heartbeat`` — the daemon's sign of life (the daemon, ``dcs-notifier health``);
* ``silences`` — silences and what they held back (``dcs-notifier silence``, ``status``; delivery
  applies them through :class:`~notifier.store.silences.Silences`).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff

from notifier.config.models import Config
from notifier.config.redis_url import parse_redis_url
from notifier.store.cloud_eye import CloudEyeState
from notifier.store.control import ReloadRequests
from notifier.store.dead_letters import DeadLetters
from notifier.store.health import HealthRecords
from notifier.store.heartbeat import Heartbeat
from notifier.store.keys import Keys
from notifier.store.link import Link, RedisClient
from notifier.store.outbox import Outbox
from notifier.store.silences import SilenceStore
from notifier.store.snapshots import Snapshots


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The Sentinel's master pool, blocking (like the standalone one) when every connection is busy."""


class _SentinelMaster(aioredis.Redis):
    """A client of a Sentinel-managed master that also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            await pool.sentinel_manager.aclose()


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2)


def connect_redis(url: str, max_connections: int = 64) -> RedisClient:
    """A Redis client for the daemon, for any form of ``redis.url`` (see :func:`parse_redis_url`).

    * It reconnects by itself: after a Redis restart, pooled connections are dead, and a command on one
      is retried on a fresh connection instead of failing (twice at most, quickly).
    * Its pool blocks when all connections are busy (many instances polled at once) instead of
      failing with "Too many connections".
    * ``redis+sentinel://``: the master of the named service, asked of the sentinels; after a failover
      the next connection goes to the new master.
    * ``redis+cluster://``: a :class:`RedisCluster` seeded with the listed nodes; it learns the others
      and follows MOVED/ASK redirects, and retries (with a fresh view of the cluster) a command that
      met a dead node or a cluster that is failing over. redis-py's cluster pools do not block, so each
      node's pool is larger (``max(max_connections, 256)``).
    """
    target = parse_redis_url(url)
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        "username": target.username,
        "password": target.password,
    }
    if target.mode == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            ssl=target.tls,
            max_connections=max(max_connections, 256),
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
            **common,
        )
    if target.mode == "sentinel":
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            "password": target.sentinel_password,
            "retry": _retry(),  # not redis-py's default (3 retries, backoff up to 10 s) per sentinel
        }
        if target.tls:
            sentinel_kwargs["ssl"] = True
        sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        master: _SentinelMaster = sentinel.master_for(
            target.service,
            redis_class=_SentinelMaster,
            connection_pool_class=_BlockingSentinelPool,
            db=target.db,
            ssl=target.tls,
            max_connections=max_connections,
            timeout=10,
            retry=_retry(),
            retry_on_error=[redis.exceptions.ConnectionError],
            **common,
        )
        return master
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10,
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=5,
        retry=_retry(),
        retry_on_error=[redis.exceptions.ConnectionError],
    )
    return aioredis.Redis.from_pool(pool)


class Store:
    """The stores of one Redis connection, sharing it and its log of Redis's problems."""

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.link = Link(client, keys)
        self.snapshots = Snapshots(self.link)
        self.health = HealthRecords(self.link)
        self.outbox = Outbox(self.link)
        self.cards = self.outbox.cards
        self.cloud_eye = CloudEyeState(self.link)
        self.dead_letters = DeadLetters(self.link)
        self.heartbeat = Heartbeat(self.link)
        self.reloads = ReloadRequests(self.link)
        self.silences = SilenceStore(self.link)

    @property
    def redis(self) -> RedisClient:
        return self.link.redis

    @property
    def keys(self) -> Keys:
        """The key names (hash-tagged on a cluster)."""
        return self.link.keys

    async def aclose(self) -> None:
        """Close the Redis client (for a store made by :func:`open_store` without one)."""
        await self.link.redis.aclose()


def open_store(config: Config, redis_client: RedisClient | None = None) -> Store:
    """The stores of a config, on ``redis_client`` or a new connection (closed with ``store.aclose()``).

    A ``redis+cluster://`` URL (or a cluster client) gets the cluster's hash-tagged key names."""
    client = redis_client or connect_redis(config.redis.url.get_secret_value())
    cluster = config.redis.target.mode == "cluster" or isinstance(client, RedisCluster)
    return Store(client, Keys(config.redis.key_prefix, cluster=cluster))
