"""The state store and the delivery loop on every kind of Redis: one server, a real 3-master Redis
Cluster, and a Sentinel-managed master (all real servers on loopback, started by the fixtures)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from notifier.config.load import parse_config
from notifier.config.models import DeliveryConfig, RedisConfig
from notifier.config.redis_url import parse_redis_url
from notifier.delivery.cards import Card
from notifier.delivery.channels.base import Channel
from notifier.delivery.channels.webhook import WebhookChannel, WebhookChannelConfig
from notifier.delivery.worker import Deliverer
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.errors import ConfigError, DeliveryError, Reason, StoreError
from notifier.pipeline.diff import DiffContext, DiffResult, diff
from notifier.pipeline.events import EventType, Notification
from notifier.pipeline.rules import route
from notifier.store.connect import Store, connect_redis, open_store
from notifier.store.keys import Keys
from tests.factories import INSTANCE, T0, poller_event, problem, removed_event, task
from tests.support.redis_cluster import RedisClusterServers

#: Channel names whose hash slots fall on three different masters of the fixture's cluster
#: (slots 1463, 5732 and 12791 of 0-5460 / 5461-10922 / 10923-16383).
CHANNELS = ("audit", "dba", "ops")
FAST = DeliveryConfig(
    max_attempts=3, backoff_initial=0.01, backoff_max=0.02, consumer="alive", claim_idle=0.05
)


@dataclass
class Target:
    mode: str
    url: str
    cluster: RedisClusterServers | None = None


@pytest.fixture(params=["standalone", "cluster", "sentinel"])
def target(request: pytest.FixtureRequest) -> Target:
    mode = str(request.param)
    if mode == "cluster":
        servers: RedisClusterServers = request.getfixturevalue("redis_cluster")
        return Target(mode, servers.url, servers)
    if mode == "sentinel":
        return Target(mode, request.getfixturevalue("redis_sentinel").url)
    return Target(mode, request.getfixturevalue("redis_url"))


@pytest.fixture
async def store(target: Target) -> AsyncIterator[Store]:
    client = connect_redis(target.url)
    yield Store(client, Keys("t"))  # the cluster flag comes from the client's type
    await client.aclose()


def ctx() -> DiffContext:
    now = T0 + timedelta(seconds=30)
    return DiffContext("p", "r", INSTANCE, now, timedelta(minutes=15), now - timedelta(days=1))


def first_poll(n: int = 2) -> tuple[DiffResult, list[Notification]]:
    """A baseline with ``n`` running tasks, each routed to every channel of CHANNELS."""
    result = diff(None, [task(f"t{i}", created=T0 + timedelta(seconds=i)) for i in range(n)], ctx())
    return result, [x for e in result.events for x in route(e, [], list(CHANNELS))]


class Scripted(Channel):
    """A channel whose answers are scripted (a double of a channel, not of Redis)."""

    kind = "scripted"

    def __init__(self, name: str, answers: list[DeliveryError | None] | None = None) -> None:
        super().__init__(name)
        self.answers = list(answers or [])
        self.sent: list[str] = []

    async def send(self, notification: Notification, card: Card | None = None) -> None:
        self.sent.append(notification.event.id)
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


def refused(name: str) -> DeliveryError:
    return DeliveryError(name, False, Reason.NOT_FOUND, "HTTP 404")


async def test_the_mode_follows_the_client(store: Store, target: Target) -> None:
    assert store.link.cluster is (target.mode == "cluster")
    assert isinstance(store.redis, RedisCluster) is (target.mode == "cluster")
    expected = "t:outbox:{audit}" if target.mode == "cluster" else "t:outbox:audit"
    assert store.keys.outbox("audit") == expected


async def test_commit_lands_state_and_outbox_entries_of_three_channels(store: Store, target: Target) -> None:
    result, notes = first_poll()
    await store.snapshots.commit("p", INSTANCE.id, result, notes)
    snap = await store.snapshots.load("p", INSTANCE.id, touch=T0)
    assert snap is not None and set(snap.tasks) == {"t0", "t1"}
    for channel in CHANNELS:
        entries = await store.outbox.read(channel, "c1", count=10)
        assert [e.notification for e in entries] == [n for n in notes if n.channel == channel]
    if target.cluster is not None:
        by_node = target.cluster.keys_by_node()
        holding = {port for port, keys in by_node.items() if any(k.startswith("t:outbox:") for k in keys)}
        assert len(holding) == 3, by_node  # one outbox per master: the commit spanned three nodes
        assert any(f"t:snap:{{p:{INSTANCE.id}}}" in keys for keys in by_node.values())


async def test_read_deliver_ack_with_the_notification_log(store: Store) -> None:
    result, notes = first_poll()
    await store.snapshots.commit("p", INSTANCE.id, result, notes)
    async with WebhookReceiver() as receiver:
        channels: dict[str, Channel] = {
            c: WebhookChannel(c, WebhookChannelConfig(type="webhook", url=receiver.url)) for c in CHANNELS
        }
        try:
            results = await Deliverer(store.outbox, channels, FAST).drain_all()
        finally:
            for ch in channels.values():
                await ch.aclose()
        assert {c: r.delivered for c, r in results.items()} == dict.fromkeys(CHANNELS, 2)
        assert len(receiver.requests) == 6
    for channel in CHANNELS:
        assert await store.outbox.backlog(channel) == 0
    # The notification log: a copy of a delivered entry is acknowledged without a send.
    await store.snapshots.commit("p", "other", *first_poll())
    [copy, _] = await store.outbox.read("audit", FAST.consumer, count=10)
    assert await store.outbox.was_delivered(copy)
    assert await store.redis.ttl(store.keys.delivered("audit", copy.notification.event.id)) > 0
    second = Scripted("audit")
    verdict = await Deliverer(store.outbox, {"audit": second}, FAST).drain("audit")
    assert (verdict.skipped_duplicates, second.sent) == (2, [])


async def test_dead_letters_replay_and_purge_over_channels(store: Store, target: Target) -> None:
    result, notes = first_poll()
    await store.snapshots.commit("p", INSTANCE.id, result, notes)
    for channel in ("audit", "ops"):
        out = await Deliverer(store.outbox, {channel: Scripted(channel, [refused(channel)] * 2)}, FAST).drain(
            channel
        )
        assert out.dead_lettered == 2
    letters = await store.dead_letters.oldest()
    assert Counter(d.channel for d in letters) == {"audit": 2, "ops": 2}
    assert all(d.notification is not None and d.attempts == 1 for d in letters)
    if target.mode == "cluster":
        # One dead-letter stream per channel, each in its channel's slot.
        assert await store.redis.xlen("t:dead:{audit}") == 2
        assert await store.redis.xlen("t:dead:{ops}") == 2
    else:
        assert await store.redis.xlen("t:dead") == 4
    with pytest.raises(StoreError, match="no dead letter with id 0-1"):
        await store.dead_letters.select(["0-1"])
    pick = next(d for d in letters if d.channel == "ops")
    [selected] = await store.dead_letters.select([f"ops/{pick.entry_id}"])
    assert selected == pick
    assert await store.dead_letters.requeue([selected]) == [selected]
    assert await store.outbox.backlog("ops") == 1
    ops = Scripted("ops")
    assert (await Deliverer(store.outbox, {"ops": ops}, FAST).drain("ops")).delivered == 1
    assert pick.notification is not None and ops.sent == [pick.notification.event.id]
    # A replay delivered directly: logged as delivered, gone from the dead letters.
    audit_letter = next(d for d in letters if d.channel == "audit")
    await store.dead_letters.resolve(audit_letter)
    assert audit_letter.notification is not None
    assert await store.redis.exists(store.keys.delivered("audit", audit_letter.notification.event.id))
    assert len(await store.dead_letters.oldest()) == 2
    assert await store.dead_letters.purge() == 2
    assert await store.dead_letters.oldest() == []


async def test_an_id_in_several_channels_dead_letters_must_be_qualified(
    redis_cluster: RedisClusterServers,
) -> None:
    """Stream ids are per stream: on a cluster, two channels' dead-letter streams may share one."""
    client = connect_redis(redis_cluster.url)
    store = Store(client, Keys("t"))
    try:
        fields = {"n": "{}", "k": "x", "channel": "", "error": "e", "attempts": "1", "failed_at": ""}
        await client.xadd("t:dead:{audit}", fields, id="5-0")
        await client.xadd("t:dead:{ops}", fields, id="5-0")
        with pytest.raises(StoreError, match="dead letter id 5-0 is in several channels: name one of"):
            await store.dead_letters.select(["5-0"])
        [one] = await store.dead_letters.select(["ops/5-0"])
        assert (one.channel, one.entry_id, one.notification) == ("ops", "5-0", None)
        assert await store.dead_letters.requeue([one]) == []  # unreadable: cannot be replayed, only purged
        assert await store.dead_letters.purge() == 2
    finally:
        await client.aclose()


async def test_attempts_are_counted_and_dropped_with_the_entry(store: Store) -> None:
    result, notes = first_poll(1)
    await store.snapshots.commit("p", INSTANCE.id, result, notes)
    [entry] = await store.outbox.read("dba", "c1", count=10)
    assert await store.outbox.attempts(entry) == 0
    assert await store.outbox.record_attempt(entry) == 1
    assert await store.outbox.record_attempt(entry) == 2
    assert await store.outbox.attempts(entry) == 2
    await store.outbox.dead_letter(entry, "gave up", 2)
    assert await store.outbox.attempts(entry) == 0
    [dead] = await store.dead_letters.oldest()
    assert (dead.channel, dead.attempts, dead.error) == ("dba", 2, "gave up")
    assert await store.outbox.backlog("dba") == 0


async def test_claim_stale_and_renew(store: Store) -> None:
    result, notes = first_poll()
    await store.snapshots.commit("p", INSTANCE.id, result, notes)
    taken = await store.outbox.read("ops", "dead-worker", count=10)
    assert await store.outbox.held_elsewhere("ops", "alive")
    claimed = await store.outbox.claim_stale("ops", "alive", min_idle_ms=0, count=10)
    assert [e.entry_id for e in claimed] == [e.entry_id for e in taken]
    assert not await store.outbox.held_elsewhere("ops", "alive")
    assert await store.outbox.renew("ops", "alive") == {e.entry_id for e in taken}
    for entry in claimed:
        await store.outbox.mark_delivered(entry)
    assert await store.outbox.backlog("ops") == 0


async def test_heartbeat_health_and_removal(store: Store) -> None:
    assert await store.heartbeat.last() is None
    await store.heartbeat.beat(30)
    assert (await store.heartbeat.last() or "").startswith("20")
    key = f"p/{INSTANCE.id}"
    unhealthy = poller_event()
    notes = [Notification(event=unhealthy, channel=c) for c in CHANNELS]
    await store.health.record(key, problem(), notes)
    assert await store.health.load() == {key: problem()}
    for channel in CHANNELS:
        [entry] = await store.outbox.read(channel, "c1", count=10)
        assert entry.notification.event.id == unhealthy.id
    recovered = poller_event(EventType.POLLER_RECOVERED)
    await store.health.record(key, None, [Notification(event=recovered, channel="audit")])
    assert await store.health.load() == {}
    assert len(await store.outbox.read("audit", "c1", count=10)) == 1
    # instance.removed: outbox entries, the mark, and a TTL on the state.
    result, _ = first_poll()
    await store.snapshots.commit("p", INSTANCE.id, result, [])
    gone = removed_event()
    await store.snapshots.mark_removed(
        "p",
        INSTANCE.id,
        [Notification(event=gone, channel=c) for c in CHANNELS],
        removed_at=T0,
        baseline_at=T0,
        ttl_seconds=600,
    )
    snap = await store.snapshots.load("p", INSTANCE.id)
    assert snap is not None and snap.removed_at == T0
    assert 0 < await store.redis.ttl(store.keys.snapshot("p", INSTANCE.id)) <= 600
    for channel in CHANNELS:
        assert [e.notification.event.id for e in await store.outbox.read(channel, "c1", count=10)] == [
            gone.id
        ]


async def test_orphan_outboxes_are_found_on_every_node(store: Store) -> None:
    result, notes = first_poll(1)
    await store.snapshots.commit("p", INSTANCE.id, result, notes)
    assert await store.outbox.orphans(["audit"]) == {"dba": 1, "ops": 1}
    assert await store.outbox.orphans(CHANNELS) == {}


async def test_a_crash_between_outbox_and_state_delivers_each_event_once(
    redis_cluster: RedisClusterServers,
) -> None:
    """The cluster's commit writes the outbox entries first, then the snapshot. A crash in between:
    the entries are queued, the snapshot is not. The next poll finds no snapshot, diffs again, queues the
    same events (same ids) again; the real Deliverer sends each id once per channel."""
    client = connect_redis(redis_cluster.url)
    store = Store(client, Keys("t"))
    receivers = {c: WebhookReceiver() for c in CHANNELS}
    channels: dict[str, Channel] = {}
    try:
        for r in receivers.values():
            await r.start()
        channels = {
            c: WebhookChannel(c, WebhookChannelConfig(type="webhook", url=r.url))
            for c, r in receivers.items()
        }
        _, notes = first_poll(3)
        # The crash: only the first half of the cluster commit happened.
        for n in notes:
            await client.xadd(store.keys.outbox(n.channel), {"n": n.model_dump_json(), "k": n.key})
        assert await store.snapshots.load("p", INSTANCE.id) is None
        # Delivery runs meanwhile and sends part of what is queued.
        partly = await Deliverer(store.outbox, channels, FAST).drain("audit")
        assert partly.delivered == 3
        # The restarted poller: no snapshot, so the same baseline again, with the same event ids.
        again, renotes = first_poll(3)
        assert [n.key for n in renotes] == [n.key for n in notes]
        await store.snapshots.commit("p", INSTANCE.id, again, renotes)
        assert (await store.snapshots.load("p", INSTANCE.id)) is not None
        assert {c: await store.outbox.backlog(c) for c in CHANNELS} == {"audit": 3, "dba": 6, "ops": 6}
        results = await Deliverer(store.outbox, channels, FAST).drain_all()
        assert {c: r.skipped_duplicates for c, r in results.items()} == {"audit": 3, "dba": 3, "ops": 3}
        for channel, receiver in receivers.items():
            ids = Counter(r.header("webhook-id") for r in receiver.requests)
            expected = {n.event.id for n in notes if n.channel == channel}
            assert set(ids) == expected and set(ids.values()) == {1}, (channel, ids)
            assert await store.outbox.backlog(channel) == 0
    finally:
        for ch in channels.values():
            await ch.aclose()
        for r in receivers.values():
            await r.stop()
        await client.aclose()


async def test_cluster_key_layout_on_one_server_commits_in_two_steps(redis_client: aioredis.Redis) -> None:
    """``Keys(prefix, cluster=True)`` on any client: tagged names, and the cluster's commit path."""
    store = Store(redis_client, Keys("t", cluster=True))
    assert store.link.cluster
    result, notes = first_poll(1)
    await store.snapshots.commit("p", INSTANCE.id, result, notes)
    keys = set(await redis_client.keys("t:*"))
    assert keys == {f"t:snap:{{p:{INSTANCE.id}}}", "t:outbox:{audit}", "t:outbox:{dba}", "t:outbox:{ops}"}


# -- configuration and the CLI ---------------------------------------------------------------------


def test_redis_url_forms() -> None:
    assert parse_redis_url("redis://127.0.0.1:7000/1").mode == "standalone"
    assert parse_redis_url("unix:///run/redis.sock").mode == "standalone"
    cluster = parse_redis_url("rediss+cluster://:pw%40x@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002")
    assert (cluster.mode, cluster.tls, cluster.password) == ("cluster", True, "pw@x")
    assert cluster.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    sentinel = parse_redis_url("redis+sentinel://:s3cret@s1:26379,s2:26379/mymaster/2?sentinel_password=sp")
    assert (sentinel.mode, sentinel.service, sentinel.db, sentinel.password) == (
        "sentinel",
        "mymaster",
        2,
        "s3cret",
    )
    assert sentinel.nodes == (("s1", 26379), ("s2", 26379))
    assert sentinel.sentinel_password == "sp"
    assert parse_redis_url("redis+sentinel://s1:26379/mymaster").db == 0
    assert RedisConfig(url="redis+cluster://127.0.0.1:7000").target.mode == "cluster"  # type: ignore[arg-type]


CONFIG = """
cloud: {region: cn-north-4, endpoint: "http://127.0.0.1:9", project_id: "p1", ak: "AKEXAMPLE", sk: "SKEXAMPLE"}
instances: [{id: "i1", name: one}]
redis: {url: "REDIS", key_prefix: cli}
channels:
  audit: {type: webhook, url: "HOOK"}
  ops: {type: webhook, url: "HOOK"}
delivery: {max_attempts: 2, backoff_initial: 0.05, backoff_max: 0.1}
"""


def config_text(redis_url: str, hook: str) -> str:
    return CONFIG.replace('"REDIS"', f'"{redis_url}"').replace('"HOOK"', f'"{hook}"')


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "memcached://:hunter2pass@h:1",
            "must start with redis://, rediss://, unix:// (one server), redis+cluster://",
        ),
        ("redis+cluster://:hunter2pass@", "needs at least one host:port"),
        ("redis+cluster://:hunter2pass@h1:7000,h2", "list host:port pairs separated by commas"),
        ("redis+cluster://:hunter2pass@h1:99999", "list host:port pairs separated by commas"),
        ("redis+cluster://:hunter2pass@h1:7000/3", "a Redis Cluster has only db 0"),
        ("redis+cluster://:hunter2pass@h1:7000?db=1", "take no db"),
        ("redis+sentinel://:hunter2pass@s1:26379", "end with /service_name or /service_name/db"),
        ("redis+sentinel://:hunter2pass@s1:26379/m/x", "/service_name/db, db a number"),
        (
            "redis+sentinel://:hunter2pass@s1:26379/m?password=hunter2pass",
            "take no password (known: sentinel_password)",
        ),
    ],
)
def test_bad_redis_urls_name_the_key_not_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config_text(url, "https://e.example/h"), "c.yaml", {})
    text = str(info.value)
    assert "redis.url: " in text and message in text, text
    assert "hunter2pass" not in text


async def test_open_store_from_a_cluster_url(redis_cluster: RedisClusterServers) -> None:
    config = parse_config(config_text(redis_cluster.url, "https://e.example/h"), "c.yaml", {})
    store = open_store(config)
    try:
        assert store.link.cluster and store.keys.outbox("ops") == "cli:outbox:{ops}"
        await store.heartbeat.beat(10)
        assert await store.heartbeat.last() is not None
    finally:
        await store.aclose()


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier.cli", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_dead_letters_on_the_cluster(redis_cluster: RedisClusterServers, tmp_path: Path) -> None:
    """``dead-letters list/replay/purge`` see every channel's stream: the config's and, found by a SCAN of
    every primary, one of a channel no longer configured (``dba``)."""
    client = connect_redis(redis_cluster.url)
    store = Store(client, Keys("cli"))
    try:
        result, notes = first_poll(1)
        await store.snapshots.commit("p", INSTANCE.id, result, notes)
        for channel in CHANNELS:
            await Deliverer(store.outbox, {channel: Scripted(channel, [refused(channel)])}, FAST).drain(
                channel
            )
        letters = {d.channel: d for d in await store.dead_letters.oldest()}
        assert set(letters) == set(CHANNELS)
    finally:
        await client.aclose()
    async with WebhookReceiver() as receiver:
        config = tmp_path / "config.yaml"
        config.write_text(config_text("${REDIS_URL}", receiver.url))
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DCS_NOTIFIER_CONFIG": str(config),
            "REDIS_URL": redis_cluster.url,
        }
        code, out, err = await run_cli(env, "dead-letters", "list")
        assert code == 0, err
        assert "3 dead letter(s)" in err
        for channel, d in letters.items():
            assert f"{d.entry_id}  {channel}  " in out
        assert out.count("error: channel") == 3
        code, out, err = await run_cli(env, "dead-letters", "replay", f"ops/{letters['ops'].entry_id}")
        assert code == 0, err
        assert f"{letters['ops'].entry_id}: delivered to ops" in out
        replayed = letters["ops"].notification
        assert replayed is not None
        assert [r.header("webhook-id") for r in receiver.requests] == [replayed.event.id]
        code, out, err = await run_cli(env, "dead-letters", "purge")
        assert code == 0, err
        assert "purged 2 dead letter(s)" in out
        code, out, err = await run_cli(env, "dead-letters", "list")
        assert "0 dead letter(s)" in err


def test_check_config_masks_cluster_and_sentinel_urls() -> None:
    from notifier.redaction import mask_redis_url

    assert (
        mask_redis_url("rediss+cluster://u:hunter2pass@h1:7000,h2:7001")
        == "rediss+cluster://****@h1:7000,h2:7001"
    )
    masked = mask_redis_url("redis+sentinel://:hunter2pass@s1:26379,s2:26379/m/1?sentinel_password=sekrit")
    assert masked == "redis+sentinel://****@s1:26379,s2:26379/m/1?sentinel_password=****"


@pytest.mark.parametrize(
    "url", ["redis+cluster://:hunter2pass@127.0.0.1:1", "redis+sentinel://:hunter2pass@127.0.0.1:1/m"]
)
async def test_unreachable_cluster_or_sentinel_is_an_outage_without_the_password(url: str) -> None:
    client = connect_redis(url)
    store = Store(client, Keys())
    try:
        with pytest.raises(StoreError) as info:
            await store.snapshots.load("p", "i")
        assert "hunter2pass" not in str(info.value)
        assert str(info.value).startswith("Redis read of instance state failed")
        assert store.link.down  # an outage (logged once), not a refused command
    finally:
        await client.aclose()
