"""Issue 15, the stuck-task watchdog: ``task.stuck`` once per task that stays in progress past its limit.

Unit by unit (the limits, the deadline, the once-only marking, the snapshot's encoding, what the messages
say), then through the real daemon: against a simulator whose answer stays byte-identical, across a restart,
with two replicas, on a Slack bot channel (a broadcast thread reply on the task's card), and through
``python -m notifier.cli run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from slack_sdk.models.blocks import Block

from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.config.models import DEFAULT_MENTION_ON, Config
from notifier.delivery.cards import BROADCAST
from notifier.delivery.formatters.slack import format_reply, format_slack
from notifier.delivery.formatters.webhook import format_webhook
from notifier.devtools.simulator import Simulator
from notifier.devtools.standins.slack import SlackStandIn
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.errors import ConfigError
from notifier.ops.status import gather_status, render_text
from notifier.pipeline.diff import DiffContext, SeenTask, Snapshot, diff
from notifier.pipeline.events import EventType, Notification, event_id, span
from notifier.pipeline.instance import PollOutcome, advance
from notifier.pipeline.poll import Poller
from notifier.pipeline.watch import Known
from notifier.pipeline.watchdog import Limits, deadline, joined, stuck
from notifier.store.connect import Store, open_store
from notifier.store.keys import Keys
from notifier.store.snapshots import _decode, _encode
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK, WEBHOOK_SECRET
from tests.factories import INSTANCE, T0, task
from tests.support.daemons import cli_env, running
from tests.support.wait import until

MIN = 60.0
LIMITS = Limits.of({"default": 30 * MIN, "masterStandbySwapJob": 5 * MIN, "EXTEND": 2 * 3600, "modify": 0})


def ctx(at: datetime) -> DiffContext:
    return DiffContext("p", "cn-north-4", INSTANCE, at, timedelta(minutes=15), at - timedelta(days=1))


def snapshot_of(*tasks: Any, stuck_at: dict[str, datetime] | None = None) -> Snapshot:
    marks = stuck_at or {}
    return Snapshot(
        baseline_at=T0 - timedelta(hours=1),
        tasks={t.id: SeenTask(t.status, t.updated_at, t.created_at, t.name, marks.get(t.id)) for t in tasks},
    )


# -- pure: limits, deadline, once only ---------------------------------------------------------------


def test_a_tasks_limit_is_its_names_else_the_default_and_0_is_never() -> None:
    assert LIMITS.of_task("masterStandbySwapJob") == timedelta(minutes=5)
    assert LIMITS.of_task("EXTEND") == LIMITS.of_task("ChangeInstanceSpec") == timedelta(hours=2)
    assert LIMITS.of_task("BindEip") == LIMITS.of_task("somethingNew") == timedelta(minutes=30)
    assert LIMITS.of_task("modify") is None  # 0: never stuck
    assert Limits.of({"ChangeInstanceSpec": 60}).of_task("EXTEND") == timedelta(minutes=1)
    assert Limits.of({"default": 0, "EXTEND": 0}).off and not LIMITS.off
    assert Limits.of({"default": 0}).of_task("BindEip") is None


def test_the_deadline_is_the_earliest_of_the_listed_tasks_in_progress_not_yet_announced() -> None:
    swap = task("swap", "masterStandbySwapJob", "EXECUTING", created=T0)
    scale = task("scale", "EXTEND", "RUNNING", created=T0 - timedelta(minutes=1))
    done = task("done", "BindEip", "SUCCESS", created=T0 - timedelta(hours=1), updated=T0)
    password = task("pw", "modify", "RUNNING", created=T0 - timedelta(hours=5))  # limit 0
    snap = snapshot_of(swap, scale, done, password)
    due = deadline(snap, [swap, scale, done, password], LIMITS)
    assert due is not None and due.at == T0 + timedelta(minutes=5)
    assert {t.id for t in due.tasks} == {"swap", "scale"}
    # Once the switchover was announced, the scale-up's deadline is next.
    marked = snapshot_of(swap, scale, done, password, stuck_at={"swap": T0 + timedelta(minutes=5)})
    due = deadline(marked, [swap, scale, done, password], LIMITS)
    assert due is not None and due.at == T0 + timedelta(hours=2, minutes=-1)
    assert deadline(snap, [done, password], LIMITS) is None  # nothing to watch: nothing to compare
    assert deadline(snapshot_of(), [swap], LIMITS) is None  # not recorded: nowhere to note it
    assert deadline(snap, [swap], Limits.of({"default": 0})) is None


def test_a_task_past_its_limit_is_announced_once_with_a_deterministic_id() -> None:
    swap = task("swap", "masterStandbySwapJob", "EXECUTING", created=T0)
    snap = snapshot_of(swap)
    assert not stuck(snap, [swap], LIMITS, ctx(T0 + timedelta(minutes=4, seconds=59))).changed
    now = T0 + timedelta(minutes=25)
    found = stuck(snap, [swap], LIMITS, ctx(now))
    [ev] = found.events
    assert ev.type is EventType.STUCK and ev.id == event_id(INSTANCE.id, "swap", EventType.STUCK, "stuck")
    assert ev.stuck_since == T0 + timedelta(minutes=5) and ev.task == swap
    assert ev.summary == (
        "Master/standby switchover on orders-cache is stuck: EXECUTING for 25 min (limit 5 min)"
    )
    assert found.upserts["swap"].stuck_at == T0 + timedelta(minutes=5)
    after = advance(snap, found, now)
    assert not stuck(after, [swap], LIMITS, ctx(now + timedelta(hours=1))).changed  # once only
    assert deadline(after, [swap], LIMITS) is None
    # Another replica, or a restart, finding it again makes the same event.
    assert stuck(snap, [swap], LIMITS, ctx(now + timedelta(minutes=1))).events[0].id == ev.id


def test_a_task_already_past_its_limit_at_the_baseline_is_announced_after_its_start() -> None:
    old = task("old", "EXTEND", "EXECUTING", created=T0 - timedelta(hours=3))
    result = diff(None, [old], ctx(T0))
    result = joined(result, stuck(advance(None, result, T0), [old], LIMITS, ctx(T0)))
    assert [e.type for e in result.events] == [EventType.STARTED, EventType.STUCK]
    assert result.upserts["old"].stuck_at == T0 - timedelta(hours=1)
    assert result.baseline_at == T0  # still a baseline: the meta field is written
    # Each event once, even if an earlier poll's uncommitted stuck event is already among them.
    again = joined(result, stuck(advance(None, result, T0), [old], LIMITS, ctx(T0)))
    assert again == result


def test_the_mark_survives_status_changes_and_the_end_says_how_long_it_was_stuck() -> None:
    swap = task("swap", "masterStandbySwapJob", "EXECUTING", created=T0)
    snap = snapshot_of(swap, stuck_at={"swap": T0 + timedelta(minutes=5)})
    running = task("swap", "masterStandbySwapJob", "RUNNING", created=T0)
    changed = diff(snap, [running], ctx(T0 + timedelta(minutes=8)))
    assert changed.upserts["swap"].stuck_at == T0 + timedelta(minutes=5)
    assert changed.events[0].stuck_note == "stuck for 3 min (limit 5 min)"
    ended = task("swap", "masterStandbySwapJob", "SUCCESS", created=T0, updated=T0 + timedelta(minutes=17))
    [end] = diff(advance(snap, changed, T0), [ended], ctx(T0 + timedelta(minutes=18))).events
    assert end.type is EventType.SUCCEEDED and end.stuck_since == T0 + timedelta(minutes=5)
    assert end.stuck_note == "was stuck for 12 min (limit 5 min)"  # until the API's updated_at
    never = diff(snapshot_of(swap), [ended], ctx(T0 + timedelta(minutes=18))).events[0]
    assert never.stuck_since is None and never.stuck_note is None


def test_the_snapshot_keeps_the_mark_and_reads_state_written_before_it() -> None:
    seen = SeenTask("EXECUTING", None, T0, "masterStandbySwapJob", T0 + timedelta(minutes=5))
    assert _decode(_encode(seen)) == seen
    assert _decode(_encode(replace(seen, stuck_at=None))) == replace(seen, stuck_at=None)
    old = '{"s":"EXECUTING","u":"","c":"2026-11-28T08:00:00+00:00","n":"masterStandbySwapJob"}'
    assert _decode(old).stuck_at is None


def test_an_unchanged_answer_costs_one_comparison_with_a_deadline_kept_per_changed_answer() -> None:
    swap = task("swap", "masterStandbySwapJob", "EXECUTING", created=T0)
    done = task("done", "BindEip", "SUCCESS", created=T0, updated=T0)
    known = Known.of(snapshot_of(swap, done), b"d", [swap, done], LIMITS)
    assert known.active and known.deadline is not None and known.deadline.at == T0 + timedelta(minutes=5)
    idle = Known.of(snapshot_of(done), b"d", [done], LIMITS)
    assert idle.deadline is None and not idle.active


def test_spans_as_summaries_say_them() -> None:
    assert [span(s) for s in (0.5, 1, 42, 300, 1500, 7200, 7500, 90000, 86400)] == [
        "0.5 s", "1 s", "42 s", "5 min", "25 min", "2 h", "2 h 5 min", "1 d 1 h", "1 d",
    ]  # fmt: skip


async def test_an_instance_is_polled_again_at_its_deadline_when_that_comes_before_its_next_poll(
    redis_client: aioredis.Redis,
) -> None:
    text = BASE + "poll: {interval: 30, jitter: 0, active_interval: 0}"
    now = T0 + timedelta(minutes=2)
    poller = Poller(parse_config(text, "w.yaml", {}), {}, Store(redis_client, Keys("w")), clock=lambda: now)
    [target] = poller.targets.values()
    w = poller.fleet.get(target.key)
    assert w is not None
    assert poller.next_delay(PollOutcome(target)) == 30  # nothing known: the interval
    swap = task("swap", "masterStandbySwapJob", "EXECUTING", created=T0)
    w.known = Known.of(snapshot_of(swap), b"d", [swap], LIMITS)  # due at T0 + 5 min, 3 min from now
    assert poller.next_delay(PollOutcome(target)) == 30
    now = T0 + timedelta(minutes=4, seconds=50)
    assert poller.next_delay(PollOutcome(target)) == pytest.approx(10.05)  # at the deadline, not 30 s on
    now = T0 + timedelta(minutes=6)  # (past it: a poll that did not commit) the interval, never at once
    assert poller.next_delay(PollOutcome(target)) == 30


# -- pure: config, routing, messages -------------------------------------------------------------------

BASE = """
cloud: {endpoint: "http://127.0.0.1:1", project_id: p1, ak: a, sk: b}
instances: [{id: i-1}]
channels: {audit: {type: webhook, url: "http://127.0.0.1:9/"}}
"""


def test_the_config_gives_limits_by_name_over_the_defaults() -> None:
    assert parse_config(BASE, "w.yaml", {}).watchdog == {
        "default": 1800.0,
        "masterStandbySwapJob": 300.0,
        "EXTEND": 7200.0,
    }
    cfg = parse_config(BASE + "watchdog: {default: 1h, ChangeInstanceSpec: 3h, modify: 0}", "w.yaml", {})
    # A name nobody documents is taken as written (the API may add tasks); a typo of a known one is not.
    assert (
        parse_config(BASE + "watchdog: {RestartInstance: 10m}", "w.yaml", {}).watchdog["RestartInstance"]
        == 600
    )
    assert cfg.watchdog == {"default": 3600.0, "masterStandbySwapJob": 300.0, "ChangeInstanceSpec": 10800.0,
                            "modify": 0.0}  # fmt: skip
    limits = Limits.of(cfg.watchdog)
    assert limits.of_task("EXTEND") == timedelta(hours=3) and limits.of_task("modify") is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("watchdog: {masterStandbySwapJob: 5x}", "watchdog.masterStandbySwapJob: '5x' is not a duration"),
        ("watchdog: {default: 8d}", "watchdog.default: Input should be less than or equal to 604800"),
        ("watchdog: {default: -1}", "watchdog.default: Input should be greater than or equal to 0"),
        (
            "watchdog: {masterStandbySwapjob: 2m}",
            "watchdog.masterStandbySwapjob: unknown task name 'masterStandbySwapjob'; "
            "did you mean 'masterStandbySwapJob'?",
        ),
        (
            "watchdog: {EXTEND: 1h, ChangeInstanceSpec: 2h}",
            "watchdog.ChangeInstanceSpec: EXTEND and ChangeInstanceSpec are the same kind of task",
        ),
    ],
)
def test_a_wrong_limit_is_refused_naming_its_key(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + text, "w.yaml", {})
    assert says in str(info.value)


def stuck_event(now: datetime = T0 + timedelta(minutes=25)) -> Any:
    swap = task("swap", "masterStandbySwapJob", "EXECUTING", created=T0)
    return stuck(snapshot_of(swap), [swap], LIMITS, ctx(now)).events[0]


def test_it_needs_a_human_broadcast_from_the_thread_with_the_rules_mention() -> None:
    assert EventType.STUCK in BROADCAST and EventType.STUCK in DEFAULT_MENTION_ON
    n = Notification(event=stuck_event(), channel="oncall", rule="r", mentions=("<!subteam^S0123ABC>",))
    reply, post = format_reply(n), format_slack(n)
    assert reply.text.startswith(
        "<!subteam^S0123ABC> :alarm_clock: Master/standby switchover on orders-cache"
    )
    assert "is stuck: EXECUTING for 25 min (limit 5 min)" in reply.text
    for message in (reply, post):
        for raw in message.blocks:
            block = Block.parse(raw)
            assert block is not None
            block.validate_json()
    assert "*Stuck*" in repr(post.blocks)


def test_the_end_of_a_stuck_task_says_so_in_slack_and_in_the_webhook() -> None:
    ended = task("swap", "masterStandbySwapJob", "SUCCESS", created=T0, updated=T0 + timedelta(minutes=17))
    snap = snapshot_of(task("swap", "masterStandbySwapJob", "EXECUTING", created=T0),
                       stuck_at={"swap": T0 + timedelta(minutes=5)})  # fmt: skip
    [end] = diff(snap, [ended], ctx(T0 + timedelta(minutes=18))).events
    n = Notification(event=end, channel="oncall", rule="r")
    assert "took 17 min · was stuck for 12 min (limit 5 min)" in format_reply(n).text
    assert "was stuck for 12 min (limit 5 min)" in repr(format_slack(n).blocks)
    data = format_webhook(n)["data"]
    assert data["stuck"] == {
        "since": "2026-11-28T08:05:00.000Z",
        "limit_seconds": 300.0,
        "stuck_seconds": 720.0,
        "note": "was stuck for 12 min (limit 5 min)",
    }
    stuck_data = format_webhook(Notification(event=stuck_event(), channel="audit"))
    assert stuck_data["type"] == "task.stuck" and stuck_data["data"]["stuck"]["stuck_seconds"] == 1200.0


# -- through the real daemon -------------------------------------------------------------------------

CONFIG = """
cloud: {endpoint: "${SIM_URL}", project_id: "__PROJECT__", ak: "${CLOUD_SDK_AK}", sk: "${CLOUD_SDK_SK}"}
instances:
  - {id: "__ORDERS__", name: orders-cache}
  - {id: "__SESSIONS__", name: sessions-cache}
poll: {interval: 0.3, active_interval: 0.2, jitter: 0}
redis: {url: "${REDIS_URL}", key_prefix: wd}
channels:
  audit: {type: webhook, url: "${AUDIT_URL}", secret: "__SECRET__"}
delivery: {backoff_initial: 0.05, backoff_max: 0.2, claim_idle: 1, stop_timeout: 5}
watchdog: {default: __LIMIT__, masterStandbySwapJob: __LIMIT__}
__EXTRA__
"""


@dataclass
class Rig:
    sim: Simulator
    audit: WebhookReceiver
    redis_url: str
    redis: aioredis.Redis
    tmp: Path

    def env(self) -> dict[str, str]:
        return cli_env(self.sim.base_url, self.redis_url, AUDIT_URL=self.audit.url)

    def text(self, limit: str = "1.5s", extra: str = "") -> str:
        text = CONFIG
        for k, v in {"__PROJECT__": PROJECT_ID, "__ORDERS__": ORDERS, "__SESSIONS__": SESSIONS,
                     "__SECRET__": WEBHOOK_SECRET, "__LIMIT__": limit, "__EXTRA__": extra}.items():  # fmt: skip
            text = text.replace(k, v)
        return text

    def config(self, **kw: str) -> Config:
        return parse_config(self.text(**kw), "watchdog.yaml", self.env())

    def of(self, type_: str, task_id: str | None = None) -> list[dict[str, Any]]:
        return [
            p
            for p in self.audit.payloads
            if p["type"] == type_ and (task_id is None or p["data"]["task"]["id"] == task_id)
        ]

    async def polls(self, instance: str, n: int) -> None:
        """``n`` more polls of ``instance`` than so far."""
        target = len(self.sim.task_requests(instance)) + n
        await self.sim.wait_for(lambda: len(self.sim.task_requests(instance)) >= target, within=10)


@pytest.fixture
def rig(
    sim: Simulator, audit: WebhookReceiver, redis_url: str, redis_client: aioredis.Redis, tmp_path: Path
) -> Rig:
    return Rig(sim, audit, redis_url, redis_client, tmp_path)


def stuck_count(daemon: Daemon) -> float:
    value = daemon.metrics.registry.get_sample_value("dcs_notifier_events_total", {"type": "task.stuck"})
    return value or 0.0


async def test_one_task_stuck_although_the_api_answers_byte_identically_then_the_end_says_how_long(
    rig: Rig,
) -> None:
    async with running(rig.config()) as daemon:
        await rig.polls(ORDERS, 2)
        tid = rig.sim.start_task(ORDERS, "masterStandbySwapJob", status="EXECUTING")
        await until(lambda: len(rig.of("task.started")) == 1, 10, "the start")
        w = daemon.poller.fleet.get(f"{PROJECT_ID}/{ORDERS}")
        assert w is not None and w.known is not None and w.known.deadline is not None
        digest = w.known.digest
        assert digest is not None and not rig.of("task.stuck")  # the answer is known; not stuck yet
        await until(lambda: len(rig.of("task.stuck")) == 1, 10, "task.stuck")
        assert w.known is not None and w.known.digest == digest  # the same bytes as before its deadline
        assert w.known.deadline is None
        await rig.polls(ORDERS, 5)
        rig.sim.finish_task(ORDERS, tid)
        await until(lambda: len(rig.of("task.succeeded")) == 1, 10, "the end")
        assert stuck_count(daemon) == 1
    [event] = rig.of("task.stuck")
    summary = event["data"]["summary"]
    assert summary.startswith("Master/standby switchover on orders-cache is stuck: EXECUTING for ")
    assert summary.endswith(" s (limit 1.5 s)")
    assert event["data"]["event_id"] == event_id(ORDERS, tid, EventType.STUCK, "stuck")
    [end] = rig.of("task.succeeded")
    assert end["data"]["stuck"]["note"].startswith("was stuck for ")
    assert end["data"]["stuck"]["note"].endswith("(limit 1.5 s)")
    types = [p["type"] for p in rig.audit.payloads]
    assert types == ["task.started", "task.stuck", "task.succeeded"]


async def test_exactly_one_across_a_restart_and_the_mark_is_in_the_snapshot(rig: Rig) -> None:
    tid = rig.sim.start_task(ORDERS, "BindEip", status="EXECUTING")  # the default limit
    async with running(rig.config()) as first:
        await until(lambda: len(rig.of("task.stuck")) == 1, 10, "task.stuck")
        assert stuck_count(first) == 1
    raw = await rig.redis.hget(f"wd:snap:{PROJECT_ID}:{ORDERS}", tid)
    assert raw is not None and '"k":' in raw  # announced: recorded with its outbox entry
    store = open_store(rig.config())
    try:
        status = await gather_status(rig.config(), store)
    finally:
        await store.aclose()
    [orders] = [i for p in status.projects for i in p.instances if i.id == ORDERS]
    [running_task] = orders.running
    assert running_task.id == tid and running_task.stuck_since is not None
    assert "STUCK since" in render_text(status)
    async with running(rig.config()) as second:
        await rig.polls(ORDERS, 6)
        assert stuck_count(second) == 0  # nothing queued again (not merely deduplicated on delivery)
        rig.sim.finish_task(ORDERS, tid, status="FAILED")
        await until(lambda: len(rig.of("task.failed")) == 1, 10, "the end")
    assert len(rig.of("task.stuck")) == 1
    [end] = rig.of("task.failed")
    assert end["data"]["stuck"]["note"].startswith("was stuck for ")


async def test_exactly_one_with_two_replicas_also_when_one_leaves(rig: Rig) -> None:
    ids = {
        ORDERS: rig.sim.start_task(ORDERS, "masterStandbySwapJob", status="EXECUTING"),
        SESSIONS: rig.sim.start_task(SESSIONS, "BindEip", status="RUNNING"),
    }
    orders = f"{PROJECT_ID}/{ORDERS}"

    def replica(name: str) -> Config:
        return rig.config(extra=f"scaling: {{enabled: true, replica: {name}, shards: 4, lease_ttl: 1}}")

    async with contextlib.AsyncExitStack() as one, contextlib.AsyncExitStack() as two:
        r1 = await one.enter_async_context(running(replica("r1")))
        r2 = await two.enter_async_context(running(replica("r2")))
        await until(lambda: len(rig.of("task.stuck")) == 2, 10, "both tasks stuck")
        await rig.polls(ORDERS, 3)
        await rig.polls(SESSIONS, 3)
        assert stuck_count(r1) + stuck_count(r2) == 2  # each queued by one replica only
        # The replica polling orders-cache leaves: the other takes it over, reading its (marked) state.
        leaving, staying = (one, r2) if r1.poller.fleet.owns(orders) else (two, r1)
        before = stuck_count(staying)
        await leaving.aclose()
        await until(lambda: staying.poller.fleet.owns(orders), 10, "the takeover")
        await rig.polls(ORDERS, 4)
        assert stuck_count(staying) == before
        for iid, tid in ids.items():
            rig.sim.finish_task(iid, tid)
        await until(lambda: len(rig.of("task.succeeded")) == 2, 10, "both ends")
    assert sorted(p["data"]["task"]["id"] for p in rig.of("task.stuck")) == sorted(ids.values())
    for end in rig.of("task.succeeded"):
        assert end["data"]["stuck"]["note"].startswith("was stuck for ")


async def test_through_the_cli_a_task_past_its_limit_at_the_baseline_is_announced_stuck(rig: Rig) -> None:
    tid = rig.sim.start_task(
        ORDERS, "EXTEND", status="EXECUTING", created_at=datetime.now(UTC) - timedelta(hours=3)
    )
    path = rig.tmp / "watchdog.yaml"
    path.write_text(rig.text(limit="30m"))  # EXTEND keeps its default, 2 h
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier.cli", "run", "--config", str(path),
        env=rig.env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await until(lambda: len(rig.of("task.stuck")) == 1, 15, "task.stuck at the baseline")
        await rig.polls(ORDERS, 3)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert [p["type"] for p in rig.audit.payloads] == ["task.started", "task.stuck"]
    [event] = rig.of("task.stuck", tid)
    assert "Scale on orders-cache is stuck: EXECUTING for 3 h" in event["data"]["summary"]
    assert event["data"]["summary"].endswith("(limit 2 h)")
    assert event["data"]["stuck"]["limit_seconds"] == 7200.0
    assert "task.stuck" in err.decode()  # logged


# -- Slack: a broadcast thread reply on the task's card ------------------------------------------------

TOKEN = "xoxb-0000-watchdog"
GROUP = "<!subteam^S0123ABC>"

SLACK = """
cloud: {endpoint: "${SIM_URL}", project_id: "__PROJECT__", ak: "${CLOUD_SDK_AK}", sk: "${CLOUD_SDK_SK}"}
instances: [{id: "__ORDERS__", name: orders-cache}]
poll: {interval: 0.3, active_interval: 0.2, jitter: 0}
redis: {url: "${REDIS_URL}", key_prefix: wds}
channels:
  oncall: {type: slack, token: "${SLACK_TOKEN}", channel: "#oncall", base_url: "${SLACK_API}", rate: 50}
  hook: {type: slack, webhook_url: "${SLACK_HOOK}"}
rules:
  - {name: changes, channels: [oncall, hook], mention: ["__GROUP__"], group_wait: 0}
delivery: {backoff_initial: 0.05, backoff_max: 0.4, claim_idle: 1, stop_timeout: 5}
watchdog: {masterStandbySwapJob: 1s}
"""


async def test_on_a_slack_card_it_is_a_broadcast_thread_reply_with_the_mention_and_the_end_says_so(
    sim: Simulator, redis_url: str
) -> None:
    async with SlackStandIn(token=TOKEN, channels=["oncall"]) as slack:
        text = (
            SLACK.replace("__PROJECT__", PROJECT_ID).replace("__ORDERS__", ORDERS).replace("__GROUP__", GROUP)
        )
        env = {"SIM_URL": str(sim.base_url), "CLOUD_SDK_AK": AK, "CLOUD_SDK_SK": SK, "REDIS_URL": redis_url,
               "SLACK_TOKEN": TOKEN, "SLACK_API": slack.api_base_url, "SLACK_HOOK": slack.webhook_url}  # fmt: skip
        async with running(parse_config(text, "slack.yaml", env)):
            tid = sim.start_task(ORDERS, "masterStandbySwapJob", status="EXECUTING")
            [card] = await slack.wait_until(lambda: slack.cards("#oncall"), timeout=10)
            await slack.wait_until(lambda: slack.broadcasts("#oncall"), timeout=10)
            sim.finish_task(ORDERS, tid)
            await slack.wait_until(
                lambda: len(slack.replies(card.channel, card.ts)) == 2 and "succeeded" in slack.cards("#oncall")[0].text,
                timeout=10,
            )  # fmt: skip
            await slack.wait_until(lambda: len(slack.cards("incoming-webhook")) == 3, timeout=10)
    [card] = slack.cards("#oncall")  # the task's one card: no message of its own for the stuck task
    assert GROUP not in card.text and "succeeded on orders-cache" in card.text
    stuck_reply, end_reply = slack.replies(card.channel, card.ts)
    assert stuck_reply.reply_broadcast and stuck_reply.text.startswith(f"{GROUP} :alarm_clock: ")
    assert "is stuck: EXECUTING for" in stuck_reply.text and "(limit 1 s)" in stuck_reply.text
    assert not end_reply.reply_broadcast and GROUP not in end_reply.text
    assert "was stuck for" in end_reply.text and "(limit 1 s)" in end_reply.text
    # Without cards (an incoming webhook): a message of its own, with the mention.
    start, stuck_post, end_post = slack.cards("incoming-webhook")
    assert "started on orders-cache" in start.text
    assert stuck_post.text.startswith(f"{GROUP} :alarm_clock: ") and "is stuck: EXECUTING" in stuck_post.text
    assert "succeeded on orders-cache" in end_post.text and "was stuck for" in repr(end_post.blocks)
