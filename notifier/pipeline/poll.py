"""The poller: for each watched instance, poll → diff → route → commit, on a schedule, surviving every error.

One instance's failure never stops another's polling. The fleet is the instances named in the config
plus, for projects with ``discover: true``, those the instance list returns (re-listed every
``discovery.interval``). The poller only wires its parts, one module per job:

* :mod:`~notifier.pipeline.watch` — one record per watched instance, the fleet that holds them, health
  announcements;
* :mod:`~notifier.pipeline.instance` — polling one instance once;
* :mod:`~notifier.pipeline.discovery` — applying an instance listing to the fleet;
* :mod:`~notifier.pipeline.cloud_eye` — each project's Cloud Eye events (``cloud_eye.enabled``);
* :mod:`~notifier.pipeline.scheduler` — when each instance is polled, and the loops of a running daemon.

If Redis loses its data while the daemon runs (:meth:`Poller.restore`), every instance is polled at once
and writes back first the state this process last committed, instead of starting over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import datetime

from notifier.cloudeye.client import CloudEyeClient
from notifier.config.models import Config, ProjectSpec
from notifier.dcs.client import DcsClient
from notifier.ops.metrics import Metrics
from notifier.pipeline.cloud_eye import CloudEyePoller
from notifier.pipeline.discovery import Discovery
from notifier.pipeline.health import HealthTracker
from notifier.pipeline.instance import InstancePoller, PollOutcome, utcnow
from notifier.pipeline.scheduler import Scheduler
from notifier.pipeline.watch import Fleet, Target
from notifier.store.connect import Store
from notifier.store.leases import ShardLeases


class Poller:
    """The fleet, its polls, its discovery and its schedule, as the daemon and ``once`` use them."""

    def __init__(
        self,
        config: Config,
        clients: Mapping[str, DcsClient],
        store: Store,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        cloud_eye_clients: Mapping[str, CloudEyeClient] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.projects = config.projects()
        self.health = HealthTracker(config.health.after, monotonic=monotonic, clock=clock)
        self.fleet = Fleet(config, clients, store, self.health, metrics)
        self.instances = InstancePoller(self.fleet, clock=clock, monotonic=monotonic)
        self.discovery = Discovery(self.fleet, self.instances)
        self.cloud_eye = (
            CloudEyePoller(
                self.fleet,
                cloud_eye_clients,
                config.cloud_eye,
                baseline_grace=config.poll.baseline_grace,
                clock=clock,
            )
            if cloud_eye_clients
            else None
        )
        self.scheduler = Scheduler(self.fleet, self.instances, self.discovery, self.cloud_eye)

    @property
    def targets(self) -> dict[str, Target]:
        """Every watched instance, by key ``{project_id}/{instance_id}`` (a copy)."""
        return {w.target.key: w.target for w in self.fleet}

    @property
    def leases(self) -> ShardLeases | None:
        """With scaling.enabled, replicas share the fleet: an instance is polled while its shard is held."""
        return self.fleet.leases

    @leases.setter
    def leases(self, leases: ShardLeases | None) -> None:
        self.fleet.leases = leases

    @property
    def last_success(self) -> float | None:
        """``time.monotonic()`` of the last successful poll of any instance (the heartbeat's source)."""
        return self.instances.last_success

    async def poll_target(self, target: Target) -> PollOutcome:
        """Poll one instance once. Never raises: the error, if any, is in the outcome."""
        return await self.instances.poll(target)

    def next_delay(self, outcome: PollOutcome) -> float:
        return self.scheduler.next_delay(outcome)

    async def discover(self, spec: ProjectSpec) -> bool:
        """List ``spec``'s instances and update the fleet; False when the listing failed."""
        return await self.discovery.discover(spec)

    async def load_health(self) -> None:
        await self.fleet.load_health()

    async def poll_all(self) -> list[PollOutcome]:
        """Discover, then poll every watched instance once (``dcs-notifier once``)."""
        # (Projects that name their instances are listed too, for their maintenance windows.)
        discovery = self.discovery
        await asyncio.gather(*(discovery.discover(spec) for spec in self.projects if discovery.lists(spec)))
        if self.cloud_eye is not None:
            cloud_eye = self.cloud_eye
            await asyncio.gather(*(cloud_eye.poll(spec) for spec in self.projects if cloud_eye.owns(spec)))
        targets = [w.target for w in self.fleet]
        outcomes: list[PollOutcome] = []
        queue = iter(targets)

        async def worker() -> None:
            # As many workers as calls may be in flight: not one coroutine per instance (10,000 of them
            # would only wait in the gate's queues, at a cost in CPU and memory).
            for target in queue:
                outcomes.append(await self.instances.poll(target))

        await asyncio.gather(*(worker() for _ in range(min(len(targets), self.config.api.max_concurrency))))
        order = {t.key: n for n, t in enumerate(targets)}
        return sorted(outcomes, key=lambda o: order[o.target.key])

    def restore(self) -> int:
        """Redis lost its data while running: each instance this process holds the state of polls at
        once, writing that state back first (the diff then runs against it, so nothing is announced
        twice). Returns how many instances do."""
        count = 0
        for w in self.fleet:
            if w.known is not None:
                w.forget_known()
                count += 1
                self.fleet.wake(w.target.key)  # written back now, not at the next poll (maybe in backoff)
        return count

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every instance until ``stop`` is set, spreading first polls over one interval."""
        await self.fleet.load_health()
        self.fleet.check_rate()
        await self.scheduler.run(stop)
