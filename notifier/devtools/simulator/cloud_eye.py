"""Cloud Eye (CES v1) event monitoring in the simulator: the stored events and the two event APIs.

``GET /V1.0/{project_id}/events`` (ListEvents) answers one aggregate per event name with occurrences in the
window; ``GET /V1.0/{project_id}/event/{event_name}`` (ListEventDetail) the occurrences of one name, paged
with ``start``/``limit``. Sources: ``../shared/CES-NOTES.md``, Open Telekom Cloud's copy of Huawei's API
reference (``ces_03_0074``, ``ces_03_0075``, the error-code page) and the ``huaweicloudsdkces`` v1 models.

What the docs leave open, and what the simulator does instead (each one **unconfirmed**):

- ``event_info`` order: newest ``time`` first (as in the documented example; no rule is stated);
  ListEvents' aggregates: latest occurrence first.
- ``start`` is an offset (``start += limit`` pages to the end); one ListEvents page of the docs calls it
  "the page number".
- The window includes both ends (``from <= time <= to``); without ``to`` it ends now, without ``from`` it
  starts one day before ``to`` (the docs: a malformed ``from``/``to`` gives "the last day"; the simulator
  answers 400 instead, to catch client bugs).
- An unknown event name in ListEventDetail is 200 with no occurrences, not 404.
- Error bodies: the documented v1 shape ``{"http_code": "400", "message": {"details": ..., "code":
  "ces.0014"}}``; 400 is ``ces.0014`` for every bad query parameter, 401 ``ces.0015``. On the real cloud an
  AK/SK or token failure is probably answered by the API gateway instead (``APIG.0301``,
  ``{"error_code", "error_msg", "request_id"}``): ``Simulator.ces_auth_errors = "apig"`` serves that.
- DCS events' ``detail.dimensions`` (``dcs_instance_id`` = the instance here), ``event_user`` (empty, as in
  the documented system-event example) and ``content`` (whatever the test gives) are guesses.
- Late events: Cloud Eye may record an event after its ``time`` (how late, for system events, is not
  documented); an event is listed only once the service clock reaches its ``visible_at``.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from notifier.devtools.simulator.answers import CesError

CES_EVENTS_PATH: Final = "/V1.0/{project_id}/events"
CES_EVENT_DETAIL_PATH: Final = "/V1.0/{project_id}/event/{event_name}"
CES_EVENTS_ROUTE: Final = "ces_events"
CES_EVENT_DETAIL_ROUTE: Final = "ces_event_detail"
CES_ROUTES: Final = frozenset({CES_EVENTS_ROUTE, CES_EVENT_DETAIL_ROUTE})

EVENT_TYPES: Final = ("EVENT.SYS", "EVENT.CUSTOM")
SUB_EVENT_TYPES: Final = ("SUB_EVENT.OPS", "SUB_EVENT.PLAN", "SUB_EVENT.CUSTOM")
EVENT_LEVELS: Final = ("Critical", "Major", "Minor", "Info")
EVENT_STATES: Final = ("normal", "warning", "incident")
DCS_EVENT_SOURCE: Final = "SYS.DCS"
#: The dimension a DCS event names its instance by (the name DCS metrics use; for events unconfirmed).
DCS_DIMENSION: Final = "dcs_instance_id"
MAX_LIMIT: Final = 100
DEFAULT_WINDOW: Final = timedelta(days=1)
#: ListEvents' accepted ``from``/``to`` (the SDK's parameter docs).
LIST_EVENTS_MS_RANGE: Final = (1_111_111_111_111, 9_999_999_999_999)

BAD_PARAMETER: Final = "ces.0014"
AUTH_FAILED: Final = "ces.0015"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ALPHANUMERIC = string.ascii_letters + string.digits
_EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_EVENT_SOURCE = re.compile(r"[A-Za-z][A-Za-z0-9_]*\.[A-Za-z0-9_]+")


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime (exact, no float rounding)."""
    return (moment.astimezone(UTC) - _EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def bad_parameter(name: str, why: str) -> CesError:
    """400 ``ces.0014``, worded like Cloud Eye's answers (the code for query errors: unconfirmed)."""
    message = f"Some content in message body is not correct, error message: [{name}] {why}"
    return CesError(400, BAD_PARAMETER, message)


@dataclass(frozen=True)
class CloudEyeEvent:
    """One occurrence as Cloud Eye stores it: ``time`` when it happened, ``visible_at`` when it is listed."""

    event_id: str
    project_id: str
    event_name: str
    time: datetime
    visible_at: datetime
    event_source: str = DCS_EVENT_SOURCE
    event_type: str = "EVENT.SYS"
    sub_event_type: str = "SUB_EVENT.OPS"
    resource_id: str = ""
    resource_name: str = ""
    level: str = "Major"
    state: str = "incident"
    user: str = ""
    content: str = ""
    group_id: str = ""
    dimensions: tuple[tuple[str, str], ...] = ()
    seq: int = 0

    @property
    def time_ms(self) -> int:
        return to_ms(self.time)

    def to_api(self) -> dict[str, Any]:
        """The ``event_info`` item ListEventDetail serves."""
        return {
            "event_id": self.event_id,
            "event_name": self.event_name,
            "event_source": self.event_source,
            "time": self.time_ms,
            "detail": {
                "content": self.content,
                "group_id": self.group_id,
                "resource_id": self.resource_id,
                "resource_name": self.resource_name,
                "event_state": self.state,
                "event_level": self.level,
                "event_user": self.user,
                "event_type": self.event_type,
                "sub_event_type": self.sub_event_type,
                "dimensions": [{"name": name, "value": value} for name, value in self.dimensions],
            },
        }


def content_text(content: Mapping[str, Any] | str | None) -> str:
    """``detail.content`` as served: a mapping as compact JSON (Cloud Eye's usual form), a string as is."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return json.dumps(dict(content), separators=(",", ":"), ensure_ascii=False)


class CloudEyeStore:
    """The events of every project, and deterministic event ids (``seed`` + a counter)."""

    def __init__(self, seed: str = "cloud-eye") -> None:
        self.seed = seed
        self.events: list[CloudEyeEvent] = []
        self._counter = 0

    def next_event_id(self, recorded_at: datetime) -> str:
        """``ev`` + the recording time in ms + 10 letters/digits, like ``ev1606302402256R6doP5YeZ``."""
        self._counter += 1
        digest = hashlib.sha256(f"{self.seed}:{self._counter}".encode()).digest()
        return f"ev{to_ms(recorded_at)}" + "".join(_ALPHANUMERIC[b % 62] for b in digest[:10])

    def of_project(self, project_id: str) -> list[CloudEyeEvent]:
        return [e for e in self.events if e.project_id == project_id]


# --- the two APIs (pure: a project's events, the query, the service's "now") -----------------------------


def _text(query: Mapping[str, str], name: str, *, max_len: int = 64) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if len(value) > max_len:
        raise bad_parameter(name, f"is longer than {max_len} characters.")
    return value


def _choice(query: Mapping[str, str], name: str, allowed: Sequence[str]) -> str | None:
    value = _text(query, name)
    if value is not None and value not in allowed:
        raise bad_parameter(name, f"must be one of {', '.join(allowed)}.")
    return value


def _integer(
    query: Mapping[str, str], name: str, default: int | None, low: int, high: int | None
) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not raw.isascii():
        raise bad_parameter(name, f"{raw!r} is not a non-negative integer.")
    value = int(raw)
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise bad_parameter(name, f"must be {bounds}.")
    return value


def _paging(query: Mapping[str, str]) -> tuple[int, int]:
    start = _integer(query, "start", 0, 0, None)
    limit = _integer(query, "limit", MAX_LIMIT, 1, MAX_LIMIT)
    assert start is not None and limit is not None
    return start, limit


def _window(query: Mapping[str, str], now: datetime, ms_range: tuple[int, int | None]) -> tuple[int, int]:
    low, high = ms_range
    end = _integer(query, "to", None, low, high)
    begin = _integer(query, "from", None, low, high)
    if end is None:
        end = to_ms(now)
    if begin is None:
        begin = end - DEFAULT_WINDOW // timedelta(milliseconds=1)
    if begin >= end:
        raise bad_parameter("from", "must be less than to.")
    return begin, end


def _listed(events: Sequence[CloudEyeEvent], begin: int, end: int, now: datetime) -> list[CloudEyeEvent]:
    """Occurrences recorded by ``now`` whose ``time`` is in ``[begin, end]``, newest first."""
    picked = [e for e in events if e.visible_at <= now and begin <= e.time_ms <= end]
    picked.sort(key=lambda e: (e.time_ms, e.seq), reverse=True)
    return picked


def list_events_answer(
    events: Sequence[CloudEyeEvent], query: Mapping[str, str], now: datetime
) -> dict[str, Any]:
    """ListEvents: one aggregate per event name with occurrences in the window, latest first."""
    event_type = _choice(query, "event_type", EVENT_TYPES)
    sub_event_type = _choice(query, "sub_event_type", SUB_EVENT_TYPES)
    event_name = _text(query, "event_name")
    if event_name is not None and not _EVENT_NAME.fullmatch(event_name):
        raise bad_parameter("event_name", "must start with a letter; letters, digits and _ only.")
    begin, end = _window(query, now, LIST_EVENTS_MS_RANGE)
    start, limit = _paging(query)
    aggregates: dict[str, dict[str, Any]] = {}
    for event in _listed(events, begin, end, now):  # newest first: the first seen is the latest
        if event_type is not None and event.event_type != event_type:
            continue
        if sub_event_type is not None and event.sub_event_type != sub_event_type:
            continue
        if event_name is not None and event.event_name != event_name:
            continue
        aggregate = aggregates.get(event.event_name)
        if aggregate is None:
            aggregates[event.event_name] = {
                "event_name": event.event_name,
                "event_type": event.event_type,
                "sub_event_type": event.sub_event_type,
                "event_count": 1,
                "latest_occur_time": event.time_ms,
                "latest_event_source": event.event_source,
            }
        else:
            aggregate["event_count"] += 1
    listed = list(aggregates.values())
    return {"events": listed[start : start + limit], "meta_data": {"total": len(listed)}}


def event_detail_answer(
    events: Sequence[CloudEyeEvent], event_name: str, query: Mapping[str, str], now: datetime
) -> dict[str, Any]:
    """ListEventDetail: the occurrences of ``event_name`` in the window, newest first, paged."""
    if not 1 <= len(event_name) <= 64:
        raise bad_parameter("event_name", "must be 1 to 64 characters.")
    event_type = _choice(query, "event_type", EVENT_TYPES)
    if event_type is None:
        raise bad_parameter("event_type", "is required (EVENT.SYS or EVENT.CUSTOM).")
    sub_event_type = _choice(query, "sub_event_type", SUB_EVENT_TYPES)
    event_source = _text(query, "event_source", max_len=32)
    if event_source is not None and not _EVENT_SOURCE.fullmatch(event_source):
        raise bad_parameter("event_source", "must look like SERVICE.ITEM (e.g. SYS.DCS).")
    level = _choice(query, "event_level", EVENT_LEVELS)
    state = _choice(query, "event_state", EVENT_STATES)
    user = _text(query, "event_user")
    begin, end = _window(query, now, (0, None))
    start, limit = _paging(query)
    matched = [
        e
        for e in _listed(events, begin, end, now)
        if e.event_name == event_name
        and e.event_type == event_type
        and (sub_event_type is None or e.sub_event_type == sub_event_type)
        and (event_source is None or e.event_source == event_source)
        and (level is None or e.level == level)
        and (state is None or e.state == state)
        and (user is None or e.user == user)
    ]
    answer: dict[str, Any] = {"event_name": event_name, "event_type": event_type}
    shown_sub_type = sub_event_type or (matched[0].sub_event_type if matched else None)
    if shown_sub_type is not None:
        answer["sub_event_type"] = shown_sub_type
    answer["event_users"] = list(dict.fromkeys(e.user for e in matched))
    answer["event_sources"] = list(dict.fromkeys(e.event_source for e in matched))
    answer["event_info"] = [e.to_api() for e in matched[start : start + limit]]
    answer["meta_data"] = {"total": len(matched)}
    return answer
