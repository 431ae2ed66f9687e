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

from pydantic import BaseModel, ConfigDict, Field

from notifier.dcs.models import Task


class EventType(enum.StrEnum):
    STARTED = "task.started"
    SUCCEEDED = "task.succeeded"
    FAILED = "task.failed"
    UPDATED = "task.updated"
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

    @classmethod
    def of(cls, id: str, name: str, labels: dict[str, str]) -> InstanceRef:
        """One watched instance's record, from values already checked (the config's, or discovery's
        strings): built without validation and sharing one set of field names, as one is held per
        watched instance for as long as it is watched (half the memory of a validated one)."""
        return cls.model_construct(cast("set[str]", _REF_FIELDS), id=id, name=name, labels=labels)


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
            case _ if self.cloud_eye is not None:  # Cloud Eye's event, part of this task
                return f"{self._instance_summary(where)}, during {what}"
            case _:
                return f"{self.type.value} on {where}"

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

    @property
    def key(self) -> str:
        """Idempotency key of this delivery: the event id plus the channel."""
        return f"{self.event.id}:{self.channel}"
