"""The poller: for each watched instance, poll → diff → route → commit, on a schedule, surviving every error.

One instance's failure never stops another's polling, and never advances its state. Errors are
logged when they start or change, not on every poll; recovery is logged once. When an instance's polls
keep failing for ``health.after`` seconds, ``poller.unhealthy`` is announced once (and
``poller.recovered`` when they work again).

The fleet is the instances named in the config plus, for projects with ``discover: true``, those the
instance list returns (re-listed every ``discovery.interval``; see :mod:`notifier.pipeline.discovery`).

Windows are incremental: a poll asks only for tasks created since the last successful poll (minus
``poll.skew``), or since the oldest task still in progress, so its cost does not grow with history.

What the poller keeps of each watched instance is one record (:class:`_Watch`): retiring an instance
drops it whole. Events a poll found but could not commit (Redis refused or was away) stay in that
record and are committed with the next poll's, so a task that started and finished meanwhile still
has its ``task.started``. If Redis loses its data while the daemon runs (:meth:`Poller.restore`), every
instance is polled at once and writes back first the state this process last committed, instead of
starting over.

Scheduling per instance, after a poll (each delay jittered by ``poll.jitter``, first polls spread
over one interval, so instances never poll in lock-step):
* success, throttling (the shared rate limiter slows down instead), Redis down → ``poll.interval``;
* 5xx, timeouts, connection errors, bad answers → capped exponential backoff (honouring ``Retry-After``);
* 401/403 (credentials) and 404 (instance missing) → ``poll.recheck``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis.exceptions

from notifier.config.models import Config, InstanceConfig, ProjectSpec
from notifier.dcs.client import DcsClient
from notifier.dcs.models import IN_PROGRESS_STATUSES, Outcome, classify_status
from notifier.errors import (
    INSTANCE_GONE,
    CorruptStateError,
    DcsApiError,
    Failure,
    NotifierError,
    Reason,
    StateStoreError,
)
from notifier.pipeline.diff import DiffContext, DiffResult, Snapshot, diff
from notifier.pipeline.discovery import select
from notifier.pipeline.events import Event, EventType, InstanceRef, Notification, event_id
from notifier.pipeline.health import HealthTracker, Subject
from notifier.pipeline.rules import route
from notifier.store.leases import TICKS_PER_TTL, ShardLeases
from notifier.store.state import StateStore

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
#: Windows are widened for the API's clock by at most this (poll.skew's own maximum).
MAX_SKEW_SECONDS = 86_400.0
#: Events found but not yet committed (Redis refusing writes) kept per instance, the oldest first.
MAX_UNCOMMITTED = 1000


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
    #: Why the poll failed, without its traceback (whose frames would keep a partial answer alive).
    error: Exception | None = None

    def failed(self, exc: Exception) -> None:
        exc.__traceback__ = exc.__context__ = exc.__cause__ = None
        self.error = exc

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


@dataclass(slots=True)
class _Watch:
    """Everything the poller keeps about one watched instance; :meth:`Poller.retire` drops it whole."""

    target: Target
    #: The switches of its polling loop (a running daemon only).
    control: _Control | None = None
    #: Its state as this process last committed it, while this process owns it (see _Known).
    known: _Known | None = None
    #: The state to write back when Redis has lost it (see Poller.restore).
    remembered: Snapshot | None = None
    #: When it was last polled successfully, and (monotonic) when that was last written as ``~polled``.
    last_polled: datetime | None = None
    touched: float = 0.0
    #: Failed polls in a row (backoff), and the failure last logged (logged again only when it changes).
    failures: int = 0
    reported: tuple[object, ...] | None = None
    #: Discovery listings in a row that did not list it.
    unlisted: int = 0
    #: Events found but not committed yet (Redis refused the commit), oldest first.
    uncommitted: list[Event] = field(default_factory=list)


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


def _forget_known(w: _Watch) -> None:
    """Read the instance's state from Redis at its next poll, remembering what this process committed
    last, to write it back should Redis hold none then (see Poller._write_back)."""
    if w.known is not None:
        w.remembered, w.known = w.known.snapshot, None


def _with_uncommitted(uncommitted: list[Event], result: DiffResult) -> DiffResult:
    """``result`` with the events earlier polls found but could not commit, first (each once)."""
    if not uncommitted:
        return result
    fresh = {ev.id for ev in uncommitted}
    events = [*uncommitted, *(ev for ev in result.events if ev.id not in fresh)]
    return dataclasses.replace(result, events=events)


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
        self._watches: dict[str, _Watch] = {
            t.key: _Watch(t) for spec in self.projects for t in (Target(spec, i) for i in spec.instances)
        }
        #: ``time.monotonic()`` of the last successful poll of any instance (the heartbeat's source).
        self.last_success: float | None = None
        self.health = HealthTracker(config.health.after, monotonic=monotonic, clock=clock)
        self._channels = list(config.channels)
        self._discovery_reported: dict[str, tuple[object, ...]] = {}  # project id → last error logged
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

    @property
    def targets(self) -> dict[str, Target]:
        """Every watched instance, by key ``{project_id}/{instance_id}`` (a copy)."""
        return {key: w.target for key, w in self._watches.items()}

    # -- one poll --------------------------------------------------------------------------------

    async def poll_instance(self, inst: InstanceConfig) -> PollOutcome:
        """Poll a configured instance by its config entry (looked up among the targets)."""
        for w in self._watches.values():
            if w.target.instance.id == inst.id:
                return await self.poll_target(w.target)
        raise KeyError(f"instance {inst.id} is not watched")

    async def poll_target(self, target: Target) -> PollOutcome:
        """Poll one instance once. Never raises: the error, if any, is in the outcome.

        How many polls talk to the API at once is the gate's business (per region and overall, see
        :class:`~notifier.dcs.limits.ApiGate`); Redis calls wait for a pooled connection. Polls of
        instances whose state is not in memory (first polls, baselines that may page through a day of
        tasks) are also limited to ``api.max_concurrency`` at once, which bounds the memory of a start
        with thousands of instances.
        """
        # An instance retired meanwhile keeps its record for this last poll, which then goes nowhere.
        w = self._watches.get(target.key)
        if w is None or w.target != target:
            w = _Watch(target)
        if w.known is not None:
            return await self._poll(w)
        async with self._cold:
            return await self._poll(w)

    async def _poll(self, w: _Watch) -> PollOutcome:
        target = w.target
        outcome = PollOutcome(target)
        spec, inst = target.project, target.instance
        now = self.clock()
        last = w.last_polled
        touch = None
        if last is not None and self._monotonic() - w.touched >= TOUCH_EVERY_SECONDS:
            touch = last
        previous: Snapshot | None = None
        known = w.known
        try:
            if known is not None:
                # This process owns the instance and wrote its state last: no need to read it back.
                previous = known.snapshot
            else:
                previous = await self.store.load(spec.project_id, inst.id, touch=touch)
                if touch is not None:
                    w.touched = self._monotonic()
                if previous is None and w.remembered is not None:
                    previous = await self._write_back(w, w.remembered)
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
                await self._succeeded(w, now)
                return outcome
            ctx = DiffContext(
                project_id=spec.project_id,
                region=spec.region,
                instance=target.subject.instance,
                now=now,
                baseline_grace=self._grace,
                window_start=start,
                next_window_start=now - skew,
            )
            result = _with_uncommitted(w.uncommitted, diff(previous, answer.tasks, ctx))
            notifications = [n for ev in result.events for n in self._route(ev)]
            snapshot = advance(previous, result, now)
            try:
                committed = await self.store.commit(
                    spec.project_id,
                    inst.id,
                    result,
                    notifications,
                    baseline_at=previous.baseline_at if previous is not None else now,
                    polled_at=now,
                    revived=previous is not None and previous.removed_at is not None,
                    expected=snapshot if previous is not None else None,
                )
            except StateStoreError:
                w.uncommitted = result.events[:MAX_UNCOMMITTED]
                raise
            w.uncommitted = []
            w.remembered = None
            w.known = _Known(snapshot, answer.digest)
        except Exception as exc:
            await self._poll_failed(w, previous, exc)
            outcome.failed(exc)  # only now: the report above had the whole traceback
            return outcome
        outcome.events = result.events
        outcome.notifications = notifications
        if result.baseline_at is not None:
            log.info("baseline of %s (%s): %d task(s) recorded", inst.name, inst.id, len(result.upserts))
        if committed.rewritten:
            log.warning("state of %s (%s) was gone from Redis: written back whole", inst.name, inst.id)
        if committed.parts > 1:
            log.warning(
                "%s (%s): %d event(s) and %d task change(s) in one poll, committed in %d parts",
                inst.name,
                inst.id,
                len(result.events),
                len(result.upserts),
                committed.parts,
            )
        for ev in result.events:
            log.info("%s: %s [%s]", ev.type.value, ev.summary, ev.task.id if ev.task else "-")
        await self._succeeded(w, now)
        return outcome

    async def _write_back(self, w: _Watch, snapshot: Snapshot) -> Snapshot:
        """Redis holds nothing for an instance whose state this process knows (it lost its data): write
        it back, before anything else (should the API fail now, the next start must still find it)."""
        spec, inst = w.target.project, w.target.instance
        await self.store.write_snapshot(spec.project_id, inst.id, snapshot)
        w.remembered = None
        log.info("state of %s (%s) written back to Redis from memory", inst.name, inst.id)
        return snapshot

    async def _poll_failed(self, w: _Watch, previous: Snapshot | None, exc: Exception) -> None:
        target = w.target
        if isinstance(exc, DcsApiError):
            if exc.reason is Reason.NOT_FOUND and previous is not None:
                await self._instance_gone(w, previous, exc)
            elif target.discovered and exc.error_code == INSTANCE_GONE:
                await self._deleted_unseen(target)
            else:
                await self._failed(w, exc)
            return
        # Read the state back once Redis answers; should it have lost it meanwhile (restarted empty),
        # write back this one instead of starting over.
        _forget_known(w)
        if isinstance(exc, StateStoreError) and not isinstance(exc, CorruptStateError):
            return  # Redis as a whole: logged once per episode by the store; no backoff, no health
        # This instance's state being unreadable, a bug, or an answer nothing foresaw: this instance's
        # failure, logged (whole, for a bug) when it starts or changes, counted towards its health.
        await self._failed(w, exc)

    async def _succeeded(self, w: _Watch, now: datetime) -> None:
        w.last_polled = now
        if not w.touched:
            w.touched = self._monotonic()
        w.unlisted = 0
        w.failures = 0
        self.last_success = time.monotonic()
        if w.reported is not None:
            w.reported = None
            log.info("poll of %s recovered", w.target.instance.name)
        key = w.target.key
        # (A poll of an instance retired meanwhile says nothing of its health.)
        if (key in self.health.announced or self.health.failing(key)) and self._watches.get(key) is w:
            await self._announce(key, self.health.succeeded(w.target.subject))

    async def _failed(self, w: _Watch, exc: Exception) -> None:
        """A failed poll (not Redis's doing): log it when it starts or changes, count it for health."""
        if self._watches.get(w.target.key) is not w:
            return  # retired while this poll was under way: nothing more to say of it
        w.failures += 1
        failure = Failure.of(exc)
        name = w.target.instance.name
        if failure.reason is Reason.RATE_LIMITED:
            # The endpoint's rate limiter logs each slow-down once; per instance, it is routine.
            log.debug("poll of %s throttled: %s", name, failure.text)
        elif w.reported != failure.fingerprint:
            w.reported = failure.fingerprint
            if not isinstance(exc, NotifierError):  # a bug, or an input nothing foresaw: the traceback
                log.error("poll of %s failed unexpectedly: %s", name, failure.text, exc_info=exc)
            else:
                log.error("poll of %s failed: %s", name, failure.text)
        else:
            log.debug("poll of %s still failing: %s", name, failure.text)
        await self._announce(w.target.key, self.health.failed(w.target.subject, failure))

    def _skew(self, spec: ProjectSpec, client: DcsClient) -> timedelta:
        """``poll.skew``, widened when the API's clock (its ``Date`` header) is further off than that,
        up to a day (a Date in another millennium is a broken gateway, not a clock to follow)."""
        margin = self.config.poll.skew
        offset = client.clock_offset
        if offset is None or abs(offset) + SKEW_SLACK_SECONDS <= margin:
            return self._skew_margin
        widened = min(abs(offset) + SKEW_SLACK_SECONDS, MAX_SKEW_SECONDS)
        if spec.host not in self._skew_warned:
            self._skew_warned.add(spec.host)
            log.warning(
                "the clock of %s differs from ours by %+.0f s, more than poll.skew (%g s): "
                "poll windows are widened by %.0f s to cover it; check NTP on this host",
                spec.host,
                offset,
                margin,
                widened,
            )
        return timedelta(seconds=widened)

    def _route(self, event: Event) -> list[Notification]:
        return route(event, self.config.rules, self._channels, self.config.health.channels)

    def restore(self) -> int:
        """Redis lost its data while running: each instance this process holds the state of polls at
        once, writing that state back first (the diff then runs against it, so nothing is announced
        twice). Returns how many instances do."""
        count = 0
        for key, w in self._watches.items():
            if w.known is not None:
                _forget_known(w)
                count += 1
                self.wake(key)  # written back now, not at the next poll (maybe minutes away, in backoff)
        return count

    # -- removed instances and health --------------------------------------------------------------

    async def _instance_gone(self, w: _Watch, previous: Snapshot, exc: DcsApiError | None) -> None:
        """The instance was deleted: announce ``instance.removed`` once, keep its state for a TTL."""
        target = w.target
        inst = target.instance
        if exc is not None and exc.error_code != INSTANCE_GONE:
            await self._failed(w, exc)  # a 404 of another kind (a wrong URL, a proxy?): not proof of deletion
            return
        key = target.key
        w.known = w.remembered = None
        w.last_polled = None  # no more ~polled writes: the state is left to expire
        w.touched = 0.0
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
        w.failures = 0
        w.reported = None
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
        w = self._watches.get(outcome.target.key)
        n = max(1, w.failures) if w is not None else 1
        delay: float = min(MAX_BACKOFF_SECONDS, interval * 2.0 ** min(n - 1, 10))
        if isinstance(exc, DcsApiError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay

    async def poll_all(self) -> list[PollOutcome]:
        """Discover, then poll every watched instance once (``dcs-notifier once``)."""
        await asyncio.gather(*(self.discover(spec) for spec in self.projects if spec.discover))
        targets = [w.target for w in self._watches.values()]
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
        w = self._watches.get(target.key)
        if w is not None:
            w.target = target  # its labels or name may have changed; what it has learnt is kept
            return
        self._watches[target.key] = _Watch(target)
        if self._tg is not None and self._stop is not None:
            self._start(target.key, _phase(target.key) * self.config.poll.interval)

    def retire(self, key: str) -> None:
        """Stop watching one instance (its state stays in Redis); everything kept of it goes."""
        w = self._watches.pop(key, None)
        self.health.forget(key)
        if w is None:
            return
        client = self.clients.get(w.target.project.project_id)
        if client is not None:
            client.forget(w.target.instance.id)
        if w.control is not None:
            w.control.retired = True
            w.control.set()

    def wake(self, key: str) -> None:
        w = self._watches.get(key)
        if w is not None and w.control is not None:
            w.control.set()

    def _start(self, key: str, delay: float) -> None:
        assert self._tg is not None and self._stop is not None
        control = self._watches[key].control = _Control()
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
            w = self._watches.get(key)
            if w is None:
                return
            if self.leases is not None and not self.leases.owns(key):
                # Another replica's instance (or ours once a lease is taken): look again next interval.
                _forget_known(w)
                delay = self._jittered(self.config.poll.interval)
                continue
            delay = self.next_delay(await self.poll_target(w.target))

    # -- discovery -------------------------------------------------------------------------------

    async def discover(self, spec: ProjectSpec) -> bool:
        """List ``spec``'s instances and update the fleet; False when the listing failed."""
        subject = _discovery_subject(spec)
        try:
            raw = await self.clients[spec.project_id].list_instances()
        except DcsApiError as exc:
            fingerprint = Failure.of(exc).fingerprint
            if self._discovery_reported.get(spec.project_id) != fingerprint:
                self._discovery_reported[spec.project_id] = fingerprint
                log.error("discovery of project %s (%s) failed: %s", spec.project_id, spec.account, exc)
            # A project whose instance list keeps failing is watched by nobody: that is ops' business.
            await self._announce(subject.key, self.health.failed(subject, exc))
            return False
        if self._discovery_reported.pop(spec.project_id, None) is not None:
            log.info("discovery of project %s recovered", spec.project_id)
        await self._announce(subject.key, self.health.succeeded(subject))
        listing = select(raw, spec)
        for inst in listing.watched.values():
            target = Target(spec, inst, discovered=inst.id not in {i.id for i in spec.instances})
            w = self._watches.get(target.key)
            if w is None:
                log.info("discovered instance %s (%s) in project %s", inst.name, inst.id, spec.project_id)
                self.add(target)
            else:
                if w.target != target:
                    self.add(target)
                w.unlisted = 0
        for key, w in list(self._watches.items()):
            target = w.target
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
            w.unlisted += 1
            if w.unlisted == 1:
                self.wake(key)  # confirm at once: its tasks answer 404 DCS.3022 if it was deleted
            else:
                await self._gone_from_list(w)
        self.check_rate()
        return True

    async def _gone_from_list(self, w: _Watch) -> None:
        target = w.target
        try:
            previous = await self.store.load(target.project.project_id, target.instance.id)
        except StateStoreError:
            return
        if previous is None:
            await self._deleted_unseen(target)
            return
        await self._instance_gone(w, previous, None)

    async def _deleted_unseen(self, target: Target) -> None:
        """Listed, then deleted before its first poll: nothing to announce, nothing to keep."""
        log.info(
            "instance %s (%s) was deleted before its first poll", target.instance.name, target.instance.id
        )
        await self._close_health(target.key)
        self.retire(target.key)

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
        for w in self._watches.values():
            host = w.target.project.host
            per_host[host] = per_host.get(host, 0) + 1
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
                for key in list(self._watches):
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
                for key, w in list(self._watches.items()):
                    if leases.shard(key) in moved:
                        # Read the state back from Redis (another replica may write it meanwhile);
                        # should Redis hold none when this replica polls it again, write back this.
                        _forget_known(w)
                        if leases.shard(key) in change.gained:
                            self.wake(key)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    async def _wake_all_on(self, stop: asyncio.Event) -> None:
        """On stop, end every instance's loop at once, a poll in flight included.

        A poll may be waiting out a throttled endpoint's pause; cancelling it is safe: each part of a
        commit is one MULTI/EXEC (applied whole or not at all, its tasks with their events) and what a
        poll did not commit is simply found again after the restart, with the same event ids.
        """
        await stop.wait()
        for w in self._watches.values():
            if w.control is not None and w.control.task is not None:
                w.control.task.cancel()
