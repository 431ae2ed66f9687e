"""What a test watches: deliveries a receiver accepted, polls the simulator served."""

from __future__ import annotations

import json

from notifier.devtools.simulator import Simulator
from notifier.devtools.standins.webhook import WebhookReceiver
from tests.support.wait import until


def deliveries(audit: WebhookReceiver) -> list[tuple[str, str]]:
    """(task id, event type) of every webhook the receiver accepted, in order."""
    out = []
    for r in audit.requests:
        if 200 <= r.status < 300:
            data = json.loads(r.body)
            out.append(((data["data"]["task"] or {}).get("id", ""), data["type"]))
    return out


async def polls_of(sim: Simulator, instance: str, more: int, within: float = 10) -> None:
    """Wait until the simulator has served ``more`` further task-list requests of ``instance``."""
    start = len(sim.task_requests(instance))
    await until(lambda: len(sim.task_requests(instance)) >= start + more, within, f"{more} more polls")
