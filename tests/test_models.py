from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from notifier.dcs.models import (
    Outcome,
    Task,
    TaskList,
    classify_status,
    display_name,
    format_query_time,
    is_documented_status,
)

REFERENCE_EXAMPLE = {
    "task_count": 1,
    "tasks": [
        {
            "id": "8abf6e1e72c12e7c0172c15b508500aa",
            "name": "EXTEND",
            "user_name": "dcs_000_02",
            "user_id": "d53977d1adfb49c5b025ba7d33a13fd7",
            "details": {
                "old_cache_mode": "single",
                "new_cache_mode": "single",
                "old_capacity": "0.125",
                "new_capacity": "0.25",
                "old_resource_spec_code": "redis.single.xu1.tiny.125",
                "new_resource_spec_code": "redis.single.xu1.tiny.256",
                "old_replica_num": 1,
                "new_replica_num": 1,
                "old_cache_type": "single",
                "new_cache_type": "single",
                "replica_ip": "192.192.0.1",
                "replica_az": "az01",
                "group_name": "group1",
                "old_port": 6379,
                "new_port": 6379,
                "is_only_adjust_charging": False,
                "account_name": "account1",
                "source_ip": "192.192.0.0",
                "target_ip": "192.192.0.1",
                "node_name": "node1",
                "rename_commands": [],
                "updated_config_length": 0,
            },
            "enable_show": False,
            "status": "SUCCESS",
            "created_at": "2020-06-17T08:18:06.597Z",
            "updated_at": "2020-06-17T08:18:10.106Z",
        }
    ],
}


def test_reference_example_parses() -> None:
    page = TaskList.model_validate(REFERENCE_EXAMPLE)
    assert page.task_count == 1
    t = page.tasks[0]
    assert t.details is not None
    assert t.details.new_capacity == "0.25" and t.details.old_replica_num == 1
    assert t.created_at == datetime(2020, 6, 17, 8, 18, 6, 597000, tzinfo=UTC)
    assert t.duration_seconds == pytest.approx(3.509)
    assert t.outcome is Outcome.SUCCEEDED
    assert t.display_name == "Scale"
    assert t.to_api_dict()["created_at"] == "2020-06-17T08:18:06.597Z"


@pytest.mark.parametrize("count", [3, "3", " 3 "])
def test_task_count_string_or_number(count: object) -> None:
    assert TaskList.model_validate({"task_count": count, "tasks": []}).task_count == 3


@pytest.mark.parametrize("count", ["three", -1, None, "1.5"])
def test_task_count_garbage_rejected(count: object) -> None:
    with pytest.raises(ValidationError):
        TaskList.model_validate({"task_count": count, "tasks": []})


def test_unknown_fields_kept_and_details_optional() -> None:
    t = Task.model_validate(
        {"id": "x", "name": "NewKind", "status": "PAUSED", "job_id": "j1", "error_code": None, "details": {}}
    )
    assert t.details is None
    assert t.model_extra == {"job_id": "j1", "error_code": None}
    assert t.outcome is Outcome.IN_PROGRESS
    assert t.display_name == "NewKind"
    assert t.updated_at is None and t.duration_seconds is None
    assert t.to_api_dict()["job_id"] == "j1"


@pytest.mark.parametrize(
    ("status", "outcome", "documented"),
    [
        ("CREATED", Outcome.IN_PROGRESS, True),
        ("WAITING", Outcome.IN_PROGRESS, True),
        ("EXECUTING", Outcome.IN_PROGRESS, True),
        ("RUNNING", Outcome.IN_PROGRESS, True),
        (" running ", Outcome.IN_PROGRESS, True),
        ("INIT", Outcome.IN_PROGRESS, True),
        ("SUCCESS", Outcome.SUCCEEDED, True),
        ("success", Outcome.SUCCEEDED, True),
        ("FAILED", Outcome.FAILED, True),
        ("FAIL", Outcome.FAILED, True),
        ("ERROR", Outcome.FAILED, True),
        ("WHATEVER", Outcome.IN_PROGRESS, False),
        ("QUEUED", Outcome.IN_PROGRESS, False),
        ("", Outcome.IN_PROGRESS, False),
    ],
)
def test_status_classes(status: str, outcome: Outcome, documented: bool) -> None:
    assert classify_status(status) is outcome
    assert is_documented_status(status) is documented


def test_names_and_query_time() -> None:
    assert display_name("masterStandbySwapJob") == "Master/standby switchover"
    assert display_name("ChangeInstanceSpec") == display_name("EXTEND") == "Scale"
    assert format_query_time(datetime(2020, 6, 9, 16, 0, tzinfo=UTC)) == "20200609160000"


def test_bad_timestamp_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="created_at"):
        Task.model_validate({"id": "x", "created_at": "yesterday"})
