"""The diff: previous snapshot + new task list → events. A pure function, no I/O.

Rules (issue 2, "State and events"):

* A task not seen before and in progress → ``task.started``; already succeeded → ``task.succeeded``;
  already failed → ``task.failed``.
* A known task whose status changed: to a success status → ``task.succeeded``, to a failure status →
  ``task.failed``, to anything else (including an unknown status) → ``task.updated``. A change
  between two statuses of the same finished outcome (``FAIL`` → ``FAILED``) is ``task.updated``.
* First poll of an instance with no state (``previous is None``) is a baseline: tasks in progress are
  announced as started, finished tasks only if they finished within ``baseline_grace`` of now;
  older ones are recorded silently. Tasks that first appear later but finished before
  ``baseline_at - baseline_grace`` (e.g. after the poll window was widened) are recorded silently too.
* Tasks that disappear from the list produce nothing; they are forgotten once they are older than
  the poll window (they fell out of it), so the snapshot stays bounded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from notifier.dcs.models import Outcome, Task, classify_status
from notifier.pipeline.events import Event, EventType, InstanceRef, event_id


@dataclass(frozen=True, slots=True)
class SeenTask:
    """What the snapshot remembers of one task."""

    status: str
    updated_at: datetime | None = None
    created_at: datetime | None = None
    #: The task's name (``masterStandbySwapJob``...), for ``dcs-notifier status``; "" when not known
    #: (state written before it was kept).
    name: str = ""
    #: Set once ``task.stuck`` was announced: when the task crossed its ``watchdog`` limit (committed with
    #: that event's outbox entries, so it is announced once, across restarts and replicas).
    stuck_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One instance's stored state: when it was baselined and what was last seen of each task."""

    baseline_at: datetime
    tasks: dict[str, SeenTask] = field(default_factory=dict)
    #: When the instance was last polled successfully (as far as Redis knows; may lag a little).
    polled_at: datetime | None = None
    #: Set once ``instance.removed`` was announced; the state then expires.
    removed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DiffContext:
    project_id: str
    region: str
    instance: InstanceRef
    now: datetime
    baseline_grace: timedelta
    #: Where this poll's window started: tasks created before it that were not listed are forgotten.
    window_start: datetime
    #: Where the next poll's window will start (last poll - skew). A baseline records finished tasks
    #: created before it (and before every running task) only to announce them: the next poll would
    #: not list them, and would forget them at once.
    next_window_start: datetime | None = None


@dataclass(frozen=True, slots=True)
class DiffResult:
    events: list[Event]
    upserts: dict[str, SeenTask]
    removals: list[str]
    baseline_at: datetime | None  # set when this diff is a baseline: the meta field must be written

    @property
    def changed(self) -> bool:
        return bool(self.events or self.upserts or self.removals or self.baseline_at)


def _seen(task: Task, stuck_at: datetime | None = None) -> SeenTask:
    # A handful of names for every task of the fleet: one string each (interned), not one per task.
    name = sys.intern(task.name)
    return SeenTask(
        status=task.status,
        updated_at=task.updated_at,
        created_at=task.created_at,
        name=name,
        stuck_at=stuck_at,
    )


def _finished_at(task: Task) -> datetime | None:
    return task.updated_at or task.created_at


#: The event of a task first seen with, or newly come to, each outcome.
_EVENT_OF = {
    Outcome.IN_PROGRESS: EventType.STARTED,
    Outcome.SUCCEEDED: EventType.SUCCEEDED,
    Outcome.FAILED: EventType.FAILED,
}


def _change_type(previous: str, task: Task) -> EventType:
    new = task.outcome
    if new is Outcome.IN_PROGRESS or new is classify_status(previous):
        return EventType.UPDATED
    return _EVENT_OF[new]


def _recent(task: Task, since: datetime) -> bool:
    at = _finished_at(task)
    return at is not None and at >= since


def diff(previous: Snapshot | None, tasks: list[Task], ctx: DiffContext) -> DiffResult:
    """Compare a stored snapshot with a freshly polled task list."""
    baseline = previous is None
    known = {} if previous is None else previous.tasks
    baseline_at = ctx.now if previous is None else previous.baseline_at
    silent_before = baseline_at - ctx.baseline_grace
    events: list[Event] = []
    upserts: dict[str, SeenTask] = {}

    def emit(
        type_: EventType, task: Task, previous_status: str | None, stuck_since: datetime | None = None
    ) -> None:
        events.append(
            Event(
                id=event_id(ctx.instance.id, task.id, type_, task.status),
                type=type_,
                project_id=ctx.project_id,
                region=ctx.region,
                instance=ctx.instance,
                task=task,
                previous_status=previous_status,
                detected_at=ctx.now,
                stuck_since=stuck_since,
            )
        )

    keep_from = None
    if baseline and ctx.next_window_start is not None:
        running = [
            t.created_at for t in tasks if t.outcome is Outcome.IN_PROGRESS and t.created_at is not None
        ]
        keep_from = min([ctx.next_window_start, *running])

    # Oldest first, so that events of one poll come out in the order they happened.
    ordered = sorted(tasks, key=lambda t: (t.created_at is None, t.created_at or ctx.now, t.id))
    for task in ordered:
        seen = known.get(task.id)
        if seen is None:
            if keep_from is None or task.created_at is None or task.created_at >= keep_from:
                upserts[task.id] = _seen(task)
            if task.outcome is Outcome.IN_PROGRESS:
                emit(EventType.STARTED, task, None)
            elif _recent(task, silent_before):
                emit(_EVENT_OF[task.outcome], task, None)
            continue
        # A task announced stuck stays so (once per task); its later events say how long it was.
        if seen.status != task.status:
            upserts[task.id] = _seen(task, seen.stuck_at)
            emit(_change_type(seen.status, task), task, seen.status, seen.stuck_at)
        elif seen.updated_at != task.updated_at or seen.created_at != task.created_at:
            upserts[task.id] = _seen(task, seen.stuck_at)

    present = {t.id for t in tasks}
    removals = [
        tid
        for tid, seen in known.items()
        if tid not in present and (seen.created_at is None or seen.created_at < ctx.window_start)
    ]
    return DiffResult(
        events=events, upserts=upserts, removals=removals, baseline_at=ctx.now if baseline else None
    )
