"""When each instance is polled, and the daemon's polling loops (one per instance, per discovering project,
and the shard leases').

After a poll (each delay jittered by ``poll.jitter``, first polls spread over one interval, so
instances never poll in lock-step):

* success, throttling (the shared rate limiter slows down instead), Redis down → ``poll.interval``;
* success with a task in progress (as this process last committed it) → ``poll.active_interval``, when
  the endpoint's rate limit has room for the extra polls now (no request queued or paused), else
  ``poll.interval``: an instance's extra polls never delay the polls the others are due;
* 5xx, timeouts, connection errors, bad answers → capped exponential backoff (honouring ``Retry-After``);
* 401/403 (credentials) and 404 (instance missing) → ``poll.recheck``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import time

import redis.exceptions

from notifier.config.models import ProjectSpec
from notifier.errors import DcsApiError, Reason, StoreError
from notifier.pipeline.cloud_eye import CloudEyePoller
from notifier.pipeline.discovery import Discovery
from notifier.pipeline.instance import InstancePoller, PollOutcome
from notifier.pipeline.watch import Control, Fleet, Watch, release
from notifier.store.leases import TICKS_PER_TTL, ShardLeases

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 600.0
#: Poll times are rounded up to a multiple of this (seconds; at most 1/20 of poll.interval), so that polls
#: due together run together.
SCHEDULE_TICK_SECONDS = 0.1
#: An instance whose task becomes stuck before its next poll is polled this long after the deadline (the
#: task's created_at is the API's time: a little margin for the clocks and a task about to finish).
DEADLINE_MARGIN_SECONDS = 0.05


def phase(key: str) -> float:
    """A stable number in [0, 1) per instance: where in the interval its polls fall."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big") / 2**32


class Scheduler:
    """Runs one polling loop per watched instance, one discovery loop per discovering project, and the
    lease loop of a replica (scaling.enabled)."""

    def __init__(
        self,
        fleet: Fleet,
        instances: InstancePoller,
        discovery: Discovery,
        cloud_eye: CloudEyePoller | None = None,
    ) -> None:
        self.fleet = fleet
        self.instances = instances
        self.discovery = discovery
        self.cloud_eye = cloud_eye
        self.config = fleet.config
        #: ``time.monotonic()`` by which the scheduler must take its next step (a poll ends, an instance
        #: is passed over as another replica's, the leases are renewed), as the last step scheduled it:
        #: past it, the process is hung (a liveness probe's answer). A poll may wait for its endpoint's
        #: rate limit and take a timeout or two: ``slack`` on top of the wait chosen.
        self._slack = 2 * self.config.api.timeout + 30.0
        self.expected_by = time.monotonic() + self.config.poll.interval + self._slack
        #: The instance-list loops (discovery, maintenance windows): cancelled on stop like the polls.
        self._listings: list[asyncio.Task[None]] = []

    def _stepped(self, wait: float) -> None:
        """A step taken; the next one is due within ``wait`` (its loop's next wake-up), plus slack."""
        self.expected_by = time.monotonic() + wait + self._slack

    def jittered(self, seconds: float) -> float:
        j = self.config.poll.jitter
        return seconds * random.uniform(1 - j, 1 + j) if j else seconds

    def next_delay(self, outcome: PollOutcome) -> float:
        """How long until the instance of ``outcome`` is polled again."""
        interval = self.config.poll.interval
        exc = outcome.error
        if exc is None:
            every = self.config.poll.active_every if self._active(outcome.target.key) else interval
            return self._until_deadline(outcome.target.key, self.jittered(every))
        if isinstance(exc, StoreError):
            return self.jittered(interval)
        if isinstance(exc, DcsApiError) and exc.reason in (
            Reason.AUTH,
            Reason.NOT_FOUND,
            Reason.CLIENT_ERROR,
        ):
            return self.jittered(max(self.config.poll.recheck, interval))
        if isinstance(exc, DcsApiError) and exc.reason is Reason.RATE_LIMITED:
            # The endpoint's rate limiter has slowed down for everyone; this instance keeps its turn.
            return max(self.jittered(interval), exc.retry_after or 0.0)
        w = self.fleet.get(outcome.target.key)
        n = max(1, w.failures) if w is not None else 1
        delay: float = min(MAX_BACKOFF_SECONDS, interval * 2.0 ** min(n - 1, 10))
        if isinstance(exc, DcsApiError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay

    def _until_deadline(self, key: str, delay: float) -> float:
        """``delay``, or less when one of the instance's tasks becomes stuck before then (``watchdog``): it
        is polled then, to see whether the task still runs."""
        w = self.fleet.get(key)
        due = w.known.deadline if w is not None and w.known is not None else None
        if due is None:
            return delay
        until = (due.at - self.instances.clock()).total_seconds()
        if until <= 0:
            return delay  # not after a poll that committed (the tasks past it were announced then)
        return min(delay, until + DEADLINE_MARGIN_SECONDS)

    def _active(self, key: str) -> bool:
        """Whether the instance has a task in progress and its endpoint room for extra polls."""
        w = self.fleet.get(key)
        if w is None or w.known is None or not w.known.active:
            return False
        client = self.fleet.clients.get(w.target.project.project_id)
        return client is not None and client.has_headroom()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every instance until ``stop`` is set, spreading first polls over one interval."""
        fleet, interval = self.fleet, self.config.poll.interval
        leases = fleet.leases
        try:
            async with asyncio.TaskGroup() as tg:

                def start(w: Watch) -> None:
                    key = w.target.key
                    control = w.control = Control()
                    loop = self._run_instance(key, control, stop, phase(key) * interval)
                    control.task = tg.create_task(loop, name=f"poll:{key}")

                for w in fleet:
                    start(w)
                fleet.on_added = start  # instances discovered from now on
                for spec in fleet.config.projects():
                    if self.discovery.lists(spec):  # discovering, or for maintenance windows
                        listing = self._discovery_loop(spec, stop)
                        self._listings.append(tg.create_task(listing, name=f"discover:{spec.project_id}"))
                    if self.cloud_eye is not None:
                        loop = self._cloud_eye_loop(self.cloud_eye, spec, stop)
                        tg.create_task(loop, name=f"cloud-eye:{spec.project_id}")
                tg.create_task(self._cancel_all_on(stop), name="poller-stop")
                if leases is not None:
                    tg.create_task(self._lease_loop(leases, stop), name="leases")
        finally:
            fleet.on_added = None
            if leases is not None:
                await leases.leave()

    async def _run_instance(self, key: str, control: Control, stop: asyncio.Event, delay: float) -> None:
        loop = asyncio.get_running_loop()
        tick = min(SCHEDULE_TICK_SECONDS, self.config.poll.interval / 20)
        while not stop.is_set() and not control.retired:
            if delay > 0 and not control.wake.is_set():
                # A timer and one future: cheaper than wait_for() (a task per wait) at 10,000 instances.
                waiter = control.waiter = loop.create_future()
                # Due times are rounded up to a common tick: the polls due in one tick go out together
                # and share the event loop's wake-ups.
                due = math.ceil((loop.time() + delay) / tick) * tick
                timer = loop.call_at(due, release, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    control.waiter = None
            control.wake.clear()
            if stop.is_set() or control.retired:
                return
            w = self.fleet.get(key)
            if w is None:
                return
            if not self.fleet.owns(key):
                # Another replica's instance (or ours once a lease is taken): look again next interval.
                w.forget_known()
                delay = self.jittered(self.config.poll.interval)
                self._stepped(delay)
                continue
            delay = self.next_delay(await self.instances.poll_watch(w))
            self._stepped(delay)

    async def _discovery_loop(self, spec: ProjectSpec, stop: asyncio.Event) -> None:
        interval = self.config.discovery.interval
        while not stop.is_set():
            try:
                await self.discovery.discover(spec)
            except Exception:
                log.exception("discovery of project %s failed unexpectedly", spec.project_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.jittered(interval))

    async def _cloud_eye_loop(
        self, cloud_eye: CloudEyePoller, spec: ProjectSpec, stop: asyncio.Event
    ) -> None:
        """Poll one project's Cloud Eye events every ``cloud_eye.interval`` (while this replica owns it)."""
        interval = self.config.cloud_eye.interval
        while not stop.is_set():
            if cloud_eye.owns(spec):
                try:
                    await cloud_eye.poll(spec)
                except Exception:
                    log.exception("Cloud Eye events of project %s failed unexpectedly", spec.project_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.jittered(interval))

    async def _lease_loop(self, leases: ShardLeases, stop: asyncio.Event) -> None:
        """Keep this replica's shard leases (scaling.enabled); its instances are polled while held."""
        every = leases.ttl / TICKS_PER_TTL
        failing = False
        while not stop.is_set():
            try:
                change = await leases.tick()
                if failing:
                    failing = False
                    log.info("replica %s: leases renewed again", leases.replica)
            except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
                if not failing:
                    failing = True
                    log.error(
                        "replica %s: cannot renew leases (%s); polling stops when they run out",
                        leases.replica,
                        exc,
                    )
                change = leases.lapse()
            self._stepped(every)
            if change.gained or change.lost:
                moved = change.gained | change.lost
                for w in self.fleet:
                    key = w.target.key
                    if leases.shard(key) in moved:
                        # Read the state back from Redis (another replica may write it meanwhile);
                        # should Redis hold none when this replica polls it again, write back this.
                        w.forget_known()
                        if leases.shard(key) in change.gained:
                            self.fleet.wake(key)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    async def _cancel_all_on(self, stop: asyncio.Event) -> None:
        """On stop, end every instance's loop at once, a poll in flight included.

        A poll may be waiting out a throttled endpoint's pause; cancelling it is safe: each part of a
        commit is one MULTI/EXEC (applied whole or not at all, its tasks with their events) and what a
        poll did not commit is simply found again after the restart, with the same event ids.
        """
        await stop.wait()
        for w in self.fleet:
            if w.control is not None and w.control.task is not None:
                w.control.task.cancel()
        # A listing may wait out a paused endpoint too; what it applied is applied, the rest is read again.
        for listing in self._listings:
            listing.cancel()
        self._listings.clear()
