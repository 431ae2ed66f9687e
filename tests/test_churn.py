"""Instances that come and go leave nothing behind: retiring one drops everything kept of it.

The poller's discovery is given instance listings directly (5,000 instances a round through the
simulator's HTTP listing would cost seconds and test nothing more); the instances it polls answer from
the simulator, and the state goes to a real redis-server. What the process keeps is measured by walking
every container reachable from the poller (its fleet, the health tracker, the DCS clients and their
caches, the store), so a per-instance map added anywhere later is covered too.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import pytest
import redis.asyncio as aioredis

from notifier.config.load import parse_config
from notifier.dcs.cloud import Cloud
from notifier.devtools.simulator import Fault, Simulator
from notifier.pipeline.poll import Poller
from notifier.store.connect import Store
from notifier.store.keys import Keys
from notifier.store.leases import ShardLeases
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK
from tests.support.observe import container_sizes

CHURN = 5000
#: Of each round's instances, this many are polled (their state known),
#: this many of those fail until they are announced unhealthy, and this many are deleted (the polled
#: ones and as many never polled); the others stop matching the discovery filter.
POLLED, FAILING, DELETED = 20, 5, 40

DISCOVERING = f"""
cloud:
  endpoint: "${{SIM_URL}}"
  project_id: "{PROJECT_ID}"
  ak: "{AK}"
  sk: "{SK}"
  discover: true
  filter: {{tags: {{team: cache}}}}
instances: [{{id: "{ORDERS}"}}, {{id: "{SESSIONS}"}}]
poll: {{interval: 30}}
health: {{after: 1}}
api: {{rate_limit: 100000}}
redis: {{url: "${{REDIS_URL}}", key_prefix: churn}}
channels:
  audit: {{type: webhook, url: "http://127.0.0.1:9/"}}
"""


#: Containers bounded by time or by label values, not by instances: the rate limiters' record of the last
#: seconds' calls; the metrics' labelled series (source × outcome × reason...: no instance id in a label).
BY_TIME = ("._successes", "metrics._children")


def big_module_caches() -> dict[str, int]:
    """notifier's module-level caches that could hold one entry per instance (unbounded or over 1,024
    entries, holding more than one)."""
    big = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("notifier."):
            for attr, value in vars(module).items():
                if isinstance(value, functools._lru_cache_wrapper) and value.__module__ == name:
                    info = value.cache_info()
                    if (info.maxsize is None or info.maxsize > 1024) and info.currsize > 1:
                        big[f"{name}.{attr}"] = info.currsize
    return big


def kept(poller: Poller) -> dict[str, int]:
    return {p: n for p, n in container_sizes(poller).items() if not p.endswith(BY_TIME)}


def grown(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
    """The paths whose containers hold more than before: (before, after)."""
    return {p: (before.get(p, 0), n) for p, n in after.items() if n > before.get(p, 0)}


def listing(ids: list[str], team: str) -> list[dict[str, Any]]:
    """Instances as ``GET /v2/{project_id}/instances`` lists them."""
    return [
        {"instance_id": iid, "name": iid, "status": "RUNNING", "tags": [{"key": "team", "value": team}]}
        for iid in ids
    ]


async def test_5000_instances_discovered_then_removed_three_times_leave_nothing_behind(
    sim: Simulator, redis_client: aioredis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = parse_config(DISCOVERING, "churn.yaml", {"SIM_URL": str(sim.base_url), "REDIS_URL": redis_url})
    cloud = Cloud(cfg)
    mono = [1000.0]
    poller = Poller(cfg, cloud.clients, Store(redis_client, Keys("churn")), monotonic=lambda: mono[0])
    # One replica holding every shard: the leases' per-instance bookkeeping is walked too.
    leases = ShardLeases(redis_client, Keys("churn"), replica="r1", shards=16, ttl=30, handover=30)
    await leases.tick()
    poller.leases = leases
    [spec] = poller.projects
    caplog.set_level("WARNING")  # 5,000 "discovered instance" lines a round are not what is measured
    try:
        assert await poller.discover(spec)  # through the simulator: the configured instances stay
        for target in poller.targets.values():  # polled, known, cached
            assert (await poller.poll_target(target)).ok
        before = kept(poller)
        for round_ in range(3):
            ids = [f"churn-{round_}-{n}" for n in range(CHURN)]
            for iid in ids[:POLLED]:
                sim.add_instance(iid, iid)
            await poller.discovery.apply(spec, listing(ids, "cache"))
            targets = poller.targets
            for iid in ids[:POLLED]:
                if iid in ids[:FAILING]:
                    sim.inject(Fault.server_error(), times=2, instance_id=iid)
                outcome = await poller.poll_target(targets[f"{PROJECT_ID}/{iid}"])
                assert outcome.ok == (iid not in ids[:FAILING])
            mono[0] += 2  # past health.after: the failing ones' next failure is announced
            for iid in ids[:FAILING]:
                assert not (await poller.poll_target(targets[f"{PROJECT_ID}/{iid}"])).ok
            assert {f"{PROJECT_ID}/{iid}" for iid in ids[:FAILING]} <= set(poller.health.announced)

            growth = {p: n - before.get(p, 0) for p, n in kept(poller).items()}
            # The walk sees what is kept per instance (else this test could not fail): the fleet's
            # records, the health tracker's announcements.
            assert {CHURN, POLLED, FAILING} <= set(growth.values()), growth

            for iid in ids[:POLLED]:
                sim.remove_instance(iid)
            # The deleted ones are gone from the list (and woken), the others no longer match the filter.
            await poller.discovery.apply(spec, listing(ids[DELETED:], "search"))
            for iid in ids[:DELETED]:  # the wake-up polls: 404 DCS.3022, deleted
                assert not (await poller.poll_target(targets[f"{PROJECT_ID}/{iid}"])).ok
            assert {t.instance.id for t in poller.targets.values()} == {ORDERS, SESSIONS}
            after = kept(poller)
            assert grown(before, after) == {}, f"round {round_}"
            assert after == before
            assert big_module_caches() == {}, "module-level caches could keep instances no forget() reaches"
    finally:
        await cloud.aclose()
