"""The stores of one Redis connection: snapshots with their outbox entries, delivery's side of the outbox,
dead letters, and the one log of Redis's problems they share (a real redis-server)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from notifier.errors import StoreError
from notifier.pipeline.diff import DiffContext, diff
from notifier.pipeline.events import EventType, Notification
from notifier.store.connect import Store
from notifier.store.keys import META_FIELD, Keys
from tests.factories import INSTANCE, T0, event, poller_event, problem, task
from tests.support.redis_server import RedisServer


def ctx() -> DiffContext:
    now = T0 + timedelta(seconds=30)
    return DiffContext("p", "r", INSTANCE, now, timedelta(minutes=15), now - timedelta(days=1))


async def test_snapshot_roundtrip_and_outbox_written_atomically(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, Keys("t"))
    assert await store.snapshots.load("p", INSTANCE.id) is None
    result = diff(None, [task("a", status="RUNNING"), task("b", status="SUCCESS", updated=T0)], ctx())
    notes = [Notification(event=e, channel="oncall", rule="r1") for e in result.events]
    await store.snapshots.commit("p", INSTANCE.id, result, notes)

    snap = await store.snapshots.load("p", INSTANCE.id)
    assert snap is not None
    assert snap.baseline_at == T0 + timedelta(seconds=30)
    assert {k: v.status for k, v in snap.tasks.items()} == {"a": "RUNNING", "b": "SUCCESS"}
    assert await redis_client.hexists(f"t:snap:p:{INSTANCE.id}", META_FIELD)

    entries = await store.outbox.read("oncall", "c1", count=10)
    assert [e.notification for e in entries] == notes
    # Unacknowledged entries come back as this consumer's pending ones.
    again = await store.outbox.read("oncall", "c1", count=10, pending=True)
    assert [e.entry_id for e in again] == [e.entry_id for e in entries]
    await store.outbox.mark_delivered(entries[0])
    assert await store.outbox.was_delivered(entries[0])
    assert len(await store.outbox.read("oncall", "c1", count=10, pending=True)) == len(entries) - 1
    assert await redis_client.ttl(f"t:delivered:oncall:{entries[0].notification.event.id}") > 0


async def monitored(redis_client: aioredis.Redis, action: Callable[[], Awaitable[object]]) -> list[str]:
    """The commands ``action`` sent to Redis, as MONITOR saw them (first word only)."""
    marker = "end-of-action"
    async with redis_client.monitor() as monitor:
        await action()
        await redis_client.echo(marker)
        seen: list[str] = []
        while True:
            command = str((await asyncio.wait_for(monitor.next_command(), 5))["command"])
            if command == f"ECHO {marker}":
                return seen
            name = command.split(" ", 1)[0]
            if name not in ("HELLO", "CLIENT", "AUTH", "SELECT"):  # a new connection's handshake
                seen.append(name)


async def test_a_commit_and_a_health_record_are_each_one_multi_exec_with_their_outbox_entries(
    redis_client: aioredis.Redis,
) -> None:
    """The snapshot (or the health record) and the outbox entries it causes go in one transaction."""
    store = Store(redis_client, Keys("t"))
    result = diff(None, [task("a", status="RUNNING"), task("b", status="SUCCESS", updated=T0)], ctx())
    notes = [Notification(event=e, channel=c) for e in result.events for c in ("oncall", "audit")]
    assert notes
    sent = await monitored(redis_client, lambda: store.snapshots.commit("p", INSTANCE.id, result, notes))
    assert sent == ["MULTI", *["XADD"] * len(notes), "HSET", "EXEC"]
    key = f"p/{INSTANCE.id}"
    alarm = [Notification(event=poller_event(), channel="audit")]
    sent = await monitored(redis_client, lambda: store.health.record(key, problem(), alarm))
    assert sent == ["MULTI", "XADD", "HSET", "EXEC"]
    assert await store.outbox.backlog("oncall") == len(result.events)
    assert await store.health.load() == {key: problem()}


async def test_unchanged_poll_costs_one_round_trip(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, Keys("t"))
    first = diff(None, [task("a")], ctx())
    await store.snapshots.commit("p", INSTANCE.id, first, [])
    await redis_client.config_resetstat()
    snap = await store.snapshots.load("p", INSTANCE.id)
    result = diff(snap, [task("a")], ctx())
    await store.snapshots.commit("p", INSTANCE.id, result, [])
    info = await redis_client.info("commandstats")
    # Only the HGETALL of load() (plus the INFO/CONFIG calls of this test itself).
    commands = {
        k for k in info if k.startswith("cmdstat_") and not k.startswith(("cmdstat_config", "cmdstat_info"))
    }
    assert commands == {"cmdstat_hgetall"}
    assert info["cmdstat_hgetall"]["calls"] == 1


async def test_dead_letter_moves_entry(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, Keys("t"))
    ev = event(EventType.STARTED)
    result = diff(None, [ev.task], ctx())
    await store.snapshots.commit("p", INSTANCE.id, result, [Notification(event=ev, channel="audit")])
    [entry] = await store.outbox.read("audit", "c1", count=10)
    await store.outbox.dead_letter(entry, "channel 'audit': HTTP 404 (permanent)", 1)
    dead = await redis_client.xrange("t:dead")
    assert len(dead) == 1 and dead[0][1]["error"] == "channel 'audit': HTTP 404 (permanent)"
    assert await store.outbox.backlog("audit") == 0


async def test_redis_down_is_a_typed_error_without_the_url() -> None:
    client = aioredis.from_url(
        "redis://:hunter2pass@127.0.0.1:1/0", decode_responses=True, socket_connect_timeout=0.5
    )
    store = Store(client, Keys())
    with pytest.raises(StoreError) as info:
        await store.snapshots.load("p", "i")
    assert "hunter2pass" not in str(info.value)
    assert "Redis read of instance state failed" in str(info.value)
    await client.aclose()


async def test_an_outage_is_one_episode_for_every_store(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The stores share one log of Redis's problems: an outage that every store meets is said once, and
    its end once, whichever store succeeds first."""
    caplog.set_level(logging.INFO)
    client = aioredis.from_url(own_redis.url, decode_responses=True, socket_connect_timeout=0.5)
    store = Store(client, Keys("t"))
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.snapshots.load("p", "i"),
        lambda: store.snapshots.epoch(),
        lambda: store.health.load(),
        lambda: store.outbox.backlog("audit"),
        lambda: store.dead_letters.oldest(),
        lambda: store.heartbeat.beat(10),
    ]
    try:
        await store.heartbeat.beat(60)
        own_redis.stop()
        for call in calls * 2:
            with pytest.raises(StoreError):
                await call()
        assert store.link.down
        own_redis.start()
        assert await store.dead_letters.oldest() == []
        assert not store.link.down
        assert await store.heartbeat.last() is not None  # kept by the AOF
    finally:
        await client.aclose()
    said = [r.getMessage() for r in caplog.records if "Redis" in r.getMessage()]
    assert len(said) == 2, said
    assert said[0].startswith("Redis is unavailable (ConnectionError")
    assert said[1] == "Redis is reachable again; resuming"


def test_key_names_standalone_unchanged_cluster_tagged() -> None:
    plain, tagged = Keys("t"), Keys("t", cluster=True)
    assert [plain.snapshot("p", "i"), plain.outbox("a"), plain.delivered("a", "e"), plain.attempts("a")] == [
        "t:snap:p:i",
        "t:outbox:a",
        "t:delivered:a:e",
        "t:attempts:a",
    ]
    assert plain.dead("a") == plain.dead_letters == "t:dead"
    assert [
        tagged.snapshot("p", "i"),
        tagged.outbox("a"),
        tagged.delivered("a", "e"),
        tagged.attempts("a"),
    ] == [
        "t:snap:{p:i}",
        "t:outbox:{a}",
        "t:delivered:{a}:e",
        "t:attempts:{a}",
    ]
    assert tagged.dead("a") == "t:dead:{a}"
    assert (tagged.outbox_channel("t:outbox:{a}"), tagged.dead_channel("t:dead:{a}")) == ("a", "a")
    assert (plain.outbox_channel("t:outbox:a"), plain.outbox_channel("u:outbox:a")) == ("a", None)
    assert tagged.outbox_channel("t:outbox:a") is None
