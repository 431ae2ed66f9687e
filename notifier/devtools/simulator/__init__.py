"""A local, faithful stand-in for the Huawei Cloud DCS API (List Background Tasks, List Instances).

Used by the tests and by ``dcs-notifier demo``; runs standalone with ``python -m
notifier.devtools.simulator``. Also covers several projects, temporary AK/SK with a security token, IAM
password-method tokens (``POST /v3/auth/tokens``), API gateway throttling (429 ``APIG.0308``) and a skewed
service clock.
"""

from notifier.devtools.simulator.app import Simulator
from notifier.devtools.simulator.scenario import (
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
from notifier.devtools.simulator.state import (
    IAM_TOKENS_PATH,
    Fault,
    IamToken,
    IamUser,
    ManualClock,
    RecordedRequest,
    SimInstance,
    SkewedClock,
    TemporaryCredentials,
    error_body,
)

__all__ = [
    "CATALOG_CACHE",
    "IAM_TOKENS_PATH",
    "ORDERS_CACHE",
    "SESSIONS_CACHE",
    "Fault",
    "FinishTask",
    "IamToken",
    "IamUser",
    "InstanceSpec",
    "ManualClock",
    "RecordedRequest",
    "Scenario",
    "SetStatus",
    "SimInstance",
    "Simulator",
    "SkewedClock",
    "StartTask",
    "Step",
    "TemporaryCredentials",
    "default_demo_scenario",
    "error_body",
    "install_instances",
    "run_scenario",
]
