"""Review of issue 14 ("Operate it like a service"): the listener, readiness and liveness, the metrics, reloads
and ``status`` as an operator meets them — through the real daemon (``Service`` in this event loop, or
``python -m notifier.cli run`` as a subprocess) against the DCS simulator, webhook receivers and real
redis-servers.

Tests that fail here show a shortcoming (each docstring says what is expected and what happens instead);
the others verify a risky behaviour that works."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from notifier.app import Daemon
from notifier.config.load import load_config, parse_config
from notifier.config.models import Config
from notifier.devtools.simulator import Fault, Simulator
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.errors import DcsApiError, Reason
from notifier.ops.service import Service
from notifier.ops.status import gather_status
from notifier.store.connect import open_store
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK, WEBHOOK_SECRET
from tests.support.daemons import cli_run
from tests.support.redis_server import RedisServer, free_port
from tests.support.wait import until, until_async

WRONG_SK = "sk-WRONG-0000000000000000000"
BOTH = f"""instances:
  - {{id: "{ORDERS}", name: orders-cache}}
  - {{id: "{SESSIONS}", name: sessions-cache}}"""
ONLY_ORDERS = f"""instances:
  - {{id: "{ORDERS}", name: orders-cache}}"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def config_text(
    sim: Simulator,
    redis_url: str,
    channels: dict[str, str],
    *,
    sk: str = SK,
    listen: str = "127.0.0.1:0",
    poll: str = "interval: 0.3, jitter: 0, baseline_grace: 900",
    instances: str = BOTH,
    discover: bool = False,
    extra: str = "",
) -> str:
    """A config of the simulator's project; ``channels``: name → webhook URL (signed with WEBHOOK_SECRET)."""
    hooks = "\n".join(
        f'  {name}: {{type: webhook, url: "{url}", secret: "{WEBHOOK_SECRET}"}}'
        for name, url in channels.items()
    )
    where = ", discover: true" if discover else ""
    return f"""
cloud: {{endpoint: "{sim.base_url}", project_id: "{PROJECT_ID}", ak: "{AK}", sk: "{sk}"{where}}}
{"" if discover else instances}
poll: {{{poll}}}
health: {{after: 0.3}}
redis: {{url: "{redis_url}", key_prefix: rv}}
http: {{listen: "{listen}"}}
channels:
{hooks}
delivery: {{backoff_initial: 0.05, backoff_max: 0.2}}
{extra}
"""


def parse(text: str) -> Config:
    return parse_config(text, "review.yaml", {})


class Swappable:
    """What the config file says now, for a Service's ``load`` (a reload re-reads it)."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self) -> Config:
        return self.config


@contextlib.asynccontextmanager
async def service_running(
    service: Service, *, tolerate: type[BaseException] | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """``service.run()`` in the background until its first daemon exists; stopped and awaited on exit
    (``tolerate``: an error of the service's own that the test has already reported)."""
    task = asyncio.create_task(service.run())
    try:
        await until(lambda: service.daemon is not None or task.done(), 10, "the daemon")
        if task.done():
            task.result()
        yield task
    finally:
        service.request_stop()
        if tolerate is None:
            await asyncio.wait_for(task, 20)
        else:
            with contextlib.suppress(tolerate):
                await asyncio.wait_for(task, 20)


def port_of(service: Service) -> int:
    assert service.listener.bound is not None
    return service.listener.bound[1]


async def get(port: int, path: str, timeout: float = 10) -> tuple[int, str]:  # noqa: ASYNC109
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as s,
        s.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.text()


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scrape: Samples, name: str, **labels: str) -> float | None:
    return scrape.get((name, tuple(sorted(labels.items()))))


async def scrape(port: int) -> Samples:
    status, body = await get(port, "/metrics")
    assert status == 200, body
    return samples(body)


def counted(service: Service, name: str, **labels: str) -> float:
    """A sample of the service's registry, as a scrape would show it (0 when absent)."""
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def endpoint_of(sim: Simulator) -> str:
    assert sim.base_url is not None
    return sim.base_url.split("//", 1)[1].rstrip("/")


def polls_ok(service: Service) -> float:
    return counted(service, "dcs_notifier_polls_total", source="tasks", outcome="ok", reason="")


async def reloaded(service: Service, new: Config, load: Swappable, n: int) -> Daemon:
    """Write ``new`` as the file, reload, and wait for the ``n``-th reload's daemon."""
    load.config = new
    service.request_reload("review")
    await until(lambda: service.reloads >= n and service.daemon is not None, 15, f"reload #{n}")
    assert service.daemon is not None
    return service.daemon


# --- readiness and liveness --------------------------------------------------------------------------------


async def test_readyz_flips_for_a_scaling_replica_that_holds_shards_but_every_poll_is_refused(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    """Verified: with ``scaling.enabled``, a replica whose leases are held but whose polls all get 401 is
    not ready, and says why; it is alive (no reason to restart it)."""
    text = config_text(
        sim,
        redis_url,
        {"audit": audit.url},
        sk=WRONG_SK,
        extra="scaling: {enabled: true, replica: rv-ready, shards: 4, lease_ttl: 1}",
    )
    config = parse(text)
    service = Service(config, lambda: config)
    async with service_running(service):
        daemon = service.daemon
        assert daemon is not None
        await until(lambda: daemon.leases_held() == 4, 10, "the replica's four shards")
        auth = {"source": "tasks", "outcome": "failed", "reason": "auth"}
        await until(lambda: counted(service, "dcs_notifier_polls_total", **auth) >= 2, 10, "refused polls")
        status, body = await get(port_of(service), "/readyz")
        live, _ = await get(port_of(service), "/healthz")
        scraped = await scrape(port_of(service))
    assert status == 503, body
    reasons = json.loads(body)["reasons"]
    assert any("2 instance(s) to poll" in r for r in reasons), reasons
    assert live == 200
    assert value(scraped, "dcs_notifier_instances", state="owned") == 2
    assert value(scraped, "dcs_notifier_leases_held") == 4


async def test_readyz_is_not_ready_when_this_replica_only_discovers_and_every_listing_is_refused(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    """The issue: ready means "this replica polled successfully (or holds no shards yet while joining)".
    A replica of a ``discover: true`` project whose credentials are refused (401 on every listing) polls
    nothing successfully, ever — and it is not joining anything (no scaling). Expected: 503, the reason
    being that discovery fails.

    Instead /readyz answers 200: ``OpsListener.readyz`` (notifier/ops/http.py) only looks at task polls
    (``Daemon.polls_lately`` reads ``poller.last_success``) and, when that fails, only complains when
    ``instances().owned`` is non-zero — which it never is while discovery has found nothing. The same
    hole would hide a Cloud Eye source that always fails.

    Fix: count discovery (and Cloud Eye) outcomes in readiness — e.g. not ready while some discovering
    project has never listed successfully (or has failed for 3 × ``discovery.interval``), with the reason.
    """
    text = config_text(sim, redis_url, {"audit": audit.url}, sk=WRONG_SK, discover=True)
    config = parse(text)
    service = Service(config, lambda: config)
    async with service_running(service):
        refused = {"source": "discovery", "outcome": "failed", "reason": "auth"}
        await until(
            lambda: counted(service, "dcs_notifier_polls_total", **refused) >= 1, 10, "a refused listing"
        )
        status, body = await get(port_of(service), "/readyz")
    assert status == 503, f"every listing of the project was refused (401), yet /readyz says {status} {body}"


async def test_healthz_stall_limit_is_shorter_than_the_wait_the_scheduler_chooses_after_a_401(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    """The issue: /healthz is liveness — "the scheduler made progress lately" — so that a *hung* replica
    is restarted. A replica whose credentials are refused is not hung: the scheduler deliberately waits
    ``poll.recheck`` (default 300 s) before asking again (5xx answers back off exponentially, up to 600 s).

    With the default config, ``Daemon.stall_limit`` (notifier/app.py) is 3 × 30 + 10 + 30 = 130 s, and
    progress is only marked when a poll ends (``Scheduler._run_instance``). So 130 s after a 401 the probe
    answers 503 and Kubernetes/compose restarts a perfectly live process, over and over, for as long as
    the credentials (or the API) are bad — a restart loop instead of an alert. (Real poll against the
    simulator answering 401; the scheduler's own ``next_delay`` for it.)

    Fix: mark progress when the scheduler *schedules* the next poll (or compare the idle time with the
    next due time: a loop waiting for its timer is alive), or derive the limit from the longest delay
    the scheduler may choose (max(recheck, MAX_BACKOFF_SECONDS, Retry-After) + timeout + margin).
    """
    text = config_text(sim, redis_url, {"audit": audit.url}, sk=WRONG_SK, poll="baseline_grace: 900")
    daemon = Daemon(parse(text))
    run = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.poller.health.failing(f"{PROJECT_ID}/{ORDERS}"), 40, "the 401 seen")
        [watch] = [w for w in daemon.poller.fleet if w.target.instance.id == ORDERS]
        outcome = await daemon.poller.poll_target(watch.target)
        assert isinstance(outcome.error, DcsApiError) and outcome.error.reason is Reason.AUTH
        delay = daemon.poller.next_delay(outcome)
        # The scheduler's own loops chose such waits: the next step is expected after them, not before.
        ahead = daemon.poller.scheduler.expected_by - asyncio.get_running_loop().time()
        assert daemon.overdue() <= 0
    finally:
        daemon.request_stop()
        await asyncio.wait_for(run, 15)
        await daemon.aclose()
    assert ahead >= delay * 0.8, (
        f"after a 401 the scheduler waits {delay:.0f} s before the next poll, but /healthz would declare "
        f"the process hung {ahead:.0f} s from now"
    )


# --- /metrics -----------------------------------------------------------------------------------------------


async def test_metrics_answer_fast_with_the_last_figures_while_redis_hangs(
    sim: Simulator, own_redis: RedisServer, audit: WebhookReceiver
) -> None:
    """An operator expects a scrape to answer quickly whatever Redis does: the outbox and dead-letter
    figures are "read at scrape time, bounded and cached briefly", and README says that with Redis away
    "the last figures stay". Prometheus' scrape timeout is 10 s by default; a scrape that takes longer
    makes the target ``up == 0`` (DcsNotifierDown fires) although the daemon is fine.

    Instead, with Redis hung (SIGSTOP: a blocked server, a black-holed network), a scrape whose cache
    is stale waits for ``read_store_figures`` (notifier/ops/http.py) without a deadline: the client's
    5 s socket timeout, retried twice — 15.3 s measured before the 200 comes. /readyz bounds its PING
    at 2 s; /metrics bounds nothing (and concurrent scrapes queue behind the same ``_refreshing`` lock).

    Fix: ``asyncio.wait_for(read_store_figures(daemon), ~1-2 s)`` in ``metrics_page`` (serve the last
    figures on timeout, and refresh in the background rather than in the scrape).
    """
    text = config_text(sim, own_redis.url, {"audit": audit.url})
    config = parse(text)
    service = Service(config, lambda: config)
    assert own_redis.proc is not None
    async with service_running(service):
        port = port_of(service)
        await until(lambda: polls_ok(service) >= 2, 10, "polls")
        before = await scrape(port)
        assert value(before, "dcs_notifier_outbox_pending", channel="audit") == 0
        own_redis.proc.send_signal(signal.SIGSTOP)
        try:
            await until(service.metrics.store_stale, 10, "the cached Redis figures to go stale")
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                status, body = await get(port, "/metrics", timeout=4)
            except TimeoutError:
                status, body = 0, "(no answer within 4 s)"
            took = loop.time() - started
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
    assert status == 200 and took < 2.5, f"a scrape with Redis hung took {took:.1f} s: {status} {body[:200]}"
    assert value(samples(body), "dcs_notifier_outbox_pending", channel="audit") == 0  # the last figures


async def test_api_request_duration_counts_the_requests_that_timed_out(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    """``dcs_notifier_api_request_duration_seconds{source,endpoint}`` is what an operator alerts on for
    a slow API (p99). The slowest requests are the ones that hit ``api.timeout``.

    Instead, a request that times out (or whose connection fails) is never observed:
    ``Endpoint._send`` (notifier/dcs/endpoint.py) calls ``metrics.api_request`` only after the whole
    answer was read, so while every poll times out the histogram does not move at all — its
    ``_count`` stays 0 while ``polls_total{reason="timeout"}`` climbs; the default timeout (10 s) even
    sits on a bucket bound that is never reached.

    Fix: observe the duration in a ``finally`` (or in the ``TimeoutError``/``ClientError`` handlers) too,
    so the histogram counts every request sent.
    """
    sim.inject(Fault.slow(1.0), times=100_000)
    text = config_text(sim, redis_url, {"audit": audit.url}, extra="api: {timeout: 0.2}")
    config = parse(text)
    service = Service(config, lambda: config)
    async with service_running(service):
        timeouts = {"source": "tasks", "outcome": "failed", "reason": "timeout"}
        await until(lambda: counted(service, "dcs_notifier_polls_total", **timeouts) >= 2, 10, "timeouts")
        scraped = await scrape(port_of(service))
    failed = value(scraped, "dcs_notifier_polls_total", **timeouts) or 0
    observed = value(
        scraped, "dcs_notifier_api_request_duration_seconds_count", source="tasks", endpoint=endpoint_of(sim)
    )
    assert (observed or 0) >= failed, (
        f"{failed:.0f} requests timed out after 0.2 s; the API duration histogram observed {observed}"
    )


async def test_poll_failure_reasons_stay_a_bounded_set_whatever_the_api_answers(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    """Verified: odd status codes and error codes from the API (418 with a made-up code, a 400 of an
    unknown DCS code, a 502, malformed JSON, throttling) become the documented ``reason`` values; no
    label value carries an instance id or an API error code."""
    for fault in (
        Fault.error(418, "WEIRD.7731", "I'm a teapot"),
        Fault.error(400, "DCS.4999", "odd request"),
        Fault.server_error(502, "DCS.5999"),
        Fault.malformed_json(),
        Fault.throttled(retry_after=None),
    ):
        sim.inject(fault, times=1)
    text = config_text(sim, redis_url, {"audit": audit.url}, poll="interval: 0.2, jitter: 0, recheck: 0.2")
    config = parse(text)
    service = Service(config, lambda: config)
    async with service_running(service):
        await until(lambda: not sim.faults and polls_ok(service) >= 2, 10, "every fault served, polls ok")
        scraped = await scrape(port_of(service))
    documented = {
        "",
        "auth",
        "not_found",
        "rate_limited",
        "server_error",
        "timeout",
        "connection",
        "invalid_response",
        "client_error",
        "internal",
        "redis",
    }
    reasons = {
        dict(labels).get("reason", "") for name, labels in scraped if name == "dcs_notifier_polls_total"
    }
    assert reasons <= documented, reasons
    assert len(reasons) >= 3, reasons  # the failures were counted
    values = {v for _, labels in scraped for _, v in labels}
    for forbidden in (ORDERS, SESSIONS, PROJECT_ID, "WEIRD.7731", "DCS.4999", "DCS.5999", "APIG.0308"):
        assert not any(forbidden in v for v in values), forbidden


# --- reloads ------------------------------------------------------------------------------------------------


async def test_a_reload_moves_the_listener_and_the_counters_carry_on_there(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    """Verified: a reload that changes ``http.listen`` moves the listener (the old port refuses, the new
    one answers), and the counters served there start from where they were, not from zero."""
    first = parse(config_text(sim, redis_url, {"audit": audit.url}))
    load = Swappable(first)
    service = Service(first, load)
    async with service_running(service):
        old_port = port_of(service)
        sim.start_task(ORDERS, "masterStandbySwapJob")
        await audit.wait_for(1, timeout=10)
        delivered = {"channel": "audit", "outcome": "delivered", "reason": ""}
        await until(
            lambda: counted(service, "dcs_notifier_deliveries_total", **delivered) == 1, 10, "counted"
        )
        before = await scrape(old_port)
        new_port = free_port()
        moved = parse(config_text(sim, redis_url, {"audit": audit.url}, listen=f"127.0.0.1:{new_port}"))
        await reloaded(service, moved, load, 1)
        assert port_of(service) == new_port
        after = await scrape(new_port)
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(old_port, "/healthz", timeout=3)
    for name, labels in (
        ("dcs_notifier_polls_total", {"source": "tasks", "outcome": "ok", "reason": ""}),
        ("dcs_notifier_events_total", {"type": "task.started"}),
        ("dcs_notifier_deliveries_total", delivered),
        ("dcs_notifier_delivery_latency_seconds_count", {"channel": "audit"}),
    ):
        was, now = value(before, name, **labels), value(after, name, **labels)
        assert was is not None and now is not None and now >= was, (name, was, now)


async def test_a_reload_to_a_listen_address_in_use_is_refused_and_the_daemon_keeps_running(
    sim: Simulator, redis_url: str, audit: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue: "An invalid new config is rejected with the reason logged and the old one kept."
    An operator who moves ``http.listen`` to a port that turns out to be taken expects the same: the
    reload refused (or the old listener kept), the daemon polling on.

    Instead the whole process ends: ``Service.run`` (notifier/ops/service.py) swaps the daemon first,
    then stops the old listener and calls ``listener.start`` on the new address; its OSError ("cannot
    listen on …") escapes ``run``, the CLI prints it and exits 2 — no polling, no delivery, and a
    container restarted on the same file crash-loops.

    Fix: bind the new listener before giving up the old one (and before accepting the config): on
    failure log "reload refused: cannot listen on …" and keep the old config and listener.
    """
    caplog.set_level(logging.INFO, logger="notifier")
    first = parse(config_text(sim, redis_url, {"audit": audit.url}))
    load = Swappable(first)
    service = Service(first, load)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        async with service_running(service, tolerate=OSError) as task:
            old_port = port_of(service)
            await until(lambda: polls_ok(service) >= 2, 10, "polls")
            load.config = parse(config_text(sim, redis_url, {"audit": audit.url}, listen=f"127.0.0.1:{busy}"))
            service.request_reload("review")

            def settled() -> bool:
                refused = any("refused" in r.getMessage() for r in caplog.records)
                return task.done() or service.reloads >= 1 or refused

            await until(settled, 15, "the reload to be applied or refused")
            await until(lambda: task.done() or service.daemon is not None, 10, "a daemon again")
            crashed = task.exception() if task.done() else None
            assert crashed is None, f"the daemon stopped on a reload to a busy port: {crashed!r}"
            status, _ = await get(old_port, "/healthz", timeout=3)
            assert status == 200


async def test_api_throttled_total_does_not_go_backwards_on_a_reload(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    """README: "The listener and the metrics outlive the swap" / the service docstring: "counters do not
    restart from zero". A Prometheus counter must never decrease within a process: ``rate()`` reads a
    decrease as a reset and ``increase()`` over the reload is wrong.

    Instead ``dcs_notifier_api_throttled_total`` drops back to 0 on every reload: it is not a counter
    of ``Metrics`` but read at scrape time from the running daemon's rate limiters
    (``Daemon.rate_limits`` → ``limiter.throttles``, notifier/ops/metrics.py ``_Scraped``), and the new
    daemon has new limiters.

    Fix: count throttling signals in a real ``Counter`` of ``Metrics`` (incremented by
    ``AimdRateLimiter.on_throttled``), keep only the current rate as a scrape-time gauge.
    """
    sim.inject(Fault.throttled(retry_after=None), times=3)
    first = parse(config_text(sim, redis_url, {"audit": audit.url}))
    load = Swappable(first)
    service = Service(first, load)
    host = endpoint_of(sim)
    async with service_running(service):
        port = port_of(service)
        await until(lambda: not sim.faults and polls_ok(service) >= 2, 10, "the throttled answers")
        before = value(await scrape(port), "dcs_notifier_api_throttled_total", endpoint=host)
        assert before is not None and before >= 1
        faster = parse(config_text(sim, redis_url, {"audit": audit.url}, poll="interval: 0.25"))
        await reloaded(service, faster, load, 1)
        ok = polls_ok(service)
        await until(lambda: polls_ok(service) >= ok + 2, 10, "the new daemon's polls")
        after = value(await scrape(port), "dcs_notifier_api_throttled_total", endpoint=host)
    assert after is not None and after >= before, f"the counter went from {before} to {after} on a reload"


async def test_readiness_and_the_last_successful_poll_survive_a_reload(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    """README: "The listener and the metrics outlive the swap"; a reload is not a restart of the process.
    A replica that polled successfully a moment ago is still the same replica after a rule change.

    Instead, right after every reload /readyz answers 503 ("2 instance(s) to poll and no poll has
    succeeded yet") and ``dcs_notifier_last_successful_poll_timestamp_seconds`` disappears from the
    scrape, until the new daemon's first poll — which comes up to one ``poll.interval`` later, as first
    polls are spread over an interval (30 s by default). Both read ``poller.last_success`` of the *new*
    daemon (``Daemon.polls_lately``/``last_successful_poll``, notifier/app.py).

    Fix: carry the last success over the swap (keep it in the Service or in ``Metrics`` and hand it to
    the new daemon's poller).
    """
    poll = "interval: 20, jitter: 0, baseline_grace: 900"  # first polls spread over 20 s: ORDERS's at 1.1 s
    first = parse(config_text(sim, redis_url, {"audit": audit.url}, poll=poll))
    load = Swappable(first)
    service = Service(first, load)
    async with service_running(service):
        port = port_of(service)
        await until(lambda: polls_ok(service) >= 1, 10, "a successful poll")
        assert (await get(port, "/readyz"))[0] == 200
        ruled = config_text(
            sim, redis_url, {"audit": audit.url}, poll=poll, extra="rules: [{name: all, channels: [audit]}]"
        )
        await reloaded(service, parse(ruled), load, 1)
        ok = polls_ok(service)
        status, body = await get(port, "/readyz")
        gauge = value(await scrape(port), "dcs_notifier_last_successful_poll_timestamp_seconds")
        assert polls_ok(service) == ok, "the new daemon polled already: the window was missed"
    assert (status, gauge is not None) == (200, True), (
        f"after a reload: /readyz {status} {body}; gauge {gauge}"
    )


async def test_a_scaling_replica_keeps_its_leases_across_a_reload(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    """README (reload): "the replica keeps its name (its pending entries and leases stay its own)".
    An operator expects a reload of one replica not to leave its shards unpolled.

    Instead the old daemon's ``Scheduler.run`` ends with ``ShardLeases.leave()`` (hand every shard over,
    expiring after one ``poll.interval``, and leave the membership), and the new daemon — same replica
    name — tries ``SET NX`` on leases that still exist *under its own name*, which fails until they
    expire (notifier/store/leases.py ``tick``): its instances go unpolled for about one poll interval
    plus a tick after every reload (≈ 30-40 s with the defaults), and another replica may grab the
    shards meanwhile and hand them back later.

    Fix: don't ``leave()`` on a reload (the Service keeps the ``ShardLeases``), or let ``tick`` take a
    lease whose value is already this replica's name (a Lua "SET NX or renew if mine").
    """
    extra = "scaling: {enabled: true, replica: rv-keep, shards: 4, lease_ttl: 5}"
    poll = "interval: 5, jitter: 0, baseline_grace: 900"  # the handover: 5 s
    first = parse(config_text(sim, redis_url, {"audit": audit.url}, poll=poll, extra=extra))
    load = Swappable(first)
    service = Service(first, load)
    async with service_running(service):
        old = service.daemon
        assert old is not None
        await until(lambda: old.leases_held() == 4, 10, "the replica's four shards")
        ruled = extra + "\nrules: [{name: all, channels: [audit]}]"
        daemon = await reloaded(
            service, parse(config_text(sim, redis_url, {"audit": audit.url}, poll=poll, extra=ruled)), load, 1
        )
        leases = daemon.poller.leases
        assert leases is not None
        await until(lambda: leases._valid_until > 0, 5, "the reloaded replica's first lease tick")
        held = sorted(leases.held)
        with redis.Redis.from_url(redis_url, decode_responses=True) as r:
            in_redis = {s: (r.get(f"rv:lease:{s}"), r.pttl(f"rv:lease:{s}")) for s in range(4)}
    assert held == [0, 1, 2, 3], (
        f"after the reload replica rv-keep holds shards {held}; Redis holds its leases for it: {in_redis} "
        "(name, ms left) — its instances are polled by nobody until they expire"
    )


async def test_a_removed_channels_undelivered_backlog_shows_in_status_and_metrics(
    sim: Simulator, redis_url: str, audit: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue: a removed channel's queued notifications stay in its stream (verified here, with the
    warning at the reload), and ``status`` is "one screen for a person: … per channel outbox depth,
    oldest pending, dead letters". ``ChannelStatus`` even has ``in_config``/``type: None`` "for a channel
    no longer in the config".

    Instead, once the channel is out of the config, its undelivered notifications vanish from both
    ``dcs-notifier status`` (``_channels`` in notifier/ops/status.py lists the config's channels plus
    those with *dead letters* only) and ``/metrics`` (``read_store_figures`` reads the config's channels):
    no outbox depth, no oldest age — the "outbox growing" alert cannot see them. Only one log line at
    the reload says they exist.

    Fix: in ``gather_status`` and ``read_store_figures``, add the orphaned outbox streams
    (``outbox.orphans``, already used for the warning; a bounded SCAN) as channels ``in_config: false``.
    """
    caplog.set_level(logging.INFO, logger="notifier")
    async with WebhookReceiver(
        secret=WEBHOOK_SECRET, policy=lambda _n, _p: WebhookReceiver.error(503)
    ) as gone:
        both = parse(config_text(sim, redis_url, {"audit": audit.url, "gone": gone.url}))
        load = Swappable(both)
        service = Service(both, load)
        async with service_running(service):
            sim.start_task(ORDERS, "masterStandbySwapJob")
            await audit.wait_for(1, timeout=10)
            await gone.wait_for(1, timeout=10)
            only_audit = parse(config_text(sim, redis_url, {"audit": audit.url}))
            await reloaded(service, only_audit, load, 1)
            await until(
                lambda: any("no longer in the config" in r.getMessage() for r in caplog.records),
                10,
                "the warning about the removed channel's queue",
            )
            with redis.Redis.from_url(redis_url) as r:
                assert r.xlen("rv:outbox:gone") == 1  # the notification stays queued
            store = open_store(only_audit)
            try:
                status = await gather_status(only_audit, store)
            finally:
                await store.aclose()
            await until(service.metrics.store_stale, 10, "the metrics' Redis figures to be read again")
            scraped = await scrape(port_of(service))
    shown = {c.name: c.depth for c in status.channels}
    pending = value(scraped, "dcs_notifier_outbox_pending", channel="gone")
    assert (shown.get("gone"), pending) == (1, 1), (
        f"one notification waits in the removed channel's outbox; status shows {shown}, /metrics {pending}"
    )


async def test_an_instance_added_by_a_reload_is_baselined_and_then_followed(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    """Verified: an instance a reload adds is baselined — a task that finished an hour ago is not
    announced — and a task started afterwards is."""
    first = parse(config_text(sim, redis_url, {"audit": audit.url}, instances=ONLY_ORDERS))
    load = Swappable(first)
    service = Service(first, load)
    earlier = datetime.now(UTC) - timedelta(hours=2)
    old = sim.start_task(SESSIONS, "EXTEND", created_at=earlier)
    sim.finish_task(SESSIONS, old, updated_at=earlier + timedelta(hours=1))
    async with service_running(service):
        await until(lambda: polls_ok(service) >= 2, 10, "polls of orders-cache")
        daemon = await reloaded(service, parse(config_text(sim, redis_url, {"audit": audit.url})), load, 1)

        async def baselined() -> bool:
            return await daemon.store.snapshots.load(PROJECT_ID, SESSIONS) is not None

        await until_async(baselined, 10, "the added instance's baseline")
        new = sim.start_task(SESSIONS, "EXTEND")
        await audit.wait_for(1, timeout=10)
        ok = polls_ok(service)
        await until(lambda: polls_ok(service) >= ok + 4, 10, "more polls")
    assert [(p["type"], p["data"]["task"]["id"]) for p in audit.payloads] == [("task.started", new)]


async def test_dcs_notifier_reload_reaches_every_replica(
    sim: Simulator, redis_url: str, audit: WebhookReceiver, tmp_path: Path
) -> None:
    """Verified: ``dcs-notifier reload`` (a subprocess, through Redis) makes both replicas of a scaled
    config re-read the file and run on it."""
    path = tmp_path / "fleet.yaml"

    def write(poll: str) -> None:
        extra = "scaling: {enabled: true, shards: 4, lease_ttl: 1}"
        path.write_text(config_text(sim, redis_url, {"audit": audit.url}, poll=poll, extra=extra))

    write("interval: 0.3, jitter: 0")
    services = []
    for name in ("rv-a", "rv-b"):
        config = load_config(path)
        config = config.model_copy(update={"scaling": config.scaling.model_copy(update={"replica": name})})

        def load(name: str = name) -> Config:
            fresh = load_config(path)
            return fresh.model_copy(update={"scaling": fresh.scaling.model_copy(update={"replica": name})})

        services.append(Service(config, load))
    async with service_running(services[0]), service_running(services[1]):
        await until(
            lambda: all(
                s.daemon is not None
                and s.daemon.poller.leases is not None
                and s.daemon.poller.leases.members
                and s._reloads_seen is not None  # its first read of {p}:reload done
                for s in services
            ),
            10,
            "both replicas joined",
        )
        write("interval: 0.35, jitter: 0")
        env = {"PATH": os.environ.get("PATH", ""), "DCS_NOTIFIER_CONFIG": str(path)}
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "notifier.cli", "reload", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _out, err = await asyncio.wait_for(cli.communicate(), 20)
        assert cli.returncode == 0, err.decode()

        def on_new_config() -> bool:
            return all(
                s.reloads == 1 and s.daemon is not None and s.daemon.config.poll.interval == 0.35
                for s in services
            )

        await until(on_new_config, 12, "both replicas on the new config")


async def test_events_are_counted_once_when_their_commit_was_refused_and_retried(
    sim: Simulator, own_redis: RedisServer, audit: WebhookReceiver
) -> None:
    """Verified: an event found while Redis refuses writes (OOM) is committed by a later poll once Redis
    accepts them again: told once, and counted once in ``dcs_notifier_events_total``."""
    config = parse(config_text(sim, own_redis.url, {"audit": audit.url}))
    service = Service(config, lambda: config)
    admin = redis.Redis(host="127.0.0.1", port=own_redis.port)
    try:
        async with service_running(service):
            await until(lambda: polls_ok(service) >= 2, 10, "polls")
            admin.config_set("maxmemory", "1")
            tid = sim.start_task(ORDERS, "masterStandbySwapJob")
            refused = {"source": "tasks", "outcome": "failed", "reason": "redis"}
            await until(lambda: counted(service, "dcs_notifier_polls_total", **refused) >= 2, 10, "refusals")
            assert counted(service, "dcs_notifier_events_total", type="task.started") == 0
            admin.config_set("maxmemory", "0")
            await audit.wait_for(1, timeout=10)
            ok = polls_ok(service)
            await until(lambda: polls_ok(service) >= ok + 6, 10, "more polls")
            events = counted(service, "dcs_notifier_events_total", type="task.started")
    finally:
        admin.close()
    assert [(p["type"], p["data"]["task"]["id"]) for p in audit.payloads] == [("task.started", tid)]
    assert events == 1


async def test_a_reload_to_another_redis_runs_there(
    sim: Simulator, redis_url: str, own_redis: RedisServer, audit: WebhookReceiver
) -> None:
    """Verified: a reload whose ``redis.url`` changed moves the daemon to the new Redis (its lock
    released on the old one, events and status there), and readiness follows the new Redis."""
    first = parse(config_text(sim, redis_url, {"audit": audit.url}))
    load = Swappable(first)
    service = Service(first, load)
    moved = parse(config_text(sim, own_redis.url, {"audit": audit.url}))
    async with service_running(service):
        port = port_of(service)
        await until(lambda: polls_ok(service) >= 2, 10, "polls")
        daemon = await reloaded(service, moved, load, 1)
        tid = sim.start_task(ORDERS, "masterStandbySwapJob")
        await audit.wait_for(1, timeout=10)

        async def both_there() -> bool:
            snapshots = [await daemon.store.snapshots.load(PROJECT_ID, i) for i in (ORDERS, SESSIONS)]
            return None not in snapshots

        await until_async(both_there, 10, "both instances' state in the new Redis")

        async def ready() -> bool:
            return (await get(port, "/readyz"))[0] == 200

        await until_async(ready, 10, "ready on the new Redis")
        assert daemon.lock is not None
        with redis.Redis.from_url(redis_url) as old:
            assert old.get("rv:daemon") is None  # the old lock released
        store = open_store(moved)
        try:
            status = await gather_status(moved, store)
        finally:
            await store.aclose()
    assert [p["data"]["task"]["id"] for p in audit.payloads] == [tid]
    assert status.daemon is not None
    [project] = status.projects
    assert {i.id: i.state for i in project.instances} == {ORDERS: "ok", SESSIONS: "ok"}


# --- the CLI against a running daemon ------------------------------------------------------------------------


def seen(log: list[str], text: str) -> Callable[[], bool]:
    return lambda: any(text in line for line in log)


async def test_dcs_notifier_health_finds_this_hosts_listener_on_port_0(
    sim: Simulator, redis_url: str, audit: WebhookReceiver, tmp_path: Path
) -> None:
    """README: ``listen`` "port 0 = any free port (logged)"; the issue: ``dcs-notifier health`` "checks this
    replica (through the listener when there is one)"; Compose's healthcheck uses it.

    Instead, with ``listen: 127.0.0.1:0``, ``health`` asks ``http://127.0.0.1:0/healthz``
    (``_health`` → ``_health_of_listener`` in notifier/cli.py use the configured address as is) and
    reports a healthy, polling daemon as "unhealthy: no answer" — exit 1.

    Fix: have the daemon record the port it bound (e.g. in a pid/port file or ``{p}:listener:{replica}``)
    and let ``health`` read it, or refuse port 0 when ``health`` cannot find it (and say so).
    """
    path = tmp_path / "port0.yaml"
    path.write_text(config_text(sim, redis_url, {"audit": audit.url}, listen="127.0.0.1:0"))
    async with cli_run({"DCS_NOTIFIER_CONFIG": str(path)}) as (proc, log):
        await until(seen(log, "serving /metrics"), 15, "the listener")
        [line] = [x for x in log if "serving /metrics" in x]
        port = int(line.rsplit(":", 1)[1].split()[0])

        async def ready() -> bool:
            return (await get(port, "/readyz"))[0] == 200

        await until_async(ready, 10, "the daemon ready")
        env = {"PATH": os.environ.get("PATH", ""), "DCS_NOTIFIER_CONFIG": str(path)}
        health = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "notifier.cli", "health", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(health.communicate(), 20)
        assert proc.returncode is None
    assert health.returncode == 0, (out + err).decode()


async def test_two_quick_sighups_swap_once_onto_the_latest_file_and_sigterm_mid_reload_exits_cleanly(
    sim: Simulator, redis_url: str, audit: WebhookReceiver, tmp_path: Path
) -> None:
    """Verified, through ``dcs-notifier run``: two SIGHUPs in a row (the file changed in between) make one
    swap, onto the later file; a SIGTERM sent right after a SIGHUP with a changed file stops the daemon
    cleanly (exit 0, no traceback) instead of leaving a new daemon running."""
    path = tmp_path / "hup.yaml"

    def write(interval: str) -> None:
        poll = f"interval: {interval}, jitter: 0"
        path.write_text(config_text(sim, redis_url, {"audit": audit.url}, poll=poll))

    write("0.3")
    async with cli_run({"DCS_NOTIFIER_CONFIG": str(path)}) as (proc, log):
        await until(seen(log, "poll every 0.3 s"), 15, "the daemon")
        write("0.31")
        proc.send_signal(signal.SIGHUP)
        write("0.32")
        proc.send_signal(signal.SIGHUP)
        await until(seen(log, "poll every 0.32 s"), 15, "the daemon on the latest file")
        assert sum("running on the new config" in line for line in log) == 1
        assert not any("poll every 0.31 s" in line for line in log)
        write("0.33")
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
    assert proc.returncode == 0, "".join(log)[-2000:]
    assert not any("Traceback" in line for line in log)
