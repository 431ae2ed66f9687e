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

import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.exceptions

from notifier.constants import Keys
from notifier.state import RedisClient

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
        self._shard_cache: dict[str, int] = {}

    def shard(self, key: str) -> int:
        shard = self._shard_cache.get(key)
        if shard is None:
            shard = self._shard_cache[key] = shard_of(key, self.shards)
        return shard

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
            pipe.set(self.keys.lease(s), self.replica, nx=True, px=ttl_ms)
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
