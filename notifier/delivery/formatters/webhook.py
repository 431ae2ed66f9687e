"""Pure generic-webhook formatter: a notification in, a Standard Webhooks payload out.

Shape (https://www.standardwebhooks.com/)::

    {"type": "task.succeeded", "timestamp": "2020-06-17T08:18:11.000Z", "data": {...}}

``data.task`` is the task exactly as the API sent it (``Task.to_api_dict()``) plus ``display_name``,
``previous_status`` and ``duration_seconds``. :func:`webhook_body` gives the exact bytes that are sent and
signed: compact JSON, UTF-8, keys sorted, so the same notification always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from notifier.dcs.models import format_api_time
from notifier.pipeline.events import Notification


def format_webhook(notification: Notification) -> dict[str, Any]:
    """The Standard Webhooks payload of one notification."""
    event = notification.event
    task: dict[str, Any] | None = None  # null for instance.* and poller.* events
    if event.task is not None:
        task = event.task.to_api_dict()
        task["display_name"] = event.task.display_name
        task["previous_status"] = event.previous_status
        task["duration_seconds"] = event.task.duration_seconds
    data: dict[str, Any] = {
        "event_id": event.id,
        "project_id": event.project_id,
        "region": event.region,
        "instance": {
            "id": event.instance.id,
            "name": event.instance.name,
            "labels": dict(event.instance.labels),
        },
        "task": task,
        "rule": notification.rule,
        "summary": event.summary,
    }
    if event.cloud_eye is not None:  # what Cloud Eye said (instance.failover, node.*...)
        cloud_eye = event.cloud_eye.model_dump(mode="json")
        cloud_eye["time"] = format_api_time(event.cloud_eye.time)
        data["cloud_eye"] = cloud_eye
    window = event.instance.maintenance_window
    if event.maintenance is not None and window is not None:  # did the change start in its DCS window?
        data["maintenance"] = {
            "window": {"begin": window.begin_text, "end": window.end_text},
            "started_inside": event.maintenance == "inside",
        }
    if event.stuck_since is not None:  # task.stuck, and the later events of a task announced stuck
        data["stuck"] = {
            "since": format_api_time(event.stuck_since),
            "limit_seconds": event.stuck_limit_seconds,
            "stuck_seconds": event.stuck_seconds,
            "note": event.stuck_note,
        }
    if event.problem is not None:  # poller.* events: what fails, since when
        problem = event.problem.model_dump(mode="json")
        problem["since"] = format_api_time(event.problem.since)
        data["problem"] = problem
    if notification.silenced is not None:  # an earlier notification of this task was silenced here
        note = notification.silenced
        data["silenced_earlier"] = {"silence_id": note.id, "comment": note.comment, "event_type": note.type}
    return {"type": event.type.value, "timestamp": format_api_time(event.detected_at), "data": data}


def webhook_body(notification: Notification) -> bytes:
    """The exact request body: compact, UTF-8 (not ASCII-escaped), keys sorted."""
    payload = format_webhook(notification)
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def batch_id(kind: str, notifications: Sequence[Notification]) -> str:
    """The ``webhook-id`` of a group or digest: the same members always give the same id."""
    digest = hashlib.sha256("\x1f".join(n.event.id for n in notifications).encode()).hexdigest()[:32]
    return f"{kind[:3]}_{digest}"


def format_webhook_batch(kind: str, notifications: Sequence[Notification]) -> dict[str, Any]:
    """One payload for several notifications (``group``: a rule asked for grouping; ``digest``:
    ``digest.webhooks``): ``data.events`` holds each one's own payload, in order."""
    events = [format_webhook(n) for n in notifications]
    latest = max(n.event.detected_at for n in notifications)
    data = {"id": batch_id(kind, notifications), "count": len(events), "events": events}
    return {"type": kind, "timestamp": format_api_time(latest), "data": data}


def webhook_batch_body(kind: str, notifications: Sequence[Notification]) -> bytes:
    payload = format_webhook_batch(kind, notifications)
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
