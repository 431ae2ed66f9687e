"""Polling one instance once: window → API → diff → route → commit, and what the outcome means for it.

One instance's failure never advances its state. Errors are logged when they start or change, not on
every poll; recovery is logged once. When an instance's polls keep failing for ``health.after``
seconds, ``poller.unhealthy`` is announced once (and ``poller.recovered`` when they work again).

Windows are incremental: a poll asks only for tasks created since the last successful poll (minus
``poll.skew``), or since the oldest task still in progress, so its cost does not grow with history.

Events a poll found but could not commit (Redis refused or was away) stay in the instance's
:class:`~notifier.pipeline.watch.Watch` and are committed with the next poll's, so a task that started
and finished meanwhile still has its ``task.started``. If Redis loses its data while the daemon runs,
the next poll of each instance writes back first the state this process last committed, instead of
starting over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from notifier.config.models import ProjectSpec
from notifier.dcs.client import DcsClient
from notifier.dcs.models import Outcome, classify_status, is_documented_status
from notifier.errors import (
    INSTANCE_GONE,
    CorruptStateError,
    DcsApiError,
    Failure,
    NotifierError,
    Reason,
    StoreError,
)
from notifier.ops.metrics import failure_reason
from notifier.pipeline.diff import DiffContext, DiffResult, Snapshot, diff
from notifier.pipeline.events import Event, EventType, InstanceRef, Notification, event_id
from notifier.pipeline.watch import Fleet, Known, Target, Watch
from notifier.pipeline.watchdog import Limits, deadline, joined, stuck

log = logging.getLogger(__name__)

#: How far back a poll may reach: to follow a task still in progress, or after a long stop.
MAX_LOOKBACK = timedelta(days=7)
#: The time of the last successful poll is written to Redis (pipelined with a read) at most this often.
TOUCH_EVERY_SECONDS = 60.0
#: A poll's window reaches at least this far past "now" (the API's clock may be ahead).
MIN_END_MARGIN = timedelta(seconds=60)
#: Margin added to a measured clock offset (the Date header has 1 s resolution, plus latency).
SKEW_SLACK_SECONDS = 60.0
#: Windows are widened for the API's clock by at most this (poll.skew's own maximum).
MAX_SKEW_SECONDS = 86_400.0
#: Events found but not yet committed (Redis refusing writes) kept per instance, the oldest first.
MAX_UNCOMMITTED = 1000


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    def instance(self) -> InstanceRef:
        return self.target.instance

    @property
    def ok(self) -> bool:
        return self.error is None


def advance(previous: Snapshot | None, result: DiffResult, now: datetime) -> Snapshot:
    """The snapshot as :meth:`Snapshots.commit` leaves it: ``previous`` with ``result`` applied."""
    tasks = dict(previous.tasks) if previous is not None else {}
    tasks.update(result.upserts)
    for tid in result.removals:
        tasks.pop(tid, None)
    baseline_at = previous.baseline_at if previous is not None else now
    return Snapshot(baseline_at=baseline_at, tasks=tasks, polled_at=now)


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
        if seen.created_at >= (floor if is_documented_status(seen.status) else now - window):
            running.append(seen.created_at)
    return max(floor, min([start, *running]))


def _episode(previous: Snapshot) -> str:
    last = previous.polled_at or previous.baseline_at
    return last.astimezone(UTC).isoformat()


def _with_uncommitted(uncommitted: Sequence[Event], result: DiffResult) -> DiffResult:
    """``result`` with the events earlier polls found but could not commit, first (each once)."""
    if not uncommitted:
        return result
    fresh = {ev.id for ev in uncommitted}
    events = [*uncommitted, *(ev for ev in result.events if ev.id not in fresh)]
    return dataclasses.replace(result, events=events)


class InstancePoller:
    """Polls one watched instance at a time; never raises (the error, if any, is in the outcome)."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        config = fleet.config
        self.config = config
        self.clock = clock
        self._monotonic = monotonic
        #: ``time.monotonic()`` of the last successful poll of any instance (the heartbeat's source).
        self.last_success: float | None = None
        self._cold = asyncio.Semaphore(config.api.max_concurrency)
        self._skew_warned: set[str] = set()
        # The poll settings as the per-poll path uses them (converted once, not on every poll).
        self._window = timedelta(seconds=config.poll.window)
        self._grace = timedelta(seconds=config.poll.baseline_grace)
        self._skew_margin = timedelta(seconds=config.poll.skew)
        self.limits = Limits.of(config.watchdog)

    async def poll(self, target: Target) -> PollOutcome:
        """Poll one instance once.

        How many polls talk to the API at once is the gate's business (per region and overall, see
        :class:`~notifier.dcs.limits.ApiGate`); Redis calls wait for a pooled connection. Polls of
        instances whose state is not in memory (first polls, baselines that may page through a day of
        tasks) are also limited to ``api.max_concurrency`` at once, which bounds the memory of a start
        with thousands of instances.
        """
        # An instance retired meanwhile keeps its record for this last poll, which then goes nowhere.
        w = self.fleet.get(target.key)
        if w is None or w.target != target:
            w = Watch(target)
        return await self.poll_watch(w)

    async def poll_watch(self, w: Watch) -> PollOutcome:
        """:meth:`poll` for the scheduler, which holds the instance's record already."""
        if w.known is not None:
            return await self._poll(w)
        async with self._cold:
            return await self._poll(w)

    async def _poll(self, w: Watch) -> PollOutcome:
        target = w.target
        outcome = PollOutcome(target)
        spec, inst = target.project, target.instance
        store = self.fleet.store
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
                previous = await store.snapshots.load(spec.project_id, inst.id, touch=touch)
                if touch is not None:
                    w.touched = self._monotonic()
                if previous is None and w.remembered is not None:
                    previous = await self._write_back(w, w.remembered)
            client = self.fleet.clients[spec.project_id]
            skew = self._skew(spec, client)
            start = query_start(previous, last, now, window=self._window, skew=skew)
            answer = await client.poll_tasks(
                inst.id,
                start,
                now + max(skew, MIN_END_MARGIN),
                unchanged=known.digest if known is not None else None,
            )
            due = known.deadline if known is not None else None
            if answer.tasks is None and (due is None or now < due.at):
                # The very same answer as last time, and no task due to be stuck: nothing can have changed.
                await self._succeeded(w, now)
                return outcome
            ctx = DiffContext(
                project_id=spec.project_id,
                region=spec.region,
                instance=target.instance,
                now=now,
                baseline_grace=self._grace,
                window_start=start,
                next_window_start=now - skew,
            )
            if answer.tasks is None:
                # The same answer, past a task's deadline: only the watched tasks can have become stuck.
                assert known is not None and due is not None  # (an unchanged answer needs what it matched)
                result = _with_uncommitted(w.uncommitted, stuck(known.snapshot, due.tasks, self.limits, ctx))
                snapshot = advance(previous, result, now)
                fresh = dataclasses.replace(
                    known, snapshot=snapshot, deadline=deadline(snapshot, due.tasks, self.limits)
                )
            else:
                result = _with_uncommitted(w.uncommitted, diff(previous, answer.tasks, ctx))
                snapshot = advance(previous, result, now)
                running = [t for t in answer.tasks if t.outcome is Outcome.IN_PROGRESS]
                if running and not self.limits.off:
                    found = stuck(snapshot, running, self.limits, ctx)
                    if found.events:
                        result = joined(result, found)
                        snapshot = advance(previous, result, now)
                fresh = Known.of(snapshot, answer.digest, running, self.limits)
            notifications = [n for ev in result.events for n in self.fleet.route(ev)]
            try:
                committed = await store.snapshots.commit(
                    spec.project_id,
                    inst.id,
                    result,
                    notifications,
                    baseline_at=previous.baseline_at if previous is not None else now,
                    polled_at=now,
                    revived=previous is not None and previous.removed_at is not None,
                    expected=snapshot if previous is not None else None,
                )
            except StoreError:
                w.uncommitted = result.events[:MAX_UNCOMMITTED]
                raise
            w.uncommitted = ()
            w.remembered = None
            w.known = fresh
        except Exception as exc:
            self.fleet.metrics.polled("tasks", failure_reason(exc))
            await self._poll_failed(w, previous, exc)
            outcome.failed(exc)  # only now: the report above had the whole traceback
            return outcome
        outcome.events = result.events
        outcome.notifications = notifications
        if result.events:
            self.fleet.metrics.queued(ev.type for ev in result.events)
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

    async def _write_back(self, w: Watch, snapshot: Snapshot) -> Snapshot:
        """Redis holds nothing for an instance whose state this process knows (it lost its data): write
        it back, before anything else (should the API fail now, the next start must still find it)."""
        spec, inst = w.target.project, w.target.instance
        await self.fleet.store.snapshots.write(spec.project_id, inst.id, snapshot)
        w.remembered = None
        log.info("state of %s (%s) written back to Redis from memory", inst.name, inst.id)
        return snapshot

    async def _poll_failed(self, w: Watch, previous: Snapshot | None, exc: Exception) -> None:
        target = w.target
        if isinstance(exc, DcsApiError):
            if exc.reason is Reason.NOT_FOUND and previous is not None:
                await self.instance_gone(w, previous, exc)
            elif target.discovered and exc.error_code == INSTANCE_GONE:
                await self.deleted_unseen(target)
            else:
                await self._failed(w, exc)
            return
        # Read the state back once Redis answers; should it have lost it meanwhile (restarted empty),
        # write back this one instead of starting over.
        w.forget_known()
        if isinstance(exc, StoreError) and not isinstance(exc, CorruptStateError):
            return  # Redis as a whole: logged once per episode by the store; no backoff, no health
        # This instance's state being unreadable, a bug, or an answer nothing foresaw: this instance's
        # failure, logged (whole, for a bug) when it starts or changes, counted towards its health.
        await self._failed(w, exc)

    async def _succeeded(self, w: Watch, now: datetime) -> None:
        self.fleet.metrics.polled("tasks")
        w.last_polled = now
        if not w.touched:
            w.touched = self._monotonic()
        w.unlisted = 0
        w.failures = 0
        self.last_success = time.monotonic()
        if w.reported is not None:
            w.reported = None
            t = w.target
            about = {"instance": t.instance.id, "project": t.project.project_id}
            log.info("poll of %s recovered", t.instance.name, extra=about)
        key = w.target.key
        health = self.fleet.health
        # (A poll of an instance retired meanwhile says nothing of its health.)
        if (key in health.announced or health.failing(key)) and self.fleet.current(w):
            await self.fleet.announce(key, health.succeeded(w.target.subject))

    async def _failed(self, w: Watch, exc: Exception) -> None:
        """A failed poll (not Redis's doing): log it when it starts or changes, count it for health."""
        if not self.fleet.current(w):
            return  # retired while this poll was under way: nothing more to say of it
        w.failures += 1
        failure = Failure.of(exc)
        target = w.target
        name = target.instance.name
        fields = {  # for a JSON log line
            "instance": target.instance.id,
            "project": target.project.project_id,
            "reason": failure.reason.value,
        }
        if failure.reason is Reason.RATE_LIMITED:
            # The endpoint's rate limiter logs each slow-down once; per instance, it is routine.
            log.debug("poll of %s throttled: %s", name, failure.text, extra=fields)
        elif w.reported != failure.fingerprint:
            w.reported = failure.fingerprint
            if not isinstance(exc, NotifierError):  # a bug, or an input nothing foresaw: the traceback
                log.error(
                    "poll of %s failed unexpectedly: %s", name, failure.text, exc_info=exc, extra=fields
                )
            else:
                log.error("poll of %s failed: %s", name, failure.text, extra=fields)
        else:
            log.debug("poll of %s still failing: %s", name, failure.text, extra=fields)
        await self.fleet.announce(w.target.key, self.fleet.health.failed(w.target.subject, failure))

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

    # -- removed instances -----------------------------------------------------------------------

    async def instance_gone(self, w: Watch, previous: Snapshot, exc: DcsApiError | None) -> None:
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
                instance=target.instance,
                detected_at=now,
            )
            try:
                await self.fleet.store.snapshots.mark_removed(
                    target.project.project_id,
                    inst.id,
                    self.fleet.route(event),
                    removed_at=now,
                    baseline_at=previous.baseline_at,
                    ttl_seconds=int(self.config.discovery.removed_ttl),
                )
            except StoreError:
                return  # announced on a later attempt
            log.warning("instance.removed: %s", event.summary)
        w.failures = 0
        w.reported = None
        await self.fleet.close_health(key)
        if target.discovered:
            self.fleet.retire(key)

    async def deleted_unseen(self, target: Target) -> None:
        """Listed, then deleted before its first poll: nothing to announce, nothing to keep."""
        log.info(
            "instance %s (%s) was deleted before its first poll", target.instance.name, target.instance.id
        )
        await self.fleet.close_health(target.key)
        self.fleet.retire(target.key)
