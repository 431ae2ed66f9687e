"""A local, faithful stand-in for the Huawei Cloud DCS API (List Background Tasks, List Instances).

Also serves Cloud Eye's (CES v1) event APIs, ListEvents and ListEventDetail, with events injected by
``Simulator.add_cloud_eye_event`` (see :mod:`notifier.devtools.simulator.cloud_eye`).

Used by the tests and by ``dcs-notifier demo``; runs standalone with ``python -m
notifier.devtools.simulator``. Also covers several projects, temporary AK/SK with a security token, IAM
password-method tokens (``POST /v3/auth/tokens``), API gateway throttling (429 ``APIG.0308``) and a skewed
service clock.
"""

from notifier.devtools.simulator.answers import ces_error_body, error_body
from notifier.devtools.simulator.app import Simulator
from notifier.devtools.simulator.cloud_eye import (
    CES_EVENT_DETAIL_PATH,
    CES_EVENTS_PATH,
    CloudEyeEvent,
)
from notifier.devtools.simulator.scenario import (
    CATALOG_CACHE,
    ORDERS_CACHE,
    SESSIONS_CACHE,
    EmitCloudEyeEvent,
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
)

__all__ = [
    "CATALOG_CACHE",
    "CES_EVENTS_PATH",
    "CES_EVENT_DETAIL_PATH",
    "IAM_TOKENS_PATH",
    "ORDERS_CACHE",
    "SESSIONS_CACHE",
    "CloudEyeEvent",
    "EmitCloudEyeEvent",
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
    "ces_error_body",
    "default_demo_scenario",
    "error_body",
    "install_instances",
    "run_scenario",
]
