"""Scenarios: timed steps the simulator plays out (the demo uses the built-in one)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from notifier.devtools.simulator.state import SimulatorState

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class InstanceSpec:
    instance_id: str
    name: str
    attrs: Mapping[str, Any] = field(default_factory=dict)  # other SimInstance fields


@dataclass(frozen=True)
class StartTask:
    """Start a task; ``key`` names it for later steps of the same scenario."""

    key: str
    instance_id: str
    name: str
    details: Mapping[str, Any] | None = None
    status: str = "RUNNING"
    user_name: str = "dcs_ops"


@dataclass(frozen=True)
class SetStatus:
    key: str
    status: str


@dataclass(frozen=True)
class FinishTask:
    key: str
    status: str = "SUCCESS"


@dataclass(frozen=True)
class EmitCloudEyeEvent:
    """Record a Cloud Eye ``SYS.DCS`` event on an instance (default: an automatic failover).

    ``late_by`` seconds (of the simulator's clock, not scaled by the scenario's speed): the event happened
    that long before it is recorded, i.e. a late event. ``content``: ``detail.content`` (a mapping is served
    as JSON; what DCS really puts there is unconfirmed).
    """

    instance_id: str
    event_name: str = "masterStandbyFailover"
    level: str = "Major"
    state: str = "incident"
    content: Mapping[str, Any] | str | None = None
    late_by: float = 0.0


Action = StartTask | SetStatus | FinishTask | EmitCloudEyeEvent


@dataclass(frozen=True)
class Step:
    at: float  # seconds from the scenario's start
    action: Action


@dataclass(frozen=True)
class Scenario:
    instances: Sequence[InstanceSpec]
    steps: Sequence[Step]

    @property
    def duration(self) -> float:
        return max((s.at for s in self.steps), default=0.0)


def install_instances(sim: SimulatorState, scenario: Scenario) -> None:
    """Add the scenario's instances that the simulator does not have yet."""
    for spec in scenario.instances:
        if spec.instance_id not in sim.instances:
            sim.add_instance(spec.instance_id, spec.name, **dict(spec.attrs))


def apply_step(sim: SimulatorState, step: Step, task_ids: dict[str, tuple[str, str]]) -> None:
    """Apply one step now; ``task_ids`` maps scenario keys to ``(instance_id, task_id)``."""
    action = step.action
    if isinstance(action, StartTask):
        task_id = sim.start_task(
            action.instance_id,
            action.name,
            details=action.details,
            status=action.status,
            user_name=action.user_name,
        )
        task_ids[action.key] = (action.instance_id, task_id)
    elif isinstance(action, SetStatus):
        sim.set_status(*task_ids[action.key], action.status)
    elif isinstance(action, EmitCloudEyeEvent):
        now = sim.clock()
        sim.add_cloud_eye_event(
            action.event_name,
            resource_id=action.instance_id,
            time=now - timedelta(seconds=action.late_by),
            visible_at=now,
            level=action.level,
            state=action.state,
            content=action.content,
        )
    else:
        sim.finish_task(*task_ids[action.key], action.status)


async def run_scenario(
    sim: SimulatorState,
    scenario: Scenario,
    *,
    speed: float = 1.0,
    sleep: Sleep = asyncio.sleep,
    repeat: bool = False,
    pause_between: float = 5.0,
) -> dict[str, tuple[str, str]]:
    """Play ``scenario`` on ``sim`` in (scaled) real time; returns key → (instance_id, task_id).

    ``speed`` 2.0 plays twice as fast; ``sleep`` is injectable (a test can pass one that advances a
    :class:`~notifier.devtools.simulator.state.ManualClock`). With ``repeat`` it loops until cancelled.
    """
    if speed <= 0:
        raise ValueError("speed must be > 0")
    install_instances(sim, scenario)
    while True:
        task_ids: dict[str, tuple[str, str]] = {}
        elapsed = 0.0
        for step in sorted(scenario.steps, key=lambda s: s.at):
            if step.at > elapsed:
                await sleep((step.at - elapsed) / speed)
                elapsed = step.at
            apply_step(sim, step, task_ids)
        if not repeat:
            return task_ids
        await sleep(pause_between / speed)


# --- the built-in demo --------------------------------------------------------------------------------

ORDERS_CACHE = "3f6c1a52-8d0e-4b7a-9c1f-5e2d7a9b0c11"
SESSIONS_CACHE = "7a2e9d40-1b3c-4f5e-8a6d-0c9b8e7f6a22"
CATALOG_CACHE = "c41b8f93-6e2d-4a1c-b7f0-9d3e5a8c2b33"
#: An availability zone's worth of small caches, switched over together (a burst: one grouped card).
AZ_FLEET = [(f"5a0c{n:04d}-7e1f-4c2d-9b3a-0d1e2f3a4b{n:02d}", f"az1-cache-{n:02d}") for n in range(1, 9)]


def default_demo_scenario() -> Scenario:
    """~25 s: a switchover, a scale-up, a whitelist change, public access on, an automatic failover (a
    Cloud Eye event), a burst of 8 switchovers in one zone (one grouped card), a replica addition that
    hangs past its watchdog limit (``task.stuck``) and a failed port change."""
    instances = [
        InstanceSpec(
            ORDERS_CACHE,
            "orders-cache",
            {"spec_code": "redis.ha.xu1.tiny.r2.256", "capacity_gb": 0.25, "ip": "192.168.0.11"},
        ),
        InstanceSpec(
            SESSIONS_CACHE,
            "sessions-cache",
            {"spec_code": "redis.ha.xu1.tiny.r2.128", "capacity_gb": 0.125, "ip": "192.168.0.12"},
        ),
        InstanceSpec(
            CATALOG_CACHE,
            "catalog-cache",
            {"spec_code": "redis.single.xu1.tiny.512", "capacity_gb": 0.5, "ip": "192.168.0.13"},
        ),
        *(
            InstanceSpec(iid, name, {"spec_code": "redis.ha.xu1.tiny.r2.128", "capacity_gb": 0.125})
            for iid, name in AZ_FLEET
        ),
    ]
    extend = {
        "old_cache_mode": "ha",
        "new_cache_mode": "ha",
        "old_capacity": "0.125",
        "new_capacity": "0.25",
        "old_resource_spec_code": "redis.ha.xu1.tiny.r2.128",
        "new_resource_spec_code": "redis.ha.xu1.tiny.r2.256",
        "old_replica_num": 2,
        "new_replica_num": 2,
        "old_cache_type": "ha",
        "new_cache_type": "ha",
        "is_only_adjust_charging": False,
    }
    eip = {
        "enable_public_ip": True,
        "public_ip_id": "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b",
        "public_ip_address": "203.0.113.10",
        "enable_ssl": False,
    }
    replicas = {"old_replica_num": 2, "new_replica_num": 3}
    steps = [
        Step(1, StartTask("swap", ORDERS_CACHE, "masterStandbySwapJob")),
        Step(2, StartTask("replica", ORDERS_CACHE, "AddReplica", replicas)),
        Step(3, StartTask("extend", SESSIONS_CACHE, "EXTEND", extend, status="CREATED")),
        Step(
            4,
            EmitCloudEyeEvent(
                SESSIONS_CACHE,
                "masterStandbyFailover",
                content={"old_master": "192.168.0.12:6379", "new_master": "192.168.0.22:6379"},
            ),
        ),
        Step(5, SetStatus("extend", "EXECUTING")),
        Step(6, FinishTask("swap")),
        Step(8, StartTask("whitelist", ORDERS_CACHE, "AddWhitelist", {"group_name": "app-servers"})),
        Step(10, FinishTask("whitelist")),
        Step(12, StartTask("eip", CATALOG_CACHE, "BindEip", eip)),
        Step(16, FinishTask("eip")),
        Step(18, FinishTask("extend")),
        Step(19, StartTask("port", CATALOG_CACHE, "UpdatePort", {"old_port": 6379, "new_port": 6380})),
        Step(24, FinishTask("port", "FAILED")),
        # The zone's burst: 8 switchovers at once, half done 4 s later, the rest 5 s later.
        *(Step(9, StartTask(f"az-{n}", iid, "masterStandbySwapJob")) for n, (iid, _) in enumerate(AZ_FLEET)),
        *(Step(13 if n < 4 else 14, FinishTask(f"az-{n}")) for n in range(len(AZ_FLEET))),
        Step(20, FinishTask("replica")),
    ]
    return Scenario(instances, steps)
