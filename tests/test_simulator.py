"""The DCS simulator over real HTTP on 127.0.0.1, requests signed with notifier.dcs.signer."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from notifier.dcs.models import TaskList, format_api_time
from notifier.dcs.signer import canonical_query, sign
from notifier.dcs.simulator import (
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
    StartTask,
    Step,
    default_demo_scenario,
    run_scenario,
)

AK = "SIMTESTAK0000000001"
SK = "sim-test-secret-key-0123456789"
PROJECT = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
IID = "5560df16-cebf-4473-95c4-d1b573c16e79"
OTHER = "6670ef27-dfc0-4584-a6e2-e2c684d27f8a"
T0 = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def sim(clock: ManualClock) -> AsyncIterator[Simulator]:
    async with Simulator(project_id=PROJECT, credentials={AK: SK}, clock=clock) as simulator:
        simulator.add_instance(IID, "orders-cache")
        simulator.add_instance(OTHER, "sessions-cache", capacity_gb=2, port=6380)
        yield simulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


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
    assert sim.base_url is not None
    query = canonical_query(params)
    url = f"{sim.base_url}{path}" + (f"?{query}" if query else "")
    headers = {
        "Content-Type": "application/json",
        "X-Project-Id": project_header,
        "Host": urlsplit(sim.base_url).netloc,
        "User-Agent": "dcs-notifier-tests",
    }
    signed = sign("GET", url, headers, ak=ak, sk=sk, now=now)
    client_timeout = aiohttp.ClientTimeout(total=within)
    async with session.get(URL(url, encoded=True), headers=signed, timeout=client_timeout) as resp:
        return Answer(resp.status, CIMultiDict(resp.headers), await resp.text())


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
    assert {i.name for i in sim.instances.values()} == {"orders-cache", "sessions-cache", "catalog-cache"}

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
        "notifier.dcs.simulator",
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
        assert {i["name"] for i in answer.json["instances"]} == {
            "orders-cache",
            "sessions-cache",
            "catalog-cache",
        }
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_standalone_module_requires_keys() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CLOUD_SDK_AK", "CLOUD_SDK_SK")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier.dcs.simulator", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert b"CLOUD_SDK_AK" in err
