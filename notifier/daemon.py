"""Wires the pieces together: config → DCS client, Redis store, channels, poller, deliverer.

``Daemon.run()`` is the long-running service; ``Daemon.once()`` polls every instance once, delivers
what is queued and reports what failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from notifier.channels import build_channel
from notifier.channels.base import Channel
from notifier.cloud import Cloud
from notifier.config import Config
from notifier.constants import Keys
from notifier.delivery import Deliverer, PassResult
from notifier.errors import StateStoreError
from notifier.poller import Poller, PollOutcome, utcnow
from notifier.state import StateStore

log = logging.getLogger(__name__)


def connect_redis(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A Redis client for the daemon.

    * It reconnects by itself: after a Redis restart, pooled connections are dead, and a command on one
      is retried on a fresh connection instead of failing (twice at most, quickly).
    * Its pool blocks when all connections are busy (many instances polled at once) instead of
      failing with "Too many connections".
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10,
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[redis.exceptions.ConnectionError],
    )
    return aioredis.Redis.from_pool(pool)


@dataclass
class OnceReport:
    polls: list[PollOutcome] = field(default_factory=list)
    deliveries: dict[str, PassResult] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        out = [f"poll {p.instance.name} ({p.instance.id}): {p.error}" for p in self.polls if p.error]
        for ch, r in self.deliveries.items():
            out.extend(f"delivery to {ch}: {msg}" for msg in r.failed)
            if r.waiting:
                out.append(
                    f"delivery to {ch}: older notifications are held by another consumer (a running daemon?)"
                )
            if r.dead_lettered:
                out.append(
                    f"delivery to {ch}: {r.dead_lettered} notification(s) refused, moved to dead letters"
                )
        return out


def open_store(config: Config, redis_client: aioredis.Redis | None = None) -> StateStore:
    """The state store of a config, on ``redis_client`` or a new connection (closed with ``store.redis``)."""
    client = redis_client or connect_redis(config.redis.url.get_secret_value())
    return StateStore(client, Keys(config.redis.key_prefix))


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        redis_client: aioredis.Redis | None = None,
        channels: dict[str, Channel] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.cloud = Cloud(config)
        self._own_redis = redis_client is None
        self.store = open_store(config, redis_client)
        self.redis = self.store.redis
        self.channels = channels or {name: build_channel(name, cfg) for name, cfg in config.channels.items()}
        self.stop = asyncio.Event()
        self.deliverer = Deliverer(self.store, self.channels, config.delivery, stop=self.stop)
        self.poller = Poller(config, self.cloud.clients, self.store, clock=clock)

    def request_stop(self) -> None:
        self.deliverer.request_stop()

    async def once(self) -> OnceReport:
        report = OnceReport()
        await self.poller.load_health()
        report.polls = await self.poller.poll_all()
        # A consumer name of its own: beside a running daemon, `once` waits for the entries the daemon
        # holds instead of sending them a second time.
        cfg = self.config.delivery
        own = cfg.model_copy(update={"consumer": f"{cfg.consumer}-once"})
        deliverer = Deliverer(self.store, self.channels, own, stop=self.stop)
        report.deliveries = await deliverer.drain_all(budget=cfg.once_attempts)
        return report

    async def _heartbeat(self) -> None:
        """Alive means: polls succeed. The heartbeat is written only while some poll succeeded lately."""
        interval = self.config.poll.interval
        while not self.stop.is_set():
            last = self.poller.last_success
            if last is not None and time.monotonic() - last <= 3 * interval:
                with contextlib.suppress(StateStoreError):
                    await self.store.heartbeat(int(interval * 3) + 10)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=min(interval, 5.0))

    async def run(self) -> None:
        """Poll and deliver until ``request_stop()``; sends in flight finish first."""
        log.info(
            "dcs-notifier running: %d project(s), %d instance(s) named, %d discovering, %d channel(s), "
            "poll every %g s",
            len(self.poller.projects),
            len(self.poller.targets),
            sum(1 for p in self.poller.projects if p.discover),
            len(self.channels),
            self.config.poll.interval,
        )
        try:
            for channel, n in (await self.store.orphan_outboxes(self.channels)).items():
                log.warning(
                    "the outbox of channel %r, which is no longer in the config, holds %d undelivered "
                    "notification(s); add the channel back to deliver them",
                    channel,
                    n,
                )
        except StateStoreError:
            pass  # Redis is down at start: the store has logged it; the daemon runs on regardless
        workers = [
            asyncio.create_task(
                self.deliverer.run_channel(name, self.config.poll.interval), name=f"deliver:{name}"
            )
            for name in self.channels
        ]
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.poller.run(self.stop), name="poller")
                tg.create_task(self._heartbeat(), name="heartbeat")
        finally:
            self.request_stop()
            # Sends in flight get stop_timeout to finish; whatever is left stays queued for the next start.
            _, late = await asyncio.wait(workers, timeout=self.config.delivery.stop_timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
                log.warning("stopped %d delivery worker(s) mid-send; their messages stay queued", len(late))
            unacked = self.deliverer.unacknowledged
            if unacked:
                log.warning(
                    "stopping with %d delivered notification(s) not yet acknowledged in Redis (it is down); "
                    "they will be sent again after the restart, with the same ids",
                    unacked,
                )
        log.info("dcs-notifier stopped")

    async def aclose(self) -> None:
        await self.cloud.aclose()
        for ch in self.channels.values():
            await ch.aclose()
        if self._own_redis:
            await self.redis.aclose()

    async def __aenter__(self) -> Daemon:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
