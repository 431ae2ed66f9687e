"""The simulator's Cloud Eye (CES v1) event APIs over real HTTP on 127.0.0.1, and the official CesClient on them.

Requests are signed with notifier.dcs.signer (as tests/test_simulator.py does for the DCS routes) or by the
official ``huaweicloudsdkces`` v1 client. The simulator's clock is a ManualClock (signatures are checked
against the wall clock), so windows and late events are exact.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from huaweicloudsdkces.v1 import (  # type: ignore[import-untyped]
    CesClient,
    ListEventDetailRequest,
    ListEventDetailResponse,
    ListEventsRequest,
    ListEventsResponse,
)
from huaweicloudsdkcore.auth.credentials import BasicCredentials  # type: ignore[import-untyped]
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException  # type: ignore[import-untyped]
from huaweicloudsdkcore.http.http_config import HttpConfig  # type: ignore[import-untyped]

from notifier.devtools.simulator import (
    ORDERS_CACHE,
    EmitCloudEyeEvent,
    Fault,
    InstanceSpec,
    ManualClock,
    Scenario,
    Simulator,
    Step,
    ces_error_body,
    run_scenario,
)
from notifier.devtools.simulator.cloud_eye import to_ms
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK
from tests.support.signed import Answer, call

T0 = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
HOUR_MS = 3_600_000
EVENT_ID = re.compile(r"ev\d{13}[A-Za-z0-9]{10}")
EVENTS = f"/V1.0/{PROJECT_ID}/events"

pytestmark = pytest.mark.usefixtures("no_proxies")  # the official SDK (requests) reads proxy variables


def detail_path(event_name: str = "masterStandbyFailover") -> str:
    return f"/V1.0/{PROJECT_ID}/event/{event_name}"


@pytest.fixture
def clock(sim: Simulator) -> ManualClock:
    """The conftest simulator, its service clock made a ManualClock at T0."""
    manual = ManualClock(T0)
    sim.clock = manual
    return manual


async def get(
    session: aiohttp.ClientSession,
    sim: Simulator,
    path: str,
    params: Sequence[tuple[str, str]] = (),
    *,
    sk: str = SK,
    ak: str = AK,
) -> Answer:
    return await call(session, sim, path, params, ak=ak, sk=sk, project_header=PROJECT_ID)


def window(start: datetime, end: datetime) -> list[tuple[str, str]]:
    return [("from", str(to_ms(start))), ("to", str(to_ms(end)))]


def ces_client(sim: Simulator, sk: str = SK) -> CesClient:
    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    return (
        CesClient.new_builder()
        .with_credentials(BasicCredentials(AK, sk, PROJECT_ID))
        .with_http_config(config)
        .with_endpoints([sim.base_url])
        .build()
    )


# --- ListEvents ---------------------------------------------------------------------------------------


async def test_list_events_aggregates_per_name_within_the_window(
    sim: Simulator, clock: ManualClock, session: aiohttp.ClientSession
) -> None:
    sim.add_project("other-project", {"OTHERAK0000000000001": "other-sk"})
    t = clock()
    sim.add_cloud_eye_event(resource_id=ORDERS, time=t - timedelta(minutes=10))
    sim.add_cloud_eye_event(resource_id=SESSIONS, time=t - timedelta(minutes=5), event_source="SYS.DCS")
    sim.add_cloud_eye_event("masterStandbySwitchover", resource_id=SESSIONS, time=t - timedelta(minutes=2))
    sim.add_cloud_eye_event(resource_id=ORDERS, time=t - timedelta(hours=2))  # before the window
    sim.add_cloud_eye_event("event_001", event_type="EVENT.CUSTOM", event_source="TEST.System")
    sim.add_cloud_eye_event(project_id="other-project", time=t - timedelta(minutes=1))  # another project

    answer = await get(
        session, sim, EVENTS, [("event_type", "EVENT.SYS"), *window(t - timedelta(hours=1), t)]
    )

    assert answer.status == 200
    assert answer.json == {
        "events": [
            {
                "event_name": "masterStandbySwitchover",
                "event_type": "EVENT.SYS",
                "sub_event_type": "SUB_EVENT.OPS",
                "event_count": 1,
                "latest_occur_time": to_ms(t - timedelta(minutes=2)),
                "latest_event_source": "SYS.DCS",
            },
            {
                "event_name": "masterStandbyFailover",
                "event_type": "EVENT.SYS",
                "sub_event_type": "SUB_EVENT.OPS",
                "event_count": 2,
                "latest_occur_time": to_ms(t - timedelta(minutes=5)),
                "latest_event_source": "SYS.DCS",
            },
        ],
        "meta_data": {"total": 2},
    }
    everything = (await get(session, sim, EVENTS, window(t - timedelta(hours=3), t))).json
    assert [(e["event_name"], e["event_count"]) for e in everything["events"]] == [
        ("event_001", 1),
        ("masterStandbySwitchover", 1),
        ("masterStandbyFailover", 3),
    ]
    second = (
        await get(session, sim, EVENTS, [*window(t - timedelta(hours=3), t), ("start", "1"), ("limit", "1")])
    ).json
    assert [e["event_name"] for e in second["events"]] == ["masterStandbySwitchover"]
    assert second["meta_data"] == {"total": 3}
    by_name = (await get(session, sim, EVENTS, [("event_name", "masterStandbySwitchover")])).json  # last day
    assert [e["event_name"] for e in by_name["events"]] == ["masterStandbySwitchover"]
    # the window holds both ends
    exact = t - timedelta(minutes=2)
    assert (await get(session, sim, EVENTS, window(exact, t))).json["meta_data"] == {"total": 2}
    edge = (await get(session, sim, EVENTS, window(t - timedelta(hours=1), exact))).json
    assert [e["event_name"] for e in edge["events"]] == ["masterStandbySwitchover", "masterStandbyFailover"]


# --- ListEventDetail ----------------------------------------------------------------------------------


async def test_event_detail_pages_to_the_end_newest_first(
    sim: Simulator, clock: ManualClock, session: aiohttp.ClientSession
) -> None:
    t = clock()
    ids = [
        sim.add_cloud_eye_event(resource_id=ORDERS, time=t - timedelta(minutes=m), content={"seq": m})
        for m in range(7, 0, -1)
    ]
    sim.add_cloud_eye_event(resource_id=ORDERS, level="Minor", state="normal")  # filtered out below
    sim.add_cloud_eye_event("redisNodeStatusAbnormal", resource_id=ORDERS)  # another name
    assert len(set(ids)) == 7 and all(EVENT_ID.fullmatch(i) for i in ids)

    base = [
        ("event_type", "EVENT.SYS"),
        ("event_source", "SYS.DCS"),
        ("event_level", "Major"),
        ("event_state", "incident"),
        *window(t - timedelta(hours=1), t),
    ]
    seen: list[str] = []
    start = 0
    while True:
        answer = await get(session, sim, detail_path(), [*base, ("start", str(start)), ("limit", "3")])
        assert answer.status == 200
        page = answer.json
        assert page["meta_data"] == {"total": 7}
        assert (page["event_name"], page["event_type"], page["sub_event_type"]) == (
            "masterStandbyFailover",
            "EVENT.SYS",
            "SUB_EVENT.OPS",
        )
        assert (page["event_users"], page["event_sources"]) == ([""], ["SYS.DCS"])
        seen += [info["event_id"] for info in page["event_info"]]
        start += 3
        if start >= page["meta_data"]["total"]:
            break
    assert start == 9
    assert seen == ids[::-1]  # newest first (the simulator's choice; Cloud Eye's order is unconfirmed)

    newest = (await get(session, sim, detail_path(), [*base, ("limit", "1")])).json["event_info"][0]
    assert newest == {
        "event_id": ids[-1],
        "event_name": "masterStandbyFailover",
        "event_source": "SYS.DCS",
        "time": to_ms(t - timedelta(minutes=1)),
        "detail": {
            "content": '{"seq":1}',
            "group_id": "",
            "resource_id": ORDERS,
            "resource_name": "orders-cache",
            "event_state": "incident",
            "event_level": "Major",
            "event_user": "",
            "event_type": "EVENT.SYS",
            "sub_event_type": "SUB_EVENT.OPS",
            "dimensions": [{"name": "dcs_instance_id", "value": ORDERS}],
        },
    }
    unfiltered = (await get(session, sim, detail_path(), [("event_type", "EVENT.SYS")])).json
    assert unfiltered["meta_data"] == {"total": 8}
    none = (await get(session, sim, detail_path("noSuchEvent"), [("event_type", "EVENT.SYS")])).json
    assert none == {
        "event_name": "noSuchEvent",
        "event_type": "EVENT.SYS",
        "event_users": [],
        "event_sources": [],
        "event_info": [],
        "meta_data": {"total": 0},
    }
    [detail_request, *_] = sim.ces_requests(event_name="masterStandbyFailover")
    assert detail_request.query["start"] == "0" and detail_request.status == 200
    assert len(sim.ces_requests("ces_events")) == 0


async def test_a_late_event_is_listed_only_once_recorded(
    sim: Simulator, clock: ManualClock, session: aiohttp.ClientSession
) -> None:
    t = clock()
    happened = t - timedelta(minutes=10)
    late = sim.add_cloud_eye_event(resource_id=SESSIONS, time=happened, visible_at=t + timedelta(seconds=30))
    assert late.startswith(f"ev{to_ms(t + timedelta(seconds=30))}")  # the id holds the recording time
    query = [("event_type", "EVENT.SYS"), *window(t - timedelta(hours=1), t + timedelta(minutes=1))]

    assert (await get(session, sim, EVENTS, query)).json == {"events": [], "meta_data": {"total": 0}}
    assert (await get(session, sim, detail_path(), query)).json["meta_data"] == {"total": 0}
    clock.advance(30)
    [aggregate] = (await get(session, sim, EVENTS, query)).json["events"]
    assert (aggregate["event_count"], aggregate["latest_occur_time"]) == (1, to_ms(happened))
    [info] = (await get(session, sim, detail_path(), query)).json["event_info"]
    assert (info["event_id"], info["time"]) == (late, to_ms(happened))
    assert [e.event_id for e in sim.cloud_eye_events()] == [late]
    sim.remove_cloud_eye_event(late)
    assert (await get(session, sim, detail_path(), query)).json["meta_data"] == {"total": 0}
    with pytest.raises(KeyError):
        sim.remove_cloud_eye_event(late)


# --- errors, authentication, faults -------------------------------------------------------------------


async def test_bad_parameters_are_400_in_cloud_eye_shape(
    sim: Simulator, clock: ManualClock, session: aiohttp.ClientSession
) -> None:
    t = to_ms(clock())
    cases: list[tuple[str, list[tuple[str, str]], str]] = [
        (detail_path(), [], "[event_type] is required (EVENT.SYS or EVENT.CUSTOM)."),
        (
            detail_path(),
            [("event_type", "EVENT.OTHER")],
            "[event_type] must be one of EVENT.SYS, EVENT.CUSTOM.",
        ),
        (
            detail_path(),
            [("event_type", "EVENT.SYS"), ("from", str(t)), ("to", str(t))],
            "[from] must be less than to.",
        ),
        (EVENTS, [("from", str(t)), ("to", str(t - 1))], "[from] must be less than to."),
        (EVENTS, [("from", "yesterday")], "[from] 'yesterday' is not a non-negative integer."),
        (EVENTS, [("limit", "0")], "[limit] must be between 1 and 100."),
        (EVENTS, [("limit", "101")], "[limit] must be between 1 and 100."),
        (EVENTS, [("start", "-1")], "[start] '-1' is not a non-negative integer."),
        (
            detail_path(),
            [("event_type", "EVENT.SYS"), ("event_level", "Severe")],
            "[event_level] must be one of",
        ),
    ]
    for path, params, details in cases:
        answer = await get(session, sim, path, params)
        assert answer.status == 400, (path, params)
        body = answer.json
        assert body["http_code"] == "400" and body["message"]["code"] == "ces.0014"
        prefix = "Some content in message body is not correct, error message: "
        assert body["message"]["details"].startswith(prefix + details), body


async def test_authentication_like_the_dcs_routes(
    sim: Simulator, clock: ManualClock, session: aiohttp.ClientSession
) -> None:
    wrong = await get(session, sim, EVENTS, sk="not-the-secret")
    assert wrong.status == 401
    assert wrong.json == ces_error_body(
        401, "ces.0015", "Invalid authentication information: signature mismatch."
    )
    unknown = await get(session, sim, detail_path(), [("event_type", "EVENT.SYS")], ak="UNKNOWNAK00000000001")
    assert unknown.json == ces_error_body(
        401, "ces.0015", "Invalid authentication information: unknown access key."
    )
    assert sim.base_url is not None
    async with session.get(f"{sim.base_url}{EVENTS}") as resp:  # unsigned
        assert resp.status == 401
        assert (await resp.json())["message"]["code"] == "ces.0015"

    sim.ces_auth_errors = "apig"  # the API gateway's answer instead (what the real cloud likely sends)
    gateway = await get(session, sim, EVENTS, sk="not-the-secret")
    assert gateway.status == 401
    body = gateway.json
    assert body["error_code"] == "APIG.0301"
    assert body["error_msg"] == (
        "Incorrect IAM authentication information: Invalid authentication information: signature mismatch."
    )
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])

    sim.add_iam_user("acme", "ops", "pw-123", [PROJECT_ID])  # an IAM token works as for the DCS routes
    user = sim.check_iam_user("acme", "ops", "pw-123")
    assert user is not None
    token, _ = sim.issue_iam_token(user, PROJECT_ID)
    async with session.get(f"{sim.base_url}{EVENTS}", headers={"X-Auth-Token": token}) as resp:
        assert resp.status == 200
    assert [r.status for r in sim.ces_requests()] == [401, 401, 401, 401, 200]


async def test_faults_select_cloud_eye_routes(
    sim: Simulator, clock: ManualClock, session: aiohttp.ClientSession
) -> None:
    tasks = f"/v2/{PROJECT_ID}/instances/{ORDERS}/tasks"
    sim.inject(Fault.server_error())  # the default: DCS routes only
    assert (await get(session, sim, EVENTS)).status == 200
    assert (await get(session, sim, tasks)).status == 500

    sim.inject(Fault.ces_error(500, "ces.0007", "Internal service error."), api="ces")
    assert (await get(session, sim, tasks)).status == 200
    failed = await get(session, sim, EVENTS)
    assert (failed.status, failed.json) == (500, ces_error_body(500, "ces.0007", "Internal service error."))

    sim.inject(Fault.throttled(retry_after=2), route="ces_event_detail", times=2)
    assert (await get(session, sim, EVENTS)).status == 200
    throttled = await get(session, sim, detail_path(), [("event_type", "EVENT.SYS")])
    assert (throttled.status, throttled.json["error_code"]) == (429, "APIG.0308")
    sim.inject(Fault.busy(), api="any")
    assert (await get(session, sim, detail_path(), [("event_type", "EVENT.SYS")])).status == 429  # FIFO
    assert (await get(session, sim, EVENTS)).status == 400  # "any": this Cloud Eye request took it
    assert (await get(session, sim, tasks)).status == 200

    with pytest.raises(ValueError, match="name no instance"):
        sim.inject(Fault.busy(), api="ces", instance_id=ORDERS)
    with pytest.raises(ValueError, match="unknown route"):
        sim.inject(Fault.busy(), route="metrics")
    with pytest.raises(ValueError, match="not part of api"):
        sim.inject(Fault.busy(), api="dcs", route="ces_events")

    sim.ces_rate_limit, sim.ces_rate_burst, sim.ces_rate_limit_retry_after = 0.001, 1, 5
    assert (await get(session, sim, EVENTS)).status == 200
    async with session.get(f"{sim.base_url}{EVENTS}") as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (429, "5")
    assert (await get(session, sim, tasks)).status == 200  # the DCS routes have their own limit


async def test_wait_for_wakes_on_cloud_eye_requests(sim: Simulator, session: aiohttp.ClientSession) -> None:
    waiter = asyncio.ensure_future(sim.wait_for(lambda: len(sim.ces_requests()) >= 1, within=5))
    await asyncio.sleep(0)
    assert (await get(session, sim, EVENTS)).status == 200
    await waiter


# --- the official SDK ---------------------------------------------------------------------------------


async def test_official_ces_client_parses_every_field(sim: Simulator, clock: ManualClock) -> None:
    t = clock()
    content = {"instance_id": ORDERS, "node": "192.168.0.11:6379", "role": "master"}
    older = sim.add_cloud_eye_event(resource_id=ORDERS, time=t - timedelta(minutes=3), content="plain text")
    newer = sim.add_cloud_eye_event(
        resource_id=ORDERS,
        time=t - timedelta(minutes=1, milliseconds=250),
        content=content,
        user="dcs_ops",
        group_id="rg-1",
    )
    client = ces_client(sim)
    begin, end = to_ms(t - timedelta(hours=1)), to_ms(t)

    listed: ListEventsResponse = await asyncio.to_thread(
        client.list_events, ListEventsRequest(event_type="EVENT.SYS", _from=begin, to=end, start=0, limit=100)
    )
    [aggregate] = listed.events
    assert (aggregate.event_name, aggregate.event_type, aggregate.sub_event_type) == (
        "masterStandbyFailover",
        "EVENT.SYS",
        "SUB_EVENT.OPS",
    )
    assert (aggregate.event_count, aggregate.latest_occur_time, aggregate.latest_event_source) == (
        2,
        to_ms(t - timedelta(minutes=1, milliseconds=250)),
        "SYS.DCS",
    )
    assert listed.meta_data.total == 1

    request = ListEventDetailRequest(
        event_name="masterStandbyFailover",
        event_type="EVENT.SYS",
        event_source="SYS.DCS",
        _from=begin,
        to=end,
        start=0,
        limit=1,
    )
    pages: list[ListEventDetailResponse] = []
    for start in (0, 1):
        request.start = start
        pages.append(await asyncio.to_thread(client.list_event_detail, request))
    first, second = pages
    assert (first.event_name, first.event_type, first.sub_event_type) == (
        "masterStandbyFailover",
        "EVENT.SYS",
        "SUB_EVENT.OPS",
    )
    assert (first.event_users, first.event_sources, first.meta_data.total) == (
        ["dcs_ops", ""],
        ["SYS.DCS"],
        2,
    )
    [info] = first.event_info
    assert (info.event_id, info.event_name, info.event_source) == (newer, "masterStandbyFailover", "SYS.DCS")
    assert info.time == to_ms(t - timedelta(minutes=1, milliseconds=250))
    d = info.detail
    assert json.loads(d.content) == content
    assert (d.resource_id, d.resource_name, d.group_id, d.event_user) == (
        ORDERS,
        "orders-cache",
        "rg-1",
        "dcs_ops",
    )
    assert (d.event_state, d.event_level, d.event_type, d.sub_event_type) == (
        "incident",
        "Major",
        "EVENT.SYS",
        "SUB_EVENT.OPS",
    )
    assert [(dim.name, dim.value) for dim in d.dimensions] == [("dcs_instance_id", ORDERS)]
    [old] = second.event_info
    assert (old.event_id, old.detail.content) == (older, "plain text")

    sent = sim.ces_requests("ces_event_detail")
    assert [r.query["start"] for r in sent] == ["0", "1"]
    assert sent[0].headers["Authorization"].startswith(f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=")


async def test_official_ces_client_sees_401_and_400(sim: Simulator) -> None:
    wrong = ces_client(sim, sk="not-the-secret")
    with pytest.raises(ClientRequestException) as excinfo:
        await asyncio.to_thread(wrong.list_events, ListEventsRequest(event_type="EVENT.SYS"))
    assert excinfo.value.status_code == 401
    assert len(excinfo.value.request_id) == 32
    client = ces_client(sim)
    with pytest.raises(ClientRequestException) as excinfo:
        await asyncio.to_thread(
            client.list_event_detail, ListEventDetailRequest(event_name="masterStandbyFailover")
        )
    assert excinfo.value.status_code == 400
    assert "ces.0014" in excinfo.value.error_msg


# --- the scenario step --------------------------------------------------------------------------------


async def test_scenario_step_records_a_failover(sim: Simulator, clock: ManualClock) -> None:
    async def no_sleep(_: float) -> None:
        return None

    scenario = Scenario(
        [InstanceSpec(ORDERS_CACHE, "orders-cache")],
        [
            Step(1, EmitCloudEyeEvent(ORDERS_CACHE, content={"node": "master"})),
            Step(2, EmitCloudEyeEvent(ORDERS_CACHE, "redisNodeStatusAbnormal", late_by=120)),
        ],
    )
    await run_scenario(sim, scenario, sleep=no_sleep)
    failover, abnormal = sim.cloud_eye_events()
    assert (failover.event_name, failover.resource_id, failover.resource_name) == (
        "masterStandbyFailover",
        ORDERS_CACHE,
        "orders-cache",
    )
    assert (failover.level, failover.state, failover.content) == ("Major", "incident", '{"node":"master"}')
    assert failover.time == failover.visible_at == T0
    assert (abnormal.event_name, abnormal.visible_at - abnormal.time) == (
        "redisNodeStatusAbnormal",
        timedelta(minutes=2),
    )
    sim.clear_cloud_eye_events()
    assert sim.cloud_eye_events() == []
