"""Issue 14 through the daemon: /metrics, /healthz and /readyz read over HTTP from a running daemon,
readiness flipping when Redis stops, reloads (SIGHUP, ``dcs-notifier reload``) changing a rule while a
task is in flight, and ``dcs-notifier health`` asking this host's daemon."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from notifier.config.load import parse_config
from notifier.devtools.simulator import Simulator
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.ops.service import Service
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK, WEBHOOK_SECRET
from tests.support.daemons import cli_run, serving
from tests.support.redis_server import RedisServer, free_port
from tests.support.wait import until, until_async

CONFIG = f"""
cloud: {{endpoint: "${{SIM_URL}}", project_id: "{PROJECT_ID}", ak: {AK}, sk: {SK}}}
instances:
  - {{id: "{ORDERS}", name: orders-cache}}
  - {{id: "{SESSIONS}", name: sessions-cache}}
poll: {{interval: 0.3, baseline_grace: 900}}
health: {{after: 0.3}}
redis: {{url: "${{REDIS_URL}}", key_prefix: ops}}
http: {{listen: "127.0.0.1:${{PORT}}"}}
channels:
  audit: {{type: webhook, url: "${{AUDIT_URL}}", secret: "{WEBHOOK_SECRET}"}}
delivery: {{backoff_initial: 0.05, backoff_max: 0.2}}
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus-client's own parser: (name, labels) → value."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.text()


@pytest.fixture
async def service_env(sim: Simulator, redis_url: str, audit: WebhookReceiver) -> dict[str, str]:
    return {"SIM_URL": str(sim.base_url), "REDIS_URL": redis_url, "AUDIT_URL": audit.url}


async def test_metrics_read_over_http_say_what_was_polled_found_and_delivered(
    sim: Simulator, audit: WebhookReceiver, service_env: dict[str, str]
) -> None:
    config = parse_config(CONFIG, "ops.yaml", {**service_env, "PORT": "0"})
    service = Service(config, lambda: config)
    async with serving(service) as port:
        sim.start_task(ORDERS, "masterStandbySwapJob")
        await audit.wait_for(1, timeout=10)

        async def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            status, text = await get(port, "/metrics")
            assert status == 200
            return samples(text)

        async def settled() -> bool:  # a delivery counted, and both instances polled again since
            scrape = await scraped()
            ok = value(scrape, "dcs_notifier_polls_total", source="tasks", outcome="ok", reason="")
            return (
                ok >= 4 and value(scrape, "dcs_notifier_delivery_latency_seconds_count", channel="audit") > 0
            )

        await until_async(settled, 10, "polls and a delivery in the metrics")
        scrape = await scraped()
    polls = value(scrape, "dcs_notifier_polls_total", source="tasks", outcome="ok", reason="")
    assert polls >= 4
    assert value(scrape, "dcs_notifier_events_total", type="task.started") == 1
    assert (
        value(scrape, "dcs_notifier_deliveries_total", channel="audit", outcome="delivered", reason="") == 1
    )
    assert value(scrape, "dcs_notifier_delivery_latency_seconds_count", channel="audit") == 1
    assert value(scrape, "dcs_notifier_instances", state="watched") == 2
    assert value(scrape, "dcs_notifier_instances", state="owned") == 2
    assert value(scrape, "dcs_notifier_outbox_pending", channel="audit") == 0
    assert value(scrape, "dcs_notifier_dead_letters", channel="audit") == 0
    endpoint = sim.base_url.split("//", 1)[1].rstrip("/")
    assert (
        value(scrape, "dcs_notifier_api_request_duration_seconds_count", source="tasks", endpoint=endpoint)
        >= 2
    )
    assert value(scrape, "dcs_notifier_api_rate_limit", endpoint=endpoint) > 0
    assert value(scrape, "dcs_notifier_last_successful_poll_timestamp_seconds") > 0
    assert any(name == "dcs_notifier_build_info" for name, _ in scrape)
    # No series carries an instance id: cardinality stays bounded whatever the fleet.
    assert not any(ORDERS in v for _, labels in scrape for _, v in labels)


async def test_readiness_flips_when_redis_stops_and_back_when_it_returns(
    own_redis: RedisServer, service_env: dict[str, str]
) -> None:
    env = {**service_env, "REDIS_URL": own_redis.url, "PORT": "0"}
    config = parse_config(CONFIG, "ops.yaml", env)
    service = Service(config, lambda: config)
    async with serving(service) as port:

        async def ready() -> bool:
            return (await get(port, "/readyz"))[0] == 200

        async def not_ready() -> bool:
            return not await ready()

        await until_async(ready, 10, "ready once polls succeed")
        assert (await get(port, "/healthz"))[0] == 200
        own_redis.stop()
        await until_async(not_ready, 10, "not ready while Redis is down")
        status, body = await get(port, "/readyz")
        assert status == 503
        why = json.loads(body)
        assert why["ready"] is False and any("Redis" in r for r in why["reasons"])
        assert (await get(port, "/healthz"))[0] == 200  # alive: no reason to restart it
        own_redis.start()
        await until_async(ready, 15, "ready again once Redis is back")


def _write(path: Path, text: str) -> None:
    path.write_text(text)


async def test_sighup_and_dcs_notifier_reload_change_a_rule_while_a_task_runs_with_nothing_lost(
    sim: Simulator, redis_url: str, tmp_path: Path
) -> None:
    async with (
        WebhookReceiver(secret=WEBHOOK_SECRET) as first,
        WebhookReceiver(secret=WEBHOOK_SECRET) as second,
    ):
        port = free_port()
        base = CONFIG.replace(
            "channels:\n",
            f'channels:\n  second: {{type: webhook, url: "{second.url}", secret: "{WEBHOOK_SECRET}"}}\n',
        )
        only_first = base + "rules:\n  - {name: first-only, channels: [audit]}\n"
        both = base + "rules:\n  - {name: both, channels: [audit, second]}\n"
        path = tmp_path / "ops.yaml"
        _write(path, only_first)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "SIM_URL": str(sim.base_url),
            "REDIS_URL": redis_url,
            "AUDIT_URL": first.url,
            "PORT": str(port),
            "DCS_NOTIFIER_CONFIG": str(path),
        }
        async with cli_run(env) as (proc, log):
            swap = sim.start_task(ORDERS, "masterStandbySwapJob")
            await first.wait_for(1, timeout=15)
            proc.send_signal(signal.SIGHUP)  # unchanged file: nothing to do
            await until(lambda: any("has not changed" in line for line in log), 10, "an unchanged reload")
            _write(path, "cloud: [not: a, valid config")
            proc.send_signal(signal.SIGHUP)
            await until(lambda: any("refused" in line for line in log), 10, "a refused reload")
            _write(path, both)
            proc.send_signal(signal.SIGHUP)
            await until(lambda: any("running on the new config" in line for line in log), 20, "the reload")
            sim.finish_task(ORDERS, swap)
            await first.wait_for(2, timeout=15)
            await second.wait_for(1, timeout=15)
            # Through Redis, from any host: back to the first channel alone.
            _write(path, only_first)
            cli = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "notifier.cli", "reload", env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _out, err = await asyncio.wait_for(cli.communicate(), 20)
            assert cli.returncode == 0, err.decode()
            await until(
                lambda: sum("running on the new config" in line for line in log) == 2, 20, "a second reload"
            )
            scale = sim.start_task(SESSIONS, "EXTEND")
            await first.wait_for(3, timeout=15)
            health = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "notifier.cli", "health", env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            h_out, h_err = await asyncio.wait_for(health.communicate(), 20)
            assert health.returncode == 0, h_err.decode()
            assert b"healthy" in h_out
    got_first = [
        (json.loads(r.body)["type"], json.loads(r.body)["data"]["task"]["id"]) for r in first.requests
    ]
    got_second = [
        (json.loads(r.body)["type"], json.loads(r.body)["data"]["task"]["id"]) for r in second.requests
    ]
    assert got_first == [("task.started", swap), ("task.succeeded", swap), ("task.started", scale)]
    assert got_second == [("task.succeeded", swap)]
    assert proc.returncode == 0
    assert not any("Traceback" in line for line in log)


async def test_the_polling_replica_records_each_instances_last_poll_for_status_without_a_write_per_poll(
    service_env: dict[str, str],
) -> None:
    config = parse_config(CONFIG, "ops.yaml", {**service_env, "PORT": "0"})
    service = Service(config, lambda: config)
    async with serving(service):
        await until(lambda: service.daemon is not None, 10, "the daemon")
        daemon = service.daemon
        assert daemon is not None
        keys = [f"{PROJECT_ID}/{ORDERS}", f"{PROJECT_ID}/{SESSIONS}"]

        async def recorded() -> bool:
            return len(await daemon.store.heartbeat.polls(keys)) == 2

        await until_async(recorded, 10, "both instances' last polls in Redis")
        first = await daemon.store.heartbeat.polls(keys)

        def polls() -> float:
            labels = {"source": "tasks", "outcome": "ok", "reason": ""}
            return daemon.metrics.registry.get_sample_value("dcs_notifier_polls_total", labels) or 0.0

        ok = polls()
        await until(lambda: polls() >= ok + 6, 10, "six more polls")
        assert await daemon.store.heartbeat.polls(keys) == first  # a minute between two records
