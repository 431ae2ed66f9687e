"""Poller health as events: ``poller.unhealthy`` once an instance's polls have failed for too long,
``poller.recovered`` when they work again. Never one message per failed poll.

The tracker is pure bookkeeping (no I/O): the poller reports each outcome and gets back the event to
announce, if any; it records the announcement in Redis (:meth:`HealthRecords.record`, atomically
with the outbox entries) and then confirms it here. Which instances are announced survives restarts
(it is loaded from Redis); when the failures began is kept in memory only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from notifier.errors import INSTANCE_GONE, Failure, Reason
from notifier.pipeline.events import Event, EventType, InstanceRef, PollProblem, event_id


@dataclass(frozen=True, slots=True)
class _Streak:
    """When an episode of failures began: nothing of the failures themselves is kept (an exception's
    traceback held every page a failing pager had read)."""

    started: float  # monotonic
    since: datetime  # wall clock, for the message


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose health: one instance of one project."""

    key: str  # "{project_id}/{instance_id}"
    project_id: str
    region: str
    instance: InstanceRef


class HealthTracker:
    def __init__(
        self,
        after: float,
        *,
        announced: Mapping[str, PollProblem] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.after = after
        self.announced: dict[str, PollProblem] = dict(announced or {})
        self._streaks: dict[str, _Streak] = {}
        self._monotonic = monotonic
        self._clock = clock

    def failed(self, subject: Subject, error: BaseException | Failure) -> Event | None:
        """A poll failed (any way: an API error or an unexpected one): the ``poller.unhealthy`` event to
        announce now, if this crosses the threshold."""
        failure = error if isinstance(error, Failure) else Failure.of(error)
        if failure.reason is Reason.NOT_FOUND and failure.error_code == INSTANCE_GONE:
            return None
        streak = self._streaks.get(subject.key)
        if streak is None:
            streak = self._streaks[subject.key] = _Streak(self._monotonic(), self._clock())
        if subject.key in self.announced or self._monotonic() - streak.started < self.after:
            return None
        problem = PollProblem(
            reason=failure.reason.value,
            message=failure.text,
            http_status=failure.http_status,
            error_code=failure.error_code,
            since=streak.since,
        )
        return self._event(subject, EventType.POLLER_UNHEALTHY, problem)

    def succeeded(self, subject: Subject) -> Event | None:
        """A poll worked: the ``poller.recovered`` event to announce, if it had been announced unhealthy."""
        self._streaks.pop(subject.key, None)
        problem = self.announced.get(subject.key)
        if problem is None:
            return None
        return self._event(subject, EventType.POLLER_RECOVERED, problem)

    def failing(self, key: str) -> bool:
        """Whether the subject's last poll failed (an episode is under way, announced or not)."""
        return key in self._streaks

    def confirm(self, event: Event, key: str) -> None:
        """The announcement is recorded in Redis: remember it."""
        if event.type is EventType.POLLER_UNHEALTHY and event.problem is not None:
            self.announced[key] = event.problem
        elif event.type is EventType.POLLER_RECOVERED:
            self.announced.pop(key, None)

    def forget(self, key: str) -> None:
        """The instance is no longer watched."""
        self._streaks.pop(key, None)

    def _event(self, subject: Subject, type_: EventType, problem: PollProblem) -> Event:
        episode = problem.since.astimezone(UTC).isoformat()
        return Event(
            id=event_id(subject.instance.id, "", type_, episode),
            type=type_,
            project_id=subject.project_id,
            region=subject.region,
            instance=subject.instance,
            detected_at=self._clock(),
            problem=problem,
        )
