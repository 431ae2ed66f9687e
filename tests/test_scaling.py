"""Issue 5, scale-out: three `dcs-notifier run` replicas share one Redis and split 300 instances.

The same test runs against one redis-server and against a real local 3-master Redis Cluster.

Each replica is a real process (the CLI) with an AK of its own, so the simulator's request log says which
replica polled what. One is killed with SIGKILL; its instances move to the others within 2 × lease TTL;
every injected transition is delivered exactly once, by event id.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import pytest

from notifier.devtools.simulator import Simulator
from notifier.devtools.simulator.state import RecordedRequest as SimRequest
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.store.connect import Store, connect_redis
from notifier.store.keys import Keys
from notifier.store.outbox import Outbox
from tests.support.wait import until, until_async

PROJECT = "5caleb0a2d3e4f5061728394a5b6c7d8"
INSTANCES = [f"i-{n:03d}" for n in range(300)]
REPLICAS = {"r1": ("HPUAREPLICA1AK000001", "sk-replica-1"), "r2": ("HPUAREPLICA2AK000002", "sk-replica-2"),
            "r3": ("HPUAREPLICA3AK000003", "sk-replica-3")}  # fmt: skip
BY_AK = {ak: name for name, (ak, _) in REPLICAS.items()}
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
INTERVAL = 1.0
TTL = 2.0


def replica_of(r: SimRequest) -> str | None:
    m = re.search(r"Access=([^,]+)", r.headers.get("Authorization", ""))
    return BY_AK.get(m.group(1)) if m else None


@dataclass
class Cluster:
    sim: Simulator
    audit: WebhookReceiver
    redis_url: str
    tmp: Path
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    def config(self, name: str) -> Path:
        ak, sk = REPLICAS[name]
        listed = ", ".join(f"{{id: {i}}}" for i in INSTANCES)
        path = self.tmp / f"{name}.yaml"
        path.write_text(
            f"""
cloud: {{endpoint: "{self.sim.base_url}", project_id: "{PROJECT}", ak: "{ak}", sk: "{sk}"}}
instances: [{listed}]
poll: {{interval: {INTERVAL}, jitter: 0, baseline_grace: 900}}
api: {{rate_limit: 10000, max_concurrency: 32, region_concurrency: 32}}
redis: {{url: "{self.redis_url}", key_prefix: "sc"}}
channels:
  audit: {{type: webhook, url: "{self.audit.url}", secret: "{SECRET}"}}
delivery: {{backoff_initial: 0.05, backoff_max: 0.2, claim_idle: 2}}
scaling: {{enabled: true, replica: {name}, shards: 64, lease_ttl: {TTL}}}
"""
        )
        return path

    async def start(self, name: str) -> None:
        with (self.tmp / f"{name}.log").open("wb") as log:  # the child keeps its own descriptor
            self.procs[name] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "notifier.cli", "run", "--config", str(self.config(name)),
                stdout=log, stderr=log,
            )  # fmt: skip

    def polls(self, since: float = 0.0) -> list[tuple[float, str, str]]:
        """(time, instance, replica) of every successful tasks poll since ``since``."""
        out = []
        for r in self.sim.task_requests():
            if r.status == 200 and r.at >= since and r.instance_id is not None:
                replica = replica_of(r)
                if replica is not None:
                    out.append((r.at, r.instance_id, replica))
        return out

    def owners(self, since: float) -> dict[str, set[str]]:
        owners: dict[str, set[str]] = defaultdict(set)
        for _, instance, replica in self.polls(since):
            owners[instance].add(replica)
        return owners


@pytest.fixture(params=["standalone", "cluster"])
def shared_redis(request: pytest.FixtureRequest) -> str:
    """The Redis the replicas share: one server, or a real 3-master Redis Cluster."""
    if request.param == "cluster":
        url: str = request.getfixturevalue("redis_cluster").url
        return url
    standalone: str = request.getfixturevalue("redis_url")
    return standalone


@pytest.fixture
async def cluster(shared_redis: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    redis_url = shared_redis
    sim = Simulator(project_id=PROJECT, credentials={ak: sk for ak, sk in REPLICAS.values()})
    for iid in INSTANCES:
        sim.add_instance(iid, iid)
    async with sim, WebhookReceiver(secret=SECRET) as audit:
        rig = Cluster(sim, audit, redis_url, tmp_path)
        try:
            yield rig
        finally:
            for proc in rig.procs.values():
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in rig.procs.values():
                await asyncio.wait_for(proc.wait(), 20)


def webhook_ids(audit: WebhookReceiver, type_: str) -> Counter[str]:
    return Counter(
        r.header("webhook-id") or ""
        for r in audit.requests
        if 200 <= r.status < 300 and isinstance(r.json, dict) and r.json.get("type") == type_
    )


async def test_three_replicas_split_the_fleet_and_survive_a_kill(cluster: Cluster) -> None:
    sim = cluster.sim
    loop = asyncio.get_running_loop()
    for name in REPLICAS:
        await cluster.start(name)

    # Settled: over two intervals every instance is polled, each by exactly one replica, all three busy.
    def settled() -> bool:
        owners = cluster.owners(since=loop.time() - 2 * INTERVAL)
        return (
            len(owners) == len(INSTANCES)
            and all(len(r) == 1 for r in owners.values())
            and {next(iter(r)) for r in owners.values()} == set(REPLICAS)
        )

    await until(settled, 40, "300 instances split over 3 replicas, one owner each")
    # Inject 30 transitions spread over the fleet.
    changed = INSTANCES[::10]
    tasks = {iid: sim.start_task(iid, "masterStandbySwapJob") for iid in changed}
    await until(lambda: len(webhook_ids(cluster.audit, "task.started")) >= 30, 30, "30 task.started")
    # ... and acknowledged: a replica killed between a send and its acknowledgement sends it again (the
    # documented at-least-once window, which webhook-id lets a receiver close); this test is about the
    # transitions after the kill.
    r = connect_redis(cluster.redis_url)
    try:
        outbox = Store(r, Keys("sc")).outbox
        await until_async(lambda: _drained(outbox), 15, "every start acknowledged")
    finally:
        await r.aclose()

    # Kill one replica (no clean-up at all) and note which instances it polled.
    window = loop.time() - 2 * INTERVAL
    orphans = {iid for iid, rs in cluster.owners(window).items() if rs == {"r1"}}
    assert orphans
    cluster.procs["r1"].send_signal(signal.SIGKILL)
    await cluster.procs["r1"].wait()
    killed_at = loop.time()
    for iid, tid in tasks.items():
        sim.finish_task(iid, tid)

    await until(
        lambda: orphans <= {i for _, i, r in cluster.polls(killed_at) if r != "r1"},
        4 * TTL,
        "the killed replica's instances polled by the others",
    )
    taken = {}
    for at, iid, replica in cluster.polls(killed_at):
        if iid in orphans and replica != "r1":
            taken.setdefault(iid, at - killed_at)
    assert max(taken.values()) <= 2 * TTL, sorted(taken.values())[-5:]
    await until(lambda: len(webhook_ids(cluster.audit, "task.succeeded")) >= 30, 30, "30 task.succeeded")

    # Exactly once, by event id, across replicas and the kill.
    started, succeeded = (
        webhook_ids(cluster.audit, "task.started"),
        webhook_ids(cluster.audit, "task.succeeded"),
    )
    assert len(started) == 30 and set(started.values()) == {1}, started
    assert len(succeeded) == 30 and set(succeeded.values()) == {1}, succeeded

    # No instance was polled by two replicas within one interval.
    by_instance: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for at, iid, replica in cluster.polls():
        by_instance[iid].append((at, replica))
    for iid, polls in by_instance.items():
        polls.sort()
        for (t1, r1), (t2, r2) in pairwise(polls):
            if r1 != r2:
                assert t2 - t1 >= INTERVAL - 0.1, (iid, r1, r2, t2 - t1)


async def _drained(outbox: Outbox) -> bool:
    """Whether the audit channel's outbox holds nothing (every notification acknowledged)."""
    return await outbox.backlog("audit") == 0
