"""The poller: for each instance, poll → diff → route → commit, on a schedule, surviving every error.

One instance's failure never stops another's polling, and never advances its state. Errors are
logged when they start or change, not on every poll; recovery is logged once.

Scheduling per instance, after a poll:
* success → the next poll after ``poll.interval``;
* throttling, 5xx, timeouts, connection errors, Redis down → capped exponential backoff
  (honouring ``Retry-After``);
* 401/403 (wrong credentials) and 404 (instance does not exist) → slow re-checks every
  ``max(10 × interval, 5 min)``: not retried in a loop, reported once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from notifier.config import Config, InstanceConfig
from notifier.dcs.client import DcsClient
from notifier.dcs.models import IN_PROGRESS_STATUSES
from notifier.diff import DiffContext, Snapshot, diff
from notifier.errors import DcsApiError, Reason, StateStoreError
from notifier.events import Event, InstanceRef, Notification
from notifier.rules import route
from notifier.state import StateStore

log = logging.getLogger(__name__)

#: How far past "now" the query window reaches, for clock skew between us and the API.
END_MARGIN = timedelta(minutes=1)
MAX_BACKOFF_SECONDS = 600.0
SLOW_RECHECK_SECONDS = 300.0
#: How far back a poll may reach to follow a task that is still in progress.
MAX_LOOKBACK = timedelta(days=7)


@dataclass
class PollOutcome:
    instance: InstanceConfig
    events: list[Event] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def utcnow() -> datetime:
    return datetime.now(UTC)


def query_start(previous: Snapshot | None, window_start: datetime, now: datetime) -> datetime:
    """Where a poll's window starts: ``poll.window`` back, or earlier to keep a long task in view.

    A task still in progress when last seen must stay in the window until it finishes, or its end
    would never be noticed; the window reaches back to it, but never more than MAX_LOOKBACK. Only the
    documented in-progress statuses count here: an unknown status that is really final must not make
    every poll page through a week of tasks.
    """
    if previous is None:
        return window_start
    floor = now - MAX_LOOKBACK
    running = [
        s.created_at
        for s in previous.tasks.values()
        if s.created_at is not None and s.status.upper() in IN_PROGRESS_STATUSES and s.created_at >= floor
    ]
    return min([window_start, *running])


class Poller:
    def __init__(
        self,
        config: Config,
        client: DcsClient,
        store: StateStore,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.client = client
        self.store = store
        self.clock = clock
        #: ``time.monotonic()`` of the last successful poll of any instance (the heartbeat's source).
        self.last_success: float | None = None
        self._channels = list(config.channels)
        self._reported: dict[str, tuple[object, ...]] = {}  # instance id → last error reported
        self._failures: dict[str, int] = {}
        # At most this many polls at once (each holds a Redis connection and an HTTP request).
        self._slots = asyncio.Semaphore(config.cloud.max_concurrency)

    async def poll_instance(self, inst: InstanceConfig) -> PollOutcome:
        """Poll one instance once. Never raises: the error, if any, is in the outcome."""
        async with self._slots:
            return await self._poll(inst)

    async def _poll(self, inst: InstanceConfig) -> PollOutcome:
        outcome = PollOutcome(inst)
        now = self.clock()
        window_start = now - timedelta(seconds=self.config.poll.window)
        try:
            previous = await self.store.load(inst.id)
            start = query_start(previous, window_start, now)
            tasks = await self.client.list_tasks(inst.id, start, now + END_MARGIN)
            ctx = DiffContext(
                project_id=self.config.cloud.project_id,
                region=self.config.cloud.region,
                instance=InstanceRef(id=inst.id, name=inst.name, labels=inst.labels),
                now=now,
                baseline_grace=timedelta(seconds=self.config.poll.baseline_grace),
                window_start=window_start,
            )
            result = diff(previous, tasks, ctx)
            notifications = [n for ev in result.events for n in route(ev, self.config.rules, self._channels)]
            await self.store.commit(inst.id, result, notifications)
        except (DcsApiError, StateStoreError) as exc:
            outcome.error = exc
            self._report(inst, exc)
            return outcome
        outcome.events = result.events
        outcome.notifications = notifications
        self._recovered(inst)
        self.last_success = time.monotonic()
        if result.baseline_at is not None:
            log.info("baseline of %s (%s): %d task(s) recorded", inst.name, inst.id, len(result.upserts))
        for ev in result.events:
            log.info("%s: %s [%s]", ev.type.value, ev.summary, ev.task.id)
        return outcome

    def _report(self, inst: InstanceConfig, exc: Exception) -> None:
        if isinstance(exc, StateStoreError):
            # Not the API's fault: no backoff (polling resumes as soon as Redis does), and an outage
            # is logged once by the store, not once per poll.
            if not self.store.down:
                log.error("poll of %s failed: %s", inst.name, exc)
            return
        self._failures[inst.id] = self._failures.get(inst.id, 0) + 1
        fingerprint = exc.fingerprint if isinstance(exc, DcsApiError) else (str(exc),)
        if self._reported.get(inst.id) != fingerprint:
            self._reported[inst.id] = fingerprint
            log.error("poll of %s failed: %s", inst.name, exc)
        else:
            log.debug("poll of %s still failing: %s", inst.name, exc)

    def _recovered(self, inst: InstanceConfig) -> None:
        self._failures.pop(inst.id, None)
        if self._reported.pop(inst.id, None) is not None:
            log.info("poll of %s recovered", inst.name)

    def next_delay(self, outcome: PollOutcome) -> float:
        interval = self.config.poll.interval
        exc = outcome.error
        if exc is None or isinstance(exc, StateStoreError):
            return interval
        if isinstance(exc, DcsApiError) and exc.reason in (
            Reason.AUTH,
            Reason.NOT_FOUND,
            Reason.CLIENT_ERROR,
        ):
            return max(10 * interval, SLOW_RECHECK_SECONDS)
        n = self._failures.get(outcome.instance.id, 1)
        delay: float = min(MAX_BACKOFF_SECONDS, interval * 2.0 ** min(n - 1, 10))
        if isinstance(exc, DcsApiError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay

    async def poll_all(self) -> list[PollOutcome]:
        return list(await asyncio.gather(*(self.poll_instance(i) for i in self.config.instances)))

    async def run_instance(
        self, inst: InstanceConfig, stop: asyncio.Event, initial_delay: float = 0.0
    ) -> None:
        delay = initial_delay
        while not stop.is_set():
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                    return
                except TimeoutError:
                    pass
            try:
                outcome = await self.poll_instance(inst)
            except Exception:
                # A bug must not stop this instance's polling, nor the daemon: log it whole, back off.
                log.exception("poll of %s failed unexpectedly", inst.name)
                outcome = PollOutcome(inst, error=RuntimeError("unexpected error"))
                self._failures[inst.id] = self._failures.get(inst.id, 0) + 1
            delay = self.next_delay(outcome)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every instance until ``stop`` is set, spreading first polls over one interval."""
        n = len(self.config.instances)
        spread = self.config.poll.interval
        async with asyncio.TaskGroup() as tg:
            for i, inst in enumerate(self.config.instances):
                jitter = (i / n) * spread * 0.5 + random.uniform(0, spread * 0.05) if n > 1 else 0.0
                tg.create_task(self.run_instance(inst, stop, jitter), name=f"poll:{inst.id}")
