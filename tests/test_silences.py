"""Silences (issue 15): matchers unit by unit, the store and its per-process cache against a real Redis,
and through the real daemon — a silence holds back what it matches (and only that), applies to what
already waits in the outbox, lets a task's end through once it expired (the message says the task
started while silenced), is shared by replicas; and the ``dcs-notifier silence`` commands as
subprocesses."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.config.models import Config
from notifier.delivery.cards import Card, after, with_silence
from notifier.delivery.formatters.slack import format_card, format_reply, format_slack
from notifier.delivery.formatters.webhook import format_webhook, webhook_body
from notifier.delivery.silences import (
    FIELDS,
    Matcher,
    MatcherError,
    Silence,
    first_match,
    parse_matcher,
)
from notifier.devtools.simulator import Simulator
from notifier.devtools.standins.slack import Message, SlackStandIn
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.ops.status import Reads, assemble, render_text
from notifier.pipeline.events import EventType, Notification, SilenceNote
from notifier.store.connect import connect_redis
from notifier.store.keys import Keys
from notifier.store.link import Link
from notifier.store.outbox import Outbox, entry_fields
from notifier.store.silences import Silences, SilenceStore
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK, WEBHOOK_SECRET
from tests.factories import T0, event, poller_event, problem, task
from tests.support.clock import TestClock
from tests.support.daemons import cli_env, running
from tests.support.redis_cluster import RedisClusterServers
from tests.support.wait import until, until_async

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


def silence(*matchers: str, sid: str = "ab12cd34", start: datetime = NOW, hours: float = 2) -> Silence:
    return Silence(
        sid,
        tuple(parse_matcher(m) for m in matchers),
        start,
        start + timedelta(hours=hours),
        "planned scale",
        "alice",
        start,
    )


def note_of(type_: EventType = EventType.STARTED, channel: str = "oncall", **kw: Any) -> Notification:
    return Notification(event=event(type_, task(**kw)), channel=channel, rule="r")


# -- matchers (pure) ------------------------------------------------------------------------------


def test_a_matcher_is_field_glob_or_its_negation_and_a_bad_one_is_refused_naming_what_is_known() -> None:
    assert parse_matcher("instance=orders-*") == Matcher("instance", "orders-*")
    assert parse_matcher("task!=EXTEND") == Matcher("task", "EXTEND", negate=True)
    assert parse_matcher(" labels.env = prod ") == Matcher("labels.env", "prod")
    assert str(parse_matcher("type!=task.*")) == "type!=task.*"
    with pytest.raises(MatcherError) as bad:
        parse_matcher("colour=red")
    assert "unknown field 'colour'" in str(bad.value)
    assert "known: " + ", ".join(FIELDS) in str(bad.value)
    with pytest.raises(MatcherError, match="did you mean 'instance'"):
        parse_matcher("instnace=orders-cache")
    with pytest.raises(MatcherError, match="not a matcher"):
        parse_matcher("orders-cache")
    with pytest.raises(MatcherError, match=r"empty value \(to match anything, write instance=\*\)"):
        parse_matcher("instance!=")  # an unset shell variable must not silence everything
    with pytest.raises(MatcherError, match=re.escape("unknown field 'labels.'")):
        parse_matcher("labels.=x")
    with pytest.raises(
        MatcherError, match=re.escape("unknown event type 'task.strated'; did you mean 'task.started'")
    ):
        parse_matcher("type=task.strated")
    with pytest.raises(MatcherError, match="unknown channel 'oncal'; did you mean 'oncall'"):
        parse_matcher("channel=oncal", channels=["oncall", "audit"])
    assert parse_matcher("channel=on*", channels=["oncall"]).pattern == "on*"  # a glob is not checked


def test_matchers_cover_the_fields_rules_route_by_with_globs_negation_and_the_task_aliases() -> None:
    n = note_of(name="ChangeInstanceSpec")  # orders-cache, env=prod, cn-north-4
    yes = [
        "instance=orders-*",
        "instance=5560df16-*",  # by id too
        "task=EXTEND",  # EXTEND and ChangeInstanceSpec are one kind, whichever is written
        "task=ChangeInstanceSpec",
        "task=Change*",
        "type=task.started",
        "type=task.*",
        "project=a4d31cb6-*",
        "region=cn-north-?",
        "channel=oncall",
        "labels.env=prod",
        "labels.team!=db",  # a missing label is ""
        "instance!=sessions-*",
        "problem!=auth",
    ]
    no = ["instance=sessions-*", "instance!=orders-*", "task=masterStandbySwapJob", "type=task.failed",
          "labels.env=staging", "channel=audit", "problem=*x"]  # fmt: skip
    for text in yes:
        assert parse_matcher(text).matches(n), text
    for text in no:
        assert not parse_matcher(text).matches(n), text
    extend = note_of(name="EXTEND")
    assert parse_matcher("task=ChangeInstanceSpec").matches(extend)
    sick = Notification(event=poller_event(p=problem(reason="auth")), channel="ops")
    assert parse_matcher("problem=auth").matches(sick) and parse_matcher("task=*").matches(sick)
    assert not parse_matcher("task=EXTEND").matches(sick) and parse_matcher("task!=EXTEND").matches(sick)


def test_a_silence_matches_when_every_matcher_does_and_only_while_it_is_in_effect() -> None:
    s = silence("instance=orders-*", "task=EXTEND")
    assert s.matches(note_of(name="EXTEND")) and not s.matches(note_of(name="masterStandbySwapJob"))
    assert s.state(NOW - timedelta(seconds=1)) == "pending" and s.state(NOW) == "active"
    assert s.state(s.ends_at) == "expired" and not s.active(s.ends_at)
    later = silence("instance=*", sid="ffff0000", hours=5)
    n = note_of(name="EXTEND")
    assert first_match([s, later], n, NOW + timedelta(minutes=1)) is later  # the one holding longest
    assert first_match([s, later], n, NOW - timedelta(minutes=1)) is None
    assert first_match([s], note_of(name="modifyIpWhitelist"), NOW) is None


def test_a_silence_survives_its_round_trip_and_one_this_version_cannot_apply_is_refused_whole() -> None:
    s = silence("instance=orders-*", "task!=EXTEND")
    assert Silence.from_json(s.to_json()) == s
    assert json.loads(s.to_json())["matchers"] == ["instance=orders-*", "task!=EXTEND"]
    data = json.loads(s.to_json())
    data["matchers"].append("shard=3")  # a field a later version might add: never applied in part
    with pytest.raises(MatcherError):
        Silence.from_json(json.dumps(data))
    for junk in ("[]", "{}", '{"id": "x", "matchers": []}', "nope"):
        with pytest.raises(ValueError):  # noqa: PT011 - every kind of garbage is a ValueError
            Silence.from_json(junk)


# -- the task's record and its later messages (pure) ----------------------------------------------


def test_the_card_record_keeps_the_first_silence_across_edits_and_older_records_still_read() -> None:
    started = SilenceNote(id="ab12cd34", comment="planned scale", type="task.started")
    record = with_silence(None, started)
    assert record == Card(silenced=started) and Card.from_json(record.to_json()) == record
    updated = SilenceNote(id="ffff0000", comment="other", type="task.updated")
    assert with_silence(record, updated) is record  # the first says whether it started silenced
    posted = after(event(EventType.SUCCEEDED, task(status="SUCCESS")), Card("C1", "1.1", silenced=started))
    assert posted.silenced == started and not posted.open
    assert Card.from_json(b'{"c": "C1", "ts": "1.1", "sil": {"id": 3}}') == Card("C1", "1.1")  # unreadable
    assert Card.from_json(b'{"c": "C1", "ts": "1.1"}') == Card("C1", "1.1")


def test_a_task_silenced_at_its_start_says_so_on_slack_and_in_the_webhook_payload() -> None:
    plain = note_of(EventType.SUCCEEDED, status="SUCCESS", updated=T0 + timedelta(minutes=3))
    told = plain.model_copy(
        update={"silenced": SilenceNote(id="ab12cd34", comment="planned <scale>", type="task.started")}
    )
    text = repr(format_slack(told).blocks)
    assert ":mute: Started while silenced (silence `ab12cd34`: planned &lt;scale&gt;)" in text
    assert "Started while silenced" in repr(format_card(told).blocks)  # the card keeps saying it
    assert "silenced" not in format_reply(told).text  # the thread reply says what changed only
    assert format_webhook(told)["data"]["silenced_earlier"] == {
        "silence_id": "ab12cd34",
        "comment": "planned <scale>",
        "event_type": "task.started",
    }
    assert "silenced" not in repr(format_slack(plain).blocks)
    assert b"silenced" not in webhook_body(plain)  # bodies without a silence are unchanged
    assert "silenced" not in told.model_dump_json()  # never stored in the outbox
    middle = told.model_copy(update={"silenced": SilenceNote(id="ab12cd34", type="task.updated")})
    assert "Earlier news of this task was silenced (`task.updated`, silence `ab12cd34`)" in repr(
        format_slack(middle).blocks
    )


# -- the store and the cache, against a real Redis -------------------------------------------------


@pytest.fixture
async def link(redis_client: aioredis.Redis) -> Link:
    return Link(redis_client, Keys("u"))


async def queued(link: Link, n: Notification) -> Any:
    """``n`` written to its channel's outbox and read back by a consumer, as delivery reads it."""
    outbox = Outbox(link)
    await outbox.ensure_group(n.channel)
    await link.redis.xadd(link.keys.outbox(n.channel), entry_fields(n))
    [entry] = await outbox.read(n.channel, "c1", count=10)
    return entry


async def test_the_cache_reads_redis_at_most_once_per_refresh_and_sees_a_new_silence_after_it(
    link: Link,
) -> None:
    store = SilenceStore(link)
    tick = TestClock(100.0)
    now = datetime.now(UTC)
    silences = Silences(store, Outbox(link), refresh=1.0, monotonic=tick)
    n = note_of(name="EXTEND")
    assert await silences.match(n) is None
    await store.add(silence("instance=orders-*", start=now - timedelta(minutes=1)))
    tick.advance(0.5)
    assert await silences.match(n) is None  # cached: Redis is not asked again within the second
    tick.advance(0.6)
    found = await silences.match(n)
    assert found is not None and found.id == "ab12cd34"
    expired = await store.expire("ab12cd34", "bob")
    assert (
        expired is not None and expired.expired_by == "bob" and expired.state(datetime.now(UTC)) == "expired"
    )
    tick.advance(1.0)
    assert await silences.match(n) is None


async def test_holding_back_acknowledges_logs_and_marks_the_task_in_one_transaction(link: Link) -> None:
    store = SilenceStore(link)
    silences = Silences(store, Outbox(link))
    s = silence("instance=orders-*", start=datetime.now(UTC) - timedelta(minutes=1))
    n = note_of(channel="audit")
    entry = await queued(link, n)
    await silences.hold(entry, s)
    r = link.redis
    assert (
        await r.xlen("u:outbox:audit") == 0 and await r.get(f"u:delivered:audit:{n.event.id}") == "silenced"
    )
    [held] = await store.held()
    assert (held.silence, held.event_id, held.type, held.instance, held.channel) == (
        "ab12cd34", n.event.id, "task.started", ORDERS, "audit",
    )  # fmt: skip
    assert held.summary == "Master/standby switchover started on orders-cache"
    record = await Outbox(link).card(entry)  # a generic webhook channel gets the task's record too
    assert record is not None and record.silenced == SilenceNote(
        id="ab12cd34", comment="planned scale", type="task.started"
    )
    later = await queued(link, note_of(EventType.SUCCEEDED, channel="audit", status="SUCCESS"))
    await store.add(s)
    told = await silences.told(later)
    assert told.entry_id == later.entry_id and told.notification.silenced == record.silenced
    other = await queued(link, note_of(EventType.STARTED, channel="audit", id="t2"))
    assert (await silences.told(other)).notification.silenced is None


async def test_on_a_redis_cluster_the_hold_stays_in_the_channels_slot_and_the_log_is_per_channel(
    redis_cluster: RedisClusterServers,
) -> None:
    client = connect_redis(redis_cluster.url)
    try:
        link = Link(client, Keys("u", cluster=True))
        store = SilenceStore(link)
        silences = Silences(store, Outbox(link))
        s = silence("instance=orders-*", start=datetime.now(UTC) - timedelta(minutes=1))
        for channel in ("audit", "oncall"):
            await silences.hold(await queued(link, note_of(channel=channel)), s)  # one MULTI/EXEC each
        assert (
            await client.xlen("u:silence-log:{audit}") == 1
            and await client.xlen("u:silence-log:{oncall}") == 1
        )
        assert {h.channel for h in await store.held()} == {"audit", "oncall"}  # found by a SCAN
        assert [h.channel for h in await store.held(silence_id="ab12cd34", channels=["audit"])] == [
            "oncall",
            "audit",
        ]  # newest first
    finally:
        await client.aclose()


async def test_without_any_silence_a_later_message_costs_no_redis_call(link: Link) -> None:
    silences = Silences(SilenceStore(link), Outbox(link), monotonic=TestClock())
    entry = await queued(link, note_of(channel="audit"))
    await silences.current()
    await link.redis.set("u:card:audit:whatever", "x")  # Redis stays up; nothing would read the record
    await link.redis.aclose()  # any call now fails: told() must not make one
    assert (await silences.told(entry)) is entry


async def test_silences_ended_past_the_retention_are_pruned_and_an_unreadable_one_is_skipped_once(
    link: Link, caplog: pytest.LogCaptureFixture
) -> None:
    store = SilenceStore(link)
    now = datetime.now(UTC)
    await store.add(silence("instance=*", sid="00000001", start=now - timedelta(days=9)))
    await store.add(silence("instance=*", sid="00000002", start=now - timedelta(days=2)))
    await link.redis.hset("u:silences", "00000003", "{not json")
    with caplog.at_level(logging.ERROR):
        assert [s.id for s in await store.load(now, prune=False)] == ["00000001", "00000002"]
        assert [s.id for s in await store.load(now)] == ["00000002"]
        await store.load(now)
    assert sorted(await link.redis.hkeys("u:silences")) == ["00000002", "00000003"]
    assert [r.getMessage() for r in caplog.records].count(
        "silence 00000003 in Redis is unreadable, not applied: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    ) == 1


async def test_a_silences_key_of_the_wrong_type_applies_none_and_says_so_once(
    link: Link, caplog: pytest.LogCaptureFixture
) -> None:
    await link.redis.set("u:silences", "oops")
    tick = TestClock()
    silences = Silences(SilenceStore(link), Outbox(link), monotonic=tick)
    with caplog.at_level(logging.ERROR):
        assert await silences.match(note_of()) is None
        tick.advance(2)
        assert await silences.match(note_of()) is None
    assert sum("silences cannot be read, none is applied" in r.getMessage() for r in caplog.records) == 1


# -- through the real daemon -------------------------------------------------------------------------

TOKEN = "xoxb-0000-silences"
CONFIG = """
cloud: {endpoint: "${SIM_URL}", project_id: "__PROJECT__", ak: "${CLOUD_SDK_AK}", sk: "${CLOUD_SDK_SK}"}
instances:
  - {id: "__ORDERS__", name: orders-cache, labels: {env: prod}}
  - {id: "__SESSIONS__", name: sessions-cache}
poll: {interval: 0.3, active_interval: 0.3}
redis: {url: "${REDIS_URL}", key_prefix: s}
channels:
  oncall: {type: slack, token: "${SLACK_TOKEN}", channel: "#oncall", base_url: "${SLACK_API}", rate: 50}
  audit: {type: webhook, url: "${AUDIT_URL}", secret: "${AUDIT_SECRET}"}
rules:
  - {name: everything, channels: [oncall, audit], group_wait: 0}
delivery: {max_attempts: 1000, backoff_initial: 0.05, backoff_max: 0.3, claim_idle: 1, stop_timeout: 5}
__EXTRA__
"""


@dataclass
class Rig:
    sim: Simulator
    slack: SlackStandIn
    audit: WebhookReceiver
    redis_url: str
    redis: aioredis.Redis
    tmp: Path

    def env(self) -> dict[str, str]:
        return cli_env(
            self.sim.base_url,
            self.redis_url,
            SLACK_TOKEN=TOKEN,
            SLACK_API=self.slack.api_base_url,
            AUDIT_URL=self.audit.url,
            AUDIT_SECRET=WEBHOOK_SECRET,
        )

    def text(self, extra: str = "") -> str:
        out = CONFIG.replace("__PROJECT__", PROJECT_ID).replace("__EXTRA__", extra)
        return out.replace("__ORDERS__", ORDERS).replace("__SESSIONS__", SESSIONS)

    def config(self, extra: str = "") -> Config:
        return parse_config(self.text(extra), "silences.yaml", self.env())

    async def cli(self, *args: str) -> tuple[int, str, str]:
        path = self.tmp / "silences.yaml"
        path.write_text(self.text())
        env = {**self.env(), "DCS_NOTIFIER_CONFIG": str(path), "USER": "alice"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "notifier.cli", *args,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    def store(self) -> SilenceStore:
        return SilenceStore(Link(self.redis, Keys("s")))

    async def add(self, *matchers: str) -> str:
        s = silence(*matchers, start=datetime.now(UTC) - timedelta(seconds=1))
        return (await self.store().add(s)).id

    async def polled(self) -> None:
        await self.sim.wait_for(
            lambda: min(len(self.sim.task_requests(i)) for i in (ORDERS, SESSIONS)) >= 2, within=15
        )

    async def logged(self, n: int) -> list[Any]:
        """Wait until the silence log holds ``n`` entries; return them (newest first)."""
        await until_async(lambda: self._has(n), 15, f"{n} entries in the silence log")
        return await self.store().held()

    async def _has(self, n: int) -> bool:
        return int(await self.redis.xlen("s:silence-log")) >= n

    def webhooks(self, instance: str) -> list[tuple[str, Any]]:
        return [
            (p["type"], p["data"]) for p in self.audit.payloads if p["data"]["instance"]["id"] == instance
        ]

    def cards(self, words: str) -> list[Message]:
        return [m for m in self.slack.cards("#oncall") if words in repr(m.blocks)]


@pytest.fixture
async def rig(
    sim: Simulator, audit: WebhookReceiver, redis_url: str, redis_client: aioredis.Redis, tmp_path: Path
) -> AsyncIterator[Rig]:
    async with SlackStandIn(token=TOKEN, channels=["oncall"]) as slack:
        yield Rig(sim, slack, audit, redis_url, redis_client, tmp_path)


async def seen_by(daemon: Daemon, sid: str, *, active: bool = True) -> None:
    """Wait until ``daemon``'s cache holds the silence ``sid`` (in effect, or ended)."""

    async def seen() -> bool:
        now = datetime.now(UTC)
        return any(s.id == sid and s.active(now) == active for s in await daemon.silences.current())

    await until_async(seen, 5, f"silence {sid} {'in effect' if active else 'ended'} in the daemon's cache")


async def test_a_silence_holds_back_what_it_matches_and_the_rest_still_arrives(rig: Rig) -> None:
    async with running(rig.config()) as daemon:
        await rig.polled()
        sid = await rig.add("instance=orders-*", "task=EXTEND")
        await seen_by(daemon, sid)
        rig.sim.start_task(ORDERS, "ChangeInstanceSpec")  # silenced: EXTEND names the same kind
        rig.sim.start_task(ORDERS, "masterStandbySwapJob")  # another task of the same instance
        rig.sim.start_task(SESSIONS, "EXTEND")  # another instance
        held = await rig.logged(2)  # one per channel
        await until(lambda: len(rig.audit.payloads) >= 2, 15, "the other two notifications")
        await rig.slack.wait_until(lambda: len(rig.slack.cards("#oncall")) >= 2, timeout=15)
    assert {(h.silence, h.channel, h.type, h.instance) for h in held} == {
        (sid, "audit", "task.started", ORDERS),
        (sid, "oncall", "task.started", ORDERS),
    }
    assert [t for t, d in rig.webhooks(ORDERS)] == ["task.started"]
    assert rig.webhooks(ORDERS)[0][1]["task"]["name"] == "masterStandbySwapJob"
    assert [d["task"]["name"] for t, d in rig.webhooks(SESSIONS)] == ["EXTEND"]
    assert len(rig.slack.cards("#oncall")) == 2 and not rig.cards("ChangeInstanceSpec")
    labels = {"channel": "audit", "outcome": "silenced", "reason": ""}
    assert daemon.metrics.registry.get_sample_value("dcs_notifier_deliveries_total", labels) == 1


async def test_a_silence_added_while_notifications_wait_in_the_outbox_applies_to_them(rig: Rig) -> None:
    rig.audit.policy = lambda number, path: WebhookReceiver.error(503)  # the receiver is down
    async with running(rig.config()) as daemon:
        await rig.polled()
        rig.sim.start_task(SESSIONS, "EXTEND")  # the first in the queue: being retried
        await until_async(lambda: _outbox_at_least(rig, 1), 10, "the first notification queued")
        rig.sim.start_task(ORDERS, "EXTEND")
        rig.sim.start_task(ORDERS, "masterStandbySwapJob")
        await until_async(lambda: _outbox_at_least(rig, 3), 10, "all three queued")
        sid = await rig.add("instance=orders-cache", "channel=audit")
        await seen_by(daemon, sid)
        rig.audit.clear_faults()  # the receiver is back
        held = await rig.logged(2)
        await until(lambda: len(rig.audit.payloads) >= 1, 10, "the one being retried")
        await until_async(lambda: _outbox_empty(rig), 10, "the audit outbox emptied")
    assert [(t, d["instance"]["name"]) for t, d in rig.webhooks(SESSIONS)] == [
        ("task.started", "sessions-cache")
    ]
    assert rig.webhooks(ORDERS) == []
    assert len(held) == 2 and {(h.channel, h.instance, h.type) for h in held} == {
        ("audit", ORDERS, "task.started")
    }
    assert len(rig.slack.cards("#oncall")) == 3  # the silence matched the audit channel only


async def _outbox_at_least(rig: Rig, n: int) -> bool:
    return int(await rig.redis.xlen("s:outbox:audit")) >= n


async def _outbox_empty(rig: Rig) -> bool:
    return int(await rig.redis.xlen("s:outbox:audit")) == 0


async def test_when_the_silence_expires_mid_task_the_end_is_delivered_and_says_it_started_silenced(
    rig: Rig,
) -> None:
    async with running(rig.config()) as daemon:
        await rig.polled()
        sid = await rig.add("instance=orders-*")
        await seen_by(daemon, sid)
        tid = rig.sim.start_task(ORDERS, "EXTEND")
        await rig.logged(2)
        await rig.store().expire(sid, "bob")
        await seen_by(daemon, sid, active=False)
        rig.sim.finish_task(ORDERS, tid)
        await until(lambda: len(rig.webhooks(ORDERS)) >= 1, 15, "the end on the webhook")
        [card] = await rig.slack.wait_until(lambda: rig.cards("succeeded on orders-cache"), timeout=15)
    [(kind, data)] = rig.webhooks(ORDERS)
    assert kind == "task.succeeded"
    assert data["silenced_earlier"] == {
        "silence_id": sid,
        "comment": "planned scale",
        "event_type": "task.started",
    }
    # Slack: no card was posted for the start (it was silenced): the end posts one, which says so.
    assert len(rig.slack.cards("#oncall")) == 1 and not rig.slack.replies(card.channel, card.ts)
    text = repr(card.blocks)
    assert f":mute: Started while silenced (silence `{sid}`: planned scale)" in text
    assert card.text.startswith(":white_check_mark: Scale succeeded on orders-cache")


async def test_replicas_share_silences(rig: Rig) -> None:
    scaling = "scaling: {enabled: true, replica: __R__, shards: 8, lease_ttl: 2}"
    async with (
        running(rig.config(scaling.replace("__R__", "r1"))) as one,
        running(rig.config(scaling.replace("__R__", "r2"))) as two,
    ):
        await rig.polled()
        sid = await rig.add("labels.env=prod")  # orders-cache only
        await seen_by(one, sid)
        await seen_by(two, sid)
        for _ in range(3):
            rig.sim.start_task(ORDERS, "masterStandbySwapJob")
        rig.sim.start_task(SESSIONS, "masterStandbySwapJob")
        held = await rig.logged(6)
        await until(lambda: len(rig.audit.payloads) >= 1, 15, "the sessions notification")
        await rig.slack.wait_until(lambda: len(rig.slack.cards("#oncall")) >= 1, timeout=15)
    assert {h.silence for h in held} == {sid} and len({(h.event_id, h.channel) for h in held}) == 6
    assert rig.webhooks(ORDERS) == [] and len(rig.webhooks(SESSIONS)) == 1
    assert len(rig.slack.cards("#oncall")) == 1


# -- the commands, as subprocesses ---------------------------------------------------------------------


async def test_silence_commands_add_list_log_and_expire_beside_a_running_daemon(rig: Rig) -> None:
    code, out, err = await rig.cli(
        "silence", "add", "--match", "instance=orders-*", "-m", "task=EXTEND", "--for", "2h",
        "--comment", "planned scale", "--json",
    )  # fmt: skip
    assert code == 0, err
    added = json.loads(out)
    sid = added["id"]
    assert len(sid) == 8 and int(sid, 16) >= 0
    assert added["matchers"] == ["instance=orders-*", "task=EXTEND"] and added["author"] == "alice"
    assert added["state"] == "active" and added["comment"] == "planned scale"
    path = rig.tmp / "silences.yaml"
    env = {**rig.env(), "DCS_NOTIFIER_CONFIG": str(path)}
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier.cli", "run", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await rig.polled()
        rig.sim.start_task(ORDERS, "EXTEND")
        rig.sim.start_task(SESSIONS, "EXTEND")
        await rig.logged(2)
        await until(lambda: len(rig.audit.payloads) >= 1, 15, "the sessions notification")
        code, out, err = await rig.cli("silence", "log", sid, "--json")
        assert code == 0, err
        held = json.loads(out)["held"]
        assert {(h["silence"], h["channel"], h["instance"], h["type"]) for h in held} == {
            (sid, "audit", ORDERS, "task.started"),
            (sid, "oncall", ORDERS, "task.started"),
        }
        code, out, err = await rig.cli("silence", "list")
        assert code == 0, err
        [header, line] = out.splitlines()
        assert header.split()[:5] == ["ID", "STATE", "STARTS", "ENDS", "HELD"]
        assert line.startswith(f"{sid}  active") and " 2 " in line and line.endswith("planned scale")
        assert "instance=orders-* task=EXTEND" in line
        code, out, err = await rig.cli("silence", "expire", sid, "--author", "bob")
        assert code == 0 and f"silence {sid} expired by bob" in out, err
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, derr = await asyncio.wait_for(daemon.communicate(), 20)
    assert daemon.returncode == 0, derr.decode()
    assert f"by silence {sid}" in derr.decode()  # the daemon's one INFO line per held notification
    code, out, err = await rig.cli("silence", "list", "--all", "--json")
    [listed] = json.loads(out)["silences"]
    assert (listed["id"], listed["state"], listed["expired_by"], listed["held"]) == (sid, "expired", "bob", 2)
    code, out, err = await rig.cli("silence", "list")
    assert code == 0 and out == "" and "0 silence(s) in effect or to come" in err


async def test_silence_commands_refuse_bad_input_with_exit_2_and_say_what_is_wrong(rig: Rig) -> None:
    code, out, err = await rig.cli("silence", "add", "-m", "colour=red", "--for", "2h", "--comment", "x")
    assert code == 2 and out == ""
    assert "error: matcher 'colour=red': unknown field 'colour'" in err
    assert "(known: instance, project, region, type, task, channel, labels.<name>, problem)" in err
    code, _, err = await rig.cli("silence", "add", "-m", "type=task.strated", "--for", "2x", "--comment", "x")
    assert code == 2 and "unknown event type 'task.strated'; did you mean 'task.started'?" in err
    code, _, err = await rig.cli("silence", "add", "-m", "instance=a", "--for", "2x", "--comment", "x")
    assert code == 2 and "error: --for: '2x' is not a duration" in err
    code, _, err = await rig.cli("silence", "expire", "deadbeef")
    assert code == 1 and "error: no silence 'deadbeef'" in err
    assert await rig.redis.hlen("s:silences") == 0


def test_status_lists_the_silences_in_effect_and_to_come_not_those_ended() -> None:
    cfg = parse_config(
        f"""
cloud: {{project_id: "{PROJECT_ID}", ak: "{AK}", sk: "{SK}"}}
instances: [{{id: "{ORDERS}", name: orders}}]
redis: {{url: "redis://127.0.0.1:1/0"}}
channels: {{audit: {{type: webhook, url: "https://hooks.example.com/x"}}}}
""",
        "status.yaml",
        {},
    )
    now = NOW + timedelta(minutes=1)
    read = Reads(
        snapshots=[None],
        silences=[
            silence("instance=orders-*", "task=EXTEND"),
            silence("labels.env=prod", sid="00000002", start=NOW + timedelta(hours=1)),
            silence("instance=*", sid="00000003", start=NOW - timedelta(hours=3)),  # ended
        ],
    )
    status = assemble(cfg, read, now)
    assert [(s.id, s.state) for s in status.silences] == [("ab12cd34", "active"), ("00000002", "pending")]
    shown = render_text(status)
    assert "silences: 1 in effect, 1 to come" in shown
    assert (
        "  ab12cd34  until 08:00:00 (in 1h59m)  instance=orders-* task=EXTEND  (alice: planned scale)"
        in shown
    )
    assert "  00000002  from 07:00:00 (in 59m00s)  labels.env=prod  (alice: planned scale)" in shown
    assert json.loads(status.model_dump_json())["silences"][0]["matchers"] == [
        "instance=orders-*",
        "task=EXTEND",
    ]
