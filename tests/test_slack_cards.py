"""Issue 12 end to end: one living Slack card per task, through the real daemon and the Slack stand-in.

What is asserted is what a person in the channel sees: how many messages the channel shows, what each
card says after its last edit, which thread replies were broadcast and who they mention.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.config.models import Config
from notifier.devtools.simulator import Fault, Simulator
from notifier.devtools.standins.slack import Message, SlackStandIn
from tests.conftest import ORDERS, PROJECT_ID, SESSIONS
from tests.support.daemons import cli_env, running
from tests.support.wait import until_async

TOKEN = "xoxb-0000-living-cards"
GROUP, USER = "<!subteam^S0123ABC>", "<@U0456DEF>"

CONFIG = """
cloud: {endpoint: "${SIM_URL}", project_id: "__PROJECT__", ak: "${CLOUD_SDK_AK}", sk: "${CLOUD_SDK_SK}"}
instances:
  - {id: "__ORDERS__", name: orders-cache}
  - {id: "__SESSIONS__", name: sessions-cache}
poll: {interval: __INTERVAL__, active_interval: __ACTIVE__}
redis: {url: "${REDIS_URL}", key_prefix: c}
channels:
  oncall: {type: slack, token: "${SLACK_TOKEN}", channel: "#oncall", base_url: "${SLACK_API}", rate: __RATE__}
rules:
  - name: changes
    channels: [oncall]
    mention: ["__GROUP__", "__USER__"]
delivery: {max_attempts: 1000, backoff_initial: 0.05, backoff_max: 0.4, claim_idle: 1, stop_timeout: 5, group_wait: 0}
__EXTRA__
"""


@dataclass
class Rig:
    sim: Simulator
    slack: SlackStandIn
    redis_url: str
    redis: aioredis.Redis
    tmp: Path

    def env(self) -> dict[str, str]:
        return cli_env(
            self.sim.base_url, self.redis_url, SLACK_TOKEN=TOKEN, SLACK_API=self.slack.api_base_url
        )

    def text(self, *, interval: float = 0.3, active: float = 0.3, rate: float = 50, extra: str = "") -> str:
        replaced = {
            "__PROJECT__": PROJECT_ID,
            "__ORDERS__": ORDERS,
            "__SESSIONS__": SESSIONS,
            "__INTERVAL__": f"{interval:g}",
            "__ACTIVE__": f"{active:g}",
            "__RATE__": f"{rate:g}",
            "__GROUP__": GROUP,
            "__USER__": USER,
            "__EXTRA__": extra,
        }
        text = CONFIG
        for k, v in replaced.items():
            text = text.replace(k, v)
        return text

    def config(self, **kw: object) -> Config:
        return parse_config(self.text(**kw), "cards.yaml", self.env())  # type: ignore[arg-type]

    async def cli(self, *args: str, **kw: object) -> asyncio.subprocess.Process:
        path = self.tmp / "cards.yaml"
        path.write_text(self.text(**kw))  # type: ignore[arg-type]
        env = {**self.env(), "DCS_NOTIFIER_CONFIG": str(path)}
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "notifier.cli", *args,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip

    def cards(self) -> list[Message]:
        return self.slack.cards("#oncall")

    def replies(self, card: Message) -> list[Message]:
        return self.slack.replies(card.channel, card.ts)

    def card_of(self, task_id: str) -> list[Message]:
        """The cards whose context names ``task_id`` (a card says which task it shows)."""
        return [m for m in self.cards() if task_id in repr(m.blocks)]

    async def polled(self, n: int = 2) -> None:
        """Both instances polled ``n`` times (the daemon has made its baselines)."""
        await self.sim.wait_for(
            lambda: min(len(self.sim.task_requests(i)) for i in (ORDERS, SESSIONS)) >= n, within=15
        )

    async def dead_letters(self) -> int:
        return int(await self.redis.xlen("c:dead"))


@pytest.fixture
async def rig(
    sim: Simulator, redis_url: str, redis_client: aioredis.Redis, tmp_path: Path
) -> AsyncIterator[Rig]:
    async with SlackStandIn(token=TOKEN, channels=["oncall"]) as slack:
        yield Rig(sim, slack, redis_url, redis_client, tmp_path)


def final(card: Message, words: str) -> bool:
    return words in card.text and not card.deleted


async def test_three_tasks_give_three_cards_updated_to_their_outcome_and_the_failure_pings_from_its_thread(
    rig: Rig,
) -> None:
    proc = await rig.cli("run")
    try:
        await rig.polled()
        ids = [
            rig.sim.start_task(ORDERS, "masterStandbySwapJob"),
            rig.sim.start_task(SESSIONS, "EXTEND"),
            rig.sim.start_task(ORDERS, "modifyIpWhitelist"),
        ]
        await rig.slack.wait_until(lambda: len(rig.cards()) == 3, timeout=15)
        rig.sim.finish_task(ORDERS, ids[0])
        rig.sim.finish_task(SESSIONS, ids[1], status="FAILED")
        rig.sim.finish_task(ORDERS, ids[2])
        await rig.slack.wait_until(
            lambda: sum(len(rig.replies(c)) for c in rig.cards()) >= 3 and len(rig.cards()) == 3, timeout=15
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()

    cards = rig.cards()
    assert len(cards) == 3  # one message per task in the channel, not one per event
    [swap], [extend], [whitelist] = (rig.card_of(i) for i in ids)
    assert final(swap, "succeeded on orders-cache") and final(whitelist, "succeeded on orders-cache")
    assert final(extend, "failed on sessions-cache")
    for card in cards:
        assert len(card.edits) == 1  # posted when it started, edited once when it ended
        assert card.channel == rig.slack.channel_id("#oncall")
        assert GROUP not in card.text  # no ping on a start, none in an edit
        [reply] = rig.replies(card)
        assert reply.thread_ts == card.ts
    [broadcast] = rig.slack.broadcasts("#oncall")
    assert broadcast.thread_ts == extend.ts and broadcast.text.startswith(f"{GROUP} {USER} ")
    assert "failed on sessions-cache" in broadcast.text
    for card in (swap, whitelist):
        [reply] = rig.replies(card)
        assert (
            not reply.reply_broadcast and "<@" not in reply.text and "<!" not in reply.text.split("<!date")[0]
        )
    assert rig.slack.ratelimited == 0 and await rig.dead_letters() == 0


async def test_kill_9_between_start_and_end_still_one_card_updated_after_the_restart(rig: Rig) -> None:
    proc = await rig.cli("run")
    try:
        await rig.polled()
        tid = rig.sim.start_task(ORDERS, "masterStandbySwapJob")
        await rig.slack.wait_until(lambda: len(rig.cards()) == 1, timeout=15)

        async def acknowledged() -> bool:  # the card's ts is in Redis with the acknowledgement
            return await rig.redis.xlen("c:outbox:oncall") == 0 and bool(await rig.redis.keys("c:card:*"))

        await until_async(acknowledged, 15, "the card acknowledged")
    finally:
        proc.kill()
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rig.sim.finish_task(ORDERS, tid)
    proc = await rig.cli("run")
    try:
        await rig.slack.wait_until(lambda: any(final(c, "succeeded") for c in rig.cards()), timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 20)
    [card] = rig.cards()
    assert final(card, "succeeded on orders-cache") and len(card.edits) == 1


async def test_two_replicas_keep_one_card_per_task(rig: Rig) -> None:
    scaling = "scaling: {enabled: true, replica: __R__, shards: 8, lease_ttl: 2}"
    one = rig.config(extra=scaling.replace("__R__", "r1"))
    two = rig.config(extra=scaling.replace("__R__", "r2"))
    async with running(one), running(two):
        await rig.polled()
        ids = [rig.sim.start_task(inst, "masterStandbySwapJob") for inst in (ORDERS, SESSIONS, ORDERS)]
        await rig.slack.wait_until(lambda: len(rig.cards()) == 3, timeout=15)
        for i, tid in enumerate(ids):
            rig.sim.finish_task(SESSIONS if i == 1 else ORDERS, tid)
        await rig.slack.wait_until(lambda: all(final(c, "succeeded") for c in rig.cards()), timeout=15)
    assert len(rig.cards()) == 3
    assert sorted(len(rig.card_of(i)) for i in ids) == [1, 1, 1]


async def test_a_card_deleted_by_a_person_is_posted_anew_without_a_dead_letter(rig: Rig) -> None:
    async with running(rig.config()):
        await rig.polled()
        tid = rig.sim.start_task(ORDERS, "EXTEND")
        [card] = await rig.slack.wait_until(lambda: rig.cards() or None, timeout=15)
        rig.slack.delete_message(card.channel, card.ts)
        rig.sim.finish_task(ORDERS, tid)
        [new] = await rig.slack.wait_until(lambda: rig.cards() or None, timeout=15)
    assert new.ts != card.ts and final(new, "succeeded on orders-cache")
    assert await rig.dead_letters() == 0


async def test_fifty_tasks_at_once_stay_within_slacks_limits_and_all_cards_end_final(rig: Rig) -> None:
    # Slack's limits scaled up 50× (1/s per channel for posts), the channel's rate set under them as the
    # README says: 150 calls (50 posts, 50 edits, 50 replies) in about 4 s.
    rig.slack.post_rate, rig.slack.update_rate = 50.0, 50.0
    async with running(rig.config(rate=40)):
        await rig.polled()
        ids = [rig.sim.start_task(ORDERS if i % 2 else SESSIONS, "masterStandbySwapJob") for i in range(50)]
        await rig.slack.wait_until(lambda: len(rig.cards()) == 50, timeout=30)
        for i, tid in enumerate(ids):
            rig.sim.finish_task(ORDERS if i % 2 else SESSIONS, tid)
        await rig.slack.wait_until(lambda: all(final(c, "succeeded") for c in rig.cards()), timeout=30)
    assert len(rig.cards()) == 50 and rig.slack.ratelimited == 0
    assert await rig.dead_letters() == 0


async def test_an_instance_with_a_task_in_progress_is_polled_at_active_interval_then_back_to_interval(
    rig: Rig,
) -> None:
    async with running(rig.config(interval=1, active=0.05)):
        await rig.polled(1)
        tid = rig.sim.start_task(ORDERS, "masterStandbySwapJob")
        await rig.slack.wait_until(lambda: len(rig.cards()) == 1, timeout=15)
        busy, idle = len(rig.sim.task_requests(ORDERS)), len(rig.sim.task_requests(SESSIONS))
        await rig.sim.wait_for(lambda: len(rig.sim.task_requests(ORDERS)) >= busy + 8, within=3)
        assert len(rig.sim.task_requests(SESSIONS)) <= idle + 2  # the other one keeps its 1 s
        rig.sim.finish_task(ORDERS, tid)
        await rig.slack.wait_until(lambda: final(rig.cards()[0], "succeeded"), timeout=10)
        done, idle = len(rig.sim.task_requests(ORDERS)), len(rig.sim.task_requests(SESSIONS))
        await rig.sim.wait_for(lambda: len(rig.sim.task_requests(SESSIONS)) >= idle + 2, within=10)
        assert len(rig.sim.task_requests(ORDERS)) <= done + 3  # nothing runs: back to every 1 s


async def test_an_instance_that_cannot_be_polled_gets_one_card_and_its_recovery_edits_it(rig: Rig) -> None:
    async with running(rig.config(extra="health: {after: 0.5}")):
        await rig.polled()
        rig.sim.inject(Fault.server_error(503, "DCS.5030"), times=10_000, instance_id=SESSIONS)
        [card] = await rig.slack.wait_until(lambda: rig.cards() or None, timeout=15)
        assert "Cannot poll sessions-cache" in card.text and card.text.startswith(f"{GROUP} {USER} ")
        rig.sim.clear_faults()
        await rig.slack.wait_until(lambda: "works again" in rig.cards()[0].text, timeout=15)
    [card] = rig.cards()  # the recovery edited the card of the failure, and said so in its thread
    [reply] = rig.replies(card)
    assert "Polling sessions-cache works again" in reply.text and not reply.reply_broadcast
    assert GROUP not in card.text  # the edit carries no mention


async def test_a_dead_lettered_edit_replayed_later_edits_the_same_card(rig: Rig) -> None:
    async with running(rig.config()):
        await rig.polled()
        tid = rig.sim.start_task(ORDERS, "masterStandbySwapJob")
        [card] = await rig.slack.wait_until(lambda: rig.cards() or None, timeout=15)
        rig.slack.enqueue(SlackStandIn.api_error("invalid_auth"))  # the edit is refused for good
        rig.sim.finish_task(ORDERS, tid)

        async def buried() -> bool:
            return await rig.dead_letters() == 1

        await until_async(buried, 15, "the edit dead-lettered")
    proc = await rig.cli("dead-letters", "replay", "--all")
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "delivered to oncall" in out.decode()
    [again] = rig.cards()
    assert again.ts == card.ts and final(again, "succeeded on orders-cache")
    [reply] = rig.replies(again)
    assert "succeeded on orders-cache" in reply.text


async def test_once_edits_the_card_a_running_daemon_posted(rig: Rig) -> None:
    async with running(rig.config()):
        await rig.polled()
        tid = rig.sim.start_task(SESSIONS, "EXTEND")
        [card] = await rig.slack.wait_until(lambda: rig.cards() or None, timeout=15)
    rig.sim.finish_task(SESSIONS, tid)
    daemon = Daemon(rig.config())
    try:
        result = await daemon.once()
    finally:
        await daemon.aclose()
    assert not result.problems
    [again] = rig.cards()
    assert again.ts == card.ts and final(again, "succeeded on sessions-cache")
