"""The notifier's Cloud Eye client against the simulator's Cloud Eye routes (real HTTP on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from notifier.cloudeye.client import CloudEyeClient
from notifier.dcs.credentials import AkSkCredentials
from notifier.dcs.endpoint import ApiEndpoint
from notifier.dcs.limits import ApiGate
from notifier.devtools.simulator import Fault, ManualClock, Simulator
from notifier.errors import DcsApiError, Reason
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK

T0 = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def clock(sim: Simulator) -> ManualClock:
    manual = ManualClock(T0)
    sim.clock = manual
    return manual


def client_for(sim: Simulator, sk: str = SK, page_size: int = 100) -> CloudEyeClient:
    gate = ApiGate(max_concurrency=4, region_concurrency=4, rate=1e6, min_rate=1e6)
    api = ApiEndpoint(
        endpoint=str(sim.base_url),
        project_id=PROJECT_ID,
        credentials=AkSkCredentials(AK, sk),
        region="cn-north-4",
        timeout=5,
        http=None,
        gate=gate,
        service="Cloud Eye",
    )
    return CloudEyeClient(api, page_size=page_size)


@pytest.fixture
async def ces(sim: Simulator) -> AsyncIterator[CloudEyeClient]:
    client = client_for(sim, page_size=7)
    yield client
    await client.aclose()


@pytest.mark.usefixtures("clock")
async def test_the_names_that_fired_and_every_occurrence_of_one_paged_to_the_end(
    sim: Simulator, ces: CloudEyeClient
) -> None:
    for n in range(20):
        sim.add_cloud_eye_event(
            "masterStandbyFailover", resource_id=ORDERS, time=T0 - timedelta(minutes=n), content={"n": n}
        )
    sim.add_cloud_eye_event("redisNodeStatusAbnormal", resource_id=SESSIONS, time=T0 - timedelta(minutes=3))
    sim.add_cloud_eye_event("redisNodeStatusAbnormal", resource_id=SESSIONS, time=T0 - timedelta(hours=3))
    fired = await ces.fired(T0 - timedelta(hours=1), T0)
    assert {a.event_name: a.event_count for a in fired} == {
        "masterStandbyFailover": 20,
        "redisNodeStatusAbnormal": 1,
    }
    found, unreadable = await ces.occurrences("masterStandbyFailover", T0 - timedelta(hours=1), T0)
    assert unreadable == [] and len({o.event_id for o in found}) == 20  # three pages of 7
    assert {o.info().content["n"] for o in found} == set(range(20))
    assert all(o.instance_id == ORDERS and o.type == "instance.failover" for o in found)
    assert len([r for r in sim.ces_requests("ces_event_detail")]) == 3


async def test_a_late_event_is_found_once_cloud_eye_has_recorded_it(
    sim: Simulator, clock: ManualClock, ces: CloudEyeClient
) -> None:
    sim.add_cloud_eye_event(
        "masterStandbyFailover",
        resource_id=ORDERS,
        time=T0 - timedelta(minutes=5),
        visible_at=T0 + timedelta(minutes=2),
    )
    window = (T0 - timedelta(minutes=10), T0 + timedelta(minutes=5))
    assert await ces.fired(*window) == []
    clock.advance(180)
    [late], _ = await ces.occurrences("masterStandbyFailover", *window)
    assert late.time == T0 - timedelta(minutes=5)


@pytest.mark.usefixtures("clock")
async def test_a_rejected_signature_is_an_auth_error_naming_cloud_eye_and_the_project(sim: Simulator) -> None:
    client = client_for(sim, sk="wrong-secret")
    try:
        with pytest.raises(DcsApiError) as caught:
            await client.fired(T0 - timedelta(hours=1), T0)
    finally:
        await client.aclose()
    err = caught.value
    assert err.reason is Reason.AUTH and err.http_status == 401 and err.error_code == "ces.0015"
    assert str(err).startswith(f"Cloud Eye API error for cloud-eye:{PROJECT_ID}, HTTP 401, ces.0015: ")
    assert "wrong-secret" not in str(err)


@pytest.mark.usefixtures("clock")
async def test_a_busy_cloud_eye_is_retryable_and_the_dcs_routes_are_not_touched(
    sim: Simulator, ces: CloudEyeClient
) -> None:
    sim.inject(Fault.server_error(503, "ces.0050"), api="ces")
    with pytest.raises(DcsApiError) as caught:
        await ces.fired(T0 - timedelta(hours=1), T0)
    assert caught.value.retryable and caught.value.reason is Reason.SERVER_ERROR
    assert await ces.fired(T0 - timedelta(hours=1), T0) == []  # the fault was used up by Cloud Eye
