from __future__ import annotations

from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from notifier.errors import StateStoreError
from notifier.pipeline.diff import DiffContext, diff
from notifier.pipeline.events import EventType, Notification
from notifier.store.keys import META_FIELD, Keys
from notifier.store.state import StateStore
from tests.factories import INSTANCE, T0, event, task


def ctx() -> DiffContext:
    now = T0 + timedelta(seconds=30)
    return DiffContext("p", "r", INSTANCE, now, timedelta(minutes=15), now - timedelta(days=1))


async def test_snapshot_roundtrip_and_outbox_written_atomically(redis_client: aioredis.Redis) -> None:
    store = StateStore(redis_client, Keys("t"))
    assert await store.load("p", INSTANCE.id) is None
    result = diff(None, [task("a", status="RUNNING"), task("b", status="SUCCESS", updated=T0)], ctx())
    notes = [Notification(event=e, channel="oncall", rule="r1") for e in result.events]
    await store.commit("p", INSTANCE.id, result, notes)

    snap = await store.load("p", INSTANCE.id)
    assert snap is not None
    assert snap.baseline_at == T0 + timedelta(seconds=30)
    assert {k: v.status for k, v in snap.tasks.items()} == {"a": "RUNNING", "b": "SUCCESS"}
    assert await redis_client.hexists(f"t:snap:p:{INSTANCE.id}", META_FIELD)

    entries = await store.read("oncall", "c1", count=10)
    assert [e.notification for e in entries] == notes
    # Unacknowledged entries come back as this consumer's pending ones.
    again = await store.read("oncall", "c1", count=10, pending=True)
    assert [e.entry_id for e in again] == [e.entry_id for e in entries]
    await store.mark_delivered(entries[0])
    assert await store.was_delivered(entries[0])
    assert len(await store.read("oncall", "c1", count=10, pending=True)) == len(entries) - 1
    assert await redis_client.ttl(f"t:delivered:oncall:{entries[0].notification.event.id}") > 0


async def test_unchanged_poll_costs_one_round_trip(redis_client: aioredis.Redis) -> None:
    store = StateStore(redis_client, Keys("t"))
    first = diff(None, [task("a")], ctx())
    await store.commit("p", INSTANCE.id, first, [])
    await redis_client.config_resetstat()
    snap = await store.load("p", INSTANCE.id)
    result = diff(snap, [task("a")], ctx())
    await store.commit("p", INSTANCE.id, result, [])
    info = await redis_client.info("commandstats")
    # Only the HGETALL of load() (plus the INFO/CONFIG calls of this test itself).
    commands = {
        k for k in info if k.startswith("cmdstat_") and not k.startswith(("cmdstat_config", "cmdstat_info"))
    }
    assert commands == {"cmdstat_hgetall"}
    assert info["cmdstat_hgetall"]["calls"] == 1


async def test_dead_letter_moves_entry(redis_client: aioredis.Redis) -> None:
    store = StateStore(redis_client, Keys("t"))
    ev = event(EventType.STARTED)
    result = diff(None, [ev.task], ctx())
    await store.commit("p", INSTANCE.id, result, [Notification(event=ev, channel="audit")])
    [entry] = await store.read("audit", "c1", count=10)
    await store.dead_letter(entry, "channel 'audit': HTTP 404 (permanent)", 1)
    dead = await redis_client.xrange("t:dead")
    assert len(dead) == 1 and dead[0][1]["error"] == "channel 'audit': HTTP 404 (permanent)"
    assert await store.backlog("audit") == 0


async def test_redis_down_is_a_typed_error_without_the_url() -> None:
    client = aioredis.from_url(
        "redis://:hunter2pass@127.0.0.1:1/0", decode_responses=True, socket_connect_timeout=0.5
    )
    store = StateStore(client, Keys())
    with pytest.raises(StateStoreError) as info:
        await store.load("p", "i")
    assert "hunter2pass" not in str(info.value)
    assert "Redis read of instance state failed" in str(info.value)
    await client.aclose()


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
