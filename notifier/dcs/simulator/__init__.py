"""A local, faithful stand-in for the Huawei Cloud DCS API (List Background Tasks, List Instances).

Used by the tests and by ``dcs-notifier demo``; runs standalone with ``python -m notifier.dcs.simulator``.
"""

from notifier.dcs.simulator.app import Simulator
from notifier.dcs.simulator.scenario import (
    CATALOG_CACHE,
    ORDERS_CACHE,
    SESSIONS_CACHE,
    FinishTask,
    InstanceSpec,
    Scenario,
    SetStatus,
    StartTask,
    Step,
    default_demo_scenario,
    install_instances,
    run_scenario,
)
from notifier.dcs.simulator.state import Fault, ManualClock, RecordedRequest, SimInstance, error_body

__all__ = [
    "CATALOG_CACHE",
    "ORDERS_CACHE",
    "SESSIONS_CACHE",
    "Fault",
    "FinishTask",
    "InstanceSpec",
    "ManualClock",
    "RecordedRequest",
    "Scenario",
    "SetStatus",
    "SimInstance",
    "Simulator",
    "StartTask",
    "Step",
    "default_demo_scenario",
    "error_body",
    "install_instances",
    "run_scenario",
]
