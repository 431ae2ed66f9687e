"""Issue 4 edge cases found in review: removal episodes, unknown running statuses, regions not starving
each other, stop during a Retry-After, late 401s, health of discovery and of deleted instances, TLS wiring.

Every test runs for real: the project's simulator on 127.0.0.1 (over HTTPS with a trustme CA where TLS
is the point), a real redis-server, the daemon or poller in this process. No mocks; waits are on
conditions with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import trustme
from aiohttp import web

from notifier.app import Daemon
from notifier.config.load import parse_config
from notifier.config.models import Config
from notifier.dcs.cloud import Cloud
from notifier.devtools.simulator import Fault, Simulator
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.errors import ConfigError, DcsApiError, Reason
from notifier.pipeline.instance import PollOutcome
from notifier.pipeline.poll import Poller
from notifier.pipeline.scheduler import phase
from notifier.pipeline.watch import Target
from notifier.store.connect import Store
from notifier.store.keys import Keys
from tests.support.daemons import running
from tests.support.wait import until, until_async

P1 = "0b6ae7c1f2a34f6e9d1b7a2c3e4f5a61"
P2 = "1c7bf8d2a3b45f7a0e2c8b3d4f5a6b72"
AK = "HPUAREVIEWAK00000001"
SK = "sk-review-EXAMPLE-0001"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def webhooks(receiver: WebhookReceiver, type_: str | None = None) -> list[dict[str, Any]]:
    return [
        r.json
        for r in receiver.requests
        if 200 <= r.status < 300
        and isinstance(r.json, dict)
        and (type_ is None or r.json.get("type") == type_)
    ]


def polled(sim: Simulator, instance_id: str | None = None, ok: bool | None = None) -> Callable[[], int]:
    def count() -> int:
        return sum(1 for r in sim.task_requests(instance_id) if ok is None or (r.status == 200) == ok)

    return count


@dataclass
class World:
    sim: Simulator
    audit: WebhookReceiver
    ops: WebhookReceiver
    redis_url: str
    redis: aioredis.Redis

    def config(self, projects: str, extra: str = "", poll: str = "interval: 0.2, skew: 60") -> Config:
        text = f"""
cloud:
  - name: main
    credentials: {{ak: "{AK}", sk: "{SK}"}}
    projects:
{projects}
poll: {{jitter: 0, recheck: 0.2, {poll}}}
discovery: {{interval: 0.3}}
redis: {{url: "{self.redis_url}", key_prefix: "r4"}}
channels:
  audit: {{type: webhook, url: "{self.audit.url}", secret: "{SECRET}"}}
  ops: {{type: webhook, url: "{self.ops.url}", secret: "{SECRET}"}}
rules:
  - {{name: all, events: [task.started, task.succeeded, task.failed, task.updated, instance.removed],
      channels: [audit]}}
health: {{after: 0.6, channels: [ops]}}
delivery: {{backoff_initial: 0.05, backoff_max: 0.2, consumer: review4}}
{extra}
"""
        return parse_config(text, "review4.yaml", {"SIM_URL": str(self.sim.base_url)})


@pytest.fixture
async def world(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[World]:
    sim = Simulator(project_id=P1, credentials={AK: SK})
    await sim.start()
    async with WebhookReceiver(secret=SECRET) as audit, WebhookReceiver(secret=SECRET) as ops:
        yield World(sim, audit, ops, redis_url, redis_client)
    await sim.stop()


def static(instance_id: str, endpoint: str = "${SIM_URL}", project: str = P1, region: str = "") -> str:
    where = f", region: {region}" if region else ""
    return (
        f'      - {{project_id: "{project}", endpoint: "{endpoint}"{where}, '
        f"instances: [{{id: {instance_id}, name: {instance_id}}}]}}"
    )


# == 1. instance.removed: a second deletion after the instance came back is swallowed ==================


async def test_instance_removed_again_after_coming_back_is_announced_again(world: World) -> None:
    sim = world.sim
    sim.add_instance("i-back", "back-cache")
    async with running(world.config(static("i-back"))):
        await until(lambda: polled(sim, "i-back", ok=True)() >= 1, 10, "baseline")
        sim.remove_instance("i-back")
        await until(lambda: len(webhooks(world.audit, "instance.removed")) >= 1, 10, "first removal")
        # It answers again (an API glitch, a restore): the state is revived.
        sim.add_instance("i-back", "back-cache")
        ok = polled(sim, "i-back", ok=True)()
        await until(lambda: polled(sim, "i-back", ok=True)() >= ok + 2, 10, "polled again after revival")
        meta = await world.redis.hget(f"r4:snap:{P1}:i-back", "~meta")
        assert meta is not None and "removed_at" not in meta  # revived
        # Deleted for real this time: a new episode, which must be announced.
        sim.remove_instance("i-back")

        async def marked() -> bool:
            raw = await world.redis.hget(f"r4:snap:{P1}:i-back", "~meta")
            return raw is not None and "removed_at" in raw

        await until_async(marked, 10, "second removal recorded")
        await until_async(lambda: _drained(world.redis, "r4:outbox:audit"), 10, "the audit outbox drained")
    assert len(webhooks(world.audit, "instance.removed")) == 2, (
        "the second instance.removed has the same event id as the first and is dropped as 'already delivered'"
    )


async def _drained(client: aioredis.Redis, key: str) -> bool:
    return int(await client.xlen(key)) == 0


# == 2. windows: a task in an unknown (in-progress) status loses its final transition ===================


async def test_task_in_an_undocumented_running_status_keeps_its_final_transition(world: World) -> None:
    sim = world.sim
    sim.add_instance("i-u", "unknown-status-cache")
    t0 = datetime.now(UTC)
    now = [t0]
    events: list[tuple[str, str | None]] = []
    async with Daemon(world.config(static("i-u")), clock=lambda: now[0]) as daemon:

        async def poll_at(moment: datetime) -> None:
            now[0] = moment
            report = await daemon.once()
            assert report.problems == []
            events.extend(
                (e.type.value, e.task.status if e.task else None) for p in report.polls for e in p.events
            )

        await poll_at(t0)  # baseline
        tid = sim.start_task("i-u", "restart", status="QUEUED")  # not in IN_PROGRESS_STATUSES
        await poll_at(t0 + timedelta(seconds=1))
        assert events == [("task.started", "QUEUED")]  # the diff treats it as running...
        await poll_at(t0 + timedelta(hours=1))
        await poll_at(t0 + timedelta(hours=1, seconds=1))  # ...but the window let it go
        sim.finish_task("i-u", tid)
        await poll_at(t0 + timedelta(hours=1, seconds=2))
    assert ("task.succeeded", "SUCCESS") in events, events


# == 3. removed static instance: its state is recreated without a TTL by the ~polled touch =============


async def test_removed_static_instance_state_expires_and_stays_gone(world: World) -> None:
    sim = world.sim
    sim.add_instance("i-gone", "gone-cache")
    config = world.config(static("i-gone"))
    config = config.model_copy(update={"discovery": config.discovery.model_copy(update={"removed_ttl": 1.0})})
    mono = [1000.0]
    cloud = Cloud(config)
    store = Store(world.redis, Keys("r4"))
    poller = Poller(config, cloud.clients, store, monotonic=lambda: mono[0])
    [target] = poller.targets.values()
    key = f"r4:snap:{P1}:i-gone"
    try:
        assert (await poller.poll_target(target)).ok  # baseline
        sim.remove_instance("i-gone")
        mono[0] += 61
        outcome = await poller.poll_target(target)
        assert isinstance(outcome.error, DcsApiError) and outcome.error.reason is Reason.NOT_FOUND
        assert 0 < await world.redis.ttl(key) <= 1  # instance.removed recorded, state on a TTL

        async def expired() -> bool:
            return int(await world.redis.exists(key)) == 0

        await until_async(expired, 5, "the removed instance's state to expire")
        mono[0] += 61  # the next poll (every poll.recheck) pipelines a '~polled' touch with its read
        await poller.poll_target(target)
        assert int(await world.redis.exists(key)) == 0, (
            f"state recreated as {await world.redis.hgetall(key)} with TTL {await world.redis.ttl(key)}"
        )
    finally:
        await cloud.aclose()


# == 4. health: failures that never become poller.unhealthy ============================================


async def test_persistent_404_of_a_wrong_endpoint_becomes_unhealthy(world: World) -> None:
    # A typo in the endpoint's path: every poll answers 404 DCS.4001 ("URL not found"), which the
    # poller itself says is "not proof of deletion". It is a polling failure all the same.
    sim = world.sim
    sim.add_instance("i-w", "wrong-url-cache")
    async with running(world.config(static("i-w", endpoint="${SIM_URL}/dcs"))):
        await until(lambda: polled(sim)() >= 8, 10, "eight failing polls (> health.after)")
        assert all(r.status == 404 for r in sim.task_requests())
        await until(lambda: len(webhooks(world.ops)) >= 1, 3, "poller.unhealthy on the ops channel")


async def test_discovery_only_project_with_rejected_credentials_becomes_unhealthy(world: World) -> None:
    # A project that only discovers: with its AK revoked from the start no instance is ever known, so
    # no poll fails, and the ops channel never hears of it (only a log line).
    sim = world.sim
    sim.add_instance("i-d", "discovered-cache")
    sim.revoke(AK)
    project = f'      - {{project_id: "{P1}", endpoint: "${{SIM_URL}}", discover: true}}'
    async with running(world.config(project)):
        await until(
            lambda: sum(1 for r in sim.requests if r.path.endswith("/instances") and r.status == 401) >= 5,
            10,
            "five rejected listings (> health.after)",
        )
        await until(lambda: len(webhooks(world.ops)) >= 1, 3, "an ops event about the project")


async def test_unhealthy_instance_then_deleted_leaves_no_open_episode(world: World) -> None:
    sim = world.sim
    sim.add_instance("i-h", "health-cache")
    async with running(world.config(static("i-h"))):
        await until(lambda: polled(sim, "i-h", ok=True)() >= 1, 10, "baseline")
        sim.inject(Fault.server_error(503, "DCS.5030"), times=10_000, instance_id="i-h")
        await until(lambda: len(webhooks(world.ops, "poller.unhealthy")) >= 1, 10, "poller.unhealthy")
        sim.clear_faults()
        sim.remove_instance("i-h")
        await until(lambda: len(webhooks(world.audit, "instance.removed")) >= 1, 10, "instance.removed")
        gone = polled(sim, "i-h")()
        await until(lambda: polled(sim, "i-h")() >= gone + 3, 10, "three more 404 re-checks")
    # The episode stays open forever: neither poller.recovered nor a cleared health entry.
    assert await world.redis.hlen("r4:health") == 0, await world.redis.hgetall("r4:health")


# == 5. politeness: a throttled endpoint starves every other region; stop waits for Retry-After ========


@contextlib.asynccontextmanager
async def second_simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(project_id=P2, credentials={AK: SK})
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def test_a_throttled_region_does_not_starve_another_region(world: World) -> None:
    sim_a = world.sim
    for n in range(3):
        sim_a.add_instance(f"i-a{n}", f"a-{n}")
    async with second_simulator() as sim_b:
        sim_b.add_instance("i-b", "b-cache")
        projects = "\n".join(
            [
                f'      - {{project_id: "{P1}", endpoint: "${{SIM_URL}}", region: cn-north-1, '
                "instances: [{id: i-a0}, {id: i-a1}, {id: i-a2}]}",
                f'      - {{project_id: "{P2}", endpoint: "{sim_b.base_url}", region: cn-north-2, '
                "instances: [{id: i-b}]}",
            ]
        )
        config = world.config(
            projects, "api: {max_concurrency: 2, region_concurrency: 1, rate_limit: 50, min_rate: 0.2}"
        )
        async with running(config, stop_within=30):
            await until(lambda: polled(sim_b, "i-b", ok=True)() >= 2, 10, "region B polled")
            # Region A's gateway throttles, asking for 4 s of quiet.
            sim_a.inject(Fault.throttled(retry_after=4), times=10_000)
            await until(lambda: polled(sim_a, ok=False)() >= 1, 10, "region A throttled")
            b = polled(sim_b, "i-b", ok=True)()
            try:
                await until(lambda: polled(sim_b, "i-b", ok=True)() >= b + 5, 3, "region B keeps its pace")
            finally:
                sim_a.clear_faults()


async def test_stop_is_not_held_up_by_a_long_retry_after(world: World) -> None:
    sim = world.sim
    sim.add_instance("i-s0", "s-0")
    sim.add_instance("i-s1", "s-1")
    config = world.config(
        "\n".join(
            [
                f'      - {{project_id: "{P1}", endpoint: "${{SIM_URL}}", '
                "instances: [{id: i-s0}, {id: i-s1}]}"
            ]
        )
    )
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: polled(sim, ok=True)() >= 2, 10, "both instances polled")
        sim.inject(Fault.throttled(retry_after=60), times=1)  # one 429: the endpoint pauses for a minute
        await until(lambda: polled(sim, ok=False)() >= 1, 10, "the 429")
        await until(
            lambda: (
                daemon.cloud.gate.in_flight_total == 0
                and any(lim._lock.locked() for lim in daemon.cloud.gate.limiters.values())
            ),
            5,
            "the other instance's poll waiting for the paused limiter",
        )
        daemon.request_stop()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "SIGTERM waits for the whole Retry-After (60 s) before the daemon stops"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await daemon.aclose()


# == 6. IAM: a late 401 throws away the token another poll just fetched ================================


async def test_a_late_401_does_not_discard_a_freshly_fetched_iam_token(world: World) -> None:
    sim = world.sim
    sim.add_instance("i-slow", "slow-cache")
    sim.add_instance("i-fast", "fast-cache")
    sim.add_iam_user("acme", "dcs-reader", "pa55-w0rd-EXAMPLE", [P1])
    text = f"""
cloud:
  - name: iam
    credentials: {{type: iam, domain: acme, user: dcs-reader, password: pa55-w0rd-EXAMPLE,
                   iam_endpoint: "{sim.base_url}"}}
    projects:
      - {{project_id: "{P1}", endpoint: "{sim.base_url}", instances: [{{id: i-slow}}, {{id: i-fast}}]}}
api: {{rate_limit: 1000, min_rate: 1}}
redis: {{url: "{world.redis_url}", key_prefix: "r4"}}
channels:
  audit: {{type: webhook, url: "{world.audit.url}", secret: "{SECRET}"}}
"""
    async with Daemon(parse_config(text, "iam.yaml", {})) as daemon:
        assert (await daemon.once()).problems == []
        assert len(sim.iam_requests) == 1
        sim.revoke_iam_tokens()
        # Both polls go out with the revoked token; one answer comes back late.
        sim.inject(Fault.slow(0.5), instance_id="i-slow")
        report = await daemon.once()
        assert report.problems == []
    # One renewal is enough: the late 401 was for the old token, not for the one just fetched.
    assert len(sim.iam_requests) == 2, f"{len(sim.iam_requests)} IAM token requests"


# == 7. config: TLS settings that only fail when the daemon starts =====================================


@pytest.mark.parametrize(
    "api",
    [
        'api: {insecure_endpoints: ["dcs.example.com:https"]}',
        "api: {ca_bundle: /nonexistent/ca.pem}",
    ],
)
def test_bad_tls_settings_are_config_errors_naming_the_file(api: str) -> None:
    text = f"""
cloud: {{region: cn-north-4, project_id: "{P1}", ak: "{AK}", sk: "{SK}"}}
instances: [{{id: i-1}}]
channels: {{audit: {{type: webhook, url: "http://127.0.0.1:9/"}}}}
{api}
"""
    # check-config (parse_config + credential checks) says "config OK"; only Daemon() then fails,
    # with a message that does not name the file.
    with pytest.raises(ConfigError, match=r"(?s)review4\.yaml.*api\."):
        parse_config(text, "review4.yaml", {})


# == 8. TLS end to end: config → session → request =====================================================


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclass
class TlsSim:
    sim: Simulator
    url: str
    port: int
    ca_pem: Path


@pytest.fixture
async def tls_sim(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[TlsSim]:
    sim = Simulator(project_id=P1, credentials={AK: SK})
    sim.add_instance("i-tls", "tls-cache")
    runner = web.AppRunner(sim.make_app(), access_log=None)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    port: int = runner.addresses[0][1]
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    try:
        yield TlsSim(sim, f"https://127.0.0.1:{port}", port, pem)
    finally:
        await runner.cleanup()


TLS_CONFIG = (
    """
cloud: {region: cn-north-4, endpoint: "${SIM_URL}", project_id: "__PROJECT__", ak: "__AK__", sk: "__SK__"}
instances:
  - {id: i-tls, name: tls-cache}
redis: {url: "${REDIS_URL}", key_prefix: "tls"}
channels:
  audit: {type: webhook, url: "${AUDIT_URL}", secret: "__SECRET__"}
""".replace("__PROJECT__", P1)
    .replace("__AK__", AK)
    .replace("__SK__", SK)
    .replace("__SECRET__", SECRET)
)


async def _once_over_tls(tls: TlsSim, redis_url: str, api: str) -> DcsApiError | None:
    async with WebhookReceiver(secret=SECRET) as audit:
        env = {"SIM_URL": tls.url, "REDIS_URL": redis_url, "AUDIT_URL": audit.url}
        config = parse_config(TLS_CONFIG + api, "tls.yaml", env)
        async with Daemon(config) as daemon:
            report = await daemon.once()
    [poll] = report.polls
    assert poll.error is None or isinstance(poll.error, DcsApiError)
    return poll.error


async def test_tls_with_the_configured_ca_bundle_polls(tls_sim: TlsSim, redis_url: str) -> None:
    error = await _once_over_tls(tls_sim, redis_url, f'api: {{ca_bundle: "{tls_sim.ca_pem}"}}\n')
    assert error is None
    [request] = tls_sim.sim.task_requests("i-tls")
    assert request.status == 200


async def test_tls_without_the_ca_bundle_is_an_untrusted_certificate(tls_sim: TlsSim, redis_url: str) -> None:
    error = await _once_over_tls(tls_sim, redis_url, "")
    assert error is not None and error.reason is Reason.CONNECTION
    message = str(error)
    assert "not trusted" in message and f"127.0.0.1:{tls_sim.port}" in message, message
    assert "?" not in message and "/v2/" not in message and "start_time" not in message, message
    assert "https://" not in message, message
    assert tls_sim.sim.task_requests() == []  # the handshake failed: nothing reached the API


async def test_tls_insecure_endpoint_is_not_verified(tls_sim: TlsSim, redis_url: str) -> None:
    api = f'api: {{insecure_endpoints: ["https://127.0.0.1:{tls_sim.port}"]}}\n'
    error = await _once_over_tls(tls_sim, redis_url, api)
    assert error is None
    [request] = tls_sim.sim.task_requests("i-tls")
    assert request.status == 200


async def test_polls_are_jittered_and_spread_over_the_interval(redis_client: aioredis.Redis) -> None:

    text = """
cloud: {project_id: p1, ak: A, sk: B}
instances: [{id: i-1}]
poll: {interval: 10, jitter: 0.1}
channels: {audit: {type: webhook, url: "http://127.0.0.1:9/"}}
"""
    config = parse_config(text, "jitter.yaml", {})
    poller = Poller(config, {}, Store(redis_client, Keys("j")))
    [target] = poller.targets.values()
    delays = [poller.next_delay(PollOutcome(target)) for _ in range(500)]
    assert all(9.0 <= d <= 11.0 for d in delays)
    assert max(delays) - min(delays) > 1.5  # not lock-step
    phases = [phase(f"p1/i-{n}") for n in range(2000)]
    for decile in range(10):  # first polls spread evenly over the interval
        share = sum(1 for p in phases if decile / 10 <= p < (decile + 1) / 10) / len(phases)
        assert 0.07 < share < 0.13, (decile, share)
    assert isinstance(target, Target)
