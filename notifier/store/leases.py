"""Scale-out: replicas sharing one Redis split the fleet with shard leases.

Every watched instance falls into one of ``scaling.shards`` shards (a hash of its key). A replica polls
an instance only while it holds the lease of its shard, a Redis key with a TTL:

* Membership: each replica writes itself into a sorted set with an expiry (``{p}:replicas``) on every
  tick (every ``lease_ttl / 3`` seconds). Live replicas are those whose expiry is in the future.
* Assignment: rendezvous hashing over the live replicas says which replica should hold each shard,
  so every replica computes the same assignment and a change of membership moves few shards.
* Leases: ``SET {p}:lease:{shard} <replica> NX PX ttl`` takes a free shard; a Lua compare-and-expire
  renews only the replica's own leases. A replica trusts a lease only until the start of the tick
  that last renewed it plus the TTL (minus a margin), so it stops polling before anyone else can take
  the shard over, even when Redis is unreachable.
* Handover: a shard that now belongs to another live replica is not deleted but set to expire after
  one poll interval, so the new owner cannot poll any of its instances within an interval of the old
  owner's last poll. A stopping replica does the same with all its shards and leaves the membership.
* A killed replica's leases expire after at most ``lease_ttl``; the next tick of a survivor (within
  ``lease_ttl / 3``) takes them: instances move within 2 × ``lease_ttl``. ``lease_ttl`` is at least the
  poll interval, so a survivor's first poll comes an interval or more after the dead replica's last.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions

from notifier.errors import NotifierError
from notifier.store.keys import Keys
from notifier.store.link import RedisClient

log = logging.getLogger(__name__)

#: Renew (and look for free shards) this many times per lease TTL.
TICKS_PER_TTL = 3
#: A lease is trusted until (tick start + TTL) minus this share of the TTL.
SAFETY = 0.1

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


#: Take a shard's lease if it is free or already ours (this replica, reloaded, handing over to itself).
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


#: Renew the daemon lock if it is ours, take it if it is free; else answer who holds it.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return false
end
return holder
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class DaemonConflict(NotifierError):
    """Another daemon runs on the same Redis and key prefix: both would send every notification."""


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def shard_of(key: str, shards: int) -> int:
    """The shard of an instance key (``{project_id}/{instance_id}``): stable across processes."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % shards


def owner_of(shard: int, members: list[str]) -> str | None:
    """Rendezvous hashing: the member with the highest score for this shard (None with no members)."""
    best: tuple[int, str] | None = None
    for member in members:
        score = int.from_bytes(
            hashlib.blake2b(f"{member}\x1f{shard}".encode(), digest_size=8).digest(), "big"
        )
        if best is None or (score, member) > best:
            best = (score, member)
    return None if best is None else best[1]


@dataclass
class TickResult:
    """What one tick changed: shards this replica gained and lost."""

    gained: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)


class ShardLeases:
    """This replica's leases. Call :meth:`tick` every ``ttl / 3`` s; ask :meth:`owns` before each poll."""

    def __init__(
        self,
        redis_client: RedisClient,
        keys: Keys,
        *,
        replica: str,
        shards: int,
        ttl: float,
        handover: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis_client
        self.keys = keys
        self.replica = replica
        self.shards = shards
        self.ttl = ttl
        self.handover = handover
        self._clock = clock
        self._monotonic = monotonic
        self.held: set[int] = set()
        self.members: list[str] = []
        self._valid_until = 0.0  # monotonic: leases are trusted until then

    def shard(self, key: str) -> int:
        # Not cached: a cache keyed by instance would outlive retired instances (one blake2b is cheap).
        return shard_of(key, self.shards)

    def owns(self, key: str) -> bool:
        """Whether this replica may poll the instance ``key`` now."""
        return self._monotonic() < self._valid_until and self.shard(key) in self.held

    async def tick(self) -> TickResult:
        """Heartbeat, renew, hand over and take leases; raises Redis errors (the caller logs them)."""
        started = self._monotonic()
        now_ms = int(self._clock() * 1000)
        ttl_ms = int(self.ttl * 1000)
        members_key = self.keys.replicas
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(members_key, {self.replica: now_ms + ttl_ms})
        pipe.zremrangebyscore(members_key, "-inf", now_ms)
        pipe.zrangebyscore(members_key, now_ms, "+inf")
        pipe.pexpire(members_key, ttl_ms * 10)
        _, _, members, _ = await pipe.execute()
        self.members = sorted(members)
        wanted = {s for s in range(self.shards) if owner_of(s, self.members) == self.replica}

        result = TickResult()
        keep = sorted(self.held & wanted)
        give = sorted(self.held - wanted)
        take = sorted(wanted - self.held)
        pipe = self.redis.pipeline(transaction=False)
        for s in keep:
            pipe.eval(_RENEW, 1, self.keys.lease(s), self.replica, ttl_ms)
        for s in give:  # another live replica should have it: let it go after one poll interval
            pipe.eval(_RENEW, 1, self.keys.lease(s), self.replica, int(self.handover * 1000))
        for s in take:
            pipe.eval(_TAKE, 1, self.keys.lease(s), self.replica, ttl_ms)
        answers = await pipe.execute() if keep or give or take else []

        renewed = {s for s, ok in zip(keep, answers[: len(keep)], strict=True) if ok}
        taken = {s for s, ok in zip(take, answers[len(keep) + len(give) :], strict=True) if ok}
        lost = (set(keep) - renewed) | set(give)
        self.held = renewed | taken
        self._valid_until = started + self.ttl * (1 - SAFETY)
        result.gained, result.lost = taken, lost
        if taken or lost:
            log.info(
                "replica %s: %d shard(s) held (+%d, -%d), %d replica(s) live",
                self.replica,
                len(self.held),
                len(taken),
                len(lost),
                len(self.members),
            )
        return result

    def lapse(self) -> TickResult:
        """A tick failed (Redis unreachable): once the leases are no longer trusted, hold nothing."""
        if self._monotonic() < self._valid_until:
            return TickResult()
        lost, self.held = self.held, set()
        return TickResult(lost=lost)

    async def leave(self) -> None:
        """On stop: hand every shard over (expiring after one poll interval) and leave the membership."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            for s in sorted(self.held):
                pipe.eval(_RENEW, 1, self.keys.lease(s), self.replica, int(self.handover * 1000))
            pipe.zrem(self.keys.replicas, self.replica)
            await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning(
                "replica %s could not hand its shards over (%s); they expire in %g s",
                self.replica,
                exc,
                self.ttl,
            )
        self.held = set()


class DaemonLock:
    """The one daemon of a config without ``scaling.enabled``: a key (``{p}:daemon``) only it renews.

    Two such daemons on one Redis would each poll every instance and send every notification twice
    (measured: 4.7 % of sends duplicated, as their polls interleave). The second to start refuses to.
    One that finds the key held by a predecessor killed with SIGKILL waits for it to expire (it is not
    renewed any more, so it is gone within its TTL); so does one that finds the membership of a killed
    replica with ``scaling.enabled``. The owner's name carries a random token: two containers with the
    same hostname and process id are still two daemons.
    """

    def __init__(
        self, redis_client: RedisClient, keys: Keys, *, ttl: float, owner: str | None = None
    ) -> None:
        self.redis = redis_client
        self.keys = keys
        self.owner = owner or f"{default_replica_id()}-{secrets.token_hex(4)}"
        self.ttl = ttl

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Take the lock once no other daemon or replica is live; False when stopped meanwhile.

        Raises DaemonConflict when one is (it outlives the time a killed one would take to vanish), and
        Redis errors for the caller."""
        if not await wait_out(lambda: live_replicas(self.redis, self.keys), stop, self.ttl):
            return False
        return await wait_out(self._holder, stop, self.ttl)

    async def _holder(self) -> tuple[DaemonConflict, float] | None:
        holder = await self.hold()
        if holder is None:
            return None
        left = float(await self.redis.pttl(self.keys.daemon)) / 1000
        return conflict(holder, self.keys.prefix), max(0.0, left)

    async def hold(self) -> str | None:
        """Renew (or take) the lock: None when this daemon holds it, else who does."""
        holder = await self.redis.eval(_HOLD, 1, self.keys.daemon, self.owner, int(self.ttl * 1000))
        return None if holder is None else str(holder)

    async def check(self) -> DaemonConflict | None:
        """While running: renew the lock; the conflict, when another daemon took it (this one could not
        renew it for longer than its TTL) or replicas with ``scaling.enabled`` run (one started while
        Redis was away): this daemon then gives way."""
        holder = await self.hold()
        if holder is not None:
            return conflict(holder, self.keys.prefix)
        found = await live_replicas(self.redis, self.keys)
        return None if found is None else found[0]

    async def release(self) -> None:
        """On stop: let a successor start at once."""
        try:
            await self.redis.eval(_RELEASE, 1, self.keys.daemon, self.owner)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("could not release the daemon lock (%s); it expires in %g s", exc, self.ttl)


Probe = Callable[[], Awaitable[tuple[DaemonConflict, float] | None]]


async def wait_out(probe: Probe, stop: asyncio.Event, period: float) -> bool:
    """Wait while ``probe`` finds another process (the conflict, and how long until a dead one would be
    gone); True once it finds none, False when stopped. A process that renews its mark meanwhile (the
    time left grew), or is still there after that time, is alive: its conflict is raised."""
    deadline: float | None = None
    before = float("inf")
    while (found := await probe()) is not None:
        problem, left = found
        if left > before:  # a dead process's mark only ever runs down
            raise problem
        before = left
        if deadline is None:
            deadline = time.monotonic() + left + 0.5
            log.warning(
                "%s; waiting up to %.0f s in case it was killed and its mark expires", problem, left + 0.5
            )
        if time.monotonic() >= deadline:
            raise problem
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(period / 3, max(0.05, deadline - time.monotonic())))
        if stop.is_set():
            return False
    return True


async def live_replicas(redis_client: RedisClient, keys: Keys) -> tuple[DaemonConflict, float] | None:
    """Replicas with ``scaling.enabled`` whose membership has not expired, and when the last would."""
    now_ms = int(time.time() * 1000)
    found: list[Any] = await redis_client.zrangebyscore(keys.replicas, now_ms, "+inf", withscores=True)
    if not found:
        return None
    members = [(str(m), float(score)) for m, score in found]
    names = ", ".join(sorted(m for m, _ in members)[:5])
    problem = DaemonConflict(
        f"replicas with scaling.enabled ({names}) run on this Redis with key prefix {keys.prefix!r}: "
        "set scaling.enabled: true here too, or stop them"
    )
    return problem, max(0.0, (max(score for _, score in members) - now_ms) / 1000)


async def daemon_holder(redis_client: RedisClient, keys: Keys) -> tuple[DaemonConflict, float] | None:
    """A daemon without ``scaling.enabled`` holding the lock (a replica must not join), and its TTL."""
    holder = await redis_client.get(keys.daemon)
    if holder is None:
        return None
    left = float(await redis_client.pttl(keys.daemon)) / 1000
    problem = DaemonConflict(
        f"a dcs-notifier without scaling.enabled ({holder!s}) runs on this Redis with key prefix "
        f"{keys.prefix!r}: set scaling.enabled: true there too, or stop it"
    )
    return problem, max(0.0, left)


async def members_until(redis_client: RedisClient, keys: Keys) -> dict[str, float]:
    """Live replicas (``scaling.enabled``) and when each one's membership expires (s since the epoch)."""
    now_ms = int(time.time() * 1000)
    found: list[Any] = await redis_client.zrangebyscore(keys.replicas, now_ms, "+inf", withscores=True)
    return {str(m): float(score) / 1000 for m, score in found}


async def lease_holders(
    redis_client: RedisClient, keys: Keys, shards: int, *, chunk: int = 1000
) -> dict[int, str]:
    """Which replica holds the lease of each shard (shards nobody holds are left out); GETs pipelined
    ``chunk`` at a time (lease keys are in different slots of a cluster: no MGET)."""
    held: dict[int, str] = {}
    for start in range(0, shards, chunk):
        part = range(start, min(shards, start + chunk))
        pipe = redis_client.pipeline(transaction=False)
        for s in part:
            pipe.get(keys.lease(s))
        for s, holder in zip(part, await pipe.execute(), strict=True):
            if holder is not None:
                held[s] = str(holder)
    return held


async def daemon_name(redis_client: RedisClient, keys: Keys) -> str | None:
    """The name of the daemon without ``scaling.enabled`` that holds ``{p}:daemon``, if one does."""
    holder = await redis_client.get(keys.daemon)
    return None if holder is None else str(holder)


def conflict(holder: str, prefix: str) -> DaemonConflict:
    return DaemonConflict(
        f"another dcs-notifier ({holder}) is running on this Redis with key prefix {prefix!r}: two "
        "daemons would send every notification twice. Stop it, or set scaling.enabled: true on both "
        "to share the fleet"
    )
