"""The stuck-task watchdog: which tasks have stayed in progress longer than their limit. Pure, no I/O.

A task is *stuck* once it is still in progress (:func:`~notifier.dcs.models.classify_status`) when its
``created_at`` plus the limit of its name (``watchdog``: by task name, ``EXTEND`` and ``ChangeInstanceSpec``
being one kind, else ``default``; 0 = never) has passed. It is announced once: ``task.stuck`` carries a
deterministic id, and the task's snapshot entry records ``stuck_at`` (when it crossed its limit), committed
in the same MULTI/EXEC as the event's outbox entries.

Only tasks the last answer listed in progress are watched (as for ``poll.active_interval``: a task the API
stops listing stays in the snapshot, in progress, for days). The earliest moment one of them becomes stuck
is worked out once per answer that changed (:func:`deadline`) and kept with the instance in memory, so an
unchanged answer costs one comparison.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from notifier.dcs.models import Outcome, Task
from notifier.pipeline.diff import DiffContext, DiffResult, SeenTask, Snapshot
from notifier.pipeline.events import Event, EventType, event_id
from notifier.pipeline.rules import canonical_task

#: The ``watchdog`` key whose limit applies to every task name not given.
DEFAULT_KEY = "default"


@dataclass(frozen=True, slots=True)
class Limits:
    """How long a task may stay in progress, by kind (:func:`canonical_task`); None: never stuck."""

    default: timedelta | None = None
    by_kind: Mapping[str, timedelta | None] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: Mapping[str, float]) -> Limits:
        """From the config's ``watchdog`` (seconds by task name or ``default``; 0 = never)."""

        def limit(seconds: float) -> timedelta | None:
            return timedelta(seconds=seconds) if seconds > 0 else None

        by_kind = {canonical_task(name): limit(s) for name, s in settings.items() if name != DEFAULT_KEY}
        return cls(limit(settings.get(DEFAULT_KEY, 0.0)), by_kind)

    def of_task(self, name: str) -> timedelta | None:
        """The limit of a task named ``name`` (as the API names it)."""
        kind = canonical_task(name)
        return self.by_kind.get(kind, self.default)

    @property
    def off(self) -> bool:
        """Whether no task can ever be stuck (every limit 0)."""
        return self.default is None and not any(self.by_kind.values())


def stuck_at(task: Task, limits: Limits) -> datetime | None:
    """When ``task`` becomes stuck if it is still in progress then; None when it never does (no limit for
    its name, no ``created_at``, or it is not in progress)."""
    if task.created_at is None or task.outcome is not Outcome.IN_PROGRESS:
        return None
    limit = limits.of_task(task.name)
    if limit is None:
        return None
    try:
        return task.created_at + limit
    except OverflowError:  # created near the end of the calendar (9999-12-31): never stuck before it
        return None


@dataclass(frozen=True, slots=True)
class Deadline:
    """The earliest moment one of an instance's watched tasks becomes stuck, and those tasks (as the answer
    listed them: ``task.stuck`` carries the task whole)."""

    at: datetime
    tasks: tuple[Task, ...]


def deadline(snapshot: Snapshot, listed: Iterable[Task], limits: Limits) -> Deadline | None:
    """The deadline of the tasks of ``listed`` in progress, with a limit, recorded in ``snapshot`` and not
    announced stuck yet; None when there is none (the usual case: nothing runs)."""
    if limits.off:
        return None
    watched: list[Task] = []
    earliest: datetime | None = None
    for task in listed:
        at = stuck_at(task, limits)
        if at is None:
            continue
        seen = snapshot.tasks.get(task.id)
        if seen is None or seen.stuck_at is not None:
            continue  # not recorded (nowhere to note the announcement), or announced already
        watched.append(task)
        earliest = at if earliest is None or at < earliest else earliest
    return None if earliest is None else Deadline(earliest, tuple(watched))


def stuck(snapshot: Snapshot, listed: Iterable[Task], limits: Limits, ctx: DiffContext) -> DiffResult:
    """``task.stuck`` for each task of ``listed`` past its limit at ``ctx.now`` and not announced yet, with
    its snapshot entry marked (``stuck_at``): what to commit together."""
    found: list[tuple[datetime, str, Event]] = []
    upserts: dict[str, SeenTask] = {}
    if limits.off:
        return DiffResult(events=[], upserts=upserts, removals=[], baseline_at=None)
    for task in listed:
        at = stuck_at(task, limits)
        seen = snapshot.tasks.get(task.id)
        if at is None or at > ctx.now or seen is None or seen.stuck_at is not None:
            continue
        upserts[task.id] = dataclasses.replace(seen, stuck_at=at)
        found.append(
            (
                at,
                task.id,
                Event(
                    id=event_id(ctx.instance.id, task.id, EventType.STUCK, "stuck"),
                    type=EventType.STUCK,
                    project_id=ctx.project_id,
                    region=ctx.region,
                    instance=ctx.instance,
                    task=task,
                    detected_at=ctx.now,
                    stuck_since=at,
                ),
            )
        )
    found.sort(key=lambda f: (f[0], f[1]))  # oldest first, as the diff orders a poll's events
    return DiffResult(events=[f[2] for f in found], upserts=upserts, removals=[], baseline_at=None)


def joined(result: DiffResult, found: DiffResult) -> DiffResult:
    """A poll's diff with the ``task.stuck`` events found after it (each event once: a stuck event not
    committed before may be among the diff's)."""
    if not found.events:
        return result
    ids = {ev.id for ev in result.events}
    return dataclasses.replace(
        result,
        events=[*result.events, *(ev for ev in found.events if ev.id not in ids)],
        upserts={**result.upserts, **found.upserts},
    )
