"""Small builders of tasks and events for tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from notifier.dcs.models import Task, format_api_time
from notifier.pipeline.events import Event, EventType, InstanceRef, PollProblem, event_id

T0 = datetime(2026, 11, 28, 8, 0, 0, tzinfo=UTC)
INSTANCE = InstanceRef(id="5560df16-cebf-4473-95c4-d1b573c16e79", name="orders-cache", labels={"env": "prod"})


def task(
    id: str = "t1",
    name: str = "masterStandbySwapJob",
    status: str = "RUNNING",
    created: datetime = T0,
    updated: datetime | None = None,
    **extra: Any,
) -> Task:
    data: dict[str, Any] = {
        "id": id,
        "name": name,
        "status": status,
        "user_name": "ops_alice",
        "user_id": "d53977d1adfb49c5b025ba7d33a13fd7",
        "created_at": format_api_time(created),
        "updated_at": format_api_time(updated) if updated else "",
        "enable_show": False,
        **extra,
    }
    return Task.model_validate(data)


def event(type_: EventType = EventType.STARTED, t: Task | None = None, previous: str | None = None) -> Event:
    t = t or task()
    return Event(
        id=event_id(INSTANCE.id, t.id, type_, t.status),
        type=type_,
        project_id="a4d31cb6-3d72-4fdc-8ec9-6e3a41e47f71",
        region="cn-north-4",
        instance=INSTANCE,
        task=t,
        previous_status=previous,
        detected_at=T0 + timedelta(seconds=5),
    )


PROJECT_ID = "a4d31cb6-3d72-4fdc-8ec9-6e3a41e47f71"


def problem(
    reason: str = "server_error",
    message: str = "DCS API error for instance 5560df16-cebf-4473-95c4-d1b573c16e79, HTTP 503, DCS.5000: busy",
    http_status: int | None = 503,
    error_code: str | None = "DCS.5000",
    since: datetime = T0,
) -> PollProblem:
    return PollProblem(
        reason=reason, message=message, http_status=http_status, error_code=error_code, since=since
    )


def removed_event(instance: InstanceRef = INSTANCE, detected: datetime = T0) -> Event:
    """``instance.removed``, built the way the poller builds it (no task, no problem)."""
    return Event(
        id=event_id(instance.id, "", EventType.INSTANCE_REMOVED, ""),
        type=EventType.INSTANCE_REMOVED,
        project_id=PROJECT_ID,
        region="cn-north-4",
        instance=instance,
        detected_at=detected,
    )


def poller_event(
    type_: EventType = EventType.POLLER_UNHEALTHY,
    p: PollProblem | None = None,
    instance: InstanceRef = INSTANCE,
    detected: datetime = T0 + timedelta(minutes=5),
) -> Event:
    """``poller.unhealthy`` / ``poller.recovered``, with the id HealthTracker gives it (one per episode)."""
    p = p or problem()
    return Event(
        id=event_id(instance.id, "", type_, p.since.astimezone(UTC).isoformat()),
        type=type_,
        project_id=PROJECT_ID,
        region="cn-north-4",
        instance=instance,
        detected_at=detected,
        problem=p,
    )
