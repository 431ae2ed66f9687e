"""Issue 15, grouping bursts and catch-up digests — through the daemon (Slack stand-in, webhook receiver)
and unit by unit (:func:`notifier.delivery.grouping.plan`)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from notifier.config.load import parse_config
from notifier.config.models import DigestConfig, RuleConfig
from notifier.delivery.grouping import group_key, plan
from notifier.devtools.simulator import Simulator
from notifier.devtools.standins.slack import SlackStandIn
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.pipeline.events import EventType, Notification
from notifier.store.outbox import OutboxEntry
from tests.conftest import AK, PROJECT_ID, SK, WEBHOOK_SECRET
from tests.factories import event, task
from tests.support.daemons import running
from tests.support.wait import until, until_async

BURST = 40


def ids(n: int) -> list[str]:
    return [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)]


def fleet_config(sim: Simulator, redis_url: str, extra: str, instances: int = BURST) -> str:
    lines = "\n".join(f'  - {{id: "{iid}", name: cache-{n:02d}}}' for n, iid in enumerate(ids(instances)))
    return f"""
cloud: {{endpoint: "{sim.base_url}", project_id: "{PROJECT_ID}", ak: {AK}, sk: {SK}}}
instances:
{lines}
poll: {{interval: 0.3, baseline_grace: 900, active_interval: 0.3, recheck: 0.3}}
api: {{rate_limit: 1000, max_concurrency: 64}}
health: {{after: 0.5}}
redis: {{url: "{redis_url}", key_prefix: grp}}
delivery: {{backoff_initial: 0.05, backoff_max: 0.2}}
{extra}"""


@pytest.fixture
def fleet(sim: Simulator) -> list[str]:
    found = ids(BURST)
    for n, iid in enumerate(found):
        sim.add_instance(iid, f"cache-{n:02d}")
    return found


def texts(slack: SlackStandIn, channel: str) -> list[str]:
    return [m.text + json.dumps(m.blocks, ensure_ascii=False) for m in slack.cards(channel)]


async def baselined(sim: Simulator, instances: list[str]) -> None:
    await sim.wait_for(lambda: all(sim.task_requests(i) for i in instances), within=15)


async def test_forty_switchovers_in_a_burst_are_one_living_card_that_ends_40_of_40_succeeded(
    sim: Simulator, fleet: list[str], redis_url: str
) -> None:
    async with SlackStandIn(token="xoxb-grp") as slack:
        extra = f"""channels:
  oncall: {{type: slack, token: xoxb-grp, channel: "#oncall", base_url: "{slack.api_base_url}", rate: 50}}
rules:
  - {{name: everything, channels: [oncall], group_wait: 1.5s}}
"""
        config = parse_config(fleet_config(sim, redis_url, extra), "grp.yaml", {})
        async with running(config):
            await baselined(sim, fleet)
            tasks = {iid: sim.start_task(iid, "masterStandbySwapJob") for iid in fleet}
            [card] = await slack.wait_until(lambda: slack.cards("#oncall") or None, timeout=15)
            for iid, tid in list(tasks.items())[:12]:
                sim.finish_task(iid, tid)
            await slack.wait_until(lambda: "12 of 40 succeeded" in slack.cards("#oncall")[0].text, 15)
            for iid, tid in list(tasks.items())[12:]:
                sim.finish_task(iid, tid)
            await slack.wait_until(lambda: "40 of 40 succeeded" in slack.cards("#oncall")[0].text, 15)
        [only] = slack.cards("#oncall")  # one card for the whole burst, edited as its members finished
        assert only.ts == card.ts
        assert (
            "Master/standby switchover on 40 instances: 0 of 40 succeeded, 40 running" in card.edits[0].text
        )
        assert "Master/standby switchover on 40 instances: 12 of 40 succeeded, 28 running" in "".join(
            v.text for v in only.edits
        )
        assert "cache-00" in json.dumps(only.blocks) and "cache-39" not in only.text
        replies = slack.replies(only.channel, only.ts)
        assert replies and all("succeeded on" in r.text for r in replies)


def add_fleet(sim: Simulator, n: int) -> list[str]:
    found = ids(n)
    for i, iid in enumerate(found):
        sim.add_instance(iid, f"cache-{i:02d}")
    return found


REVOKED = 500


async def test_a_revoked_ak_behind_500_instances_is_one_unhealthy_and_one_recovered(
    sim: Simulator, redis_url: str
) -> None:
    fleet = add_fleet(sim, REVOKED)
    async with WebhookReceiver(secret=WEBHOOK_SECRET) as audit, SlackStandIn() as slack:
        extra = f"""channels:
  oncall: {{type: slack, webhook_url: "{slack.webhook_url}"}}
  audit: {{type: webhook, url: "{audit.url}", secret: "{WEBHOOK_SECRET}"}}
rules:
  - {{name: people, channels: [oncall], group_wait: 4s}}
  - {{name: machines, channels: [audit]}}
"""
        config = parse_config(fleet_config(sim, redis_url, extra, REVOKED), "grp.yaml", {})
        channel = slack.webhook_channel
        async with running(config):
            await baselined(sim, fleet)
            sim.revoke(AK)
            await audit.wait_for(REVOKED, timeout=30)  # every instance announced unhealthy
            await slack.wait_until(lambda: len(slack.cards(channel)) >= 1, timeout=20)
            sim.set_credentials({AK: SK})
            await audit.wait_for(2 * REVOKED, timeout=30)
            await slack.wait_until(lambda: len(slack.cards(channel)) >= 2, timeout=20)
        unhealthy, recovered = texts(slack, channel)
        assert f"Cannot poll {REVOKED} instances" in unhealthy and "auth" in unhealthy
        assert "… and 470 more" in unhealthy  # a sample of 30 lines, the rest counted
        assert f"Polling {REVOKED} instances works again" in recovered
        # Machines want events: the webhook got one POST per instance and event, not a group.
        got = [json.loads(r.body)["type"] for r in audit.requests if 200 <= r.status < 300]
        assert sorted(got) == ["poller.recovered"] * REVOKED + ["poller.unhealthy"] * REVOKED


def entry(n: Notification, at: float, seq: int = 0) -> OutboxEntry:
    return OutboxEntry(channel=n.channel, entry_id=f"{int(at * 1000)}-{seq}", notification=n)


def note(
    type_: EventType, tid: str, instance: str = "i-1", name: str = "masterStandbySwapJob"
) -> Notification:
    """A notification of a change made at NOW (its age is the queue's, not the change's)."""
    ev = event(type_, task(id=tid, name=name, created=datetime.fromtimestamp(NOW, UTC)))
    ev = ev.model_copy(update={"instance": ev.instance.model_copy(update={"id": instance, "name": instance})})
    return Notification(event=ev, channel="oncall", rule="r")


RULES = {"r": RuleConfig(name="r", channels=["oncall"])}
NOW = 1_800_000_000.0


def test_a_burst_of_one_kind_is_one_group_and_a_task_never_overtakes_its_own_start() -> None:
    a = [entry(note(EventType.STARTED, f"t{i}", f"i-{i}"), NOW - 20 + i * 0.1, i) for i in range(5)]
    done_first = entry(note(EventType.SUCCEEDED, "t0", "i-0"), NOW - 19, 10)
    units = plan([*a, done_first], rules=RULES, chat=True, digest=DigestConfig(after=0), now=NOW)
    assert [(u.kind, len(u.entries)) for u in units] == [("group", 5), ("single", 1)]
    # A success queued before the starts of others still follows its own start.
    early = entry(note(EventType.SUCCEEDED, "t9", "i-9"), NOW - 21, 20)
    start9 = entry(note(EventType.STARTED, "t9", "i-9"), NOW - 21.5, 19)
    late = entry(note(EventType.SUCCEEDED, "t9b", "i-8"), NOW - 20.5, 21)
    units = plan([start9, early, late], rules=RULES, chat=True, digest=DigestConfig(after=0), now=NOW)
    assert [[e.entry_id for e in u.entries] for u in units] == [
        [start9.entry_id],
        [early.entry_id, late.entry_id],
    ]


def test_a_group_waits_for_its_members_and_webhooks_are_not_grouped_unless_asked() -> None:
    fresh = [entry(note(EventType.STARTED, f"t{i}", f"i-{i}"), NOW - 1, i) for i in range(3)]
    [unit] = plan(fresh, rules=RULES, chat=True, digest=DigestConfig(after=0), now=NOW)
    assert unit.kind == "group" and unit.ready_at == pytest.approx(NOW - 1 + 10)
    singles = plan(fresh, rules=RULES, chat=False, digest=DigestConfig(after=0), now=NOW)
    assert [u.kind for u in singles] == ["single"] * 3
    asked = {"r": RuleConfig(name="r", channels=["oncall"], group_wait=2)}
    assert [u.kind for u in plan(fresh, rules=asked, chat=False, digest=DigestConfig(), now=NOW)] == ["group"]


def test_poller_health_groups_by_its_cause_and_group_by_is_configurable() -> None:
    rule = RuleConfig(name="r", channels=["c"], group_by=["project", "labels.team"])
    n = note(EventType.STARTED, "t1")
    assert group_key(n, rule) == ("r", f"project={n.event.project_id}", "labels.team=")
    with pytest.raises(ValueError, match="cannot group by 'instance'"):
        RuleConfig(name="r", channels=["c"], group_by=["instance"])


def test_a_backlog_older_than_digest_age_beyond_digest_after_is_one_digest_first() -> None:
    old = [entry(note(EventType.STARTED, f"t{i}", f"i-{i}"), NOW - 3600 + i, i) for i in range(25)]
    new = [entry(note(EventType.SUCCEEDED, "t0", "i-0"), NOW - 1, 99)]
    units = plan([*old, *new], rules=RULES, chat=True, digest=DigestConfig(after=20, age=600), now=NOW)
    assert [(u.kind, len(u.entries)) for u in units] == [("digest", 25), ("group", 1)]
    few = plan(old[:20], rules=RULES, chat=True, digest=DigestConfig(after=20, age=600), now=NOW)
    assert "digest" not in [u.kind for u in few]


async def test_a_channel_back_from_an_outage_gets_one_digest_of_100_changes_and_nothing_is_lost(
    sim: Simulator, redis_url: str, redis_client: Any
) -> None:
    fleet = add_fleet(sim, 50)
    async with SlackStandIn() as slack:
        extra = f"""channels:
  oncall: {{type: slack, webhook_url: "{slack.webhook_url}"}}
rules:
  - {{name: everything, channels: [oncall], group_wait: 0}}
digest: {{after: 20, age: 2s}}
delivery: {{backoff_initial: 0.05, backoff_max: 0.2, max_attempts: 10000}}
"""
        config = parse_config(
            fleet_config(sim, redis_url, extra, 50).replace(
                "delivery: {backoff_initial: 0.05, backoff_max: 0.2}\n", ""
            ),
            "grp.yaml",
            {},
        )
        channel = slack.webhook_channel
        async with running(config):
            await baselined(sim, fleet)
            slack.policy = lambda number, path: SlackStandIn.webhook_error(503, "service_unavailable")
            stream = "grp:outbox:oncall"
            tasks = {iid: sim.start_task(iid, "EXTEND") for iid in fleet}
            await until_async(lambda: _queued(redis_client, stream, 50), 20, "50 starts queued")
            for n, (iid, tid) in enumerate(tasks.items()):
                sim.finish_task(iid, tid, "SUCCESS" if n < 40 else "FAILED")
            await until_async(lambda: _queued(redis_client, stream, 100), 20, "100 notifications queued")
            oldest = float(str((await redis_client.xrange(stream, count=1))[0][0]).split("-")[0]) / 1000
            await until(lambda: time.time() - oldest > 2.5, 10, "the backlog older than digest.age")
            slack.policy = None  # the channel is back
            await slack.wait_until(lambda: any("held up" in t for t in texts(slack, channel)), 20)
            await until_async(lambda: _queued(redis_client, stream, 0, exactly=True), 20, "an empty outbox")
        shown = texts(slack, channel)
        [digest] = [t for t in shown if "held up" in t]
        singles = [t for t in shown if "held up" not in t]
        assert len(singles) == 1 and "Scale started" in singles[0]  # the one being retried when it came back
        assert "99 notifications held up" in digest
        for line in ("10 × task.failed (Scale)", "49 × task.started (Scale)", "40 × task.succeeded (Scale)"):
            assert line in digest, digest
        assert digest.index("task.failed") < digest.index("task.succeeded")  # what needs a human first
        assert await redis_client.xlen("grp:dead") == 0


async def _queued(redis_client: Any, stream: str, n: int, *, exactly: bool = False) -> bool:
    length = int(await redis_client.xlen(stream))
    return length == n if exactly else length >= n


def test_a_webhook_group_or_digest_is_cut_into_posts_a_receiver_takes() -> None:
    burst = [entry(note(EventType.STARTED, f"t{i}", f"i-{i}"), NOW - 40, i) for i in range(250)]
    asked = {"r": RuleConfig(name="r", channels=["oncall"], group_wait=30)}
    units = plan(burst, rules=asked, chat=False, digest=DigestConfig(after=0), now=NOW)
    assert [len(u.entries) for u in units] == [100, 100, 50]  # one 413 must not dead-letter a burst
    assert len(plan(burst, rules=asked, chat=True, digest=DigestConfig(after=0), now=NOW)) == 1


async def test_two_consumers_send_a_burst_once_even_when_it_waits_longer_than_claim_idle(
    redis_client: Any, audit: WebhookReceiver
) -> None:
    """Two consumers of one channel; ``group_wait`` (2 s) is longer than ``claim_idle`` (0.6 s): whoever
    holds the burst when it is due sends it, once — one POST of 3, not one per consumer."""
    from notifier.config.models import DeliveryConfig
    from notifier.delivery.channels.webhook import WebhookChannel, WebhookChannelConfig
    from notifier.delivery.worker import Deliverer
    from notifier.store.connect import Store
    from notifier.store.keys import Keys
    from notifier.store.outbox import entry_fields

    store = Store(redis_client, Keys("claim"))
    rules = [RuleConfig(name="r", channels=["hook"], group_wait=2)]
    cfg = {"type": "webhook", "url": audit.url, "secret": WEBHOOK_SECRET}
    pair = [
        Deliverer(
            store.outbox,
            {"hook": WebhookChannel("hook", WebhookChannelConfig.model_validate(cfg))},
            DeliveryConfig(consumer=f"c{i}", claim_idle=0.6, group_wait=0),
            rules=rules,
            digest=DigestConfig(after=0),
        )
        for i in range(2)
    ]
    now = datetime.now(UTC).timestamp()
    for i in range(3):
        n = note(EventType.STARTED, f"t{i}", f"i-{i}").model_copy(update={"channel": "hook"})
        n = n.model_copy(
            update={"event": n.event.model_copy(update={"detected_at": datetime.fromtimestamp(now, UTC)})}
        )
        await redis_client.xadd(store.keys.outbox("hook"), entry_fields(n))
    runs = [asyncio.create_task(d.run_channel("hook", 0.1)) for d in pair]
    try:
        await until_async(lambda: _queued(redis_client, "claim:outbox:hook", 0, exactly=True), 15, "all sent")
    finally:
        for d in pair:
            d.request_stop()
        await asyncio.gather(*runs)
        for d in pair:
            await d.channels["hook"].aclose()
    posts = [json.loads(r.body) for r in audit.requests]
    assert [(p["type"], p["data"]["count"]) for p in posts] == [("group", 3)]
