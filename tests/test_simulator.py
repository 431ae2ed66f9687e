"""The DCS simulator over real HTTP on 127.0.0.1, requests signed with notifier.dcs.signer."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from notifier.dcs.models import TaskList, format_api_time
from notifier.dcs.signer import canonical_query, sign
from notifier.devtools.simulator import (
    CATALOG_CACHE,
    ORDERS_CACHE,
    SESSIONS_CACHE,
    Fault,
    FinishTask,
    InstanceSpec,
    ManualClock,
    Scenario,
    SetStatus,
    Simulator,
    SkewedClock,
    StartTask,
    Step,
    default_demo_scenario,
    run_scenario,
)
from notifier.devtools.simulator.scenario import AZ_FLEET
from tests.support.signed import Answer
from tests.support.signed import call as signed_call

AK = "SIMTESTAK0000000001"
SK = "sim-test-secret-key-0123456789"
PROJECT = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
IID = "5560df16-cebf-4473-95c4-d1b573c16e79"
OTHER = "6670ef27-dfc0-4584-a6e2-e2c684d27f8a"
T0 = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def sim(clock: ManualClock) -> AsyncIterator[Simulator]:
    async with Simulator(project_id=PROJECT, credentials={AK: SK}, clock=clock) as simulator:
        simulator.add_instance(IID, "orders-cache")
        simulator.add_instance(OTHER, "sessions-cache", capacity_gb=2, port=6380)
        yield simulator


async def call(
    session: aiohttp.ClientSession,
    sim: Simulator,
    path: str,
    params: Sequence[tuple[str, str]] = (),
    *,
    ak: str = AK,
    sk: str = SK,
    project_header: str = PROJECT,
    now: datetime | None = None,
    within: float = 5.0,
) -> Answer:
    return await signed_call(
        session, sim, path, params, ak=ak, sk=sk, project_header=project_header, now=now, within=within
    )


def tasks_path(instance_id: str = IID, project_id: str = PROJECT) -> str:
    return f"/v2/{project_id}/instances/{instance_id}/tasks"


def error(code: str, message: str) -> dict[str, Any]:
    return {"error_code": code, "error_msg": message, "error_ext_msg": None}


# --- List Background Tasks -----------------------------------------------------------------------------


async def test_paging_several_pages(
    sim: Simulator, clock: ManualClock, session: aiohttp.ClientSession
) -> None:
    ids = []
    for n in range(25):
        ids.append(sim.start_task(IID, "modify", created_at=T0 + timedelta(minutes=n)))
    newest_first = list(reversed(ids))
    seen: list[str] = []
    for offset in (0, 10, 20, 30):
        answer = await call(session, sim, tasks_path(), [("offset", str(offset)), ("limit", "10")])
        assert answer.status == 200
        body = answer.json
        assert body["task_count"] == 25
        assert len(body["tasks"]) == {0: 10, 10: 10, 20: 5, 30: 0}[offset]
        seen += [t["id"] for t in body["tasks"]]
    assert seen == newest_first
    recorded = [(r.query["offset"], r.query["limit"], r.status) for r in sim.task_requests(IID)]
    assert recorded == [("0", "10", 200), ("10", "10", 200), ("20", "10", 200), ("30", "10", 200)]
    assert sim.task_requests(OTHER) == []


async def test_default_paging(sim: Simulator, session: aiohttp.ClientSession) -> None:
    for n in range(12):
        sim.start_task(IID, "modify", created_at=T0 + timedelta(seconds=n))
    body = (await call(session, sim, tasks_path())).json
    assert body["task_count"] == 12
    assert len(body["tasks"]) == 10


async def test_task_shapes(sim: Simulator, clock: ManualClock, session: aiohttp.ClientSession) -> None:
    details = {"old_capacity": "0.125", "new_capacity": "0.25", "old_replica_num": 1, "new_replica_num": 1}
    extend = sim.start_task(IID, "EXTEND", details=details, user_name="dcs_000_02")
    clock.advance(3.5)
    swap = sim.start_task(IID, "masterStandbySwapJob", status="EXECUTING")
    clock.advance(1.25)
    sim.finish_task(IID, extend)
    body = (await call(session, sim, tasks_path())).json
    assert body == {
        "task_count": 2,
        "tasks": [
            {
                "id": swap,
                "name": "masterStandbySwapJob",
                "user_name": "dcs_ops",
                "user_id": "d53977d1adfb49c5b025ba7d33a13fd7",
                "enable_show": False,
                "status": "EXECUTING",
                "created_at": "2024-06-01T12:00:03.500Z",
                "updated_at": "",
            },
            {
                "id": extend,
                "name": "EXTEND",
                "user_name": "dcs_000_02",
                "user_id": "d53977d1adfb49c5b025ba7d33a13fd7",
                "details": details,
                "enable_show": False,
                "status": "SUCCESS",
                "created_at": "2024-06-01T12:00:00.000Z",
                "updated_at": "2024-06-01T12:00:04.750Z",
            },
        ],
    }
    parsed = TaskList.model_validate(body)
    assert parsed.tasks[0].updated_at is None
    assert parsed.tasks[1].duration_seconds == 4.75
    assert len(extend) == 32
    assert extend != swap


async def test_status_changes_and_failed(
    sim: Simulator, clock: ManualClock, session: aiohttp.ClientSession
) -> None:
    tid = sim.start_task(IID, "UpdatePort", details={"old_port": 6379, "new_port": 6380}, status="CREATED")
    clock.advance(1)
    sim.set_status(IID, tid, "EXECUTING")
    assert sim.get_task(IID, tid)["status"] == "EXECUTING"
    assert sim.get_task(IID, tid)["updated_at"] == ""
    clock.advance(1)
    sim.finish_task(IID, tid, "FAILED")
    task = (await call(session, sim, tasks_path())).json["tasks"][0]
    assert (task["status"], task["updated_at"]) == ("FAILED", "2024-06-01T12:00:02.000Z")


async def test_task_count_as_string_and_absent_updated_at(session: aiohttp.ClientSession) -> None:
    options = {"task_count_as_string": True, "omit_unfinished_updated_at": True}
    async with Simulator(project_id=PROJECT, credentials={AK: SK}, **options) as sim:  # type: ignore[arg-type]
        sim.add_instance(IID, "x")
        sim.start_task(IID, "BindEip", details={"enable_public_ip": True, "public_ip_address": "203.0.113.9"})
        body = (await call(session, sim, tasks_path())).json
    assert body["task_count"] == "1"
    assert "updated_at" not in body["tasks"][0]
    assert body["tasks"][0]["details"] == {"enable_public_ip": True, "public_ip_address": "203.0.113.9"}


async def test_raw_task_served_verbatim_and_ordered(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.start_task(IID, "modify", created_at=T0)
    raw = {
        "id": "raw-1",
        "name": "SomethingNew",
        "status": "WAITING",
        "created_at": "2024-06-01T13:00:00.000Z",
        "job_id": "j-1",
        "error_code": None,
        "details": {"brand_new_field": [1, 2]},
    }
    sim.add_raw_task(IID, raw)
    tasks = (await call(session, sim, tasks_path())).json["tasks"]
    assert tasks[0] == raw
    assert tasks[1]["name"] == "modify"


async def test_time_filters(sim: Simulator, session: aiohttp.ClientSession) -> None:
    early = sim.start_task(IID, "modify", created_at=T0)
    mid = sim.start_task(IID, "modify", created_at=T0 + timedelta(hours=1, milliseconds=999))
    late = sim.start_task(IID, "modify", created_at=T0 + timedelta(hours=2))

    async def ids(*params: tuple[str, str]) -> list[str]:
        answer = await call(session, sim, tasks_path(), [("offset", "0"), ("limit", "100"), *params])
        assert answer.status == 200, answer.text
        body = answer.json
        assert body["task_count"] == len(body["tasks"])
        return [t["id"] for t in body["tasks"]]

    assert await ids() == [late, mid, early]
    assert await ids(("start_time", "20240601130000")) == [late, mid]
    assert await ids(("start_time", "20240601130001")) == [late]
    assert await ids(("end_time", "20240601130000")) == [mid, early]  # end is inclusive to the second
    assert await ids(("end_time", "20240601125959")) == [early]
    assert await ids(("begin_time", "20240601130000")) == [late, mid]
    assert await ids(("begin_time", "20240601130000"), ("end_time", "20240601135959")) == [mid]
    assert await ids(("start_time", "20240601140000"), ("begin_time", "20240601000000")) == [late]
    assert await ids(("start_time", "20240601140001"), ("end_time", "20240601120000")) == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("offset", "-1")], "Invalid offset: must be between 0 and 2147483647."),
        ([("offset", "one")], "Invalid offset: 'one' is not an integer."),
        ([("limit", "0")], "Invalid limit: must be between 1 and 1000."),
        ([("limit", "1001")], "Invalid limit: must be between 1 and 1000."),
        ([("start_time", "2024-06-01")], "Invalid start_time: expected yyyyMMddHHmmss."),
        ([("end_time", "20241301000000")], "Invalid end_time: expected yyyyMMddHHmmss."),
        ([("begin_time", "2024060112000")], "Invalid begin_time: expected yyyyMMddHHmmss."),
    ],
)
async def test_bad_parameters_are_400(
    sim: Simulator, session: aiohttp.ClientSession, params: list[tuple[str, str]], message: str
) -> None:
    answer = await call(session, sim, tasks_path(), params)
    assert answer.status == 400
    assert answer.json == error("DCS.4800", message)
    assert len(answer.headers["X-Request-Id"]) == 32


# --- authentication and errors -------------------------------------------------------------------------


async def test_wrong_sk_is_401_huawei_style(sim: Simulator, session: aiohttp.ClientSession) -> None:
    answer = await call(session, sim, tasks_path(), sk="not-the-secret")
    assert answer.status == 401
    assert answer.json == error("DCS.1001", "Invalid authentication information: signature mismatch.")
    assert answer.headers["Content-Type"].startswith("application/json")
    assert len(answer.headers["X-Request-Id"]) == 32


async def test_unknown_ak_missing_auth_expired(sim: Simulator, session: aiohttp.ClientSession) -> None:
    unknown = await call(session, sim, tasks_path(), ak="NOBODY")
    assert (unknown.status, unknown.json["error_code"]) == (401, "DCS.1001")
    assert unknown.json["error_msg"] == "Invalid authentication information: unknown access key."

    assert sim.base_url is not None
    async with session.get(f"{sim.base_url}{tasks_path()}") as resp:
        assert resp.status == 401
        assert await resp.json() == error("DCS.1003", "Authentication information is missing.")

    stale = await call(session, sim, tasks_path(), now=datetime.now(UTC) - timedelta(minutes=20))
    assert (stale.status, stale.json["error_code"]) == (401, "DCS.1002")
    assert [r.status for r in sim.task_requests(IID)] == [401, 401, 401]


async def test_project_mismatch(sim: Simulator, session: aiohttp.ClientSession) -> None:
    expected = error("DCS.1004", "The project ID does not match the token.")
    wrong_path = await call(
        session, sim, tasks_path(project_id="other-project"), project_header="other-project"
    )
    assert (wrong_path.status, wrong_path.json) == (401, expected)
    wrong_header = await call(session, sim, tasks_path(), project_header="other-project")
    assert (wrong_header.status, wrong_header.json) == (401, expected)


async def test_unknown_instance_and_unknown_url(sim: Simulator, session: aiohttp.ClientSession) -> None:
    answer = await call(session, sim, tasks_path("no-such-instance"))
    assert answer.status == 404
    assert answer.json == error("DCS.3022", "instance does not exist")
    unknown = await call(session, sim, f"/v2/{PROJECT}/nothing-here")
    assert unknown.status == 404
    assert unknown.json["error_code"] == "DCS.4001"
    assert "X-Request-Id" in unknown.headers


async def test_every_response_has_a_distinct_request_id(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    first = await call(session, sim, tasks_path())
    second = await call(session, sim, tasks_path())
    assert first.headers["X-Request-Id"] != second.headers["X-Request-Id"]


def test_repr_hides_secret() -> None:
    simulator = Simulator(project_id=PROJECT, credentials={AK: SK})
    assert SK not in repr(simulator)
    assert PROJECT in repr(simulator)


# --- List Instances ------------------------------------------------------------------------------------


async def test_list_instances(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.add_instance("third", "catalog-cache", status="EXTENDING")
    answer = await call(session, sim, f"/v2/{PROJECT}/instances", [("offset", "0"), ("limit", "2")])
    assert answer.status == 200
    body = answer.json
    assert body["instance_num"] == 3
    assert body["instances"][0] == {
        "instance_id": IID,
        "name": "orders-cache",
        "status": "RUNNING",
        "engine": "Redis",
        "engine_version": "6.0",
        "spec_code": "redis.ha.xu1.tiny.r2.128",
        "capacity": 0,
        "capacity_minor": "0.125",
        "max_memory": 128,
        "ip": "192.168.0.10",
        "port": 6379,
        "az_codes": ["az1"],
        "maintain_begin": "18:00:00",
        "maintain_end": "19:00:00",
    }
    assert (body["instances"][1]["capacity"], body["instances"][1]["capacity_minor"]) == (2, "")
    page2 = (await call(session, sim, f"/v2/{PROJECT}/instances", [("offset", "2"), ("limit", "2")])).json
    assert [i["name"] for i in page2["instances"]] == ["catalog-cache"]
    only = (await call(session, sim, f"/v2/{PROJECT}/instances", [("status", "EXTENDING")])).json
    assert (only["instance_num"], only["instances"][0]["instance_id"]) == (1, "third")
    bad = await call(session, sim, f"/v2/{PROJECT}/instances", [("limit", "0")])
    assert (bad.status, bad.json["error_code"]) == (400, "DCS.4800")


# --- fault injection -----------------------------------------------------------------------------------


async def test_throttling_then_recovery(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.start_task(IID, "modify")
    sim.inject(Fault.throttled(retry_after=7), times=2)
    for _ in range(2):
        answer = await call(session, sim, tasks_path())
        assert answer.status == 429
        assert answer.headers["Retry-After"] == "7"
        assert answer.json == error("APIG.0308", "The throttling threshold has been reached.")
        assert "X-Request-Id" in answer.headers
    answer = await call(session, sim, tasks_path())
    assert (answer.status, answer.json["task_count"]) == (200, 1)
    assert sim.faults == []


async def test_instance_scoped_faults_in_order(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.inject(Fault.server_error(), instance_id=IID)
    sim.inject(Fault.malformed_json(), instance_id=IID)
    sim.inject(Fault.error(403, "DCS.2003", "Forbidden.", {"X-Extra": "1"}), instance_id=IID)
    other = await call(session, sim, tasks_path(OTHER))
    assert other.status == 200
    first = await call(session, sim, tasks_path())
    assert (first.status, first.json) == (500, error("DCS.5000", "Internal service error."))
    second = await call(session, sim, tasks_path())
    assert second.status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(second.text)
    third = await call(session, sim, tasks_path())
    assert (third.status, third.json["error_code"], third.headers["X-Extra"]) == (403, "DCS.2003", "1")
    assert (await call(session, sim, tasks_path())).status == 200


async def test_fault_precedes_authentication(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.inject(Fault.busy())
    answer = await call(session, sim, tasks_path(), sk="wrong")
    assert (answer.status, answer.json["error_code"]) == (400, "DCS.4026")


async def test_slow_response_triggers_client_timeout(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.inject(Fault.slow(30), instance_id=IID)
    with pytest.raises(TimeoutError):
        await call(session, sim, tasks_path(), within=0.2)
    assert (await call(session, sim, tasks_path())).status == 200  # the fault was used up


async def test_slow_response_then_normal_answer(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.inject(Fault.slow(0.05))
    answer = await call(session, sim, tasks_path())
    assert (answer.status, answer.json["task_count"]) == (200, 0)


async def test_inject_validates_times(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="times"):
        sim.inject(Fault.busy(), times=0)


# --- scenarios -----------------------------------------------------------------------------------------


async def test_demo_scenario_with_injected_clock(clock: ManualClock) -> None:
    async with Simulator(project_id=PROJECT, credentials={AK: SK}, clock=clock) as sim:
        slept: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            slept.append(seconds)
            clock.advance(seconds)

        scenario = default_demo_scenario()
        keys = await run_scenario(sim, scenario, sleep=fake_sleep)

    assert sum(slept) == scenario.duration == 24
    assert 20 <= scenario.duration <= 30
    zone = {name for _, name in AZ_FLEET}  # the burst's 8 switchovers (one grouped card)
    assert {i.name for i in sim.instances.values()} == {
        "orders-cache",
        "sessions-cache",
        "catalog-cache",
    } | zone

    def task(key: str) -> dict[str, Any]:
        return sim.get_task(*keys[key])

    def at(seconds: float) -> str:
        return format_api_time(T0 + timedelta(seconds=seconds))

    swap = task("swap")
    assert keys["swap"][0] == ORDERS_CACHE
    assert (swap["name"], swap["status"], swap["created_at"], swap["updated_at"]) == (
        "masterStandbySwapJob",
        "SUCCESS",
        at(1),
        at(6),
    )
    assert "details" not in swap
    extend = task("extend")
    assert keys["extend"][0] == SESSIONS_CACHE
    assert extend["details"]["old_capacity"] == "0.125"
    assert extend["details"]["new_capacity"] == "0.25"
    assert extend["details"]["new_resource_spec_code"] == "redis.ha.xu1.tiny.r2.256"
    assert (extend["status"], extend["created_at"], extend["updated_at"]) == ("SUCCESS", at(3), at(18))
    assert task("whitelist")["details"] == {"group_name": "app-servers"}
    eip = task("eip")
    assert keys["eip"][0] == CATALOG_CACHE
    assert (eip["details"]["enable_public_ip"], eip["details"]["public_ip_address"]) == (True, "203.0.113.10")
    port = task("port")
    assert (port["status"], port["details"], port["updated_at"]) == (
        "FAILED",
        {"old_port": 6379, "new_port": 6380},
        at(24),
    )


async def test_scenario_played_in_real_time_seen_over_http(session: aiohttp.ClientSession) -> None:
    scenario = Scenario(
        instances=[InstanceSpec(IID, "orders-cache")],
        steps=[
            Step(
                0, StartTask("a", IID, "EXTEND", {"old_capacity": "1", "new_capacity": "2"}, status="CREATED")
            ),
            Step(0.5, SetStatus("a", "EXECUTING")),
            Step(1.0, FinishTask("a")),
            Step(1.0, StartTask("b", IID, "AddReplica", {"replica_az": "az2"})),
            Step(1.5, FinishTask("b", "FAILED")),
        ],
    )
    async with Simulator(project_id=PROJECT, credentials={AK: SK}) as sim:
        played = sim.play(scenario, speed=20)  # the whole scenario takes 75 ms

        def statuses() -> list[str]:
            return [t["status"] for t in sim.list_tasks(IID)] if IID in sim.instances else []

        await sim.wait_for(lambda: statuses() == ["FAILED", "SUCCESS"], within=5)
        keys = await asyncio.wait_for(played, 5)
        body = (await call(session, sim, tasks_path())).json
    assert [(t["id"], t["name"], t["status"]) for t in body["tasks"]] == [
        (keys["b"][1], "AddReplica", "FAILED"),
        (keys["a"][1], "EXTEND", "SUCCESS"),
    ]
    assert all(t["updated_at"] for t in body["tasks"])


async def test_repeating_scenario_is_cancelled_by_stop(clock: ManualClock) -> None:
    sim = Simulator(project_id=PROJECT, credentials={AK: SK}, clock=clock)
    await sim.start()
    gate = asyncio.Event()

    async def gated_sleep(seconds: float) -> None:
        clock.advance(seconds)
        if len(sim.list_tasks(ORDERS_CACHE)) >= 10:
            await gate.wait()  # parks the loop until stop() cancels it

    played = sim.play(default_demo_scenario(), sleep=gated_sleep, repeat=True)
    await sim.wait_for(lambda: ORDERS_CACHE in sim.instances and len(sim.list_tasks(ORDERS_CACHE)) >= 10)
    await sim.stop()
    assert played.cancelled()


async def test_wait_for_times_out(sim: Simulator) -> None:
    with pytest.raises(TimeoutError, match=r"within 0\.05 s"):
        await sim.wait_for(lambda: False, within=0.05)


# --- standalone ----------------------------------------------------------------------------------------


async def test_standalone_module_serves_demo(session: aiohttp.ClientSession) -> None:
    env = {**os.environ, "CLOUD_SDK_AK": AK, "CLOUD_SDK_SK": SK}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "notifier.devtools.simulator",
        "--port",
        "0",
        "--project-id",
        PROJECT,
        "--speed",
        "100",
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert line.startswith("DCS simulator on http://127.0.0.1:")
        base = line.split()[3]
        probe = Simulator(project_id=PROJECT, credentials={})
        probe.base_url = base
        answer = await call(session, probe, f"/v2/{PROJECT}/instances")
        assert answer.status == 200
        assert answer.json["instance_num"] == 3 + len(AZ_FLEET)  # (the first page holds 10)
        assert {"orders-cache", "sessions-cache", "catalog-cache"} <= {
            i["name"] for i in answer.json["instances"]
        }
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_standalone_module_requires_keys() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CLOUD_SDK_AK", "CLOUD_SDK_SK")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier.devtools.simulator", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert b"CLOUD_SDK_AK" in err


# --- projects, instances per project -------------------------------------------------------------------

PROJECT_B = "1b2c3d4e5f60718293a4b5c6d7e8f9a0"
AK_B = "SIMTESTAK0000000002"
SK_B = "sim-test-secret-key-project-b-987"
IID_B = "7780f038-e0d1-4695-b7f3-f3d795e38a9b"


def url_for(sim: Simulator, path: str, params: Sequence[tuple[str, str]] = ()) -> str:
    assert sim.base_url is not None
    query = canonical_query(params)
    return f"{sim.base_url}{path}" + (f"?{query}" if query else "")


def plain_headers(sim: Simulator, project: str = PROJECT) -> dict[str, str]:
    assert sim.base_url is not None
    return {
        "Content-Type": "application/json",
        "X-Project-Id": project,
        "Host": urlsplit(sim.base_url).netloc,
        "User-Agent": "dcs-notifier-tests",
    }


async def fetch(session: aiohttp.ClientSession, url: str, headers: Mapping[str, str]) -> Answer:
    async with session.get(URL(url, encoded=True), headers=dict(headers)) as resp:
        return Answer(resp.status, CIMultiDict(resp.headers), await resp.text())


async def test_projects_have_their_own_access_keys(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.add_project(PROJECT_B, {AK_B: SK_B})
    sim.add_instance(IID_B, "b-cache", project_id=PROJECT_B)
    assert sim.project_ids == [PROJECT, PROJECT_B]
    mismatch = error("DCS.1004", "The project ID does not match the token.")

    own_b = await call(session, sim, tasks_path(IID_B, PROJECT_B), ak=AK_B, sk=SK_B, project_header=PROJECT_B)
    assert (own_b.status, own_b.json["task_count"]) == (200, 0)
    own_a = await call(session, sim, tasks_path())
    assert own_a.status == 200

    a_on_b = await call(session, sim, tasks_path(IID_B, PROJECT_B), project_header=PROJECT_B)
    assert (a_on_b.status, a_on_b.json) == (401, mismatch)
    b_on_a = await call(session, sim, tasks_path(), ak=AK_B, sk=SK_B)
    assert (b_on_a.status, b_on_a.json) == (401, mismatch)
    b_on_a_listing = await call(session, sim, f"/v2/{PROJECT}/instances", ak=AK_B, sk=SK_B)
    assert (b_on_a_listing.status, b_on_a_listing.json) == (401, mismatch)

    # an instance is only found under its own project
    b_instance_under_a = await call(session, sim, tasks_path(IID_B, PROJECT))
    assert (b_instance_under_a.status, b_instance_under_a.json) == (
        404,
        error("DCS.3022", "instance does not exist"),
    )
    listing_a = (await call(session, sim, f"/v2/{PROJECT}/instances")).json
    assert [i["instance_id"] for i in listing_a["instances"]] == [IID, OTHER]
    listing_b = await call(
        session, sim, f"/v2/{PROJECT_B}/instances", ak=AK_B, sk=SK_B, project_header=PROJECT_B
    )
    assert (listing_b.json["instance_num"], listing_b.json["instances"][0]["instance_id"]) == (1, IID_B)
    assert sim.instances[IID_B].project_id == PROJECT_B
    assert sim.instances[IID].project_id == PROJECT


async def test_one_access_key_in_two_projects_revoke_and_set_credentials(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    sim.add_project(PROJECT_B, {AK: SK})  # the same user's key, valid in both projects
    sim.add_instance(IID_B, "b-cache", project_id=PROJECT_B)
    assert (await call(session, sim, tasks_path(IID_B, PROJECT_B), project_header=PROJECT_B)).status == 200
    assert (await call(session, sim, tasks_path())).status == 200
    with pytest.raises(ValueError, match=AK) as conflict:
        sim.add_project(PROJECT_B, {AK: "a-different-secret"})
    assert "a-different-secret" not in str(conflict.value) and SK not in str(conflict.value)

    sim.revoke(AK)
    unknown = error("DCS.1001", "Invalid authentication information: unknown access key.")
    for path, project in ((tasks_path(), PROJECT), (tasks_path(IID_B, PROJECT_B), PROJECT_B)):
        answer = await call(session, sim, path, project_header=project)
        assert (answer.status, answer.json) == (401, unknown)
    assert sim.lookup_sk(AK) is None

    sim.add_project(PROJECT_B, {AK: SK})  # re-added to project B only
    assert (await call(session, sim, tasks_path(IID_B, PROJECT_B), project_header=PROJECT_B)).status == 200
    assert (await call(session, sim, tasks_path())).json["error_code"] == "DCS.1004"

    sim.set_credentials({AK_B: SK_B})  # replaces the primary project's keys
    assert (await call(session, sim, tasks_path(), ak=AK_B, sk=SK_B)).status == 200
    assert (await call(session, sim, tasks_path())).json["error_code"] == "DCS.1004"


async def test_instance_tags_and_changes_in_listing(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.add_instance("tagged", "catalog-cache", tags={"env": "prod", "team": "payments"}, status="CREATING")
    body = (await call(session, sim, f"/v2/{PROJECT}/instances", [("limit", "100")])).json
    by_id = {i["instance_id"]: i for i in body["instances"]}
    assert by_id["tagged"]["tags"] == [{"key": "env", "value": "prod"}, {"key": "team", "value": "payments"}]
    assert by_id["tagged"]["status"] == "CREATING"
    assert "tags" not in by_id[IID]

    sim.set_instance("tagged", status="RUNNING", name="catalog-cache-2", tags={"env": "staging"})
    body = (await call(session, sim, f"/v2/{PROJECT}/instances", [("status", "RUNNING")])).json
    changed = {i["instance_id"]: i for i in body["instances"]}["tagged"]
    assert (changed["name"], changed["status"], changed["tags"]) == (
        "catalog-cache-2",
        "RUNNING",
        [{"key": "env", "value": "staging"}],
    )
    sim.set_instance("tagged", project_id=PROJECT_B)  # moved to another project
    body = (await call(session, sim, f"/v2/{PROJECT}/instances")).json
    assert "tagged" not in {i["instance_id"] for i in body["instances"]}
    with pytest.raises(KeyError):
        sim.set_instance("nope", status="ERROR")
    with pytest.raises(TypeError, match="colour"):
        sim.set_instance(IID, colour="blue")


async def test_remove_instance(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.start_task(IID, "modify")
    assert (await call(session, sim, tasks_path())).json["task_count"] == 1
    sim.remove_instance(IID)
    body = (await call(session, sim, f"/v2/{PROJECT}/instances")).json
    assert [i["instance_id"] for i in body["instances"]] == [OTHER]
    gone = await call(session, sim, tasks_path())
    assert (gone.status, gone.json) == (404, error("DCS.3022", "instance does not exist"))
    with pytest.raises(KeyError):
        sim.start_task(IID, "modify")
    with pytest.raises(KeyError):
        sim.remove_instance(IID)
    sim.add_instance(IID, "orders-cache")  # back, without its old tasks
    assert (await call(session, sim, tasks_path())).json == {"task_count": 0, "tasks": []}


# --- temporary credentials -----------------------------------------------------------------------------

TEMP_AK = "SIMTEMPAK0000000001"
TEMP_SK = "sim-temporary-secret-key-000000001"
SECURITY_TOKEN = "gQpzdHM-security-token-0123456789abcdef"


async def temporary_call(
    session: aiohttp.ClientSession,
    sim: Simulator,
    *,
    token: str | None = SECURITY_TOKEN,
    signed: bool = True,
    project: str = PROJECT,
    path: str | None = None,
) -> Answer:
    url = url_for(sim, path or tasks_path(project_id=project))
    headers = plain_headers(sim, project)
    if token is not None and signed:
        headers["X-Security-Token"] = token
    out = sign("GET", url, headers, ak=TEMP_AK, sk=TEMP_SK)
    if token is not None and not signed:
        out["X-Security-Token"] = token  # sent, but not among SignedHeaders
    return await fetch(session, url, out)


async def test_temporary_credentials_with_signed_token(
    sim: Simulator, clock: ManualClock, session: aiohttp.ClientSession
) -> None:
    sim.add_temporary_credentials(TEMP_AK, TEMP_SK, SECURITY_TOKEN, expires_at=T0 + timedelta(hours=1))
    answer = await temporary_call(session, sim)
    assert (answer.status, answer.json["task_count"]) == (200, 0)
    assert "x-security-token" in sim.requests[-1].headers["Authorization"]
    listing = await temporary_call(session, sim, path=f"/v2/{PROJECT}/instances")
    assert listing.status == 200
    sim.add_project(PROJECT_B)
    other = await temporary_call(session, sim, project=PROJECT_B)
    assert (other.status, other.json["error_code"]) == (401, "DCS.1004")


@pytest.mark.parametrize(
    ("token", "signed"),
    [(None, True), ("not-the-token", True), (SECURITY_TOKEN, False), ("", True)],
    ids=["missing", "wrong", "unsigned", "empty"],
)
async def test_temporary_credentials_need_the_signed_token(
    sim: Simulator, session: aiohttp.ClientSession, token: str | None, signed: bool
) -> None:
    sim.add_temporary_credentials(TEMP_AK, TEMP_SK, SECURITY_TOKEN)
    answer = await temporary_call(session, sim, token=token, signed=signed)
    assert answer.status == 401
    assert answer.json == error(
        "DCS.1001", "Invalid authentication information: the security token is invalid."
    )
    assert SECURITY_TOKEN not in answer.text


async def test_temporary_credentials_expire_by_the_simulator_clock(
    sim: Simulator, clock: ManualClock, session: aiohttp.ClientSession
) -> None:
    sim.add_project(PROJECT_B)
    sim.add_instance(IID_B, "b-cache", project_id=PROJECT_B)
    sim.add_temporary_credentials(
        TEMP_AK, TEMP_SK, SECURITY_TOKEN, project_ids=[PROJECT_B], expires_at=T0 + timedelta(minutes=15)
    )
    path = tasks_path(IID_B, PROJECT_B)
    assert (await temporary_call(session, sim, project=PROJECT_B, path=path)).status == 200
    clock.advance(15 * 60)
    expired = await temporary_call(session, sim, project=PROJECT_B, path=path)
    assert (expired.status, expired.json) == (401, error("DCS.1002", "The token has expired."))
    sim.revoke(TEMP_AK)
    revoked = await temporary_call(session, sim, project=PROJECT_B, path=path)
    assert (revoked.status, revoked.json["error_msg"]) == (
        401,
        "Invalid authentication information: unknown access key.",
    )


def test_temporary_and_permanent_keys_do_not_mix() -> None:
    simulator = Simulator(project_id=PROJECT, credentials={AK: SK})
    with pytest.raises(ValueError, match="permanent"):
        simulator.add_temporary_credentials(AK, SK, SECURITY_TOKEN)
    simulator.add_temporary_credentials(TEMP_AK, TEMP_SK, SECURITY_TOKEN)
    with pytest.raises(ValueError, match="temporary"):
        simulator.add_project(PROJECT_B, {TEMP_AK: TEMP_SK})
    creds = simulator.temporary_credentials(TEMP_AK)
    assert creds is not None and creds.project_ids == {PROJECT}
    for text in (repr(simulator), repr(creds)):
        assert TEMP_SK not in text and SECURITY_TOKEN not in text and SK not in text


# --- IAM tokens ----------------------------------------------------------------------------------------

DOMAIN = "acme-cloud"
IAM_USER = "dcs-notifier"
IAM_PASSWORD = "iam-Passw0rd-never-logged"


def password_body(
    *, user: str = IAM_USER, password: str = IAM_PASSWORD, domain: str = DOMAIN, project: str = PROJECT
) -> dict[str, Any]:
    return {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": user, "password": password, "domain": {"name": domain}}},
            },
            "scope": {"project": {"id": project}},
        }
    }


async def post_token(
    session: aiohttp.ClientSession, sim: Simulator, body: Any, *, nocatalog: bool = True
) -> Answer:
    url = url_for(sim, "/v3/auth/tokens", [("nocatalog", "true")] if nocatalog else [])
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json;charset=utf8"}
    async with session.post(URL(url, encoded=True), data=data, headers=headers) as resp:
        return Answer(resp.status, CIMultiDict(resp.headers), await resp.text())


async def token_call(
    session: aiohttp.ClientSession, sim: Simulator, token: str, path: str, project: str
) -> Answer:
    return await fetch(session, url_for(sim, path), {**plain_headers(sim, project), "X-Auth-Token": token})


async def test_iam_token_issued(sim: Simulator, clock: ManualClock, session: aiohttp.ClientSession) -> None:
    sim.add_iam_user(DOMAIN, IAM_USER, IAM_PASSWORD)
    clock.advance(0.25)
    answer = await post_token(session, sim, password_body())
    assert answer.status == 201
    token = answer.headers["X-Subject-Token"]
    assert len(token) >= 32 and IAM_PASSWORD not in token
    assert answer.json == {
        "token": {
            "expires_at": "2024-06-02T12:00:00.250000Z",
            "issued_at": "2024-06-01T12:00:00.250000Z",
            "methods": ["password"],
            "project": {"id": PROJECT, "name": PROJECT},
            "user": {"name": IAM_USER, "domain": {"name": DOMAIN}},
        }
    }
    sim.iam_token_ttl = timedelta(hours=1)
    second = await post_token(session, sim, password_body(), nocatalog=False)
    assert second.json["token"]["expires_at"] == "2024-06-01T13:00:00.250000Z"
    assert second.json["token"]["catalog"] == []
    assert second.headers["X-Subject-Token"] != token
    assert [(r.method, r.status, r.query.get("nocatalog")) for r in sim.iam_requests] == [
        ("POST", 201, "true"),
        ("POST", 201, None),
    ]
    assert all(IAM_PASSWORD not in repr(r) and IAM_PASSWORD not in str(r.headers) for r in sim.requests)
    assert token not in repr(sim)


async def test_iam_rejects_bad_credentials_and_bodies(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.add_iam_user(DOMAIN, IAM_USER, IAM_PASSWORD, project_ids=[PROJECT])
    wrong = {"error": {"code": 401, "message": "The username or password is wrong.", "title": "Unauthorized"}}
    for body in (
        password_body(password="guess"),
        password_body(user="someone-else"),
        password_body(domain="other-domain"),
    ):
        answer = await post_token(session, sim, body)
        assert (answer.status, answer.json) == (401, wrong)
        assert "X-Subject-Token" not in answer.headers
    forbidden = await post_token(session, sim, password_body(project=PROJECT_B))
    assert (forbidden.status, forbidden.json["error"]["code"], forbidden.json["error"]["title"]) == (
        403,
        403,
        "Forbidden",
    )
    no_scope = password_body()
    del no_scope["auth"]["scope"]
    token_method = password_body()
    token_method["auth"]["identity"]["methods"] = ["token"]
    for bad in (b"{not json", b"[]", no_scope, token_method):
        answer = await post_token(session, sim, bad)
        assert (answer.status, answer.json["error"]["code"]) == (400, 400)
    assert all(IAM_PASSWORD not in a for a in (repr(sim), repr(sim.requests)))


async def test_iam_token_authenticates_dcs_requests(
    sim: Simulator, clock: ManualClock, session: aiohttp.ClientSession
) -> None:
    sim.add_project(PROJECT_B)
    sim.add_instance(IID_B, "b-cache", project_id=PROJECT_B)
    sim.add_iam_user(DOMAIN, IAM_USER, IAM_PASSWORD, project_ids=[PROJECT, PROJECT_B])
    token = (await post_token(session, sim, password_body())).headers["X-Subject-Token"]
    sim.start_task(IID, "modify")

    ok = await token_call(session, sim, token, tasks_path(), PROJECT)
    assert (ok.status, ok.json["task_count"]) == (200, 1)
    listing = await token_call(session, sim, token, f"/v2/{PROJECT}/instances", PROJECT)
    assert (listing.status, listing.json["instance_num"]) == (200, 2)

    other = await token_call(session, sim, token, tasks_path(IID_B, PROJECT_B), PROJECT_B)
    assert (other.status, other.json) == (401, error("DCS.1004", "The project ID does not match the token."))
    token_b = (await post_token(session, sim, password_body(project=PROJECT_B))).headers["X-Subject-Token"]
    assert (await token_call(session, sim, token_b, tasks_path(IID_B, PROJECT_B), PROJECT_B)).status == 200

    unknown = await token_call(session, sim, "MIIforged", tasks_path(), PROJECT)
    assert (unknown.status, unknown.json) == (
        401,
        error("DCS.1001", "Invalid authentication information: the token is invalid."),
    )

    clock.advance(24 * 3600 - 1)
    assert (await token_call(session, sim, token, tasks_path(), PROJECT)).status == 200
    clock.advance(1)
    expired = await token_call(session, sim, token, tasks_path(), PROJECT)
    assert (expired.status, expired.json) == (401, error("DCS.1002", "The token has expired."))
    assert token not in expired.text

    fresh = (await post_token(session, sim, password_body())).headers["X-Subject-Token"]
    assert (await token_call(session, sim, fresh, tasks_path(), PROJECT)).status == 200
    sim.revoke_iam_tokens()
    revoked = await token_call(session, sim, fresh, tasks_path(), PROJECT)
    assert (revoked.status, revoked.json["error_code"]) == (401, "DCS.1001")
    assert len([r for r in sim.iam_requests if r.status == 201]) == 3
    assert all(fresh not in repr(r) and token not in repr(r) for r in sim.requests)


async def test_iam_is_neither_throttled_nor_faulted(sim: Simulator, session: aiohttp.ClientSession) -> None:
    sim.add_iam_user(DOMAIN, IAM_USER, IAM_PASSWORD)
    sim.rate_limit, sim.rate_burst = 0.001, 1
    assert (await call(session, sim, tasks_path())).status == 200
    assert (await call(session, sim, tasks_path())).status == 429
    sim.inject(Fault.server_error())
    for _ in range(3):
        assert (await post_token(session, sim, password_body())).status == 201
    assert len(sim.faults) == 1  # still pending: IAM did not use it


# --- API gateway rate limit ----------------------------------------------------------------------------


async def test_rate_limit_burst_then_refill(session: aiohttp.ClientSession) -> None:
    async with Simulator(project_id=PROJECT, credentials={AK: SK}, rate_limit=2, rate_burst=10) as sim:
        sim.add_instance(IID, "orders-cache")
        url = url_for(sim, tasks_path())
        signed = [sign("GET", url, plain_headers(sim), ak=AK, sk=SK) for _ in range(30)]
        answers = await asyncio.gather(*(fetch(session, url, headers) for headers in signed))
        assert sorted(a.status for a in answers) == [200] * 10 + [429] * 20
        throttled = [a for a in answers if a.status == 429]
        assert all(
            a.json
            == {
                "error_code": "APIG.0308",
                "error_msg": "The throttling threshold has been reached: policy user over ratelimit,"
                "limit:2,time:1 second",
            }
            for a in throttled
        )
        assert all("Retry-After" not in a.headers and "X-Request-Id" in a.headers for a in throttled)
        assert sorted(r.status or 0 for r in sim.task_requests()) == [200] * 10 + [429] * 20
        first_at = min(r.at for r in sim.requests)

        deadline = time.monotonic() + 5
        while True:  # a throttled request takes no token: poll until the bucket holds one again
            answer = await call(session, sim, tasks_path())
            if answer.status == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert answer.status == 200
        # 10 tokens at first, then 2 per second: the 11th pass is at least 0.5 s after the first request
        assert sim.requests[-1].at - first_at >= 0.5 - 1e-6
        assert all(a.at <= b.at for a, b in zip(sim.requests, sim.requests[1:], strict=False))


async def test_rate_limit_retry_after_only_when_configured(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    sim.rate_limit = 0.5
    assert sim.effective_rate_burst == 1
    assert (await call(session, sim, tasks_path())).status == 200
    plain = await call(session, sim, f"/v2/{PROJECT}/instances")  # one bucket for every DCS route
    assert (plain.status, "Retry-After" in plain.headers) == (429, False)
    assert plain.json["error_msg"].endswith("limit:0.5,time:1 second")
    sim.rate_limit_retry_after = 3
    answer = await call(session, sim, tasks_path())
    assert (answer.status, answer.headers["Retry-After"]) == (429, "3")
    sim.rate_limit = None
    assert (await call(session, sim, tasks_path())).status == 200
    sim.rate_limit = 10
    assert sim.effective_rate_burst == 10
    sim.rate_burst = 25
    assert sim.effective_rate_burst == 25


# --- clocks --------------------------------------------------------------------------------------------


async def test_skewed_clock_checks_signatures_against_the_simulator_clock(
    session: aiohttp.ClientSession,
) -> None:
    async with Simulator(
        project_id=PROJECT, credentials={AK: SK}, clock=SkewedClock(timedelta(minutes=20))
    ) as sim:
        sim.add_instance(IID, "orders-cache")
        wall = await call(session, sim, tasks_path())
        assert (wall.status, wall.json["error_code"]) == (401, "DCS.1002")
        served = parsedate_to_datetime(wall.headers["Date"])
        assert abs(served - (datetime.now(UTC) + timedelta(minutes=20))) < timedelta(seconds=5)
        ok = await call(session, sim, tasks_path(), now=sim.clock())
        assert ok.status == 200
        behind = await call(session, sim, tasks_path(), now=sim.clock() - timedelta(minutes=14))
        assert behind.status == 200


async def test_date_header_from_the_gateway_clock(clock: ManualClock, session: aiohttp.ClientSession) -> None:
    async with Simulator(project_id=PROJECT, credentials={AK: SK}, clock=clock, gateway_clock=clock) as sim:
        sim.add_instance(IID, "orders-cache")
        stale = await call(session, sim, tasks_path())  # wall clock: years after T0
        assert (stale.status, stale.headers["Date"]) == (401, "Sat, 01 Jun 2024 12:00:00 GMT")
        clock.advance(90)
        ok = await call(session, sim, tasks_path(), now=clock())
        assert (ok.status, ok.headers["Date"]) == (200, "Sat, 01 Jun 2024 12:01:30 GMT")
        missing = await call(session, sim, "/nowhere")
        assert missing.headers["Date"] == "Sat, 01 Jun 2024 12:01:30 GMT"
    # a ManualClock alone is task time: the gateway keeps the wall clock (clients sign with it)
    async with Simulator(project_id=PROJECT, credentials={AK: SK}, clock=clock) as sim:
        answer = await call(session, sim, f"/v2/{PROJECT}/instances")
        assert answer.status == 200
        assert abs(parsedate_to_datetime(answer.headers["Date"]) - datetime.now(UTC)) < timedelta(seconds=5)
