"""Pydantic models of the DCS "List Background Tasks" API, shaped to absorb what the real API returns.

Quirks absorbed here, so nothing downstream has to care:

* ``task_count`` is documented as a string and returned as a number: both are accepted.
* Unknown fields (``error_code``, ``job_id``, anything new) are kept, on tasks and on details, within
  bounds (:func:`bound_unknown_fields`): whatever is kept must survive the outbox and reach a receiver.
* ``details`` is present only for some task kinds; every detail field is optional.
* Timestamps (``2020-06-17T07:38:42.503Z``) become timezone-aware datetimes; an empty or absent
  ``updated_at`` (an unfinished task) becomes ``None``; one that is not a date in UTC's range is invalid.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Outcome(enum.StrEnum):
    """What a task status means for a person on call."""

    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


IN_PROGRESS_STATUSES = frozenset({"CREATED", "WAITING", "EXECUTING", "RUNNING", "INIT"})
SUCCEEDED_STATUSES = frozenset({"SUCCESS"})
FAILED_STATUSES = frozenset({"FAILED", "FAIL", "ERROR"})


_DOCUMENTED_STATUSES = IN_PROGRESS_STATUSES | SUCCEEDED_STATUSES | FAILED_STATUSES


def classify_status(status: str) -> Outcome:
    """Map a raw task status to an outcome; unknown statuses are kept and count as in progress.

    The one place a task status is interpreted: everything else asks this (or :attr:`Task.outcome`).
    """
    s = status.strip().upper()
    if s in SUCCEEDED_STATUSES:
        return Outcome.SUCCEEDED
    if s in FAILED_STATUSES:
        return Outcome.FAILED
    return Outcome.IN_PROGRESS


def is_documented_status(status: str) -> bool:
    """Whether the API documents ``status``: an undocumented one counts as in progress, but may be a
    final status we do not know, so the poller follows it for a shorter time."""
    return status.strip().upper() in _DOCUMENTED_STATUSES


# Task names as the API reports them → words a person reads in Slack.
TASK_DISPLAY_NAMES: dict[str, str] = {
    "EXTEND": "Scale",
    "ChangeInstanceSpec": "Scale",
    "BindEip": "Enable public access",
    "UnBindEip": "Disable public access",
    "AddReplica": "Add replicas",
    "DelReplica": "Delete replicas",
    "AddWhitelist": "IP whitelist change",
    "UpdatePort": "Port change",
    "RemoveIpFromDns": "Remove IP addresses from DNS",
    "masterStandbySwapJob": "Master/standby switchover",
    "modify": "Password change",
}


#: Background tasks that switch an instance's master over on the way (Cloud Eye then reports a
#: ``masterStandbySwitchover``). Which restart task names do is unconfirmed: restarts are not listed.
SWITCHING_TASKS = frozenset({"masterStandbySwapJob", "EXTEND", "ChangeInstanceSpec"})


def display_name(task_name: str) -> str:
    """Human name of a task kind; an unknown kind is shown as the API names it."""
    return TASK_DISPLAY_NAMES.get(task_name, task_name)


def parse_api_time(value: Any) -> datetime | None:
    """Parse ``2020-06-17T07:38:42.503Z`` (and ISO variants) to an aware UTC datetime; empty → None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        raise ValueError(f"expected a timestamp string, got {type(value).__name__}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-05:00 is in year 10000 in UTC
        raise ValueError(f"timestamp {value[:40]!r} is out of range in UTC") from None


def format_api_time(value: datetime) -> str:
    """The API's own timestamp form, millisecond precision: ``2020-06-17T07:38:42.503Z``."""
    v = value.astimezone(UTC)
    # Not strftime: its %Y does not pad years before 1000 on glibc.
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}."
        f"{v.microsecond // 1000:03d}Z"
    )


def format_query_time(value: datetime) -> str:
    """The query parameter form of ``start_time``/``end_time``: ``yyyyMMddHHmmss`` in UTC."""
    return _query_time(int(value.timestamp()))


@functools.lru_cache(maxsize=1024)  # every poll of the same second asks for the same strings
def _query_time(epoch_second: int) -> str:
    return datetime.fromtimestamp(epoch_second, UTC).strftime("%Y%m%d%H%M%S")


#: Unknown fields are kept as they came while nested at most this deep...
MAX_UNKNOWN_DEPTH = 16
#: ...and while they take at most this many characters of JSON, together, per task (and per details).
MAX_UNKNOWN_SIZE = 16 * 1024
#: The field that lists the unknown fields left out (its own size is bounded too).
OMITTED_FIELD = "dcs_notifier_omitted"
_OMITTED_NAMES_SHOWN = 10


def _json_size(value: Any, budget: int) -> int | None:
    """Roughly how many characters ``value`` takes as JSON; None when that is over ``budget`` or it
    nests containers deeper than MAX_UNKNOWN_DEPTH. The walk stops as soon as either is known, so its
    cost is bounded by the budget, not by the value."""
    size = 0
    stack: list[tuple[Any, int]] = [(value, 0)]  # (item, containers around it)
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_UNKNOWN_DEPTH:
                return None
            size += 2
            if isinstance(item, dict):
                size += sum(len(str(k)) + 4 for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            size += len(item) + 2
        else:
            size += 8
        if size > budget:
            return None
    return size


def bound_unknown_fields(data: Any, known: Mapping[str, Any]) -> Any:
    """Keep the unknown fields of one API object within MAX_UNKNOWN_DEPTH and MAX_UNKNOWN_SIZE.

    Fields past either bound are left out and named under OMITTED_FIELD: a task nested hundreds of
    levels deep could not be serialised into the outbox, or read back from it.
    """
    if not isinstance(data, dict) or data.keys() <= known.keys():
        return data
    kept: dict[str, Any] = {}
    omitted: list[str] = []
    budget = MAX_UNKNOWN_SIZE
    for key, value in data.items():
        if key in known:
            kept[key] = value
            continue
        size = _json_size(value, budget - len(key))
        if size is None:
            omitted.append(key)
        else:
            budget -= size + len(key)
            kept[key] = value
    if omitted:
        kept[OMITTED_FIELD] = {
            "count": len(omitted),
            "names": [name[:64] for name in omitted[:_OMITTED_NAMES_SHOWN]],
            "why": f"unknown fields nested deeper than {MAX_UNKNOWN_DEPTH} levels, or over "
            f"{MAX_UNKNOWN_SIZE // 1024} KiB of them, are not kept",
        }
    return kept


class TaskDetails(BaseModel):
    """``DetailsBody``: every field optional, unknown ones kept (within bounds)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        return bound_unknown_fields(data, cls.model_fields)

    old_capacity: str | None = None
    new_capacity: str | None = None
    enable_public_ip: bool | None = None
    public_ip_id: str | None = None
    public_ip_address: str | None = None
    enable_ssl: bool | None = None
    old_cache_mode: str | None = None
    new_cache_mode: str | None = None
    old_resource_spec_code: str | None = None
    new_resource_spec_code: str | None = None
    old_replica_num: int | None = None
    new_replica_num: int | None = None
    old_cache_type: str | None = None
    new_cache_type: str | None = None
    replica_ip: str | None = None
    replica_az: str | None = None
    group_name: str | None = None
    old_port: int | None = None
    new_port: int | None = None
    is_only_adjust_charging: bool | None = None
    account_name: str | None = None
    source_ip: str | None = None
    target_ip: str | None = None
    node_name: str | None = None
    rename_commands: list[str] | None = None
    updated_config_length: int | None = None

    @field_validator("old_capacity", "new_capacity", mode="before")
    @classmethod
    def _capacity_as_text(cls, v: Any) -> Any:
        # Capacities are documented as strings ("0.125") but numbers are not unthinkable.
        if isinstance(v, int | float) and not isinstance(v, bool):
            return format(v, "g")
        return v


class Task(BaseModel):
    """``SingleBackgroundTask``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        return bound_unknown_fields(data, cls.model_fields)

    id: str = Field(min_length=1)
    name: str = ""
    status: str = ""
    details: TaskDetails | None = None
    user_name: str | None = None
    user_id: str | None = None
    params: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    enable_show: bool | None = None

    @field_validator("created_at", "updated_at", mode="before")
    @classmethod
    def _parse_time(cls, v: Any) -> datetime | None:
        return parse_api_time(v)

    @field_validator("status", mode="before")
    @classmethod
    def _status_text(cls, v: Any) -> Any:
        return "" if v is None else v

    @field_validator("details", mode="before")
    @classmethod
    def _empty_details(cls, v: Any) -> Any:
        # Some task kinds send "details": {} or null; both mean "no details".
        return None if v in ({}, None, "") else v

    @property
    def outcome(self) -> Outcome:
        return classify_status(self.status)

    @property
    def display_name(self) -> str:
        return display_name(self.name)

    @property
    def duration_seconds(self) -> float | None:
        """Seconds from start to end, known only once the task has finished."""
        if self.outcome is Outcome.IN_PROGRESS or self.created_at is None or self.updated_at is None:
            return None
        return max(0.0, (self.updated_at - self.created_at).total_seconds())

    def to_api_dict(self) -> dict[str, Any]:
        """The task as the API would send it (timestamps in the API's form, unknown fields kept)."""
        data = self.model_dump(mode="json", exclude_none=True)
        if self.created_at is not None:
            data["created_at"] = format_api_time(self.created_at)
        if self.updated_at is not None:
            data["updated_at"] = format_api_time(self.updated_at)
        return data


class TaskList(BaseModel):
    """One page of the List Background Tasks response."""

    model_config = ConfigDict(extra="allow", frozen=True)

    task_count: int = Field(ge=0)
    tasks: list[Task] = Field(default_factory=list)

    @field_validator("task_count", mode="before")
    @classmethod
    def _count_from_string(cls, v: Any) -> Any:
        # Documented as String, returned as a number: take both, reject anything else.
        if isinstance(v, str):
            text = v.strip()
            if not text.isdigit():
                raise ValueError(f"task_count {v!r} is not a whole number")
            return int(text)
        return v

    @field_validator("tasks", mode="before")
    @classmethod
    def _null_tasks(cls, v: Any) -> Any:
        return [] if v is None else v


class ApiErrorBody(BaseModel):
    """The Huawei-style error body of 4xx/5xx answers: ``{error_code, error_msg}`` (DCS, the API gateway),
    or Cloud Eye v1's ``{http_code, message: {code, details}}`` read into the same two fields."""

    model_config = ConfigDict(extra="allow")

    error_code: str | None = None
    error_msg: str | None = None
    error_ext_msg: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _cloud_eye_shape(cls, data: Any) -> Any:
        if isinstance(data, dict) and "error_code" not in data and isinstance(data.get("message"), dict):
            inner = data["message"]
            code, details = inner.get("code"), inner.get("details")
            return {
                **data,
                "message": None,
                "error_code": code if isinstance(code, str) else None,
                "error_msg": details if isinstance(details, str) else None,
            }
        return data
