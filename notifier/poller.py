"""The poller: for each watched instance, poll → diff → route → commit, on a schedule, surviving every error.

One instance's failure never stops another's polling, and never advances its state. Errors are
logged when they start or change, not on every poll; recovery is logged once. When an instance's polls
keep failing for ``health.after`` seconds, ``poller.unhealthy`` is announced once (and
``poller.recovered`` when they work again).

The fleet is the instances named in the config plus, for projects with ``discover: true``, those the
instance list returns (re-listed every ``discovery.interval``; see :mod:`notifier.discovery`).

Windows are incremental: a poll asks only for tasks created since the last successful poll (minus
``poll.skew``), or since the oldest task still in progress, so its cost does not grow with history.

Scheduling per instance, after a poll (each delay jittered by ``poll.jitter``, first polls spread
over one interval, so instances never poll in lock-step):
* success, throttling (the shared rate limiter slows down instead), Redis down → ``poll.interval``;
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis.exceptions

from notifier.config import Config, InstanceConfig, ProjectSpec
from notifier.dcs.client import DcsClient
from notifier.dcs.models import IN_PROGRESS_STATUSES, Outcome, classify_status
from notifier.diff import DiffContext, DiffResult, Snapshot, diff
from notifier.discovery import select
from notifier.errors import DcsApiError, Reason, StateStoreError
from notifier.events import Event, EventType, InstanceRef, Notification, event_id
from notifier.health import HealthTracker, Subject
from notifier.leases import TICKS_PER_TTL, ShardLeases
from notifier.rules import route
from notifier.state import StateStore

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 600.0
#: How far back a poll may reach: to follow a task still in progress, or after a long stop.
MAX_LOOKBACK = timedelta(days=7)
#: The time of the last successful poll is written to Redis (pipelined with a read) at most this often.
TOUCH_EVERY_SECONDS = 60.0
#: Poll times are rounded up to a multiple of this (seconds; at most 1/20 of poll.interval), so that polls
#: due together run together.
SCHEDULE_TICK_SECONDS = 0.1
#: A poll's window reaches at least this far past "now" (the API's clock may be ahead).
MIN_END_MARGIN = timedelta(seconds=60)
#: Margin added to a measured clock offset (the Date header has 1 s resolution, plus latency).
SKEW_SLACK_SECONDS = 60.0
#: The 404 code of an instance that does not exist (any more).
INSTANCE_GONE = "DCS.3022"


@dataclass(frozen=True, slots=True)
class Target:
    """One watched instance of one project."""

    project: ProjectSpec
    instance: InstanceConfig
    discovered: bool = False

    @property
    def key(self) -> str:
        return f"{self.project.project_id}/{self.instance.id}"

    @property
    def subject(self) -> Subject:
        ref = InstanceRef(id=self.instance.id, name=self.instance.name, labels=self.instance.labels)
        return Subject(self.key, self.project.project_id, self.project.region, ref)


@dataclass
class PollOutcome:
    target: Target
    events: list[Event] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    error: Exception | None = None

    @property
    def instance(self) -> InstanceConfig:
        return self.target.instance

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class _Known:
    """What this process last wrote for an instance it owns, and the digest of the answer it came from."""

    snapshot: Snapshot
    digest: bytes | None


def advance(previous: Snapshot | None, result: DiffResult, now: datetime) -> Snapshot:
    """The snapshot as :meth:`StateStore.commit` leaves it: ``previous`` with ``result`` applied."""
    tasks = dict(previous.tasks) if previous is not None else {}
    tasks.update(result.upserts)
    for tid in result.removals:
        tasks.pop(tid, None)
    baseline_at = previous.baseline_at if previous is not None else now
    return Snapshot(baseline_at=baseline_at, tasks=tasks, polled_at=now)


@dataclass(slots=True)
class _Control:
    """A running target's switches: ``wake`` cuts its wait short, ``retired`` ends its loop."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    retired: bool = False
    task: asyncio.Task[None] | None = None
    waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Cut the current wait short (or the next one, if it is not waiting)."""
        self.wake.set()
        if self.waiter is not None:
            _release(self.waiter)


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def utcnow() -> datetime:
    return datetime.now(UTC)


def query_start(
    previous: Snapshot | None,
    last_polled: datetime | None,
    now: datetime,
    *,
    window: timedelta,
    skew: timedelta,
) -> datetime:
    """Where a poll's window starts.

    * First poll (no state): ``poll.window`` back, for the baseline.
    * Later: the last successful poll minus ``skew`` (from memory, or ``~polled`` in Redis after a
      restart) — or earlier, to keep a task still in progress in view until it finishes (up to
      MAX_LOOKBACK for the documented in-progress statuses, ``poll.window`` for unknown ones).
    """
    if previous is None:
        return now - window
    floor = now - MAX_LOOKBACK
    anchor = last_polled or previous.polled_at
    start = anchor - skew if anchor is not None else now - window
    running = []
    for seen in previous.tasks.values():
        if seen.created_at is None or classify_status(seen.status) is not Outcome.IN_PROGRESS:
            continue
        # An undocumented status counts as in progress (its end must be seen), but only within
        # poll.window: a final status we do not know must not make every poll page through a week.
        documented = seen.status.strip().upper() in IN_PROGRESS_STATUSES
        if seen.created_at >= (floor if documented else now - window):
            running.append(seen.created_at)
    return max(floor, min([start, *running]))


def _episode(previous: Snapshot) -> str:
    last = previous.polled_at or previous.baseline_at
    return last.astimezone(UTC).isoformat()


def _discovery_subject(spec: ProjectSpec) -> Subject:
    """The health subject of a project's instance listing (``poller.*`` events name it as the instance)."""
    ref = InstanceRef(
        id=f"instances-of:{spec.project_id}", name=f"the instance list of project {spec.project_id}"
    )
    return Subject(f"{spec.project_id}/~discovery", spec.project_id, spec.region, ref)


def _phase(key: str) -> float:
    """A stable number in [0, 1) per instance: where in the interval its polls fall."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big") / 2**32


class Poller:
    def __init__(
        self,
        config: Config,
        clients: Mapping[str, DcsClient],
        store: StateStore,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clients = clients
        self.store = store
        self.clock = clock
        self._monotonic = monotonic
        self.projects = config.projects()
        #: Every watched instance, by key ``{project_id}/{instance_id}``.
        self.targets: dict[str, Target] = {
            t.key: t for spec in self.projects for t in (Target(spec, i) for i in spec.instances)
        }
        #: ``time.monotonic()`` of the last successful poll of any instance (the heartbeat's source).
        self.last_success: float | None = None
        self.health = HealthTracker(config.health.after, monotonic=monotonic, clock=clock)
        self._channels = list(config.channels)
        self._reported: dict[str, tuple[object, ...]] = {}  # key (or project id) → last error reported
        self._failures: dict[str, int] = {}
        self._last_polled: dict[str, datetime] = {}
        self._touched: dict[str, float] = {}
        self._unlisted: dict[str, int] = {}  # discovered instances missing from consecutive listings
        self._controls: dict[str, _Control] = {}
        #: The state of instances this process owns, as it last committed it (see _Known).
        self._known: dict[str, _Known] = {}
        self._cold = asyncio.Semaphore(config.api.max_concurrency)
        self._skew_warned: set[str] = set()
        # The poll settings as the per-poll path uses them (converted once, not on every poll).
        self._window = timedelta(seconds=config.poll.window)
        self._grace = timedelta(seconds=config.poll.baseline_grace)
        self._skew_margin = timedelta(seconds=config.poll.skew)
        self._rate_warned: set[str] = set()
        self._tg: asyncio.TaskGroup | None = None
        #: With scaling.enabled, replicas share the fleet: an instance is polled while its shard is held.
        self.leases: ShardLeases | None = None
        self._stop: asyncio.Event | None = None

    # -- one poll --------------------------------------------------------------------------------

    async def poll_instance(self, inst: InstanceConfig) -> PollOutcome:
        """Poll a configured instance by its config entry (looked up among the targets)."""
        for target in self.targets.values():
            if target.instance.id == inst.id:
                return await self.poll_target(target)
        raise KeyError(f"instance {inst.id} is not watched")

    async def poll_target(self, target: Target) -> PollOutcome:
        """Poll one instance once. Never raises: the error, if any, is in the outcome.

        How many polls talk to the API at once is the gate's business (per region and overall, see
        :class:`~notifier.dcs.limits.ApiGate`); Redis calls wait for a pooled connection. Polls of
        instances whose state is not in memory (first polls, baselines that may page through a day of
        tasks) are also limited to ``api.max_concurrency`` at once, which bounds the memory of a start
        with thousands of instances.
        """
        if target.key in self._known:
            return await self._poll(target)
        async with self._cold:
            return await self._poll(target)

    async def _poll(self, target: Target) -> PollOutcome:
        outcome = PollOutcome(target)
        key, spec, inst = target.key, target.project, target.instance
        now = self.clock()
        last = self._last_polled.get(key)
        touch = None
        if last is not None and self._monotonic() - self._touched.get(key, 0.0) >= TOUCH_EVERY_SECONDS:
            touch = last
        previous: Snapshot | None = None
        known = self._known.get(key)
        try:
            if known is not None:
                # This process owns the instance and wrote its state last: no need to read it back.
                previous = known.snapshot
            else:
                previous = await self.store.load(spec.project_id, inst.id, touch=touch)
                if touch is not None:
                    self._touched[key] = self._monotonic()
            client = self.clients[spec.project_id]
            skew = self._skew(spec, client)
            start = query_start(previous, last, now, window=self._window, skew=skew)
            answer = await client.poll_tasks(
                inst.id,
                start,
                now + max(skew, MIN_END_MARGIN),
                unchanged=known.digest if known is not None else None,
            )
            if answer.tasks is None:  # the very same answer as last time: nothing can have changed
                await self._succeeded(target, now)
                return outcome
            tasks = answer.tasks
            ctx = DiffContext(
                project_id=spec.project_id,
                region=spec.region,
                instance=target.subject.instance,
                now=now,
                baseline_grace=self._grace,
                window_start=start,
                next_window_start=now - skew,
            )
            result = diff(previous, tasks, ctx)
            notifications = [n for ev in result.events for n in self._route(ev)]
            await self.store.commit(
                spec.project_id,
                inst.id,
                result,
                notifications,
                baseline_at=previous.baseline_at if previous is not None else now,
                polled_at=now,
                revived=previous is not None and previous.removed_at is not None,
            )
            self._known[key] = _Known(advance(previous, result, now), answer.digest)
        except DcsApiError as exc:
            outcome.error = exc
            if exc.reason is Reason.NOT_FOUND and previous is not None:
                await self._instance_gone(target, previous, exc)
            else:
                self._report(target, exc)
                await self._announce(target.key, self.health.failed(target.subject, exc))
            return outcome
        except StateStoreError as exc:
            outcome.error = exc
            self._known.pop(key, None)  # read the state back once Redis answers (it may have lost it)
            self._report(target, exc)
            return outcome
        outcome.events = result.events
        outcome.notifications = notifications
        if result.baseline_at is not None:
            log.info("baseline of %s (%s): %d task(s) recorded", inst.name, inst.id, len(result.upserts))
        for ev in result.events:
            log.info("%s: %s [%s]", ev.type.value, ev.summary, ev.task.id if ev.task else "-")
        await self._succeeded(target, now)
        return outcome

    async def _succeeded(self, target: Target, now: datetime) -> None:
        key = target.key
        self._last_polled[key] = now
        self._touched.setdefault(key, self._monotonic())
        self._unlisted.pop(key, None)
        self.last_success = time.monotonic()
        if key in self._reported:
            self._recovered(target)
        if key in self.health.announced or self.health.failing(key):
            await self._announce(key, self.health.succeeded(target.subject))

    def _skew(self, spec: ProjectSpec, client: DcsClient) -> timedelta:
        """``poll.skew``, widened when the API's clock (its ``Date`` header) is further off than that."""
        margin = self.config.poll.skew
        offset = client.clock_offset
        if offset is None or abs(offset) + SKEW_SLACK_SECONDS <= margin:
            return self._skew_margin
        if spec.host not in self._skew_warned:
            self._skew_warned.add(spec.host)
            log.warning(
                "the clock of %s differs from ours by %+.0f s, more than poll.skew (%g s): "
                "poll windows are widened to cover it; check NTP on this host",
                spec.host,
                offset,
                margin,
            )
        return timedelta(seconds=abs(offset) + SKEW_SLACK_SECONDS)

    def _route(self, event: Event) -> list[Notification]:
        return route(event, self.config.rules, self._channels, self.config.health.channels)

    # -- removed instances and health --------------------------------------------------------------

    async def _instance_gone(self, target: Target, previous: Snapshot, exc: DcsApiError | None) -> None:
        """The instance was deleted: announce ``instance.removed`` once, keep its state for a TTL."""
        inst = target.instance
        if exc is not None and exc.error_code != INSTANCE_GONE:
            self._report(target, exc)  # a 404 of another kind (a wrong URL, a proxy?): not proof of deletion
            return
        key = target.key
        self._known.pop(key, None)
        self._last_polled.pop(key, None)  # no more ~polled writes: the state is left to expire
        self._touched.pop(key, None)
        if previous.removed_at is None:
            now = self.clock()
            event = Event(
                # One announcement per deletion (an instance may come back, e.g. a wrong 404 cleared), the
                # same id however often it is retried: keyed on the last poll before it.
                id=event_id(inst.id, "", EventType.INSTANCE_REMOVED, _episode(previous)),
                type=EventType.INSTANCE_REMOVED,
                project_id=target.project.project_id,
                region=target.project.region,
                instance=target.subject.instance,
                detected_at=now,
            )
            try:
                await self.store.mark_removed(
                    target.project.project_id,
                    inst.id,
                    self._route(event),
                    removed_at=now,
                    baseline_at=previous.baseline_at,
                    ttl_seconds=int(self.config.discovery.removed_ttl),
                )
            except StateStoreError:
                return  # announced on a later attempt
            log.warning("instance.removed: %s", event.summary)
        self._failures.pop(key, None)
        await self._close_health(key)
        if target.discovered:
            self.retire(key)

    async def _close_health(self, key: str) -> None:
        """An instance no longer watched (deleted, filtered out) has no health episode open any more."""
        self.health.forget(key)
        if key in self.health.announced:
            with contextlib.suppress(StateStoreError):
                await self.store.record_health(key, None, [])
                self.health.announced.pop(key, None)

    async def _announce(self, key: str, event: Event | None) -> None:
        """Record a ``poller.*`` event with its outbox entries; confirmed only once it is in Redis."""
        if event is None:
            return
        try:
            problem = event.problem if event.type is EventType.POLLER_UNHEALTHY else None
            await self.store.record_health(key, problem, self._route(event))
        except StateStoreError:
            return  # not confirmed: the next poll announces it again (same event id)
        self.health.confirm(event, key)
        level = logging.WARNING if event.type is EventType.POLLER_UNHEALTHY else logging.INFO
        log.log(level, "%s: %s", event.type.value, event.summary)

    async def load_health(self) -> None:
        """Which instances were announced unhealthy before a restart (so that recovery is announced)."""
        # Redis down at start: logged by the store; announcements resume when it returns.
        with contextlib.suppress(StateStoreError):
            self.health.announced.update(await self.store.load_health())

    # -- error reporting -------------------------------------------------------------------------

    def _report(self, target: Target, exc: Exception) -> None:
        name = target.instance.name
        if isinstance(exc, StateStoreError):
            # Not the API's fault: no backoff (polling resumes as soon as Redis does), and an outage
            # is logged once by the store, not once per poll.
            if not self.store.down:
                log.error("poll of %s failed: %s", name, exc)
            return
        self._failures[target.key] = self._failures.get(target.key, 0) + 1
        if isinstance(exc, DcsApiError) and exc.reason is Reason.RATE_LIMITED:
            # The endpoint's rate limiter logs each slow-down once; per instance, it is routine.
            log.debug("poll of %s throttled: %s", name, exc)
            return
        fingerprint = exc.fingerprint if isinstance(exc, DcsApiError) else (str(exc),)
        if self._reported.get(target.key) != fingerprint:
            self._reported[target.key] = fingerprint
            log.error("poll of %s failed: %s", name, exc)
        else:
            log.debug("poll of %s still failing: %s", name, exc)

    def _recovered(self, target: Target) -> None:
        self._failures.pop(target.key, None)
        if self._reported.pop(target.key, None) is not None:
            log.info("poll of %s recovered", target.instance.name)

    # -- scheduling ------------------------------------------------------------------------------

    def _jittered(self, seconds: float) -> float:
        j = self.config.poll.jitter
        return seconds * random.uniform(1 - j, 1 + j) if j else seconds

    def next_delay(self, outcome: PollOutcome) -> float:
        interval = self.config.poll.interval
        exc = outcome.error
        if exc is None or isinstance(exc, StateStoreError):
            return self._jittered(interval)
        if isinstance(exc, DcsApiError) and exc.reason in (
            Reason.AUTH,
            Reason.NOT_FOUND,
            Reason.CLIENT_ERROR,
        ):
            return self._jittered(max(self.config.poll.recheck, interval))
        if isinstance(exc, DcsApiError) and exc.reason is Reason.RATE_LIMITED:
            # The endpoint's rate limiter has slowed down for everyone; this instance keeps its turn.
            return max(self._jittered(interval), exc.retry_after or 0.0)
        n = self._failures.get(outcome.target.key, 1)
        delay: float = min(MAX_BACKOFF_SECONDS, interval * 2.0 ** min(n - 1, 10))
        if isinstance(exc, DcsApiError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay

    async def poll_all(self) -> list[PollOutcome]:
        """Discover, then poll every watched instance once (``dcs-notifier once``)."""
        await asyncio.gather(*(self.discover(spec) for spec in self.projects if spec.discover))
        targets = list(self.targets.values())
        outcomes: list[PollOutcome] = []
        queue = iter(targets)

        async def worker() -> None:
            # As many workers as calls may be in flight: not one coroutine per instance (10,000 of them
            # would only wait in the gate's queues, at a cost in CPU and memory).
            for target in queue:
                outcomes.append(await self.poll_target(target))

        await asyncio.gather(*(worker() for _ in range(min(len(targets), self.config.api.max_concurrency))))
        order = {t.key: n for n, t in enumerate(targets)}
        return sorted(outcomes, key=lambda o: order[o.target.key])

    def add(self, target: Target) -> None:
        """Watch ``target`` (a running poller starts polling it within one interval)."""
        is_new = target.key not in self.targets
        self.targets[target.key] = target
        if is_new and self._tg is not None and self._stop is not None:
            delay = _phase(target.key) * self.config.poll.interval
            self._start(target.key, delay)

    def retire(self, key: str) -> None:
        """Stop watching one instance (its state stays in Redis)."""
        self.targets.pop(key, None)
        self._unlisted.pop(key, None)
        self._known.pop(key, None)
        self.health.forget(key)
        control = self._controls.pop(key, None)
        if control is not None:
            control.retired = True
            control.set()

    def wake(self, key: str) -> None:
        control = self._controls.get(key)
        if control is not None:
            control.set()

    def _start(self, key: str, delay: float) -> None:
        assert self._tg is not None and self._stop is not None
        control = self._controls[key] = _Control()
        control.task = self._tg.create_task(
            self._run_target(key, control, self._stop, delay), name=f"poll:{key}"
        )

    async def _run_target(self, key: str, control: _Control, stop: asyncio.Event, delay: float) -> None:
        loop = asyncio.get_running_loop()
        tick = min(SCHEDULE_TICK_SECONDS, self.config.poll.interval / 20)
        while not stop.is_set() and not control.retired:
            if delay > 0 and not control.wake.is_set():
                # A timer and one future: cheaper than wait_for() (a task per wait) at 10,000 instances.
                waiter = control.waiter = loop.create_future()
                # Due times are rounded up to a common tick: the polls due in one tick go out together
                # and share the event loop's wake-ups (a third of the CPU of polls spread one by one).
                due = math.ceil((loop.time() + delay) / tick) * tick
                timer = loop.call_at(due, _release, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    control.waiter = None
            control.wake.clear()
            if stop.is_set() or control.retired:
                return
            target = self.targets.get(key)
            if target is None:
                return
            if self.leases is not None and not self.leases.owns(key):
                # Another replica's instance (or ours once a lease is taken): look again next interval.
                self._known.pop(key, None)
                delay = self._jittered(self.config.poll.interval)
                continue
            try:
                outcome = await self.poll_target(target)
            except Exception:
                # A bug must not stop this instance's polling, nor the daemon: log it whole, back off.
                log.exception("poll of %s failed unexpectedly", target.instance.name)
                outcome = PollOutcome(target, error=RuntimeError("unexpected error"))
                self._failures[key] = self._failures.get(key, 0) + 1
            delay = self.next_delay(outcome)

    # -- discovery -------------------------------------------------------------------------------

    async def discover(self, spec: ProjectSpec) -> bool:
        """List ``spec``'s instances and update the fleet; False when the listing failed."""
        subject = _discovery_subject(spec)
        try:
            raw = await self.clients[spec.project_id].list_instances()
        except DcsApiError as exc:
            fingerprint = ("discovery", *exc.fingerprint)
            if self._reported.get(spec.project_id) != fingerprint:
                self._reported[spec.project_id] = fingerprint
                log.error("discovery of project %s (%s) failed: %s", spec.project_id, spec.account, exc)
            # A project whose instance list keeps failing is watched by nobody: that is ops' business.
            await self._announce(subject.key, self.health.failed(subject, exc))
            return False
        if self._reported.pop(spec.project_id, None) is not None:
            log.info("discovery of project %s recovered", spec.project_id)
        await self._announce(subject.key, self.health.succeeded(subject))
        listing = select(raw, spec)
        for inst in listing.watched.values():
            target = Target(spec, inst, discovered=inst.id not in {i.id for i in spec.instances})
            known = self.targets.get(target.key)
            if known is None:
                log.info("discovered instance %s (%s) in project %s", inst.name, inst.id, spec.project_id)
            if known != target:
                self.add(target)
            self._unlisted.pop(target.key, None)
        for key, target in list(self.targets.items()):
            if target.project.project_id != spec.project_id or not target.discovered:
                continue
            if target.instance.id in listing.watched:
                continue
            if target.instance.id in listing.listed:
                await self._close_health(key)
                log.info(
                    "instance %s no longer matches the discovery filter; not watched", target.instance.name
                )
                self.retire(key)
                continue
            if self.leases is not None and not self.leases.owns(key):
                continue  # the replica that owns it decides whether it was deleted
            missing = self._unlisted[key] = self._unlisted.get(key, 0) + 1
            if missing == 1:
                self.wake(key)  # confirm at once: its tasks answer 404 DCS.3022 if it was deleted
            else:
                await self._gone_from_list(target)
        self.check_rate()
        return True

    async def _gone_from_list(self, target: Target) -> None:
        try:
            previous = await self.store.load(target.project.project_id, target.instance.id)
        except StateStoreError:
            return
        if previous is None:
            self.retire(target.key)  # never baselined: nothing to announce
            return
        await self._instance_gone(target, previous, None)

    async def _discovery_loop(self, spec: ProjectSpec, stop: asyncio.Event) -> None:
        interval = self.config.discovery.interval
        while not stop.is_set():
            try:
                await self.discover(spec)
            except Exception:
                log.exception("discovery of project %s failed unexpectedly", spec.project_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._jittered(interval))

    def check_rate(self) -> None:
        """Warn when an endpoint's instances need more requests per second than ``api.rate_limit``."""
        per_host: dict[str, int] = {}
        for target in self.targets.values():
            per_host[target.project.host] = per_host.get(target.project.host, 0) + 1
        limit, interval = self.config.api.rate_limit, self.config.poll.interval
        for host, count in sorted(per_host.items()):
            if count / interval > limit and host not in self._rate_warned:
                self._rate_warned.add(host)
                log.warning(
                    "%d instance(s) of %s polled every %g s need %.0f requests/s, more than api.rate_limit "
                    "(%g): they will be polled about every %.0f s; raise api.rate_limit if the API allows",
                    count,
                    host,
                    interval,
                    count / interval,
                    limit,
                    count / limit,
                )

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every instance until ``stop`` is set, spreading first polls over one interval."""
        await self.load_health()
        self.check_rate()
        self._stop = stop
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for key in list(self.targets):
                    self._start(key, _phase(key) * self.config.poll.interval)
                for spec in self.projects:
                    if spec.discover:
                        tg.create_task(self._discovery_loop(spec, stop), name=f"discover:{spec.project_id}")
                tg.create_task(self._wake_all_on(stop), name="poller-stop")
                if self.leases is not None:
                    tg.create_task(self._lease_loop(self.leases, stop), name="leases")
        finally:
            self._tg = None
            if self.leases is not None:
                await self.leases.leave()

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
            if change.gained or change.lost:
                moved = change.gained | change.lost
                for key in list(self.targets):
                    if leases.shard(key) in moved:
                        self._known.pop(key, None)  # read the state back from Redis: another replica wrote it
                        if leases.shard(key) in change.gained:
                            self.wake(key)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    async def _wake_all_on(self, stop: asyncio.Event) -> None:
        """On stop, end every instance's loop at once, a poll in flight included.

        A poll may be waiting out a throttled endpoint's pause; cancelling it is safe: a commit is one
        MULTI/EXEC (applied whole or not at all) and a poll that did not commit is simply done again
        after the restart, with the same event ids.
        """
        await stop.wait()
        for control in self._controls.values():
            if control.task is not None:
                control.task.cancel()
