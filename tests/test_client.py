from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from notifier.dcs.client import DcsClient
from notifier.devtools.simulator import Fault, Simulator
from notifier.errors import DcsApiError, Reason
from tests.conftest import AK, ORDERS, PROJECT_ID, SK


def client(sim: Simulator, *, sk: str = SK, page_size: int = 100, timeout: float = 5.0) -> DcsClient:
    return DcsClient(
        endpoint=str(sim.base_url), project_id=PROJECT_ID, ak=AK, sk=sk, page_size=page_size, timeout=timeout
    )


def window() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(days=1), now + timedelta(minutes=1)


async def test_reads_every_page_of_the_window(sim: Simulator) -> None:
    base = datetime.now(UTC) - timedelta(hours=2)
    ids = [sim.start_task(ORDERS, "AddWhitelist", created_at=base + timedelta(seconds=i)) for i in range(23)]
    sim.start_task(ORDERS, "EXTEND", created_at=base - timedelta(days=3))  # outside the window
    async with client(sim, page_size=10) as c:
        tasks = await c.list_tasks(ORDERS, *window())
    assert sorted(t.id for t in tasks) == sorted(ids)
    reqs = sim.task_requests(ORDERS)
    assert [(r.query["offset"], r.query["limit"]) for r in reqs] == [("0", "10"), ("10", "10"), ("20", "10")]
    start, _ = window()
    assert reqs[0].query["start_time"][:8] == start.strftime("%Y%m%d")
    assert len(reqs[0].query["end_time"]) == 14


async def test_task_count_as_string_is_accepted(sim: Simulator) -> None:
    sim.task_count_as_string = True
    sim.start_task(ORDERS, "masterStandbySwapJob")
    async with client(sim) as c:
        [task] = await c.list_tasks(ORDERS, *window())
    assert task.name == "masterStandbySwapJob" and task.status == "RUNNING"


async def test_wrong_secret_is_a_clear_auth_error(sim: Simulator) -> None:
    async with client(sim, sk="not-the-secret") as c:
        with pytest.raises(DcsApiError) as info:
            await c.list_tasks(ORDERS, *window())
    err = info.value
    assert err.reason is Reason.AUTH and not err.retryable
    assert err.http_status == 401 and err.error_code and err.error_code.startswith("DCS.")
    text = str(err)
    assert text.startswith(f"DCS API error for instance {ORDERS}, HTTP 401, {err.error_code}: ")
    assert "X-Request-Id" in text
    assert "not-the-secret" not in text and SK not in text


async def test_unknown_instance_is_not_found(sim: Simulator) -> None:
    async with client(sim) as c:
        with pytest.raises(DcsApiError) as info:
            await c.list_tasks("00000000-0000-0000-0000-000000000000", *window())
    assert info.value.reason is Reason.NOT_FOUND and info.value.error_code == "DCS.3022"


@pytest.mark.parametrize(
    ("fault", "reason", "retry_after"),
    [
        (Fault.throttled(7), Reason.RATE_LIMITED, 7.0),
        (Fault.server_error(), Reason.SERVER_ERROR, None),
        (Fault.server_error(503, "DCS.5003"), Reason.SERVER_ERROR, None),
        (Fault.busy(), Reason.RATE_LIMITED, None),
        (Fault.malformed_json(), Reason.INVALID_RESPONSE, None),
        (Fault(200, b'{"task_count": "many", "tasks": []}'), Reason.INVALID_RESPONSE, None),
        (Fault(200, b"[1, 2]"), Reason.INVALID_RESPONSE, None),
        (Fault(502, b"<html>bad gateway</html>"), Reason.SERVER_ERROR, None),
    ],
)
async def test_faults_are_typed(
    sim: Simulator, fault: Fault, reason: Reason, retry_after: float | None
) -> None:
    sim.inject(fault, instance_id=ORDERS)
    async with client(sim) as c:
        with pytest.raises(DcsApiError) as info:
            await c.list_tasks(ORDERS, *window())
    assert info.value.reason is reason
    assert info.value.retry_after == retry_after
    assert ORDERS in str(info.value)


async def test_timeout_and_connection_refused_are_retryable(sim: Simulator) -> None:
    sim.inject(Fault.slow(2.0), instance_id=ORDERS)
    async with client(sim, timeout=0.3) as c:
        with pytest.raises(DcsApiError) as info:
            await c.list_tasks(ORDERS, *window())
    assert info.value.reason is Reason.TIMEOUT and info.value.retryable
    dead = DcsClient(endpoint="http://127.0.0.1:9", project_id=PROJECT_ID, ak=AK, sk=SK)
    async with dead:
        with pytest.raises(DcsApiError) as info:
            await dead.list_tasks(ORDERS, *window())
    assert info.value.reason is Reason.CONNECTION and info.value.retryable
    assert "127.0.0.1:9" in str(info.value)


async def test_list_instances(sim: Simulator) -> None:
    async with client(sim) as c:
        instances = await c.list_instances()
    assert {i["name"] for i in instances} == {"orders-cache", "sessions-cache"}


async def test_list_instances_reads_every_page(sim: Simulator) -> None:
    for n in range(23):
        sim.add_instance(f"bulk-{n:02d}", f"bulk-{n:02d}", tags={"n": str(n)})
    async with client(sim) as c:
        instances = await c.list_instances(limit=10)
    assert len({i["instance_id"] for i in instances}) == 25
    pages = [r.query for r in sim.requests if r.path.endswith("/instances")]
    assert [(q["offset"], q["limit"]) for q in pages] == [("0", "10"), ("10", "10"), ("20", "10")]


def test_endpoint_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        DcsClient(endpoint="ftp://x", project_id="p", ak="a", sk="s")


async def test_a_request_that_cannot_be_sent_is_a_client_error_not_a_crash(sim: Simulator) -> None:
    # X-Project-Id carries the project id as it is; HTTP/1.1 headers cannot carry these characters.
    odd = DcsClient(endpoint=str(sim.base_url), project_id="项目", ak=AK, sk=SK)
    async with odd:
        with pytest.raises(DcsApiError) as info:
            await odd.list_tasks(ORDERS, *window())
    assert info.value.reason is Reason.CLIENT_ERROR and not info.value.retryable
    assert str(info.value) == (
        f"DCS API error for instance {ORDERS}: cannot send the request: "
        "a header holds characters HTTP/1.1 cannot carry (not Latin-1)"
    )
    assert sim.task_requests() == []
