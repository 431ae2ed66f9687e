"""The official Huawei Cloud DCS SDK (test-only peer) against our simulator: the simulator satisfies it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials  # type: ignore[import-untyped]
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException  # type: ignore[import-untyped]
from huaweicloudsdkcore.http.http_config import HttpConfig  # type: ignore[import-untyped]
from huaweicloudsdkdcs.v2 import (  # type: ignore[import-untyped]
    DcsClient,
    ListBackgroundTaskRequest,
    ListBackgroundTaskResponse,
    ListInstancesRequest,
    ListInstancesResponse,
)

from notifier.devtools.simulator import Fault, ManualClock, Simulator

AK = "OFFICIALSDKAK000001"
SK = "official-sdk-secret-0123456789"
PROJECT = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
IID = "5560df16-cebf-4473-95c4-d1b573c16e79"
T0 = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)

# requests (under the official SDK) honours proxy variables; the simulator is on loopback only.
pytestmark = pytest.mark.usefixtures("no_proxies")


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(project_id=PROJECT, credentials={AK: SK}, clock=ManualClock(T0)) as simulator:
        simulator.add_instance(
            IID,
            "orders-cache",
            spec_code="redis.ha.xu1.tiny.r2.256",
            capacity_gb=0.25,
            az_codes=["az1", "az2"],
        )
        simulator.add_instance("second", "sessions-cache", capacity_gb=4, port=6380, status="EXTENDING")
        yield simulator


def make_client(base_url: str, sk: str = SK) -> DcsClient:
    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    return (
        DcsClient.new_builder()
        .with_credentials(BasicCredentials(AK, sk, PROJECT))
        .with_http_config(config)
        .with_endpoints([base_url])
        .build()
    )


async def _list_tasks(client: DcsClient, request: ListBackgroundTaskRequest) -> ListBackgroundTaskResponse:
    response: ListBackgroundTaskResponse = await asyncio.to_thread(client.list_background_task, request)
    return response


async def test_list_background_task_parsed_by_official_sdk(sim: Simulator) -> None:
    extend_details = {
        "old_capacity": "0.125",
        "new_capacity": "0.25",
        "old_resource_spec_code": "redis.ha.xu1.tiny.r2.128",
        "new_resource_spec_code": "redis.ha.xu1.tiny.r2.256",
        "old_replica_num": 2,
        "new_replica_num": 2,
        "is_only_adjust_charging": False,
    }
    extend = sim.start_task(IID, "EXTEND", details=extend_details, created_at=T0 + timedelta(minutes=1))
    sim.finish_task(IID, extend, updated_at=T0 + timedelta(minutes=3, seconds=0.5))
    eip = sim.start_task(
        IID,
        "BindEip",
        details={"enable_public_ip": True, "public_ip_address": "203.0.113.10"},
        created_at=T0 + timedelta(minutes=2),
    )
    swap = sim.start_task(
        IID, "masterStandbySwapJob", created_at=T0 + timedelta(minutes=4), status="EXECUTING"
    )
    sim.start_task(IID, "modify", created_at=T0 - timedelta(days=1))  # filtered out by start_time

    request = ListBackgroundTaskRequest(
        instance_id=IID, offset=0, limit=2, start_time="20240601120000", end_time="20240601235959"
    )
    client = make_client(sim.base_url or "")
    page1 = await _list_tasks(client, request)
    request.offset = 2
    page2 = await _list_tasks(client, request)

    assert page1.task_count == "3"  # the SDK types task_count as a string
    assert page2.task_count == "3"
    assert [t.id for t in page1.tasks] == [swap, eip]
    assert [t.id for t in page2.tasks] == [extend]
    swap_task, eip_task = page1.tasks
    assert (swap_task.name, swap_task.status, swap_task.details) == (
        "masterStandbySwapJob",
        "EXECUTING",
        None,
    )
    assert (swap_task.created_at, swap_task.updated_at) == ("2024-06-01T12:04:00.000Z", "")
    assert (eip_task.details.enable_public_ip, eip_task.details.public_ip_address) == (True, "203.0.113.10")
    extend_task = page2.tasks[0]
    assert (extend_task.name, extend_task.status) == ("EXTEND", "SUCCESS")
    assert extend_task.updated_at == "2024-06-01T12:03:00.500Z"
    assert extend_task.user_name == "dcs_ops"
    d = extend_task.details
    assert (d.old_capacity, d.new_capacity, d.old_replica_num, d.new_replica_num) == ("0.125", "0.25", 2, 2)
    assert (d.old_resource_spec_code, d.new_resource_spec_code) == (
        "redis.ha.xu1.tiny.r2.128",
        "redis.ha.xu1.tiny.r2.256",
    )
    assert d.is_only_adjust_charging is False

    sent = sim.task_requests(IID)
    assert [r.status for r in sent] == [200, 200]
    assert sent[0].query == {
        "offset": "0",
        "limit": "2",
        "start_time": "20240601120000",
        "end_time": "20240601235959",
    }
    assert sent[1].query["offset"] == "2"
    assert sent[0].headers["X-Project-Id"] == PROJECT
    assert sent[0].headers["Authorization"].startswith(f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=")


async def test_list_instances_parsed_by_official_sdk(sim: Simulator) -> None:
    client = make_client(sim.base_url or "")
    response: ListInstancesResponse = await asyncio.to_thread(
        client.list_instances, ListInstancesRequest(offset=0, limit=10)
    )
    assert response.instance_num == 2
    first, second = response.instances
    assert (first.instance_id, first.name, first.status, first.engine) == (
        IID,
        "orders-cache",
        "RUNNING",
        "Redis",
    )
    assert (first.spec_code, first.capacity, first.capacity_minor, first.port) == (
        "redis.ha.xu1.tiny.r2.256",
        0,
        "0.25",
        6379,
    )
    assert first.az_codes == ["az1", "az2"]
    assert (second.instance_id, second.status, second.capacity, second.port) == (
        "second",
        "EXTENDING",
        4,
        6380,
    )


async def test_wrong_sk_raises_client_request_exception(sim: Simulator) -> None:
    client = make_client(sim.base_url or "", sk="not-the-secret")
    with pytest.raises(ClientRequestException) as excinfo:
        await asyncio.to_thread(client.list_background_task, ListBackgroundTaskRequest(instance_id=IID))
    exc = excinfo.value
    assert exc.status_code == 401
    assert exc.error_code == "DCS.1001"
    assert exc.error_msg == "Invalid authentication information: signature mismatch."
    assert len(exc.request_id) == 32


async def test_unknown_instance_raises_404(sim: Simulator) -> None:
    client = make_client(sim.base_url or "")
    with pytest.raises(ClientRequestException) as excinfo:
        await asyncio.to_thread(client.list_background_task, ListBackgroundTaskRequest(instance_id="nope"))
    assert (excinfo.value.status_code, excinfo.value.error_code) == (404, "DCS.3022")


async def test_throttling_and_malformed_json_as_the_sdk_sees_them(sim: Simulator) -> None:
    sim.inject(Fault.throttled(retry_after=3))
    sim.inject(Fault.malformed_json())
    client = make_client(sim.base_url or "")
    request = ListBackgroundTaskRequest(instance_id=IID)
    with pytest.raises(ClientRequestException) as excinfo:
        await _list_tasks(client, request)
    assert excinfo.value.status_code == 429
    garbled = await _list_tasks(client, request)  # the SDK swallows malformed JSON on HTTP 200
    assert garbled.tasks is None
    sim.start_task(IID, "modify")
    assert (await _list_tasks(client, request)).task_count == "1"
