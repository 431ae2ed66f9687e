"""Issue 14, ``dcs-notifier status``: one screen for a person, read from Redis only.

The daemon runs in this process against the simulator, a webhook receiver that accepts, one that answers
503 (its notifications stay queued) and one that answers 400 (they become dead letters). What is asserted
is what a person sees: :func:`gather_status`, and the CLI (a subprocess, text and ``--json``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from notifier.config.load import load_config, parse_config
from notifier.config.models import Config
from notifier.devtools.simulator import Fault, Simulator
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.ops.status import Reads, Status, assemble, gather_status, ranges, render_text
from notifier.pipeline.events import PollProblem
from notifier.store.connect import open_store
from notifier.store.keys import Keys
from notifier.store.leases import owner_of, shard_of
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK, WEBHOOK_SECRET
from tests.support.daemons import running
from tests.support.redis_cluster import RedisClusterServers
from tests.support.wait import until_async

CONFIG = """
cloud: {{endpoint: "{sim}", ces_endpoint: "{sim}", project_id: "{project}", ak: "{ak}", sk: "{sk}"{discover}}}
{instances}
poll: {{interval: 0.3, jitter: 0}}
health: {{after: 0.3}}
redis: {{url: "{redis}", key_prefix: st}}
channels:
  audit: {{type: webhook, url: "{audit}", secret: "{secret}"}}
  down: {{type: webhook, url: "{down}", secret: "{secret}"}}
  refused: {{type: webhook, url: "{refused}", secret: "{secret}"}}
delivery: {{max_attempts: 1000, backoff_initial: 0.05, backoff_max: 0.2}}
{extra}
"""
LISTED = f"""instances:
  - {{id: "{ORDERS}", name: orders-cache}}
  - {{id: "{SESSIONS}", name: sessions-cache}}"""


@dataclass
class Rig:
    sim: Simulator
    audit: WebhookReceiver
    down: WebhookReceiver
    refused: WebhookReceiver
    redis_url: str
    tmp: Path

    def config(self, extra: str = "", *, discover: bool = False, name: str = "status") -> Config:
        path = self.tmp / f"{name}.yaml"
        path.write_text(
            CONFIG.format(
                sim=self.sim.base_url,
                project=PROJECT_ID,
                ak=AK,
                sk=SK,
                discover=", discover: true" if discover else "",
                instances="" if discover else LISTED,
                redis=self.redis_url,
                audit=self.audit.url,
                down=self.down.url,
                refused=self.refused.url,
                secret=WEBHOOK_SECRET,
                extra=extra,
            )
        )
        return load_config(path)

    async def status(self, config: Config) -> Status:
        store = open_store(config)
        try:
            return await gather_status(config, store)
        finally:
            await store.aclose()

    async def cli(self, config_name: str, *args: str) -> str:
        """``python -m notifier.cli status ARGS`` with DCS_NOTIFIER_CONFIG; its stdout (it must exit 0)."""
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DCS_NOTIFIER_CONFIG": str(self.tmp / f"{config_name}.yaml"),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "notifier.cli", "status", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        text = out.decode() + err.decode()
        for secret in (SK, WEBHOOK_SECRET):
            assert secret not in text
        return out.decode()


@pytest.fixture
async def rig(sim: Simulator, redis_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    def answer(status: int) -> Any:
        return lambda _number, _path: WebhookReceiver.error(status)

    async with (
        WebhookReceiver(secret=WEBHOOK_SECRET) as audit,
        WebhookReceiver(secret=WEBHOOK_SECRET, policy=answer(503)) as down,
        WebhookReceiver(secret=WEBHOOK_SECRET, policy=answer(400)) as refused,
    ):
        yield Rig(sim, audit, down, refused, redis_url, tmp_path)


def types(receiver: WebhookReceiver) -> list[str]:
    return [p["type"] for p in receiver.payloads]


async def test_status_shows_instances_running_tasks_health_backlogs_and_dead_letters(rig: Rig) -> None:
    cfg = rig.config("cloud_eye: {enabled: true, interval: 0.2}")
    rig.sim.inject(Fault.server_error(503), times=100_000, instance_id=SESSIONS)
    async with running(cfg) as daemon:
        tid = rig.sim.start_task(ORDERS, "EXTEND")
        await rig.audit.wait_for(2, timeout=10)  # task.started and poller.unhealthy, in either order
        assert sorted(types(rig.audit)) == ["poller.unhealthy", "task.started"]

        async def settled() -> bool:
            s = await rig.status(cfg)
            [project] = s.projects
            ce = project.cloud_eye
            return (
                s.dead_letters.total >= 2
                and s.channels[0].depth == 0  # acknowledged (a receiver records a request before that)
                and s.channels[1].retrying >= 1
                and ce is not None
                and ce.until is not None
            )

        await until_async(settled, 10, "the failing channels and Cloud Eye recorded")
        status = await rig.status(cfg)
        text = render_text(status)
        shown = await rig.cli("status")
        as_json = json.loads(await rig.cli("status", "--json"))
        assert daemon.lock is not None
        name = daemon.lock.owner

    [project] = status.projects
    assert project.project_id == PROJECT_ID and project.in_config
    orders, sessions = project.instances
    assert (orders.name, orders.state, orders.owner) == ("orders-cache", "ok", name)
    assert orders.last_poll_at is not None and orders.last_poll_at <= status.generated_at
    [running_task] = orders.running
    assert (running_task.id, running_task.name, running_task.status) == (tid, "EXTEND", "RUNNING")
    assert (sessions.name, sessions.state, sessions.running) == ("sessions-cache", "unhealthy", [])
    assert (
        sessions.unhealthy is not None
        and "503" in f"{sessions.unhealthy.http_status} {sessions.unhealthy.message}"
    )
    assert status.daemon == name and not status.scaling.enabled
    assert status.heartbeat_at is not None
    assert project.cloud_eye is not None and project.cloud_eye.owner == name

    audit, down, refused = status.channels
    assert (audit.name, audit.type, audit.depth, audit.pending) == ("audit", "webhook", 0, 0)
    assert down.name == "down" and down.depth >= 1 and down.retrying >= 1
    assert down.oldest_age_s is not None and down.oldest_age_s >= 0
    assert refused.depth == 0 and refused.dead_letters == status.dead_letters.total >= 2
    assert status.dead_letters.per_channel and audit.dead_letters == down.dead_letters == 0

    # What a person reads: names, the running task, the health problem, the channel table.
    for line in (text, shown):
        assert "orders-cache (5560df16-cebf-4473-95c4-d1b573c16e79)" in line
        assert "sessions-cache" in line and "unhealthy since" in line
        assert f"Scale {tid} RUNNING since" in line
        assert f"daemon: {name}" in line
        assert "cloud eye: read up to" in line
        [down_row] = [row.split() for row in line.splitlines() if row.strip().startswith("down ")]
        assert down_row[:2] == ["down", "webhook"] and int(down_row[2]) >= 1
        assert "dead letters: " in line
    assert "redis redis://127.0.0.1:" in shown

    # --json: the documented shape.
    assert as_json["version"] == 1 and as_json["daemon"] == name
    assert as_json["redis"]["key_prefix"] == "st"
    [pj] = as_json["projects"]
    by_name = {i["name"]: i for i in pj["instances"]}
    assert by_name["orders-cache"]["running"][0]["id"] == tid
    assert by_name["orders-cache"]["state"] == "ok" and by_name["sessions-cache"]["state"] == "unhealthy"
    assert pj["cloud_eye"]["until"] is not None
    channels = {c["name"]: c for c in as_json["channels"]}
    assert channels["down"]["depth"] >= 1 and channels["audit"]["depth"] == 0
    assert as_json["dead_letters"]["total"] >= 2


async def test_status_shows_which_replica_owns_each_shard_and_instance(rig: Rig) -> None:
    scaling = "scaling: {{enabled: true, replica: {}, shards: 4, lease_ttl: 1}}"
    r1 = rig.config(scaling.format("r1"), name="r1")
    r2 = rig.config(scaling.format("r2"), name="r2")

    async with running(r1), running(r2):

        async def settled() -> bool:
            s = await rig.status(r1)
            members = [r.name for r in s.scaling.replicas if r.expires_at is not None]
            holders = {shard: r.name for r in s.scaling.replicas for shard in r.shards}
            return members == ["r1", "r2"] and holders == {
                shard: owner_of(shard, ["r1", "r2"]) for shard in range(4)
            }

        await until_async(settled, 10, "both replicas holding their shards")
        status = await rig.status(r1)
        shown = await rig.cli("r2")
        as_json = json.loads(await rig.cli("r1", "--json"))

    assert status.scaling.enabled and status.scaling.shards == 4 and status.scaling.unheld_shards == []
    assert status.daemon is None
    holders = {shard: r.name for r in status.scaling.replicas for shard in r.shards}
    [project] = status.projects
    for inst in project.instances:
        shard = shard_of(f"{PROJECT_ID}/{inst.id}", 4)
        assert inst.shard == shard and inst.owner == holders[shard] == owner_of(shard, ["r1", "r2"])
        assert f"{inst.owner} (shard {shard})" in shown
    for replica in status.scaling.replicas:
        assert f"{replica.name}  " in shown and ranges(replica.shards) in shown
    assert "replicas: 2 (4 shards)" in shown
    assert as_json["scaling"]["enabled"] is True
    assert sorted(s for r in as_json["scaling"]["replicas"] for s in r["shards"]) == [0, 1, 2, 3]
    owners = {i["name"]: (i["shard"], i["owner"]) for i in as_json["projects"][0]["instances"]}
    assert owners == {i.name: (i.shard, i.owner) for i in project.instances}


async def test_discovered_instances_come_from_redis_and_nobody_running_is_said(rig: Rig) -> None:
    cfg = rig.config(discover=True)
    async with running(cfg):

        async def both_polled() -> bool:
            [project] = (await rig.status(cfg)).projects
            return sorted(i.id for i in project.instances if i.state == "ok") == sorted([ORDERS, SESSIONS])

        await until_async(both_polled, 10, "both discovered instances baselined")
    status = await rig.status(cfg)  # the daemon has stopped: its lock and heartbeat stay until they expire
    [project] = status.projects
    assert {i.id: (i.name, i.in_config) for i in project.instances} == {
        ORDERS: (None, False),
        SESSIONS: (None, False),
    }
    assert status.daemon is None  # released on stop
    text = render_text(status)
    assert f"{ORDERS}  ok" in text and "daemon: none running" in text


def test_ranges_compress_consecutive_shards() -> None:
    assert ranges([]) == "none"
    assert ranges([0, 1, 2, 3, 7, 9, 10]) == "0-3, 7, 9-10"


async def test_on_a_redis_cluster_instances_are_found_by_a_scan_and_dead_letters_are_per_channel(
    rig: Rig, redis_cluster: RedisClusterServers
) -> None:
    rig.redis_url = redis_cluster.url
    cfg = rig.config("scaling: {enabled: true, replica: r1, shards: 4, lease_ttl: 1}", discover=True)
    async with running(cfg):
        rig.sim.start_task(SESSIONS, "masterStandbySwapJob")

        async def settled() -> bool:
            s = await rig.status(cfg)
            states = {i.id: i.state for p in s.projects for i in p.instances}
            return states == {ORDERS: "ok", SESSIONS: "ok"} and s.dead_letters.total >= 1

        await until_async(settled, 10, "both instances baselined and a dead letter")
        status = await rig.status(cfg)
        shown = await rig.cli("status")

    assert status.dead_letters.per_channel
    dead = {c.name: c.dead_letters for c in status.channels}
    assert dead["refused"] is not None and dead["refused"] >= 1 and dead["audit"] == dead["down"] == 0
    [project] = status.projects
    assert {i.owner for i in project.instances} == {"r1"}
    [sessions] = [i for i in project.instances if i.id == SESSIONS]
    assert [t.status for t in sessions.running] == ["RUNNING"]
    [refused_row] = [row.split() for row in shown.splitlines() if row.strip().startswith("refused ")]
    assert int(refused_row[-1]) >= 1
    assert "dead letters: " in shown and "(all channels" not in shown


def test_no_secret_reaches_the_screen_or_the_json() -> None:
    """The Redis password, and a secret an API echoed into a poll problem, are masked (pure: no Redis)."""
    password = "s3cret-Redis-Passw0rd"
    cfg = parse_config(
        f"""
cloud: {{project_id: "{PROJECT_ID}", ak: "{AK}", sk: "{SK}"}}
instances: [{{id: "{ORDERS}", name: orders}}]
redis: {{url: "redis://:{password}@127.0.0.1:1/0"}}
channels: {{audit: {{type: webhook, url: "https://hooks.example.com/x", secret: "{WEBHOOK_SECRET}"}}}}
""",
        "status.yaml",
        {},
    )
    now = datetime.now(UTC)
    problem = PollProblem(reason="auth", message=f"signature of {SK} refused", http_status=401, since=now)
    read = Reads(snapshots=[None], health={f"{PROJECT_ID}/{ORDERS}": problem})
    status = assemble(cfg, read, now)
    for out in (render_text(status), status.model_dump_json()):
        assert password not in out and SK not in out and WEBHOOK_SECRET not in out
        assert "hooks.example.com" not in out
    assert status.projects[0].instances[0].state == "unhealthy"
    assert "daemon: none running" in render_text(status)


def test_snapshot_keys_give_their_ids_back() -> None:
    for keys in (Keys("dcsn"), Keys("dcsn", cluster=True)):
        key = keys.snapshot(PROJECT_ID, ORDERS)
        assert keys.snapshot_ids(key) == (PROJECT_ID, ORDERS)
        assert keys.snapshot_ids(keys.outbox("audit")) is None
        assert keys.snapshot_ids(f"other:snap:{PROJECT_ID}:{ORDERS}") is None
    assert Keys("dcsn", cluster=True).snapshot_ids(f"dcsn:snap:{PROJECT_ID}:{ORDERS}") is None
    assert Keys("dcsn").snapshot_ids("dcsn:snap:nocolon") is None
