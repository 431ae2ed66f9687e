"""Wires the pieces together: config → DCS client, Redis store, channels, poller, deliverer.

``Daemon.run()`` is the long-running service; ``Daemon.once()`` polls every instance once, delivers
what is queued and reports what failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import redis.exceptions

from notifier import logsetup
from notifier.config.models import Config
from notifier.dcs.cloud import Cloud
from notifier.delivery.channels import build_channel
from notifier.delivery.channels.base import Channel
from notifier.delivery.worker import Deliverer, PassResult
from notifier.errors import StoreError
from notifier.ops.metrics import Instances, Metrics
from notifier.pipeline.discovery import listing_subject
from notifier.pipeline.instance import PollOutcome, utcnow
from notifier.pipeline.poll import Poller
from notifier.store import connect
from notifier.store.leases import (
    DaemonConflict,
    DaemonLock,
    ShardLeases,
    daemon_holder,
    default_replica_id,
    wait_out,
)
from notifier.store.link import RedisClient
from notifier.store.silences import Silences

log = logging.getLogger(__name__)

#: The daemon lock's TTL is 3 heartbeat periods, and at least this many seconds.
MIN_LOCK_TTL = 3.0
#: Seconds between two records of when each instance was last polled (``{p}:polls``).
RECORD_POLLS_EVERY = 60.0


def freeze_startup_heap(poll_interval: float) -> None:
    """Exempt the long-lived objects from the cyclic garbage collector (for ``dcs-notifier run``).

    Once a daemon is built, nearly all of the process's objects — modules, classes, config, clients — live
    as long as it does, and a full collection walked them all: a pause that every poll and delivery in
    flight waited for, the slowest 1 % of detection → delivery latency (figures: README, Scaling). Frozen
    now, and once more when every instance has been polled once (1.5 intervals: its target and state live
    on too), they are skipped; what the daemon allocates later is collected as before. Garbage is
    collected before each freeze, so nothing collectable is frozen.
    """
    _freeze()
    asyncio.get_running_loop().call_later(poll_interval * 1.5, _freeze)


def _freeze() -> None:
    gc.collect()
    gc.freeze()


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


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        redis_client: RedisClient | None = None,
        channels: dict[str, Channel] | None = None,
        clock: Callable[[], datetime] = utcnow,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics = metrics or Metrics()
        self.cloud = Cloud(config)
        self.cloud.gate.metrics = metrics
        self._own_redis = redis_client is None
        self.store = connect.open_store(config, redis_client)
        self.store.link.on_error = metrics.redis_error
        self.channels = channels or {name: build_channel(name, cfg) for name, cfg in config.channels.items()}
        self.stop = asyncio.Event()
        delivery = config.delivery
        self.replica: str | None = None
        if config.scaling.enabled:
            # Replicas share the outbox consumer group, each under a name of its own.
            self.replica = config.scaling.replica or default_replica_id()
            delivery = delivery.model_copy(update={"consumer": f"{delivery.consumer}-{self.replica}"})
        logsetup.bind(replica=self.replica)  # a JSON log line names the replica that wrote it
        #: The silences (``dcs-notifier silence``), read from Redis at most once a second.
        self.silences = Silences(self.store.silences, self.store.outbox)
        self.deliverer = Deliverer(
            self.store.outbox,
            self.channels,
            delivery,
            stop=self.stop,
            metrics=metrics,
            rules=config.rules,
            digest=config.digest,
            silences=self.silences,
        )
        self.poller = Poller(
            config,
            self.cloud.clients,
            self.store,
            clock=clock,
            cloud_eye_clients=self.cloud.cloud_eye,
            metrics=metrics,
        )
        #: Set when another daemon of this config turned out to run (see DaemonLock).
        self.conflict: DaemonConflict | None = None
        #: The token of {p}:epoch this daemon saw (None: not yet): from then on, another means loss.
        self._epoch: str | None = None
        #: ``time.monotonic()`` of the last record of the last polls (None: not yet), and of this daemon's
        #: making.
        self._polls_recorded: float | None = None
        self._created = time.monotonic()
        self.lock: DaemonLock | None = None
        if self.replica is None:
            self.lock = DaemonLock(self.store.redis, self.store.keys, ttl=max(3 * self._period, MIN_LOCK_TTL))
        if self.replica is not None:
            self.poller.leases = ShardLeases(
                self.store.redis,
                self.store.keys,
                replica=self.replica,
                shards=config.scaling.shards,
                ttl=config.scaling.lease_ttl,
                handover=config.poll.interval,
            )

        metrics.live = self

    def request_stop(self) -> None:
        self.deliverer.request_stop()

    # -- what the metrics and the probes read (notifier.ops) ----------------------------------------------

    def instances(self) -> Instances:
        fleet = self.poller.fleet
        keys = [w.target.key for w in fleet]
        announced = fleet.health.announced
        return Instances(
            watched=len(keys),
            owned=sum(1 for k in keys if fleet.owns(k)),
            unhealthy=sum(1 for k in keys if k in announced),
        )

    def rate_limits(self) -> dict[str, float]:
        return {host: lim.rate for host, lim in self.cloud.gate.limiters.items()}

    def leases_held(self) -> int:
        leases = self.poller.leases
        return 0 if leases is None else len(leases.held)

    def sources_failing(self) -> list[str]:
        """Instance listings (discovery) whose last call failed, in words, for readiness."""
        health = self.poller.health
        return [
            f"the instance list of project {spec.project_id} cannot be read"
            for spec in self.poller.projects
            if spec.discover and health.failing(listing_subject(spec).key)
        ]

    def overdue(self) -> float:
        """Seconds the scheduler is late for the step its last one scheduled (0 or less: on time; 0
        when it has nothing to schedule)."""
        if not any(True for _ in self.poller.fleet) and self.poller.leases is None:
            return 0.0
        return time.monotonic() - self.poller.scheduler.expected_by

    def polls_lately(self) -> bool:
        """Whether some poll of this replica succeeded within three intervals (before a reload too)."""
        last = self.metrics.last_ok
        return last is not None and time.time() - last <= 3 * self.config.poll.interval

    async def once(self) -> OnceReport:
        report = OnceReport()
        await self.poller.load_health()
        report.polls = await self.poller.poll_all()
        # A consumer name of its own: beside a running daemon, `once` waits for the entries the daemon
        # holds instead of sending them a second time.
        cfg = self.config.delivery
        own = cfg.model_copy(update={"consumer": f"{cfg.consumer}-once"})
        deliverer = Deliverer(
            self.store.outbox,
            self.channels,
            own,
            stop=self.stop,
            rules=self.config.rules,
            digest=self.config.digest,
            silences=self.silences,
        )
        deliverer.wait_for_groups = False  # once: what is queued goes now, grouped as it stands
        report.deliveries = await deliverer.drain_all(budget=cfg.once_attempts)
        return report

    @property
    def _period(self) -> float:
        """How often the daemon writes its heartbeat, renews its lock and checks Redis kept its data."""
        return min(self.config.poll.interval, 5.0)

    async def _keep(self) -> None:
        """Every few seconds: the heartbeat (only while some poll succeeded lately: alive means polls
        succeed), the daemon's lock, and whether Redis still holds the daemon's data."""
        interval = self.config.poll.interval
        while not self.stop.is_set():
            with contextlib.suppress(StoreError):
                if self.polls_lately():
                    await self.store.heartbeat.beat(int(interval * 3) + 10)
            with contextlib.suppress(StoreError):
                await self._record_polls()
            await self._keep_lock()
            await self._check_data()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=self._period)

    async def _record_polls(self) -> None:
        """When each instance this replica polls was last polled, for ``dcs-notifier status``: once its
        first round of polls is over (or a minute passed), then once a minute — one pipelined write,
        never one per poll."""
        now = time.monotonic()
        last = self._polls_recorded
        if last is not None and now - last < RECORD_POLLS_EVERY:
            return
        fleet = self.poller.fleet
        owned = [w for w in fleet if fleet.owns(w.target.key)]
        polled = {w.target.key: w.last_polled for w in owned if w.last_polled is not None}
        if last is None and len(polled) < len(owned) and now - self._created < RECORD_POLLS_EVERY:
            return  # the first round is not over: wait for it rather than record half of it for a minute
        if polled:
            await self.store.heartbeat.record_polls(polled)
            self._polls_recorded = now

    async def _keep_lock(self) -> None:
        if self.lock is None:
            return
        try:
            problem = await self.lock.check()
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError):
            return  # Redis is away (the store logs that): keep running, renew when it returns
        if problem is not None:
            # Another daemon took the lock while this one could not renew it, or a replica with
            # scaling.enabled started while Redis was away: this one gives way.
            self.conflict = problem
            log.error("%s; stopping this one", problem)
            self.request_stop()

    async def _check_data(self) -> None:
        """Notice Redis losing its data while the daemon runs (see ``{p}:epoch`` in constants)."""
        try:
            if self._epoch is None:
                self._epoch = await self.store.snapshots.claim_epoch()
                return
            if await self.store.snapshots.epoch() == self._epoch:
                return
            # Gone, or written anew by another replica that noticed the loss first.
            restored = self.poller.restore()
            log.warning(
                "Redis has lost its data (FLUSHALL, or a restart without persistence): %d instance(s) are "
                "polled now, writing back first the state held in memory; notifications that were "
                "waiting in the outbox were lost with it",
                restored,
            )
            self._epoch = None
            await self.store.health.rewrite(dict(self.poller.health.announced))
            self._epoch = await self.store.snapshots.claim_epoch()
        except StoreError:
            pass  # logged once per episode by the store

    async def run(self) -> None:
        """Poll and deliver until ``request_stop()``; sends in flight finish first.

        Raises :class:`~notifier.store.leases.DaemonConflict` when another daemon of this config runs on the
        same Redis (at start, or when it turns out later that one took over).
        """
        try:
            if self.lock is not None:
                admitted = await self.lock.acquire(self.stop)
            else:
                admitted = await wait_out(
                    lambda: daemon_holder(self.store.redis, self.store.keys), self.stop, self._period * 3
                )
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            log.warning("cannot check for another daemon now (Redis: %s); checking when it answers", exc)
            admitted = not self.stop.is_set()
        if not admitted:
            return
        with contextlib.suppress(StoreError):
            self._epoch = await self.store.snapshots.claim_epoch()
        await self._run()
        if self.conflict is not None:
            raise self.conflict

    async def _run(self) -> None:
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
            for channel, n in (await self.store.outbox.orphans(self.channels)).items():
                log.warning(
                    "the outbox of channel %r, which is no longer in the config, holds %d undelivered "
                    "notification(s); add the channel back to deliver them",
                    channel,
                    n,
                )
        except StoreError:
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
                tg.create_task(self._keep(), name="keep")
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
            if self.lock is not None:
                await self.lock.release()
        log.info("dcs-notifier stopped")

    async def aclose(self) -> None:
        await self.cloud.aclose()
        for ch in self.channels.values():
            await ch.aclose()
        if self._own_redis:
            await self.store.aclose()

    async def __aenter__(self) -> Daemon:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
