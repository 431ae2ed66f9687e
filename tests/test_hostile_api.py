"""Issue 10: a DCS API that lies. Each answer here broke something before (see the test's docstring);
now every failure while reading an answer is that instance's invalid answer, and what is kept of an
answer can always be delivered.

Real things only: the simulator serving the hostile answers, a real redis-server, the Slack stand-in and
a webhook receiver; the CLI as a subprocess where the failure showed through it.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from notifier.config.load import parse_config
from notifier.dcs.models import MAX_UNKNOWN_DEPTH, OMITTED_FIELD, Task, format_api_time
from notifier.devtools.simulator import Fault, Simulator
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.errors import DcsApiError, Reason
from notifier.pipeline.events import EventType
from notifier.pipeline.poll import Poller
from notifier.store.connect import Store
from notifier.store.keys import Keys
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK, WEBHOOK_SECRET
from tests.support.daemons import running
from tests.support.wait import until
from tests.test_cli import Cli, cli_for
from tests.test_pipeline import CONFIG, World, once
from tests.test_pipeline import world as world

TWO_INSTANCES = f"""
cloud: {{endpoint: "${{SIM_URL}}", project_id: "{PROJECT_ID}"}}
instances:
  - {{id: "{ORDERS}", name: orders-cache}}
  - {{id: "{SESSIONS}", name: sessions-cache}}
poll: {{interval: 0.2}}
redis: {{url: "${{REDIS_URL}}", key_prefix: hostile}}
channels:
  audit: {{type: webhook, url: "${{AUDIT_URL}}", secret: "{WEBHOOK_SECRET}"}}
delivery: {{max_attempts: 2, backoff_initial: 0.05, backoff_max: 0.1}}
"""


@pytest.fixture
async def cli(sim: Simulator, redis_url: str, tmp_path: Path) -> AsyncIterator[Cli]:
    async with cli_for(TWO_INSTANCES, sim, redis_url, tmp_path) as c:
        yield c


def raw_task(tid: str, **fields: object) -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "id": tid,
        "name": "EXTEND",
        "status": "RUNNING",
        "user_name": "ops_alice",
        "created_at": format_api_time(now - timedelta(seconds=5)),
        "updated_at": "",
        **fields,
    }


def serve(sim: Simulator, instance_id: str, *tasks: dict[str, object]) -> None:
    """Answer every poll of ``instance_id`` with exactly these tasks, whatever the window asked for
    (the simulator itself only serves tasks whose ``created_at`` falls in the window)."""
    body = json.dumps({"task_count": len(tasks), "tasks": list(tasks)}).encode()
    sim.inject(Fault(200, body, {"Content-Type": "application/json"}), times=1000, instance_id=instance_id)


def received(audit: WebhookReceiver) -> list[tuple[str, str, str]]:
    """(instance name, task id, event type) of every webhook accepted."""
    out = []
    for r in audit.requests:
        data = json.loads(r.body)
        task = data["data"]["task"] or {}
        out.append((data["data"]["instance"]["name"], task.get("id", ""), data["type"]))
    return out


# -- 1. timestamps out of UTC's range ----------------------------------------------------------------


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"])
async def test_a_timestamp_out_of_range_is_one_instances_invalid_answer(
    cli: Cli, sim: Simulator, stamp: str
) -> None:
    """Before: OverflowError escaped the model; `once` died with a traceback, the other instance's poll
    was aborted ("the transport is closed") and nothing was delivered."""
    serve(sim, ORDERS, raw_task("bad-time", created_at=stamp))
    good = sim.start_task(SESSIONS, "masterStandbySwapJob")
    code, out, err = await cli.run("once")
    assert code == 1, (out, err)
    assert "Traceback" not in err
    assert f"FAILED poll orders-cache ({ORDERS}): DCS API error for instance {ORDERS}, HTTP 200" in err
    assert "created_at" in err and "out of range" in err
    assert received(cli.audit) == [("sessions-cache", good, "task.started")]


async def test_extreme_timestamps_in_range_are_delivered_as_the_api_wrote_them(
    cli: Cli, sim: Simulator
) -> None:
    """Years 1 and 9999 are dates: kept, and shown with four digits (strftime wrote year 1 as "1")."""
    serve(
        sim,
        ORDERS,
        raw_task("year-1", created_at="0001-01-01T00:00:00Z"),
        raw_task("year-9999", created_at="9999-12-31T23:59:59Z"),
    )
    code, _, err = await cli.run("once")
    assert code == 0, err
    payloads = {json.loads(r.body)["data"]["task"]["id"]: json.loads(r.body) for r in cli.audit.requests}
    assert payloads["year-1"]["data"]["task"]["created_at"] == "0001-01-01T00:00:00.000Z"
    assert payloads["year-9999"]["data"]["task"]["created_at"] == "9999-12-31T23:59:59.000Z"


async def test_run_reports_an_invalid_answer_once_without_a_traceback(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: `run` logged a traceback on every poll of the instance."""
    serve(world.sim, ORDERS, raw_task("bad-time", created_at="9999-12-31T23:59:59-05:00"))
    caplog.set_level(logging.INFO)
    async with running(world.config()):
        before = len(world.sim.task_requests(ORDERS))
        await until(lambda: len(world.sim.task_requests(ORDERS)) >= before + 4, 10, "four polls of orders")
    about_orders = [
        r for r in caplog.records if r.levelno >= logging.ERROR and "orders-cache" in r.getMessage()
    ]
    assert len(about_orders) == 1, [r.getMessage() for r in about_orders]
    assert about_orders[0].exc_info is None
    assert "out of range" in about_orders[0].getMessage()


# -- 2. unknown fields nested deep, or large ---------------------------------------------------------


def nested(depth: int) -> object:
    value: object = "bottom"
    for _ in range(depth):
        value = [value]
    return value


async def test_deeply_nested_and_huge_unknown_fields_are_bounded_and_everything_is_delivered(
    cli: Cli, sim: Simulator, redis_client: aioredis.Redis
) -> None:
    """Before: nested ~256+ levels, the commit raised inside `once`; at ~199-255 levels the commit went
    through and the outbox entry could not be read back: a dead letter `replay` could not replay,
    while `once` exited 0."""
    depths = [MAX_UNKNOWN_DEPTH, 230, 300, 900]
    for depth in depths:
        sim.add_raw_task(ORDERS, raw_task(f"deep-{depth}", job_id=f"job-deep-{depth}", deep=nested(depth)))
    sim.add_raw_task(ORDERS, raw_task("huge", job_id="job-huge", blob="x" * 1_000_000))
    code, out, err = await cli.run("once")
    assert code == 0, err
    assert "5 event(s), 5 notification(s) delivered" in out
    tasks = {t["id"]: t for t in (json.loads(r.body)["data"]["task"] for r in cli.audit.requests)}
    assert set(tasks) == {*(f"deep-{d}" for d in depths), "huge"}
    assert all(t["job_id"] == f"job-{t['id']}" for t in tasks.values())  # small ones kept
    assert tasks[f"deep-{MAX_UNKNOWN_DEPTH}"]["deep"] == nested(MAX_UNKNOWN_DEPTH)  # within the bound
    for depth in depths[1:]:
        assert "deep" not in tasks[f"deep-{depth}"]
        assert tasks[f"deep-{depth}"][OMITTED_FIELD]["names"] == ["deep"]
    assert "blob" not in tasks["huge"] and tasks["huge"][OMITTED_FIELD]["count"] == 1
    assert await redis_client.xlen("hostile:dead") == 0
    code, _, err = await cli.run("dead-letters", "list")
    assert code == 0 and "0 dead letter(s)" in err


def test_bounded_unknown_fields_survive_being_read_back() -> None:
    """What the model keeps is read back to the same thing (the outbox stores it and reads it back)."""
    task = Task.model_validate(raw_task("t", deep=nested(400), wide={f"k{n}": n for n in range(5000)}))
    assert Task.model_validate_json(task.model_dump_json()) == task
    assert task.model_extra is not None and set(task.model_extra) == {OMITTED_FIELD}
    assert task.model_extra[OMITTED_FIELD]["names"] == ["deep", "wide"]


# -- 3. an unexpected error counts towards health ------------------------------------------------------

HEALTH = f"""
cloud: {{endpoint: "${{SIM_URL}}", project_id: "{PROJECT_ID}", ak: "{AK}", sk: "{SK}"}}
instances: [{{id: "{ORDERS}", name: orders-cache}}]
poll: {{interval: 0.1, jitter: 0}}
health: {{after: 0.5}}
redis: {{url: "${{REDIS_URL}}", key_prefix: h}}
channels:
  audit: {{type: webhook, url: "${{AUDIT_URL}}"}}
"""


async def test_an_unexpected_error_becomes_poller_unhealthy_and_is_logged_once(
    sim: Simulator, redis_url: str, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the catch-all of the per-instance loop logged a traceback per poll and never counted
    towards health: an instance failing that way for an hour was never announced. (The bug here is a
    poller wired without the project's client.)"""
    env = {"SIM_URL": str(sim.base_url), "REDIS_URL": redis_url, "AUDIT_URL": "http://127.0.0.1:9/"}
    config = parse_config(HEALTH, "h.yaml", env)
    mono = [1000.0]
    poller = Poller(config, {}, Store(redis_client, Keys("h")), monotonic=lambda: mono[0])
    [target] = poller.targets.values()
    caplog.set_level(logging.INFO)
    outcomes = []
    for _ in range(3):
        outcomes.append(await poller.poll_target(target))
        mono[0] += 0.3  # health.after is 0.5 s: the third failure is past it
    assert all(isinstance(o.error, KeyError) for o in outcomes)
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1 and logged[0].exc_info is not None  # the traceback, once
    assert target.key in poller.health.announced
    [entry] = await redis_client.xrange("h:outbox:audit")
    event = json.loads(entry[1]["n"])["event"]
    assert event["type"] == EventType.POLLER_UNHEALTHY.value
    assert event["problem"]["reason"] == Reason.INTERNAL.value
    assert event["problem"]["message"].startswith("unexpected KeyError")


async def test_a_corrupt_snapshot_in_redis_is_announced_then_recovers_once_deleted(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A snapshot field that is not JSON: before, an exception per poll that never reached health."""
    key = f"t:snap:{PROJECT_ID}:{ORDERS}"
    await world.redis.hset(key, mapping={"~meta": json.dumps({"baseline_at": "2026-11-28T08:00:00+00:00"}),
                                         "t1": "{not json"})  # fmt: skip
    text = CONFIG.replace("poll: {interval: 0.2,", "health: {after: 0.5}\npoll: {interval: 0.2,")
    caplog.set_level(logging.INFO)
    async with running(world.config(text)):
        await until(lambda: "poller.unhealthy" in types(world.audit), 10, "poller.unhealthy delivered")
        await world.redis.delete(key)
        await until(lambda: "poller.recovered" in types(world.audit), 10, "poller.recovered delivered")
    [unhealthy] = [json.loads(r.body) for r in world.audit.requests if b"poller.unhealthy" in r.body]
    assert key in unhealthy["data"]["problem"]["message"]
    assert "delete the key" in unhealthy["data"]["problem"]["message"]
    about_orders = [
        r for r in caplog.records if r.levelno >= logging.ERROR and "orders-cache" in r.getMessage()
    ]
    assert len(about_orders) == 1


def types(audit: WebhookReceiver) -> list[str]:
    return [json.loads(r.body)["type"] for r in audit.requests]


# -- 4. a failing pager keeps nothing of its pages -------------------------------------------------------


def live_tasks() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Task))


async def test_a_pager_failing_on_its_last_page_keeps_none_of_the_pages_alive(world: World) -> None:
    """Before: the health tracker kept the exception, whose traceback's frames held every page read so
    far (100,000 tasks: ~540 MB per instance)."""
    old = format_api_time(datetime.now(UTC) - timedelta(hours=1))
    world.sim.add_raw_task(ORDERS, raw_task("", created_at=old))  # the oldest: on the last page
    for n in range(1500):
        world.sim.add_raw_task(ORDERS, raw_task(f"t{n}"))
    async with world.daemon() as daemon:
        report = await daemon.once()
        [failed] = [p for p in report.polls if p.error]
        assert isinstance(failed.error, DcsApiError)
        assert "malformed task list at tasks.0.id" in str(failed.error)
        assert len(world.sim.task_requests(ORDERS)) == 16  # 15 pages of 100 read, then the bad one
        assert daemon.poller.health.failing(f"{PROJECT_ID}/{ORDERS}")
        assert live_tasks() == 0


# -- pages that never end -------------------------------------------------------------------------------


async def test_a_task_count_over_max_tasks_is_refused_after_one_request(world: World) -> None:
    """Before: task_count 10⁹ with pages that repeat cost 1,000 requests per poll (MAX_PAGES) of the
    endpoint's budget, retried for ever."""
    world.sim.start_task(ORDERS, "EXTEND")
    world.sim.claimed_task_count = 10**9
    world.sim.ignore_offset = True
    problems = await once(world)
    assert len(world.sim.task_requests(ORDERS)) == 1
    [problem] = [p for p in problems if "orders-cache" in p]
    assert "1,000,000,000 tasks in one poll window, more than poll.max_tasks (10,000)" in problem


async def test_pages_that_repeat_end_at_the_first_page_that_brings_nothing_new(world: World) -> None:
    """Before: an API ignoring `offset` was asked the same page 1,000 times per poll."""
    tid = world.sim.start_task(ORDERS, "EXTEND")
    world.sim.claimed_task_count = 5_000
    world.sim.ignore_offset = True
    assert await once(world) == []
    assert len(world.sim.task_requests(ORDERS)) == 2
    assert [(n, t) for n, t, _ in received(world.audit)] == [("orders-cache", tid)]


# -- log forging ------------------------------------------------------------------------------------------


async def test_a_newline_in_the_apis_error_message_cannot_forge_a_log_line(cli: Cli, sim: Simulator) -> None:
    """Before: `error_msg` was logged verbatim, so an API could write a line of its own into the log."""
    forged = "2026-12-01 08:00:00,000 INFO    notifier.delivery.worker: delivered task.succeeded: all is well"
    sim.inject(Fault.error(500, "DCS.5000", f"busy\n{forged}\r\n"), times=10, instance_id=ORDERS)
    code, _, err = await cli.run("once", "--log-level", "DEBUG")
    assert code == 1
    lines = err.splitlines()
    assert not [line for line in lines if line.startswith("2026-12-01 08:00:00")], err
    [logged] = [line for line in lines if "poll of orders-cache failed" in line]
    assert f"busy\\n{forged}\\r\\n" in logged  # kept, on its own record's line, escaped
