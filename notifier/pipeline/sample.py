"""The sample event ``dcs-notifier send-test`` sends: realistic, and clearly marked as a test."""

from __future__ import annotations

from datetime import datetime, timedelta

from notifier.config.models import Config, InstanceConfig
from notifier.dcs.models import Task, format_api_time
from notifier.pipeline.events import Event, EventType, InstanceRef, Notification, event_id

#: The rule a sample notification is credited to (the webhook's ``rule``), so receivers can tell it apart.
SAMPLE_RULE = "send-test"


def sample_notification(config: Config, channel: str, now: datetime) -> Notification:
    """A master/standby switchover that just succeeded on the config's first instance, for ``channel``.

    Its task id holds the time, so each sample has an event id of its own (a receiver that de-duplicates
    on ``webhook-id`` shows every test).
    """
    spec = config.projects()[0]
    inst = spec.instances[0] if spec.instances else InstanceConfig(id="dcs-notifier-test", name="test")
    task = Task.model_validate(
        {
            "id": f"dcs-notifier-test-{int(now.timestamp())}",
            "name": "masterStandbySwapJob",
            "status": "SUCCESS",
            "user_name": "dcs-notifier send-test",
            "created_at": format_api_time(now - timedelta(seconds=4)),
            "updated_at": format_api_time(now),
        }
    )
    event = Event(
        id=event_id(inst.id, task.id, EventType.SUCCEEDED, task.status),
        type=EventType.SUCCEEDED,
        project_id=spec.project_id,
        region=spec.region,
        instance=InstanceRef(id=inst.id, name=inst.name, labels=inst.labels),
        task=task,
        previous_status="RUNNING",
        detected_at=now,
    )
    return Notification(event=event, channel=channel, rule=SAMPLE_RULE)
