"""What a test watches: deliveries a receiver accepted, polls the simulator served, what a process keeps."""

from __future__ import annotations

import collections
import json
from datetime import datetime

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


_CONTAINERS = (dict, list, set, frozenset, tuple, collections.deque)
_SCALARS = frozenset({str, bytes, int, float, bool, type(None), datetime})


def container_sizes(root: object) -> dict[str, int]:
    """How many entries every container reachable from ``root`` holds, by path (``fleet._watches``).

    The walk follows the attributes of notifier's own objects (not of pydantic models: values, not
    registries) and the contents of containers; the contents of one container share a path
    (``fleet._watches[]``), and the sizes of the containers at one path are added up. Empty ones are
    left out. So whatever a process keeps per instance shows up here, whatever its name.
    """
    sizes: collections.Counter[str] = collections.Counter()
    seen: set[int] = set()

    def visit(obj: object, path: str) -> None:
        if type(obj) in _SCALARS or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, _CONTAINERS):
            sizes[path] += len(obj)
            values = obj.values() if isinstance(obj, dict) else obj
            for value in list(values):
                visit(value, f"{path}[]")
            return
        cls = type(obj)
        if not cls.__module__.startswith("notifier.") or hasattr(cls, "model_fields"):
            return
        names = list(getattr(obj, "__dict__", {}))
        for c in cls.__mro__:
            slots = getattr(c, "__slots__", ())
            names += [n for n in ((slots,) if isinstance(slots, str) else slots) if hasattr(obj, n)]
        for name in names:
            visit(getattr(obj, name), f"{path}.{name}" if path else name)

    visit(root, "")
    return {path: size for path, size in sizes.items() if size}
