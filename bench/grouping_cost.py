"""What grouping costs delivery: the same notifications through the same channel, grouped or not.

    .venv/bin/python -m bench.grouping_cost [--notifications 2000] [--rounds 6]

A real redis-server and a webhook receiver in this process; a generic webhook channel, so that each
message costs the same HTTP round trip. Each round queues the same notifications (task events of
``--notifications`` instances, one burst) in two channels' outboxes and drains them with
:class:`~notifier.delivery.worker.Deliverer`:

* ``plain`` — the channel does not group (a generic webhook's default): one POST per notification, read in
  batches of ``delivery.batch``;
* ``planned`` — every entry goes through the gathered pass and :func:`~notifier.delivery.grouping.plan`
  (``digest.webhooks`` asks for it; no digest at this size), yet is still sent alone — the planning's own
  cost, nothing saved;
* ``grouped`` — ``group_wait: 30s`` (a burst already older than that): one POST for the whole group.

The order of the three is rotated every round; CPU (``getrusage``) per notification. The targets (issue
15): planning adds < 5 % to delivering (``planned / plain``); grouping a burst saves most of it. At
10,000 instances polled every 30 s with 1 % changing, deliveries are ~3 per second: even the plain cost
per notification times that is a small share of a core, shown too. ``plan()`` is also timed alone.

Prints a table and writes bench/results/grouping_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import tempfile
import time
import timeit
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from notifier.config.models import DeliveryConfig, DigestConfig, RuleConfig
from notifier.delivery.channels.webhook import WebhookChannel, WebhookChannelConfig
from notifier.delivery.grouping import plan
from notifier.delivery.worker import Deliverer
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.pipeline.events import EventType, Notification
from notifier.store.connect import Store
from notifier.store.keys import Keys
from notifier.store.outbox import OutboxEntry, entry_fields
from tests.factories import event, task
from tests.support.redis_server import RedisServer

RESULTS = Path(__file__).parent / "results" / "grouping_cost.json"
TARGET_PLANNED_RATIO = 1.05
KINDS = ("plain", "planned", "grouped")


def notifications(n: int, channel: str, rule: str) -> list[Notification]:
    out = []
    now = datetime.now(UTC)
    for i in range(n):
        ev = event(EventType.STARTED, task(id=f"t{i}", created=now))
        ref = ev.instance.model_copy(update={"id": f"i-{i}", "name": f"cache-{i:05d}"})
        ev = ev.model_copy(update={"instance": ref, "id": f"evt_{i:032d}"})
        out.append(Notification(event=ev, channel=channel, rule=rule))
    return out


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_round(store: Store, redis: aioredis.Redis, url: str, kind: str, n: int) -> float:
    name = f"ch-{kind}"
    rules = {
        "plain": RuleConfig(name="r", channels=[name]),
        "planned": RuleConfig(name="r", channels=[name]),
        "grouped": RuleConfig(name="r", channels=[name], group_wait=30),
    }
    channel = WebhookChannel(name, WebhookChannelConfig.model_validate({"type": "webhook", "url": url}))
    config = DeliveryConfig(consumer="bench", batch=100, group_wait=0)
    # planned: the gathered pass (asked for by digest.webhooks; no digest this size) without grouping.
    digest = DigestConfig(after=100_000, webhooks=True) if kind == "planned" else DigestConfig(after=0)
    deliverer = Deliverer(store.outbox, {name: channel}, config, rules=[rules[kind]], digest=digest)
    deliverer.wait_for_groups = False  # the burst is "older than group_wait"
    await redis.delete(store.keys.outbox(name))
    await store.outbox.ensure_group(name, force=True)
    pipe = redis.pipeline(transaction=False)
    for nt in notifications(n, name, "r"):
        pipe.xadd(store.keys.outbox(name), entry_fields(nt))
    await pipe.execute()
    await redis.delete(*[k async for k in redis.scan_iter(match=f"{store.keys.prefix}:delivered:*")] or ["-"])
    try:
        start = cpu()
        while await redis.xlen(store.keys.outbox(name)):
            await deliverer.drain(name)
        return (cpu() - start) / n
    finally:
        await channel.aclose()


async def run(n: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), persistence=False)
        server.start()
        try:
            async with (
                WebhookReceiver() as receiver,
                aioredis.Redis.from_url(server.url, decode_responses=True) as redis,
            ):
                store = Store(redis, Keys("bench"))
                per: dict[str, list[float]] = {k: [] for k in KINDS}
                for r in range(rounds):
                    order = KINDS[r % 3 :] + KINDS[: r % 3]
                    for kind in order:
                        per[kind].append(await one_round(store, redis, receiver.url, kind, n))
                posts = len(receiver.requests)
        finally:
            server.stop(kill=True)
    best = {k: min(v) for k, v in per.items()}
    entries = [
        OutboxEntry(f"{int(time.time() * 1000)}-{i}", "c", nt)
        for i, nt in enumerate(notifications(n, "c", "r"))
    ]
    rule = {"r": RuleConfig(name="r", channels=["c"], group_wait=30)}
    reps = 5
    plan_s = timeit.timeit(
        lambda: plan(entries, rules=rule, chat=True, digest=DigestConfig(), now=time.time()), number=reps
    )
    deliveries_per_s = 10_000 * 0.01 / 30 * 10  # 1 % changing, every 30 s, ×10 for a burst-heavy hour
    return {
        "notifications": n,
        "rounds": rounds,
        "cpu_us_per_notification": {k: round(v * 1e6, 1) for k, v in best.items()},
        "planned_vs_plain": round(best["planned"] / best["plain"], 3),
        "grouped_vs_plain": round(best["grouped"] / best["plain"], 3),
        "plan_us_per_entry": round(plan_s / reps / n * 1e6, 2),
        "posts_received": posts,
        "share_of_a_core_at_10k_plain": round(best["plain"] * deliveries_per_s, 5),
        "target_planned_ratio": TARGET_PLANNED_RATIO,
        "met": best["planned"] / best["plain"] <= TARGET_PLANNED_RATIO,
        "python": platform.python_version(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    result = asyncio.run(run(args.notifications, args.rounds))
    print(f"delivering {result['notifications']:,} notifications to a local webhook (CPU of this process)")
    print(f"{'how':<12}{'CPU µs / notification':>24}")
    for kind, us in result["cpu_us_per_notification"].items():
        print(f"{kind:<12}{us:>24.1f}")
    print(f"planned / plain: {result['planned_vs_plain']} (target ≤ {TARGET_PLANNED_RATIO})")
    print(f"grouped / plain: {result['grouped_vs_plain']}")
    print(f"plan(): {result['plan_us_per_entry']} µs per entry")
    print("target met" if result["met"] else "TARGET NOT MET")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
