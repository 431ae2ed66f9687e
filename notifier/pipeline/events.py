"""Events: what the diff finds, what rules route and what formatters render.

An event is immutable and carries everything a formatter needs, so formatters stay pure functions.
Its id is deterministic — the same (instance, task, type, status) always gives the same id — so it
can serve as an idempotency key end to end (the webhook ``webhook-id`` header).
"""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator

from notifier.dcs.models import Outcome, Task
from notifier.pipeline.time_intervals import Maintenance, MaintenanceWindow


class EventType(enum.StrEnum):
    STARTED = "task.started"
    SUCCEEDED = "task.succeeded"
    FAILED = "task.failed"
    UPDATED = "task.updated"
    #: A task stayed in progress longer than its ``watchdog`` limit (announced once per task).
    STUCK = "task.stuck"
    #: The instance was deleted (gone from the instance list, or its tasks answer 404 DCS.3022).
    INSTANCE_REMOVED = "instance.removed"
    #: Polling the instance has failed for longer than ``health.after``.
    POLLER_UNHEALTHY = "poller.unhealthy"
    #: Polling works again after ``poller.unhealthy``.
    POLLER_RECOVERED = "poller.recovered"
    # What happened to an instance, as Cloud Eye reports it (``SYS.DCS`` events; notifier.cloudeye).
    INSTANCE_FAILOVER = "instance.failover"
    INSTANCE_SWITCHOVER = "instance.switchover"
    NODE_ABNORMAL = "node.abnormal"
    NODE_RECOVERED = "node.recovered"
    NODE_RESTARTED = "node.restarted"
    BACKUP_FAILED = "backup.failed"
    MIGRATION_FAILED = "migration.failed"
    MIGRATION_RESYNC = "migration.resync"
    CLOUDEYE_EVENT = "cloudeye.event"


class InstanceRef(BaseModel):
    """The watched instance as configured: id, a readable name, labels for routing."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    #: Its DCS maintenance window, from the project's instance list (None: not known, or not read yet).
    maintenance_window: MaintenanceWindow | None = None

    @classmethod
    def of(
        cls, id: str, name: str, labels: dict[str, str], window: MaintenanceWindow | None = None
    ) -> InstanceRef:
        """One watched instance's record, from values already checked (the config's, or discovery's
        strings): built without validation and sharing one set of field names, as one is held per
        watched instance for as long as it is watched (half the memory of a validated one). Windows are
        shared too (:func:`~notifier.pipeline.time_intervals.maintenance_window`)."""
        return cls.model_construct(
            cast("set[str]", _REF_FIELDS), id=id, name=name, labels=labels, maintenance_window=window
        )

    def with_window(self, window: MaintenanceWindow | None) -> InstanceRef:
        """This record with another maintenance window (the instance list said so)."""
        return InstanceRef.of(self.id, self.name, self.labels, window)


_REF_FIELDS = frozenset(InstanceRef.model_fields)  # never added to: the model is frozen


class CloudEyeInfo(BaseModel):
    """What Cloud Eye said of an event (``cloud_eye`` events): the webhook's ``data.cloud_eye``."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    event_name: str
    event_source: str | None = None
    level: str | None = None
    state: str | None = None
    time: datetime
    resource_id: str | None = None
    resource_name: str | None = None
    user: str | None = None
    #: ``detail.content``: its JSON where it is JSON, else the string.
    content: Any = None


class SilenceNote(BaseModel):
    """An earlier notification of a task that a silence held back on a channel (see
    :mod:`notifier.delivery.silences`): kept in the task's card record, and told by the task's later
    messages there ("Started while silenced (silence ab12cd34: planned scale)")."""

    model_config = ConfigDict(frozen=True)

    #: The silence's id.
    id: str
    #: Its comment, as it was when it held the notification back.
    comment: str = ""
    #: The type of the event held back (``task.started``: the task started while silenced).
    type: str


class PollProblem(BaseModel):
    """Why polling an instance fails (``poller.*`` events): what the API or the network said."""

    model_config = ConfigDict(frozen=True)

    reason: str
    message: str
    http_status: int | None = None
    error_code: str | None = None
    #: When the failures began (this episode).
    since: datetime


#: A Cloud Eye event in words, as the summary starts.
CLOUD_EYE_WORDS: dict[EventType, str] = {
    EventType.INSTANCE_FAILOVER: "Automatic master/standby failover",
    EventType.INSTANCE_SWITCHOVER: "Master/standby switchover (Cloud Eye)",
    EventType.NODE_ABNORMAL: "A node is abnormal",
    EventType.NODE_RECOVERED: "A node recovered",
    EventType.NODE_RESTARTED: "A node restarted",
    EventType.BACKUP_FAILED: "Backup failed",
    EventType.MIGRATION_FAILED: "Data migration failed",
    EventType.MIGRATION_RESYNC: "Full resync during data migration",
}


def span(seconds: float) -> str:
    """A time span as a summary says it, to the minute past one (``40 s``, ``25 min``, ``2 h 5 min``,
    ``3 d 4 h``): how long a task has run or was stuck. (Slack's fields give the exact duration.)"""
    if seconds < 60:
        return f"{round(seconds, 1):g} s" if seconds < 10 else f"{int(seconds)} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def event_id(instance_id: str, task_id: str, type_: EventType, status: str) -> str:
    """Deterministic event id: ``evt_`` + 32 hex chars of sha256 over the identifying tuple."""
    key = "\x1f".join((instance_id, task_id, type_.value, status))
    return "evt_" + hashlib.sha256(key.encode()).hexdigest()[:32]


class Event(BaseModel):
    """A task of an instance started, succeeded, failed or changed status."""

    model_config = ConfigDict(frozen=True)

    id: str
    type: EventType
    project_id: str
    region: str
    instance: InstanceRef
    #: The task, for ``task.*`` events, and for a Cloud Eye event that is part of a task (a switchover
    #: during a master/standby swap or a spec change); None for the other events.
    task: Task | None = None
    previous_status: str | None = None
    detected_at: datetime
    #: What failed, for ``poller.*`` events.
    problem: PollProblem | None = None
    #: What Cloud Eye said, for the events it reports (``instance.failover``, ``node.*``...).
    cloud_eye: CloudEyeInfo | None = None
    #: When the task crossed its ``watchdog`` limit (its ``created_at`` + the limit): set on ``task.stuck``
    #: and on the later events of a task announced stuck (its end then says how long it was stuck).
    stuck_since: datetime | None = None
    #: Whether the change started inside the instance's DCS maintenance window (see :attr:`started_at`);
    #: None when the window is not known, and for ``poller.*`` events (no change of the instance). Worked
    #: out when the event is made, from the window its instance record carries then (the diff's context,
    #: Cloud Eye's watched instance), so every maker of events gets it the same way.
    maintenance: Maintenance | None = None

    @model_validator(mode="after")
    def _maintenance(self) -> Event:
        window = self.instance.maintenance_window
        if self.maintenance is None and window is not None and not self.type.value.startswith("poller."):
            object.__setattr__(self, "maintenance", window.placement(self.started_at))
        return self

    @property
    def started_at(self) -> datetime:
        """When the change began: the task's ``created_at``; for an event without one, when Cloud Eye
        says it happened (it may be read minutes later), else when it was detected."""
        if self.task is not None and self.task.created_at is not None:
            return self.task.created_at
        if self.cloud_eye is not None:
            return self.cloud_eye.time
        return self.detected_at

    @property
    def summary(self) -> str:
        """One line a person reads first, e.g. ``Master/standby switchover succeeded on orders-cache``."""
        where = self.instance.name
        if self.task is None:
            return self._instance_summary(where)
        what = self.task.display_name
        match self.type:
            case EventType.STARTED:
                return f"{what} started on {where}"
            case EventType.SUCCEEDED:
                return f"{what} succeeded on {where}"
            case EventType.FAILED:
                return f"{what} failed on {where} (status {self.task.status})"
            case EventType.UPDATED:
                before = self.previous_status or "unknown"
                return f"{what} on {where} changed status {before} → {self.task.status}"
            case EventType.STUCK if self.stuck_since is not None and self.task.created_at is not None:
                running = span((self.detected_at - self.task.created_at).total_seconds())
                limit = span((self.stuck_since - self.task.created_at).total_seconds())
                return f"{what} on {where} is stuck: {self.task.status} for {running} (limit {limit})"
            case _ if self.cloud_eye is not None:  # Cloud Eye's event, part of this task
                return f"{self._instance_summary(where)}, during {what}"
            case _:
                return f"{self.type.value} on {where}"

    @property
    def stuck_limit_seconds(self) -> float | None:
        """The ``watchdog`` limit the task was held to (for a task announced stuck)."""
        task = self.task
        if self.stuck_since is None or task is None or task.created_at is None:
            return None
        return (self.stuck_since - task.created_at).total_seconds()

    @property
    def stuck_seconds(self) -> float | None:
        """How long the task has been past its limit: until it ended (the API's ``updated_at``), else
        until this event was detected."""
        task = self.task
        if self.stuck_since is None or task is None:
            return None
        end = task.updated_at if task.outcome is not Outcome.IN_PROGRESS and task.updated_at else None
        return max(0.0, ((end or self.detected_at) - self.stuck_since).total_seconds())

    @property
    def stuck_note(self) -> str | None:
        """``was stuck for 12 min (limit 5 min)`` (``stuck for …`` while it runs); None when the task
        was never announced stuck."""
        limit, past = self.stuck_limit_seconds, self.stuck_seconds
        if limit is None or past is None or self.task is None:
            return None
        verb = "stuck" if self.task.outcome is Outcome.IN_PROGRESS else "was stuck"
        return f"{verb} for {span(past)} (limit {span(limit)})"

    def _instance_summary(self, where: str) -> str:
        problem = self.problem
        match self.type:
            case EventType.INSTANCE_REMOVED:
                return f"Instance {where} was deleted"
            case EventType.POLLER_UNHEALTHY if problem is not None:
                code = f" {problem.error_code}" if problem.error_code else ""
                return f"Cannot poll {where}: {problem.reason}{code}"
            case EventType.POLLER_RECOVERED:
                return f"Polling {where} works again"
            case _ if self.cloud_eye is not None:
                what = CLOUD_EYE_WORDS.get(self.type) or f"Cloud Eye event {self.cloud_eye.event_name}"
                return f"{what} on {where}"
            case _:
                return f"{self.type.value} on {where}"


class Notification(BaseModel):
    """One event routed to one channel by one rule: the unit the outbox stores and delivery sends."""

    model_config = ConfigDict(frozen=True)

    event: Event
    channel: str
    rule: str | None = None
    #: Slack mentions from the rules that sent it here (the config's ``mention``, never API data).
    mentions: tuple[str, ...] = ()
    #: A Cloud Eye event that is part of a task still running whose end this channel gets too: a channel
    #: without living cards tells it as a line of the task's next message there, not as one of its own.
    folds: bool = False
    #: Set by delivery, never stored in the outbox: an earlier notification of this task to this channel
    #: was held back by a silence (read from the task's card record), which the message tells.
    silenced: SilenceNote | None = Field(default=None, exclude=True)

    @property
    def key(self) -> str:
        """Idempotency key of this delivery: the event id plus the channel."""
        return f"{self.event.id}:{self.channel}"
