"""Shard leases: rendezvous assignment, and two replicas sharing a real redis-server."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import redis.asyncio as aioredis

from notifier.store.keys import Keys
from notifier.store.leases import ShardLeases, owner_of, shard_of


async def ticks_until(leases: ShardLeases, done: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Tick ``leases`` until ``done()``, with a deadline (leases expire in real time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    await leases.tick()
    while not done():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for: {what}")
        await asyncio.sleep(0.05)
        await leases.tick()


def test_shards_are_stable_and_spread() -> None:
    assert shard_of("p1/i-1", 256) == shard_of("p1/i-1", 256)
    counts = Counter(shard_of(f"p1/i-{n}", 16) for n in range(16_000))
    assert len(counts) == 16 and min(counts.values()) > 800


def test_rendezvous_moves_only_the_leaving_members_shards() -> None:
    three = {s: owner_of(s, ["r1", "r2", "r3"]) for s in range(256)}
    assert set(Counter(three.values())) == {"r1", "r2", "r3"}
    assert min(Counter(three.values()).values()) > 60
    two = {s: owner_of(s, ["r1", "r3"]) for s in range(256)}
    assert all(two[s] == three[s] for s in range(256) if three[s] != "r2")
    assert owner_of(0, []) is None


async def test_two_replicas_split_the_shards_and_one_takes_over(redis_client: aioredis.Redis) -> None:
    keys = Keys("lz")
    a = ShardLeases(redis_client, keys, replica="a", shards=32, ttl=1.0, handover=0.2)
    b = ShardLeases(redis_client, keys, replica="b", shards=32, ttl=1.0, handover=0.2)
    await a.tick()
    assert len(a.held) == 32  # alone: everything
    await b.tick()  # b joins: a still holds every lease
    assert b.held == set()
    change = await a.tick()  # a hands b's share over (expiring after `handover`)
    assert change.lost and not a.held & change.lost
    assert all(a.owns(f"x/{n}") == (shard_of(f"x/{n}", 32) in a.held) for n in range(100))

    await ticks_until(b, lambda: b.held == change.lost, "b takes its share once a's hand-over expires")
    assert a.held.isdisjoint(b.held) and len(a.held | b.held) == 32
    assert await redis_client.get(keys.lease(min(b.held))) == "b"

    await a.leave()  # a stops: its leases expire after `handover`, then b takes them
    await ticks_until(b, lambda: len(b.held) == 32, "b holds every shard after a left")
